// mamba_mixer.hpp — the M letter on the CPU reference backend: the full Mamba-3 MIMO mixer
// (MegaCpp variant, ../shared/docs/mamba3-spec.md §1) around the float64 scan reference of
// kernels/mimo.
//
//   proj = x·W_inᵀ = [z (H·P) | x (H·P) | B (G·R·N, layout g r n) | C (G·R·N) | dd_dt (H) | dd_A (H) | trap (H)]
//   ang  = x·W_angᵀ (N_ang), a separate angle_proj (replicated under TP)
//   A = min(−softplus(dd_A), −a_floor) (or heavy_tail), Δ = softplus(dd_dt + dt_bias), ADT = A·Δ
//   θ = cumsum_t π·tanh(ang)·Δ ;  B̂ = RMSNorm_N(B)·w_B, Ĉ = RMSNorm_N(C)·w_C  (per token, group, rank)
//   out = scan(q=Ĉ, k=B̂, v=x, z, ADT, Δ, trap, C_bias, B_bias, Ψ, Ζ, Φ, θ, D) ;  y = out·W_outᵀ
// Saved for backward: the projections, the normalised B/C with their rstd, the scan inputs.
// The scan runs in float64 (the reference); this backend is the oracle and the no-GPU path, not fast.
// Tensor parallelism (the seeds' TP mixer contract): TP rank r holds heads [r·H/tp, …) and groups
// [r·G/tp, …): in_proj is column-parallel (the z, x, B, C, dd_dt, dd_A, trap rows of those heads and
// groups, in that order), the per-head parameters are sharded, out_proj is row-parallel; angle_proj,
// B_norm and C_norm are replicated and their gradients all-reduced over TP (tp_grad_partial). y is
// all-reduced over TP in forward, dx in backward.
#pragma once
#include <vector>

#include "engine/model/block.hpp"
#include "kernels/mimo/mimo_prep_ref.hpp"
#include "kernels/mimo/mimo_ref.hpp"

namespace megacpp {

template <typename T>
class MambaMixer final : public Block<T> {
 public:
  MambaMixer(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens,
             const ModelParallel* mp = nullptr);
  const char* name() const override { return "mamba3_mimo"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t S) const override;

 private:
  mimo::MimoShape shape(int64_t B, int64_t S) const;
  ParamStore<T>* ps_ = nullptr;
  const ModelParallel* mp_ = nullptr;
  int64_t hidden_, H_, P_, G_, R_, N_, L_, n_ang_, d_inner_, d_in_proj_;
  double a_floor_, norm_eps_, rope_fraction_ = 0.5;
  mimo::prep::AActivation act_;
  int w_in_, w_ang_, w_out_, dt_bias_, b_bias_, c_bias_, b_norm_, c_norm_, psi_, zeta_, phi_, d_;
  // saved activations
  const T* x_ = nullptr;
  std::vector<T> proj_, ang_, out_;
  std::vector<double> braw_rstd_, craw_rstd_;
  mimo::MimoInputs in_;
  std::vector<double> raw_angles_, dd_dt_, dd_a_, A_;
};

}  // namespace megacpp
