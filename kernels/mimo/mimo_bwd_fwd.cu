// mimo_bwd_fwd.cu — Mamba-3 MIMO backward recompute pass `mimo_bwd_fwd` (mimo_fwd_core.cuh with BWD=true; the
// shapes mimo_chunk_sm90.cuh takes launch that wgmma kernel instead: mimo_bwd_fwd() in mimo_prep.cu chooses).
//
// Recomputes the forward chunk by chunk (same math as mimo_fwd) and, instead of `out`, writes:
//   states (B,H,nc,N,P) bf16 — S_c, the state entering chunk c (read by mimo_bwd_bwd);
//   dZ[t,p] = Σ_r dout·Φ·y·silu'(zΖ)·Ζ (B,S,H,P) bf16;
//   per-(b,h) partials of dΦ[r,p] = Σ_t dout·silu(zΖ)·y and dΖ[r,p] = Σ_t dout·Φ·y·silu'(zΖ)·z, (B,H,R,P) fp32,
//   reduced over b in mimo_bwd_post (deterministic). silu'(u) = σ(u)(1 + u(1−σ(u))).
// With the PsiV cache the values V are read from it instead of x·Ψ.
// Resources (v10, ptxas sm_90a), smem fwd_layout() (112,640 B at N=128,P=64,M=64): N·P ≤ 8192 and R ≤ 4: 512 threads,
// NT=2, 64 regs, no spills (v7–v9: 192 B spill stores / 128 B loads), 2 CTAs/SM; N·P ≤ 8192 and R = 8: 256 threads,
// NT=4, 124 regs, 2 CTAs/SM; N·P = 16384: 256 threads, NT=8, 178 regs, 1 CTA/SM; no spills in any instance.
#include <cstdlib>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_fwd_core.cuh"

namespace megacpp::mimo::dev {
namespace {
// v7 variant: 0 = 512 threads, NT=2, RMAX=4 (N·P ≤ 8192, R ≤ 4); 1 = 256 threads, NT=4 (N·P ≤ 8192, R = 8);
// 2 = 256 threads, NT=8 (N·P = 16384).
// MEGACPP_MIMO_BWD_FWD_THREADS=256 selects variant 1 instead of 0 (for A/B timing on the device only; the thread count
// the kernel ran with is in mimo_kernel_infos() and hence in the bench receipt).
int variant(const MimoDims& d) {
  if ((d.N / 16) * (d.P / 16) <= 4 * kWarps) {
    static const bool force256 = [] {
      const char* e = std::getenv("MEGACPP_MIMO_BWD_FWD_THREADS");
      return e != nullptr && std::string(e) == "256";
    }();
    return (d.R <= 4 && !force256) ? 0 : 1;
  }
  return 2;
}
}  // namespace
int bwd_fwd_threads(const MimoDims& d) { return variant(d) == 0 ? 512 : kThreads; }
const void* bwd_fwd_kernel_ptr(const MimoDims& d) {
  switch (variant(d)) {
    case 0: return reinterpret_cast<const void*>(&mimo_fwd_kernel<true, 512, 2, 4>);
    case 1: return reinterpret_cast<const void*>(&mimo_fwd_kernel<true, kThreads, 4, 8>);
    default: return reinterpret_cast<const void*>(&mimo_fwd_kernel<true, kThreads, 8, 8>);
  }
}
void launch_bwd_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st) {
  auto launch = [&](auto kern, int threads) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<dim3(kp.d.H, kp.d.B), threads, smem, st>>>(kp);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
  };
  switch (variant(kp.d)) {
    case 0: launch(mimo_fwd_kernel<true, 512, 2, 4>, 512); break;
    case 1: launch(mimo_fwd_kernel<true, kThreads, 4, 8>, kThreads); break;
    default: launch(mimo_fwd_kernel<true, kThreads, 8, 8>, kThreads); break;
  }
}
}  // namespace megacpp::mimo::dev
