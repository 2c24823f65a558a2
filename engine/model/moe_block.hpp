// moe_block.hpp — the E letter on the CPU reference backend: token-choice router (softmax or sigmoid,
// top-k, renormalised weights), routed FFN experts (relu² or SwiGLU), a SwiGLU shared expert, the
// load-balancing and z auxiliary losses — around the float64 block reference of kernels/moe.
// Parameters keep the reference's layouts: router [E,H], w1 [E,F1,H], w2 [E,H,F], s1 [2S,H], s2 [H,S].
// The auxiliary losses join the objective with the recipe's coefficients; their values are reported
// separately (Model::aux_losses), like Megatron's load_balancing_loss.
// Expert parallelism: EP rank q holds experts [q·E/ep, (q+1)·E/ep) (w1/w2 sharded over EP; router and
// shared expert replicated). Each rank routes its own tokens (router statistics and auxiliary losses
// are per rank, as under DP), runs its local experts, and sends the rows routed to another rank's
// experts there with an all-to-all (grouped send/recv); the outputs come back the same way. Backward
// mirrors it: the weighted output gradients go to the experts' owners, the input gradients come back.
// Tensor parallelism (expert TP = TP): every routed expert's and the shared expert's FFN is split
// column/row over TP (w1/shared_w1 rows, w2/shared_w2 columns of this rank's ffn slice); the router is
// replicated (same routing on every TP rank, its gradient TP-partial); y and dx are all-reduced over TP;
// the auxiliary losses' gradients are scaled by 1/tp on each TP rank so that the sums count them once.
#pragma once
#include <vector>

#include "engine/model/block.hpp"
#include "kernels/moe/moe_ref.hpp"

namespace megacpp {

// The MoE layer's configuration from the recipe (not validated), for `tokens` rows: shared by this
// CPU block and its CUDA twin (engine/cuda/moe_block_cuda.cpp).
moe::MoeConfig moe_config_from_recipe(const Recipe& r, int64_t tokens);

template <typename T>
class MoeBlock final : public Block<T> {
 public:
  MoeBlock(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens,
           const ModelParallel* mp = nullptr);
  const char* name() const override { return "moe"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t S) const override;
  void set_aux_scale(double s) override { aux_scale_ = s; }
  AuxLosses aux_losses() const override { return aux_; }

 private:
  moe::MoeParamsRef gather() const;
  moe::MoeParamsRef gather_local() const;  // EP: this rank's experts only, no router/shared expert
  void ep_forward();
  void ep_backward(const std::vector<double>& dy, moe::MoeGradsRef& g);
  ParamStore<T>* ps_ = nullptr;
  const ModelParallel* mp_ = nullptr;   // set when EP > 1
  const ModelParallel* tpm_ = nullptr;  // set when TP > 1 (expert TP: FFN columns split)
  int64_t el_ = 0, e0_ = 0;            // local experts [e0_, e0_ + el_)
  // EP exchange state of the last forward
  std::vector<std::vector<int64_t>> send_slots_;  // [peer] slots t·K+k routed to that peer's experts
  std::vector<int64_t> recv_n_;                    // [peer] rows received
  std::vector<double> recv_x_;                     // received rows [n, H]
  std::vector<int32_t> recv_e_;                    // their local expert ids
  moe::MoeConfig c1_;                              // the local experts on the received rows (top-1, fixed)
  moe::MoeForwardRef f1_;
  moe::MoeConfig cfg_;
  int router_, w1_, w2_, s1_ = -1, s2_ = -1;
  double aux_scale_ = 1.0;
  AuxLosses aux_;
  std::vector<double> x_;
  moe::MoeForwardRef f_;
};

}  // namespace megacpp
