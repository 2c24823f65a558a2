// mimo_sm90_common.cuh — device helpers shared by the two Hopper MIMO kernels (mimo_chunk_sm90.cuh: mimo_fwd and
// mimo_bwd_fwd; mimo_bwd_bwd_sm90.cu): 16-byte cp.async into a swizzled tile, bf16×8 ↔ fp32 (un)packing, the
// byte offset of a wgmma matrix descriptor, and a warpgroup's 64×64 accumulator stored as a bf16 operand tile.
// Device code only; include from .cu files built for sm_90a.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/wgmma_sm90.cuh"

namespace megacpp::mimo::dev::sm90 {

__device__ __forceinline__ void cp16(uint32_t saddr, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr), "l"(g));
}
// 8 bf16 (one 16-byte chunk) → fp32: a bf16 is the high half of its fp32
__device__ __forceinline__ void unpack8(const uint4 u, float (&x)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) x[2 * j] = __uint_as_float(w[j] << 16), x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
}
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint4 pack8(const float (&x)[8]) {
  return make_uint4(pack2(x[0], x[1]), pack2(x[2], x[3]), pack2(x[4], x[5]), pack2(x[6], x[7]));
}
// x += 8 consecutive fp32 of shared memory (16-byte aligned)
__device__ __forceinline__ void add8(float (&x)[8], const float* p) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  x[0] += a.x, x[1] += a.y, x[2] += a.z, x[3] += a.w, x[4] += b.x, x[5] += b.y, x[6] += b.z, x[7] += b.w;
}
// Matrix descriptors advanced by a byte offset: the start-address field (bits 0..13, address >> 4) of a descriptor
// built once per tile, plus delta >> 4 (shared-memory addresses stay below 2^18, so the field cannot carry).
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t delta_bytes) { return d + (delta_bytes >> 4); }
// A warpgroup's m64n64 fp32 accumulator (thread rows row0 + 8·hh, columns 8q + 2·t4 (+1) in acc[4q + 2hh] (+1)) as
// bf16 into rows 64·blk.. of a 128B-swizzled [NR][64] tile: the MN-major B operand of the next chunk's products
// (the state S_c in the forward, bf16(dS) in mimo_bwd_bwd).
template <int NR>
__device__ __forceinline__ void store_acc64_bf16(unsigned char* tile, int blk, int row0, int t4, const float (&acc)[32]) {
#pragma unroll
  for (int q = 0; q < 8; ++q)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int n = 64 * blk + row0 + 8 * hh, p = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
      *reinterpret_cast<uint32_t*>(tile + 2 * megacpp::wgmma::sw128_offset<NR>(n, p)) = pack2(acc[i], acc[i + 1]);
    }
}

}  // namespace megacpp::mimo::dev::sm90
