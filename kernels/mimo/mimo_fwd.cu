// mimo_fwd.cu — Mamba-3 MIMO forward kernel `mimo_fwd` (the chunk loop lives in mimo_fwd_core.cuh, BWD=false).
//
// Math: see mimo_fwd_core.cuh. Shapes: q,k (B,S,R,G,N) bf16; v,z,out (B,S,H,P) bf16; adt,dt (B,H,S) fp32,
// trap (B,H,S) bf16; angles (B,S,H,N_ang) fp32 cumulative; params fp32. Grid (H,B), 256 threads.
// Saved for backward: nothing but the inputs (like upstream); optionally the PsiV cache (B,H,S,R,P) bf16 that the
// backward kernels then read instead of recomputing x·Ψ, and the final state (B,H,N,P) fp32.
// Resources (v6, ptxas, sm_90a): NT=4 instance (N·P ≤ 8192): 114 regs, __launch_bounds__(256,2) → 2 CTAs/SM, no
// spills; NT=8 instance: 166 regs, 1 CTA/SM. Dynamic smem fwd_layout(): 112,640 B at N=128,P=64,M=64. 66/42 HMMA in SASS.
#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_fwd_core.cuh"

namespace megacpp::mimo::dev {
namespace {
int state_tiles_per_warp(const MimoDims& d) { return (d.N / 16) * (d.P / 16) <= 4 * kWarps ? 4 : 8; }
}
const void* fwd_kernel_ptr(const MimoDims& d) {
  return state_tiles_per_warp(d) == 4 ? reinterpret_cast<const void*>(&mimo_fwd_kernel<false, 4>)
                                      : reinterpret_cast<const void*>(&mimo_fwd_kernel<false, 8>);
}
void launch_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st) {
  auto launch = [&](auto kern) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<dim3(kp.d.H, kp.d.B), kThreads, smem, st>>>(kp);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
  };
  if (state_tiles_per_warp(kp.d) == 4)
    launch(mimo_fwd_kernel<false, 4>);
  else
    launch(mimo_fwd_kernel<false, 8>);
}
}  // namespace megacpp::mimo::dev
