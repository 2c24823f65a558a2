#include "engine/train/goodput.hpp"

#include <algorithm>
#include <cmath>

namespace megacpp {

const char* badput_name(Badput b) {
  switch (b) {
    case Badput::initialization: return "initialization";
    case Badput::training_prep: return "training_prep";
    case Badput::program_startup: return "program_startup";
    case Badput::data_loading_sync: return "data_loading_sync";
    case Badput::checkpoint_save: return "checkpoint_save";
    case Badput::eval: return "eval";
    case Badput::wasted_progress_from_disruption: return "wasted_progress_from_disruption";
    case Badput::other: return "other";
  }
  return "?";
}

GoodputTracker::GoodputTracker() : start_(std::chrono::steady_clock::now()) {}

double GoodputTracker::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double GoodputTracker::productive_s() const {
  double s = 0;
  for (double x : steps_) s += x;
  return s;
}

double GoodputTracker::ideal_step_s() const {
  if (steps_.empty()) return 0;
  std::vector<double> v = steps_;
  std::sort(v.begin(), v.end());
  const double med = v[v.size() / 2];
  std::vector<double> dev;
  for (double x : v) dev.push_back(std::fabs(x - med));
  std::sort(dev.begin(), dev.end());
  const double mad = dev[dev.size() / 2];
  double sum = 0;
  int n = 0;
  for (double x : v)
    if (x <= med + 3 * mad) sum += x, ++n;
  return n ? sum / n : med;
}

nlohmann::json GoodputTracker::to_json() const {
  const double wall = elapsed_s();
  const double prod = productive_s();
  double accounted = prod;
  nlohmann::json bad = nlohmann::json::object();
  for (Badput b : {Badput::initialization, Badput::training_prep, Badput::program_startup, Badput::data_loading_sync,
                   Badput::checkpoint_save, Badput::eval, Badput::wasted_progress_from_disruption}) {
    const double s = badput_.count(b) ? badput_.at(b) : 0.0;
    accounted += s;
    bad[badput_name(b)] = {{"seconds", s}, {"fraction", wall > 0 ? s / wall : 0}};
  }
  // Everything not attributed: logging, optimizer bookkeeping outside steps, receipts, exit.
  const double other = std::max(0.0, wall - accounted) + (badput_.count(Badput::other) ? badput_.at(Badput::other) : 0);
  bad["other"] = {{"seconds", other}, {"fraction", wall > 0 ? other / wall : 0}};
  return {{"wall_s", wall},
          {"productive_step_s", prod},
          {"goodput", wall > 0 ? prod / wall : 0},
          {"badput", bad},
          {"steps_timed", steps_.size()},
          {"ideal_step_s", ideal_step_s()}};
}

}  // namespace megacpp
