// model.hpp — the hybrid stack built from the recipe's expanded pattern, on the CPU reference backend.
//
//   h_0 = wte[tokens]
//   h_{l+1} = h_l + block_l(RMSNorm(h_l)·w_l)          one block per pattern letter
//   loss = CE(RMSNorm(h_L)·w_f · W_headᵀ, targets)      fused and row-chunked: no [tokens, vocab] logits
//
// Forward and backward run layer by layer with explicit saved activations (no autograd). All
// activation buffers are sized once at construction for mbs × seq_len tokens.
//
// Tensor/expert parallelism (engine/model/parallel.hpp; `mp` at construction): every block holds its
// shard; the embedding and the LM head are vocabulary-parallel (TP rank r holds rows
// [r·V/tp, (r+1)·V/tp)): the embedding all-reduces the gathered rows over TP, the fused cross-entropy
// all-reduces (all-gathers) the per-row max and all-reduces the sum-exp and target logit, and
// all-reduces dx of the final norm's output. Losses and gradients equal the tp = ep = 1 model's.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/recipe.hpp"
#include "engine/model/block.hpp"
#include "engine/model/parallel.hpp"
#include "engine/model/params.hpp"

namespace megacpp {

template <typename T>
class Model {
 public:
  Model(const Recipe& r, int64_t max_batch, int64_t seq_len, const ModelParallel& mp = {});
  Model(const Model&) = delete;  // blocks point into the model
  Model& operator=(const Model&) = delete;
  // Deterministic initialisation from `seed` (N(0, init_std); output projections scaled by 1/√(2·depth);
  // norms 1; Mamba scalars as in the spec). Under TP/EP: the full model's values, this rank's shard.
  void init_params(uint64_t seed);
  const ModelParallel& parallel() const { return mp_; }
  // tokens: [B, S+1] int32. Returns the SUM of token losses over B·S targets (targets < 0 ignored).
  // With backward, accumulates ∂(grad_scale · (sum_loss + B·S·aux))/∂θ into the ParamStore's gradients.
  double forward_backward(const int32_t* tokens, int64_t B, double grad_scale);
  double forward_loss(const int32_t* tokens, int64_t B);

  ParamStore<T>& params() { return ps_; }
  const ParamStore<T>& params() const { return ps_; }
  int64_t seq_len() const { return S_; }
  double flops_per_token_fwd() const;  // at seq_len; embedding excluded, LM head included (TP: this rank's shards)
  const std::vector<std::string>& layer_names() const { return layer_names_; }
  // Sum over layers of the auxiliary losses of the last forward (MoE: load balancing + z-loss) and
  // the routed tokens per expert summed over MoE layers. The objective that forward_backward
  // differentiates is grad_scale · (Σ token CE + B·S·Σ aux).
  AuxLosses aux_losses() const;

 private:
  double run(const int32_t* tokens, int64_t B, bool backward, double grad_scale);
  Recipe r_;
  ModelParallel mp_;
  int64_t maxB_, S_, hidden_, vocab_;
  int64_t v0_ = 0, vl_ = 0;  // vocabulary rows held here (TP): [v0_, v0_ + vl_)
  ParamStore<T> ps_;
  int wte_, head_, final_norm_;
  std::vector<int> norm_;
  std::vector<std::unique_ptr<Block<T>>> blocks_;
  std::vector<std::string> layer_names_;
  // activations: residual stream per layer (L+1), normed input and rstd per layer, final norm
  std::vector<T> resid_, normed_, rstd_, fnormed_, frstd_, ybuf_, dresid_, dnormed_, dfinal_;
  std::vector<int32_t> targets_;
};

}  // namespace megacpp
