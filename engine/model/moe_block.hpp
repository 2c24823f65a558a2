// moe_block.hpp — the E letter on the CPU reference backend: token-choice router (softmax or sigmoid,
// top-k, renormalised weights), routed FFN experts (relu² or SwiGLU), a SwiGLU shared expert, the
// load-balancing and z auxiliary losses — around the float64 block reference of kernels/moe.
// Parameters keep the reference's layouts: router [E,H], w1 [E,F1,H], w2 [E,H,F], s1 [2S,H], s2 [H,S].
// The auxiliary losses join the objective with the recipe's coefficients; their values are reported
// separately (Model::aux_losses), like Megatron's load_balancing_loss.
#pragma once
#include <vector>

#include "engine/model/block.hpp"
#include "kernels/moe/moe_ref.hpp"

namespace megacpp {

template <typename T>
class MoeBlock final : public Block<T> {
 public:
  MoeBlock(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens);
  const char* name() const override { return "moe"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t S) const override;
  void set_aux_scale(double s) override { aux_scale_ = s; }
  AuxLosses aux_losses() const override { return aux_; }

 private:
  moe::MoeParamsRef gather() const;
  ParamStore<T>* ps_ = nullptr;
  moe::MoeConfig cfg_;
  int router_, w1_, w2_, s1_ = -1, s2_ = -1;
  double aux_scale_ = 1.0;
  AuxLosses aux_;
  std::vector<double> x_;
  moe::MoeForwardRef f_;
};

}  // namespace megacpp
