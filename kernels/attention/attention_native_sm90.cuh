// attention_native_sm90.cuh — internal device helpers shared by the wgmma (sm_90a) attention kernels
// (attention_native_fwd_sm90.cu, attention_native_bwd_sm90.cu): cp.async into 128B-swizzled tiles, exp2.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/wgmma_sm90.cuh"

namespace megacpp::attn::sm90 {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void cp_async16(uint32_t saddr, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// 2^x with the SFU (ex2.approx.ftz: ~2 ulp, flushes denormals; -inf -> +0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// ROWS x D bf16 rows from global (row stride ld elements) -> SW128 tile at smem address `tile`, NT threads.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile_sw128(uint32_t tile, const __nv_bfloat16* g, int64_t ld, int tid) {
  constexpr int CH = D / 8;
  static_assert((ROWS * CH) % NT == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int i = 0; i < ROWS * CH / NT; ++i) {
    const int idx = tid + i * NT;
    const int r = idx / CH, c = (idx % CH) * 8;
    cp_async16(tile + 2 * wgmma::sw128_offset<ROWS>(r, c), g + r * ld + c);
  }
}

// D(64 x N) (+)= A(smem) B(smem), both K-major (B given as Bt[N][K]).
template <int N>
__device__ __forceinline__ void mma_ss_kk(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
  if constexpr (N == 64) wgmma::wgmma_m64n64k16_ss<0>(d, a, b, acc);
  else wgmma::wgmma_m64n128k16_ss<0>(d, a, b, acc);
}
// D(64 x N) += A(registers) B(smem, MN-major: B[K][N]).
template <int N>
__device__ __forceinline__ void mma_rs_mn(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b) {
  if constexpr (N == 64) wgmma::wgmma_m64n64k16_rs<1>(d, a, b, 1);
  else wgmma::wgmma_m64n128k16_rs<1>(d, a, b, 1);
}

}  // namespace megacpp::attn::sm90
