// m2rnn_common.cuh — device helpers shared by the M²RNN forward and backward kernels.
//
// Fragment layout (mma.m16n8k16, one warp = one 16-row block of H, V = 16 columns = two n8 tiles):
//   lane = 4·g + tig; the thread holds h[nt][c], nt ∈ {0,1}, c ∈ 0..3, at
//   row = 16·warp + g + 8·(c >> 1), col = 8·nt + 2·tig + (c & 1).
//   Two n8 accumulator tiles of one m16 block are exactly the A fragment of one m16k16 slice, so H is
//   fed back to the tensor cores with no shuffles: a = {pack(h[0][0..1]), pack(h[0][2..3]),
//   pack(h[1][0..1]), pack(h[1][2..3])}.
//
// The step uses explicit round-to-nearest intrinsics (no compiler contraction choices), so the
// backward's recompute of a chunk from a checkpoint reproduces the forward's states bit for bit.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace megacpp::m2rnn::dev {

constexpr int V = 16;

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack_bf162(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
// x = hi + lo with hi, lo fp16 (22 significant bits together): "3xFP16" products.
__device__ __forceinline__ void split_half2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __half2 h = __floats2half2_rn(x0, x1);
  const float2 back = __half22float2(h);
  hi = *reinterpret_cast<uint32_t*>(&h);
  lo = pack_half2(__fsub_rn(x0, back.x), __fsub_rn(x1, back.y));
}
// Same with bf16 (16 significant bits, fp32 range): used where values are gradients of any size.
__device__ __forceinline__ void split_bf162(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 back = __bfloat1622float2(h);
  hi = *reinterpret_cast<uint32_t*>(&h);
  lo = pack_bf162(__fsub_rn(x0, back.x), __fsub_rn(x1, back.y));
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Transpose of one 8×8 b16 matrix held as the warp's m8n8 fragment (row g, cols 2tig..2tig+1).
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// tanh(x) = 1 - 2 / (1 + e^{2x}): two MUFU ops, absolute error ~2e-7 (tanh.approx.f32 would be one
// MUFU op but ~5e-4 relative error). Saturates correctly: e → inf gives 1, e → 0 gives -1.
__device__ __forceinline__ float tanh_acc(float x) {
  const float e = ex2_approx(__fmul_rn(x, 2.8853900817779268f));  // 2·log2(e)
  return __fsub_rn(1.0f, __fmul_rn(2.0f, rcp_approx(__fadd_rn(1.0f, e))));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// W_n as the B operand of H·W (k = a, n = j), split into fp16 hi/lo; nt = column tile.
__device__ __forceinline__ void load_w_frags(const float* Wn, int g, int tig, uint32_t (&bh)[2][2],
                                             uint32_t (&bl)[2][2]) {
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int j = 8 * nt + g;
    split_half2(Wn[(2 * tig) * V + j], Wn[(2 * tig + 1) * V + j], bh[nt][0], bl[nt][0]);
    split_half2(Wn[(2 * tig + 8) * V + j], Wn[(2 * tig + 9) * V + j], bh[nt][1], bl[nt][1]);
  }
}

// One recurrence step for the thread's 8 state values. k0/k1: k at rows g, g+8; v[nt][e]: v at col
// 8nt+2tig+e. On return h holds H_t and z holds Z_t.
__device__ __forceinline__ void step(float (&h)[2][4], float (&z)[2][4], float k0, float k1,
                                     const float (&v)[2][2], float f, const uint32_t (&bh)[2][2],
                                     const uint32_t (&bl)[2][2]) {
  uint32_t ah[4], al[4];
  split_half2(h[0][0], h[0][1], ah[0], al[0]);
  split_half2(h[0][2], h[0][3], ah[1], al[1]);
  split_half2(h[1][0], h[1][1], ah[2], al[2]);
  split_half2(h[1][2], h[1][3], ah[3], al[3]);
  float p0[2][4], p1[2][4], p2[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    p0[nt][0] = __fmul_rn(k0, v[nt][0]);
    p0[nt][1] = __fmul_rn(k0, v[nt][1]);
    p0[nt][2] = __fmul_rn(k1, v[nt][0]);
    p0[nt][3] = __fmul_rn(k1, v[nt][1]);
#pragma unroll
    for (int c = 0; c < 4; ++c) p1[nt][c] = p2[nt][c] = 0.0f;
    mma_f16(p0[nt], ah, bh[nt]);
    mma_f16(p1[nt], al, bh[nt]);
    mma_f16(p2[nt], ah, bl[nt]);
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float p = __fadd_rn(p0[nt][c], __fadd_rn(p1[nt][c], p2[nt][c]));
      const float zz = tanh_acc(p);
      z[nt][c] = zz;
      h[nt][c] = __fmaf_rn(f, __fsub_rn(h[nt][c], zz), zz);  // f·H + (1-f)·Z
    }
}

}  // namespace megacpp::m2rnn::dev
