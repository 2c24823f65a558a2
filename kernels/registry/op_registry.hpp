// op_registry.hpp — one registry of op cases, used by the tests, `megacpp bench` and `megacpp sweep`
// (the ggml test-backend-ops idea: one case definition drives correctness and performance).
//
// A kernel family adds its ops in kernels/<family>/ops_<family>.cpp:
//   void register_<family>_ops(OpRegistry& r) { r.add(OpDef{...}); }
// and kernels/CMakeLists.txt generates register_all_ops() that calls every family's function.
// A new kernel is therefore added in one place and is at once tested (tests/kernels/test_op_registry.cpp
// runs every op's check on its test shapes) and benchmarkable (`megacpp bench --kernel NAME`).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/common/metrics.hpp"

namespace megacpp {

// Integer shape parameters by name, e.g. {"B",2},{"S",4096},{"H",16}. CLI: --B 2 --S 4096.
using OpShape = std::map<std::string, int64_t>;

struct OpParam {
  std::string name;      // CLI option is --<name>
  int64_t default_value; // the bench default shape
  std::string help;
};

struct OpOptions {
  int warmup = 5;
  int iters = 20;
  std::map<std::string, std::string> flags;  // string/bool options: "backend", "psiv-cache", "moe-path"...
  std::string dump_dir;                      // bench --dump DIR (empty: none)
  std::string flag(const std::string& k, const std::string& dflt = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? dflt : it->second;
  }
};

struct CheckResult {
  std::vector<TensorMetric> tensors;
  std::string note;  // what ran (backend, shape) and anything refused
  bool pass() const {
    if (tensors.empty()) return false;  // a check that compared nothing cannot pass
    for (const auto& t : tensors)
      if (!t.pass()) return false;
    return true;
  }
};

struct BenchResult {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int runs = 0;
  double flops_executed = 0;  // by the executed-work formula
  double flops_model = 0;     // by the minimal (model) formula; 0 when not defined
  double bytes = 0;           // minimal HBM bytes by formula
  nlohmann::json kernels = nlohmann::json::array();  // KernelResources per launched kernel
  nlohmann::json extra = nlohmann::json::object();   // op-specific numbers (tokens/s, split times ...)
  std::string note;
};

struct OpDef {
  std::string name;     // "mimo_fwd"
  std::string family;   // "mimo"
  std::string summary;  // one line for --help / listing
  bool needs_gpu = true;
  std::vector<OpParam> params;
  std::vector<std::string> flags;  // names of string flags the op reads from OpOptions::flags
  // Small shapes that the CPU reference can afford; used by tests and by sweep's correctness column.
  std::function<std::vector<OpShape>()> test_shapes;
  // Correctness vs the float64 reference on fresh random inputs drawn from `seed`.
  std::function<CheckResult(const OpShape&, uint64_t seed, const OpOptions&)> check;
  // Timing at `shape` (full size). Empty function: op has no bench.
  std::function<BenchResult(const OpShape&, const OpOptions&)> bench;

  OpShape default_shape() const;
};

class OpRegistry {
 public:
  void add(OpDef op);  // throws on a duplicate name
  const OpDef* find(const std::string& name) const;
  const std::vector<OpDef>& all() const { return ops_; }
  std::vector<std::string> names() const;

 private:
  std::vector<OpDef> ops_;
};

// Every family's ops (generated; see kernels/CMakeLists.txt).
void register_all_ops(OpRegistry& r);
// The process-wide registry, filled on first use (defined in the generated file, library megacpp_ops).
const OpRegistry& op_registry();

// Merge user overrides into an op's default shape; unknown keys throw std::invalid_argument.
OpShape resolve_shape(const OpDef& op, const std::map<std::string, int64_t>& overrides);
std::string shape_to_string(const OpShape& s);

}  // namespace megacpp
