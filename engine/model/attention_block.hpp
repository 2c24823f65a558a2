// attention_block.hpp — the A letter on the CPU reference backend: fused QKV projection, RoPE
// (θ from the recipe, or none), causal grouped-query scaled-dot-product attention (float64 reference
// of kernels/attention), output projection.
//   qkv = x·W_qkvᵀ = [q (heads·d) | k (kv_heads·d) | v (kv_heads·d)] ;  q,k ← RoPE(q,k)
//   o = softmax(q·kᵀ/√d + causal mask)·v  (kv head = q head / (heads/kv_heads)) ;  y = o·W_oᵀ
// Saved for backward: x, q/k (rotated), v, o and the log-sum-exp (never the probability matrix).
// Tensor parallelism: TP rank r holds q heads [r·H/tp, …) and kv heads [r·Hk/tp, …) (the qkv rows of
// those heads: column-parallel) and the matching columns of out (row-parallel); y is all-reduced over
// TP in forward, dx in backward.
#pragma once
#include <vector>

#include "engine/model/block.hpp"

namespace megacpp {

template <typename T>
class AttentionBlock final : public Block<T> {
 public:
  AttentionBlock(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens,
                 const ModelParallel* mp = nullptr);
  const char* name() const override { return "attention"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t S) const override;

 private:
  ParamStore<T>* ps_ = nullptr;
  const ModelParallel* mp_ = nullptr;
  int64_t hidden_, H_, Hk_, D_;  // H_, Hk_: this rank's heads
  double theta_;
  bool rope_;
  int w_qkv_, w_o_;
  const T* x_ = nullptr;
  std::vector<T> qkv_, o_t_;
  std::vector<double> q_, k_, v_, o_, lse_;
};

}  // namespace megacpp
