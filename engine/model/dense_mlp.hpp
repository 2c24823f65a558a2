// dense_mlp.hpp — the D letter: y = W_down · act(W_gate·x, W_up·x).
//   swiglu: act = silu(g)·u (gate, up, down: 3 matrices); relu2 / gelu: act(g) (up, down: 2 matrices).
// Saved for backward: x (by pointer, the layer keeps it), g, u, a.
// Tensor parallelism: gate/up column-parallel (rows [r·F/tp, (r+1)·F/tp)), down row-parallel (the same
// columns); y is all-reduced over TP in forward, dx in backward.
#pragma once
#include <vector>

#include "engine/model/block.hpp"
#include "engine/model/cpu_ops.hpp"

namespace megacpp {

template <typename T>
class DenseMlp final : public Block<T> {
 public:
  DenseMlp(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens,
           const ModelParallel* mp = nullptr);
  const char* name() const override { return "dense_mlp"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t) const override;

 private:
  ParamStore<T>* ps_ = nullptr;
  const ModelParallel* mp_ = nullptr;
  int64_t hidden_, ffn_;  // ffn_: this rank's share of ffn_hidden
  cpu::Act act_;
  bool gated_;
  int w_gate_ = -1, w_up_, w_down_;
  const T* x_ = nullptr;
  std::vector<T> g_, u_, a_, da_, dg_, du_;
};

}  // namespace megacpp
