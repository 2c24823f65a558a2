// params.hpp — one allocation for every parameter, one for every gradient: a ParamStore keeps all
// tensors of a model contiguous (named views into one buffer), so the optimizer, the global grad norm,
// checkpoints and (later) all-reduce buckets walk one array.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp {

enum class Init { normal, normal_scaled_out, ones, zeros, constant, mamba_dt_bias, identity_per_head };

struct ParamSpec {
  std::string name;             // "layers.3.mamba.in_proj"
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t offset = 0;           // into ParamStore::data
  bool decay = true;            // AdamW weight decay (off for norms, biases, Mamba scalars)
  Init init = Init::normal;
  double init_value = 0;        // constant init / std override (0 = model init_std)
};

template <typename T>
class ParamStore {
 public:
  // Declaration phase (before finalize): returns the index of the parameter.
  int add(std::string name, std::vector<int64_t> shape, Init init, bool decay, double init_value = 0);
  void finalize();  // allocates data and grad (zeroed)
  bool finalized() const { return !data.empty() || specs.empty(); }

  T* param(int i) { return data.data() + specs[static_cast<std::size_t>(i)].offset; }
  T* grad(int i) { return grads.data() + specs[static_cast<std::size_t>(i)].offset; }
  const ParamSpec& spec(int i) const { return specs[static_cast<std::size_t>(i)]; }
  int64_t numel() const { return total_; }
  void zero_grad();
  int find(const std::string& name) const;  // -1 when absent

  std::vector<ParamSpec> specs;
  std::vector<T> data, grads;

 private:
  int64_t total_ = 0;
};

}  // namespace megacpp
