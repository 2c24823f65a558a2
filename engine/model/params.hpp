// params.hpp — one allocation for every parameter, one for every gradient: a ParamStore keeps all
// tensors of a model contiguous (named views into one buffer), so the optimizer, the global grad norm,
// checkpoints and (later) all-reduce buckets walk one array.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace megacpp {

enum class Init { normal, normal_scaled_out, ones, zeros, constant, mamba_dt_bias, identity_per_head };
// Model parallelism (engine/model/parallel.hpp): the group a tensor is split across.
enum class ShardGroup { none, tp, ep, tp_ep };  // tp_ep: split over both (expert FFNs under TP and EP)

struct ParamSpec {
  std::string name;             // "layers.3.mamba.in_proj"
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t offset = 0;           // into ParamStore::data
  bool decay = true;            // AdamW weight decay (off for norms, biases, Mamba scalars)
  Init init = Init::normal;
  double init_value = 0;        // constant init / std override (0 = model init_std)
  // Model parallelism (engine/model/parallel.hpp). The defaults describe the whole tensor, identical
  // on every rank (the only case at tp = ep = 1). A shard holds, of the full (tp = ep = 1) tensor viewed
  // as [full_shape[0], rest], the rows in `rows` (ranges [begin, begin + count), in order) and of each
  // row the elements [col_lo, col_lo + col_n). With `outer` non-empty the view is
  // [full_shape[0], full_shape[1], rest]: the ranges `outer` of dim 0, then `rows` of dim 1, then the
  // column range of the rest (expert tensors [E, F, H] split over EP and TP).
  ShardGroup shard = ShardGroup::none;
  bool tp_grad_partial = false;  // replicated over TP, but each TP rank's gradient is a partial sum
  std::vector<int64_t> full_shape;  // empty: = shape
  std::vector<std::pair<int64_t, int64_t>> rows;  // empty: all rows
  std::vector<std::pair<int64_t, int64_t>> outer;  // empty: no outer dimension (rows are dim 0)
  std::vector<std::pair<int64_t, int64_t>> cols;   // non-empty: several column ranges (overrides col_lo/col_n)
  // Element ranges [begin, begin + count) of this (TP-sharded) tensor, local flat indices, that every TP
  // rank holds identically and whose gradient is a partial sum over TP (M²RNN's shared q/k columns).
  std::vector<std::pair<int64_t, int64_t>> tp_replicated;
  int64_t col_lo = 0, col_n = -1;  // -1: the whole row
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
