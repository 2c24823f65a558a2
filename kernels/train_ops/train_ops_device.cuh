// train_ops_device.cuh — device helpers of the train_ops kernels: 16-byte bf16×8 loads/stores with fp32
// conversion, warp reductions, and the host-side argument checks shared by the launchers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"

namespace megacpp::train_ops::detail {

// 8 bf16 (16 bytes) ↔ 8 floats. p must be 16-byte aligned.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float f[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float f[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}
inline void require_aligned16(const void* p, const char* op, const char* name) {
  if (p && !aligned16(p))
    throw std::invalid_argument(std::string(op) + ": pointer " + name + " not 16-byte aligned (16-byte vector accesses)");
}
inline unsigned grid_1d(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  if (b > 2147483647) throw std::invalid_argument("train_ops: grid too large");
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

}  // namespace megacpp::train_ops::detail
