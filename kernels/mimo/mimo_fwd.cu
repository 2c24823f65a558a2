// mimo_fwd.cu — Mamba-3 MIMO forward kernel `mimo_fwd` (the chunk loop lives in mimo_fwd_core.cuh, BWD=false).
// Shapes the Hopper wgmma chunk loop takes (mimo_chunk_sm90.cuh) launch that instead (the choice: mimo_fwd() in
// mimo_prep.cu); this file's mma.sync instances serve the rest (and MEGACPP_MIMO_SM90=0).
//
// Math: see mimo_fwd_core.cuh. Shapes: q,k (B,S,R,G,N) bf16; v,z,out (B,S,H,P) bf16; adt,dt (B,H,S) fp32,
// trap (B,H,S) bf16; angles (B,S,H,N_ang) fp32 cumulative; params fp32. Grid (H,B), 512 or 256 threads.
// Saved for backward: nothing but the inputs (like upstream); optionally the PsiV cache (B,H,S,R,P) bf16 that the
// backward kernels then read instead of recomputing x·Ψ, and the final state (B,H,N,P) fp32.
// Resources (v10, ptxas, sm_90a): N·P ≤ 8192: 512 threads, NT=2, __launch_bounds__(512,2) → 64 regs, no spills (v8:
// 8 B), 2 CTAs/SM = 32 warps/SM; N·P = 16384: 256 threads, NT=8, 136 regs (v8: 164), 1 CTA/SM, no spills. Dynamic smem fwd_layout():
// 112,640 B at N=128,P=64,M=64. SASS (device, v8): 30 / 66 HMMA for the two instances.
#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_fwd_core.cuh"

namespace megacpp::mimo::dev {
namespace {
// v7: 512 threads with NT=2 when N·P ≤ 8192 (32 state tiles over 16 warps), else 256 threads with NT=8.
bool wide(const MimoDims& d) { return (d.N / 16) * (d.P / 16) <= 32; }
}  // namespace
int fwd_threads(const MimoDims& d) { return wide(d) ? 512 : kThreads; }
const void* fwd_kernel_ptr(const MimoDims& d) {
  return wide(d) ? reinterpret_cast<const void*>(&mimo_fwd_kernel<false, 512, 2, 8>)
                 : reinterpret_cast<const void*>(&mimo_fwd_kernel<false, kThreads, 8, 8>);
}
void launch_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st) {
  auto launch = [&](auto kern, int threads) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<dim3(kp.d.H, kp.d.B), threads, smem, st>>>(kp);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
  };
  if (wide(kp.d))
    launch(mimo_fwd_kernel<false, 512, 2, 8>, 512);
  else
    launch(mimo_fwd_kernel<false, kThreads, 8, 8>, kThreads);
}
}  // namespace megacpp::mimo::dev
