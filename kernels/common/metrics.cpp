#include "kernels/common/metrics.hpp"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace megacpp {

bool TensorMetric::pass() const {
  return non_finite == 0 && stable_max_rel < tol_rel && bad_frac < tol_bad_frac;
}

namespace {
template <typename T>
TensorMetric compare_impl(const std::string& name, std::span<const T> ours, std::span<const double> ref,
                          double tol_rel, double tol_bad_frac) {
  if (ours.size() != ref.size())
    throw std::invalid_argument("compare_tensors(" + name + "): size " + std::to_string(ours.size()) +
                                " != reference size " + std::to_string(ref.size()));
  TensorMetric m;
  m.name = name;
  m.count = ref.size();
  m.tol_rel = tol_rel;
  m.tol_bad_frac = tol_bad_frac;
  for (double r : ref) m.ref_max = std::max(m.ref_max, std::fabs(r));
  std::size_t bad = 0;
  const double bad_thr = 0.1 * m.ref_max;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double o = static_cast<double>(ours[i]);
    if (!std::isfinite(o)) {
      ++m.non_finite;
      continue;
    }
    const double d = std::fabs(o - ref[i]);
    m.max_abs = std::max(m.max_abs, d);
    if (d > bad_thr) ++bad;
  }
  // A reference that is identically zero makes the relative metric meaningless: fall back to
  // absolute error so that a wrong non-zero output still fails.
  m.stable_max_rel = m.ref_max > 0 ? m.max_abs / m.ref_max : m.max_abs;
  m.bad_frac = m.count ? static_cast<double>(bad + m.non_finite) / static_cast<double>(m.count) : 0.0;
  if (m.non_finite) m.stable_max_rel = INFINITY;
  return m;
}
}  // namespace

TensorMetric compare_tensors(const std::string& name, std::span<const double> ours, std::span<const double> ref,
                             double tol_rel, double tol_bad_frac) {
  return compare_impl<double>(name, ours, ref, tol_rel, tol_bad_frac);
}
TensorMetric compare_tensors(const std::string& name, std::span<const float> ours, std::span<const double> ref,
                             double tol_rel, double tol_bad_frac) {
  return compare_impl<float>(name, ours, ref, tol_rel, tol_bad_frac);
}

nlohmann::json to_json(const TensorMetric& m) {
  return {{"name", m.name},           {"count", m.count},
          {"ref_max", m.ref_max},     {"stable_max_rel", std::isfinite(m.stable_max_rel) ? m.stable_max_rel : -1.0},
          {"max_abs", m.max_abs},     {"bad_frac", m.bad_frac},
          {"non_finite", m.non_finite}, {"tol_rel", m.tol_rel},
          {"tol_bad_frac", m.tol_bad_frac}, {"pass", m.pass()}};
}

std::string format_metric_table(const std::vector<TensorMetric>& ms) {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-18s %12s %12s %10s %10s %5s\n", "tensor", "stable_rel", "max_abs", "bad_frac",
                "tol", "ok");
  out += buf;
  for (const auto& m : ms) {
    std::snprintf(buf, sizeof buf, "%-18s %12.3e %12.3e %10.4f %10.1e %5s\n", m.name.c_str(), m.stable_max_rel,
                  m.max_abs, m.bad_frac, m.tol_rel, m.pass() ? "yes" : "NO");
    out += buf;
  }
  return out;
}

}  // namespace megacpp
