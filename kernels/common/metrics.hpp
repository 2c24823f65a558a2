// metrics.hpp — how every kernel is compared with its float64 reference.
//
//   stable_max_rel = max|ours - ref| / max|ref|        (the seeds' gate metric)
//   max_abs        = max|ours - ref|
//   bad_frac       = fraction of elements with |ours - ref| > 0.1 * max|ref|
// A NaN/Inf anywhere in `ours` (e.g. an unwritten, poisoned element) fails the comparison.
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

struct TensorMetric {
  std::string name;
  std::size_t count = 0;
  double ref_max = 0.0;         // max|ref|
  double stable_max_rel = 0.0;  // max|ours-ref| / max|ref|
  double max_abs = 0.0;
  double bad_frac = 0.0;
  std::size_t non_finite = 0;   // NaN/Inf in ours
  double tol_rel = 0.0;         // gate: stable_max_rel < tol_rel
  double tol_bad_frac = 1.0;    // gate: bad_frac < tol_bad_frac
  bool pass() const;
};

// Compare `ours` with `ref` element-wise. Sizes must match (throws std::invalid_argument).
TensorMetric compare_tensors(const std::string& name, std::span<const double> ours,
                             std::span<const double> ref, double tol_rel, double tol_bad_frac = 1.0);
TensorMetric compare_tensors(const std::string& name, std::span<const float> ours,
                             std::span<const double> ref, double tol_rel, double tol_bad_frac = 1.0);

nlohmann::json to_json(const TensorMetric& m);
// A fixed-width table (one row per tensor) for logs and the sweep.
std::string format_metric_table(const std::vector<TensorMetric>& ms);

}  // namespace megacpp
