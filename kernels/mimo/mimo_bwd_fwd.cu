// mimo_bwd_fwd.cu — Mamba-3 MIMO backward recompute pass `mimo_bwd_fwd` (mimo_fwd_core.cuh with BWD=true).
//
// Recomputes the forward chunk by chunk (same math as mimo_fwd) and, instead of `out`, writes:
//   states (B,H,nc,N,P) bf16 — S_c, the state entering chunk c (read by mimo_bwd_bwd);
//   dZ[t,p] = Σ_r dout·Φ·y·silu'(zΖ)·Ζ (B,S,H,P) bf16;
//   per-(b,h) partials of dΦ[r,p] = Σ_t dout·silu(zΖ)·y and dΖ[r,p] = Σ_t dout·Φ·y·silu'(zΖ)·z, (B,H,R,P) fp32,
//   reduced over b in mimo_bwd_post (deterministic). silu'(u) = σ(u)(1 + u(1−σ(u))).
// With the PsiV cache the values V are read from it instead of x·Ψ.
// Resources: 256 threads, smem fwd_layout() (112,640 B at N=128,P=64,M=64); NT=4: 126 regs, 2 CTAs/SM, no spills;
// NT=8: 202 regs, 1 CTA/SM (v6).
#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_fwd_core.cuh"

namespace megacpp::mimo::dev {
namespace {
int state_tiles_per_warp(const MimoDims& d) { return (d.N / 16) * (d.P / 16) <= 4 * kWarps ? 4 : 8; }
}
const void* bwd_fwd_kernel_ptr(const MimoDims& d) {
  return state_tiles_per_warp(d) == 4 ? reinterpret_cast<const void*>(&mimo_fwd_kernel<true, 4>)
                                      : reinterpret_cast<const void*>(&mimo_fwd_kernel<true, 8>);
}
void launch_bwd_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st) {
  auto launch = [&](auto kern) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<dim3(kp.d.H, kp.d.B), kThreads, smem, st>>>(kp);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
  };
  if (state_tiles_per_warp(kp.d) == 4)
    launch(mimo_fwd_kernel<true, 4>);
  else
    launch(mimo_fwd_kernel<true, 8>);
}
}  // namespace megacpp::mimo::dev
