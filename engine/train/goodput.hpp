// goodput.hpp — where the wall time of a training run went, in the categories of Google's
// ml-goodput-measurement: productive step time is goodput; everything else is badput by cause.
//   goodput = productive step time / wall time
//   ideal step time = mean of the step times ≤ median + 3·MAD (slow outlier steps excluded)
#pragma once
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

enum class Badput {
  initialization,                    // process start → model built and initialised
  training_prep,                     // data preparation, checkpoint restore
  program_startup,                   // plan building / autotuning / first-step compilation
  data_loading_sync,                 // the step waited for its batch
  checkpoint_save,
  eval,
  wasted_progress_from_disruption,   // steps redone after a resume (since the last checkpoint)
  other
};
const char* badput_name(Badput b);

class GoodputTracker {
 public:
  GoodputTracker();
  void add(Badput b, double seconds) { badput_[b] += seconds; }
  // A completed optimizer step: its compute time (data wait excluded).
  void add_step(double seconds) { steps_.push_back(seconds); }
  double elapsed_s() const;
  double ideal_step_s() const;
  double productive_s() const;
  nlohmann::json to_json() const;  // goodput, badput by category (s and fraction), ideal step, wall

 private:
  std::chrono::steady_clock::time_point start_;
  std::map<Badput, double> badput_;
  std::vector<double> steps_;
};

// RAII timer: adds its lifetime to a category.
class BadputTimer {
 public:
  BadputTimer(GoodputTracker& t, Badput b) : t_(t), b_(b), s_(std::chrono::steady_clock::now()) {}
  ~BadputTimer() { t_.add(b_, std::chrono::duration<double>(std::chrono::steady_clock::now() - s_).count()); }

 private:
  GoodputTracker& t_;
  Badput b_;
  std::chrono::steady_clock::time_point s_;
};

}  // namespace megacpp
