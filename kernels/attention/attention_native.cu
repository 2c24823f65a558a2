// attention_native.cu — FlashAttention-2-style causal GQA attention, forward and backward, written for
// sm_90a with warp-level tensor-core MMA (mma.sync.m16n8k16 bf16 -> fp32), cp.async double buffering,
// ldmatrix from XOR-swizzled shared memory (16-byte chunk c of row r lives at chunk c ^ (r & 7)).
//
// Math (layouts in attention.hpp): s = scale q k^T, causal (key <= query), online softmax in the exp2
// domain (scale*log2e folded in), o = softmax(s) v, lse = ln sum exp(s) saved as fp32 (B,H,S).
// Backward (three kernels, every output written by exactly one CTA: deterministic, no atomics):
//   1. attn_bwd_pre : Dv[b,h,i] = <dO_i, O_i> (fp32)                              one warp per row
//   2. attn_bwd_dkdv: one CTA per (kv block of 16*NW keys, b, kv head); loops over the H/Hk query heads
//      of its group and over query blocks at/after the diagonal; keeps dK, dV in registers:
//      P^T = exp2(K Q^T * c - lse2), dP^T = V dO^T, dS^T = P^T (dP^T - Dv), dV += P^T dO, dK += dS^T Q
//   3. attn_bwd_dq  : one CTA per (query block of 16*NW rows, b, h); loops over kv blocks up to the
//      diagonal: recomputes P and dS, dQ += dS K (the recomputation is the price of determinism:
//      7 instead of 5 matmuls of the 2.5x-forward FLOP count).
// Forward: one CTA per (query block of BR = 16*NW rows, b*h), the last (heaviest) blocks launched first;
// each warp owns 16 query rows, keeps Q as A fragments in registers and O (16 x D fp32) in registers;
// P goes from the S accumulators to A fragments in registers (the m16n8 C layout is the A layout).
// Causal: kv tiles past the block's last row are never loaded; a warp skips tiles past its own rows;
// element masks only on tiles that cross the diagonal.
// Resources (sm_90a, ptxas -v, no spills, no local memory; SASS: HMMA + LDSM, MUFU.EX2 for exp):
//   fwd<128, NW=8, BC=64>   256 thr, 243 regs, 96 KB dyn smem (Q 32 KB + 2 stages x (K,V) 64 KB), 1 CTA/SM
//   fwd<64,  NW=4, BC=64>   128 thr, 177 regs, 40 KB dyn smem
//   dkdv<128, NW=8, BQ=64>  256 thr, 255 regs, 129 KB (K,V 64 KB + 2 x (Q,dO) 64 KB + lse/Dv)
//   dkdv<64,  NW=8, BQ=64>  256 thr, 217 regs, 65 KB
//   dq<128, NW=4, BC=64>    128 thr, 255 regs, 96 KB;  dq<64, 4, 64>: 202 regs, 48 KB
// (defaults; the alternatives selected by native_set_{fwd,bwd}_config are listed in dispatch_bwd/native_fwd.)
// Limits: D in {64,128}, S % 128 == 0, B*H <= 65535. Assumes 16-byte aligned, contiguous BSHD tensors.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/attention/attention.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/gpu_timing.hpp"

namespace megacpp::attn {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- PTX helpers ---------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// C(16x8 f32) += A(16x16 bf16, row) * B(16x8 bf16, col)
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// Element offset of (row, col) in a swizzled tile of D bf16 columns (col multiple of 8 for ldmatrix).
template <int D>
__device__ __forceinline__ int swz(int row, int col) {
  return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// ROWS x D bf16 tile from global (row stride `ld` elements) into swizzled smem, NT threads, cp.async.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* g, int64_t ld, int tid) {
  constexpr int CH = D / 8;
  static_assert((ROWS * CH) % NT == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int i = 0; i < ROWS * CH / NT; ++i) {
    const int idx = tid + i * NT;
    const int r = idx / CH, c = idx % CH;
    cp_async16(s + r * D + ((c ^ (r & 7)) << 3), g + r * ld + c * 8);
  }
}

// A fragment (16 rows x 16 k) at (row0, k0) of a swizzled row-major tile.
template <int D>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const __nv_bfloat16* s, int row0, int k0, int lane) {
  ldsm_x4(a, s + swz<D>(row0 + (lane & 15), k0 + ((lane >> 4) << 3)));
}
// Two B fragments (n 16 x k 16) where B[k][n] = T[n][k] (T row-major, n = tile row): n-tiles n0, n0+8.
template <int D>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const __nv_bfloat16* s, int n0, int k0, int lane) {
  ldsm_x4(b, s + swz<D>(n0 + (lane & 7) + ((lane >> 4) << 3), k0 + (((lane >> 3) & 1) << 3)));
}
// Two B fragments where B[k][n] = T[k][n] (T row-major, k = tile row): k 16 rows at k0, n-tiles n0, n0+8.
template <int D>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const __nv_bfloat16* s, int k0, int n0, int lane) {
  ldsm_x4_t(b, s + swz<D>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), n0 + ((lane >> 4) << 3)));
}

struct FwdParams {
  const __nv_bfloat16 *q, *k, *v;
  __nv_bfloat16* o;
  float* lse;
  int S, H, Hk;
  float scale_log2;  // scale * log2(e)
};

// ---- forward -------------------------------------------------------------------------------------
template <int D, int NW, int BC>
__global__ void __launch_bounds__(NW * 32, 1) attn_fwd_kernel(FwdParams p) {
  constexpr int BR = 16 * NW, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sK = sQ + BR * D;      // [2][BC*D]
  __nv_bfloat16* sV = sK + 2 * BC * D;  // [2][BC*D]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int qblk = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int q0 = qblk * BR;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const __nv_bfloat16* qg = p.q + (static_cast<int64_t>(b) * p.S + q0) * ldq + h * D;
  const __nv_bfloat16* kg = p.k + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const __nv_bfloat16* vg = p.v + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const int n_tiles = (q0 + BR - 1) / BC + 1;

  load_tile<BR, D, NT>(sQ, qg, ldq, tid);
  cp_async_commit();
  load_tile<BC, D, NT>(sK, kg, ldk, tid);
  load_tile<BC, D, NT>(sV, vg, ldk, tid);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qf[kk], sQ, warp * 16, kk * 16, lane);

  float oacc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  const int qw0 = q0 + warp * 16;
  const int row_a = qw0 + (lane >> 2), row_b = row_a + 8;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      const int64_t off = static_cast<int64_t>(j + 1) * BC * ldk;
      load_tile<BC, D, NT>(sK + (buf ^ 1) * BC * D, kg + off, ldk, tid);
      load_tile<BC, D, NT>(sV + (buf ^ 1) * BC * D, vg + off, ldk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int kv0 = j * BC;
    if (kv0 <= qw0 + 15) {  // warp-uniform: some key of this tile is visible to some row of this warp
      const __nv_bfloat16* k_s = sK + buf * BC * D;
      const __nv_bfloat16* v_s = sV + buf * BC * D;
      float s[BC / 8][4];
#pragma unroll
      for (int i = 0; i < BC / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int nn = 0; nn < BC / 16; ++nn) {
          uint32_t bf[4];
          load_b_nk<D>(bf, k_s, nn * 16, kk * 16, lane);
          mma16816(s[2 * nn], qf[kk], bf[0], bf[1]);
          mma16816(s[2 * nn + 1], qf[kk], bf[2], bf[3]);
        }
      }
      if (kv0 + BC - 1 > qw0) {  // tile crosses this warp's diagonal: element mask
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
          const int c = kv0 + n * 8 + ((lane & 3) << 1);
          if (c > row_a) s[n][0] = -INFINITY;
          if (c + 1 > row_a) s[n][1] = -INFINITY;
          if (c > row_b) s[n][2] = -INFINITY;
          if (c + 1 > row_b) s[n][3] = -INFINITY;
        }
      }
      float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) {
        mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      }
      // Key 0 is visible to every row and tile 0 is never skipped, so mx is finite here.
      const float alpha0 = fast_exp2((m_r[0] - mx[0]) * p.scale_log2);
      const float alpha1 = fast_exp2((m_r[1] - mx[1]) * p.scale_log2);
      m_r[0] = mx[0];
      m_r[1] = mx[1];
      const float mb0 = mx[0] * p.scale_log2, mb1 = mx[1] * p.scale_log2;
      float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) {
        s[n][0] = fast_exp2(fmaf(s[n][0], p.scale_log2, -mb0));
        s[n][1] = fast_exp2(fmaf(s[n][1], p.scale_log2, -mb0));
        s[n][2] = fast_exp2(fmaf(s[n][2], p.scale_log2, -mb1));
        s[n][3] = fast_exp2(fmaf(s[n][3], p.scale_log2, -mb1));
        ls0 += s[n][0] + s[n][1];
        ls1 += s[n][2] + s[n][3];
      }
      l_r[0] = l_r[0] * alpha0 + ls0;
      l_r[1] = l_r[1] * alpha1 + ls1;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        oacc[i][0] *= alpha0;
        oacc[i][1] *= alpha0;
        oacc[i][2] *= alpha1;
        oacc[i][3] *= alpha1;
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          uint32_t bf[4];
          load_b_kn<D>(bf, v_s, kk * 16, nd * 16, lane);
          mma16816(oacc[2 * nd], pa, bf[0], bf[1]);
          mma16816(oacc[2 * nd + 1], pa, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration loads into it
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
  }
  const float inv0 = 1.f / l_r[0], inv1 = 1.f / l_r[1];
  __nv_bfloat16* og = p.o + (static_cast<int64_t>(b) * p.S + q0 + warp * 16) * ldq + h * D;
  const int r_a = lane >> 2;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + ((lane & 3) << 1);
    *reinterpret_cast<uint32_t*>(og + r_a * ldq + c) = pack_bf16(oacc[n][0] * inv0, oacc[n][1] * inv0);
    *reinterpret_cast<uint32_t*>(og + (r_a + 8) * ldq + c) = pack_bf16(oacc[n][2] * inv1, oacc[n][3] * inv1);
  }
  if ((lane & 3) == 0) {
    float* lg = p.lse + static_cast<int64_t>(bh) * p.S;
    lg[row_a] = (m_r[0] * p.scale_log2 + __log2f(l_r[0])) * kLn2;
    lg[row_b] = (m_r[1] * p.scale_log2 + __log2f(l_r[1])) * kLn2;
  }
}

// ---- backward ------------------------------------------------------------------------------------
struct BwdParams {
  const __nv_bfloat16 *q, *k, *v, *o, *dout;
  const float* lse;
  float* dvec;  // (B,H,S)
  __nv_bfloat16 *dq, *dk, *dv;
  int S, H, Hk;
  float scale, scale_log2;
};

// Dv[b,h,i] = sum_d dO[b,i,h,d] * O[b,i,h,d]; one warp per (b,i,h) row.
template <int D>
__global__ void attn_bwd_pre_kernel(BwdParams p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  constexpr int PER = D / 32;  // 2 or 4 elements per lane
  const __nv_bfloat16* a = p.dout + row * D + lane * PER;
  const __nv_bfloat16* c = p.o + row * D + lane * PER;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < PER; ++i) acc += __bfloat162float(a[i]) * __bfloat162float(c[i]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    // row enumerates (b, i, h) in BSHD order; Dv is (B, H, S)
    const int64_t h = row % p.H, bi = row / p.H, i = bi % p.S, b = bi / p.S;
    p.dvec[(b * p.H + h) * p.S + i] = acc;
  }
}

// One CTA: BKV = 16*NW keys of one (b, kv head); loops over (group head, query block >= diagonal).
template <int D, int NW, int BQ>
__global__ void __launch_bounds__(NW * 32, 1) attn_bwd_dkdv_kernel(BwdParams p) {
  constexpr int BKV = 16 * NW, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sV = sK + BKV * D;
  __nv_bfloat16* sQ = sV + BKV * D;    // [2][BQ*D]
  __nv_bfloat16* sdO = sQ + 2 * BQ * D;  // [2][BQ*D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BQ * D);  // [2][BQ] lse
  float* sDv = sL + 2 * BQ;                                 // [2][BQ]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kv0 = blockIdx.x * BKV;  // low kv blocks have the most work: launched first
  const int bhk = blockIdx.y, b = bhk / p.Hk, hk = bhk % p.Hk;
  const int G = p.H / p.Hk;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const int64_t kvbase = (static_cast<int64_t>(b) * p.S + kv0) * ldk + hk * D;
  load_tile<BKV, D, NT>(sK, p.k + kvbase, ldk, tid);
  load_tile<BKV, D, NT>(sV, p.v + kvbase, ldk, tid);
  cp_async_commit();

  const int qb_first = kv0 / BQ, nq = p.S / BQ - qb_first;
  const int total = G * nq;
  auto issue = [&](int it, int buf) {
    const int g = it / nq, qb = qb_first + it % nq;
    const int h = hk * G + g;
    const int64_t qoff = (static_cast<int64_t>(b) * p.S + qb * BQ) * ldq + h * D;
    load_tile<BQ, D, NT>(sQ + buf * BQ * D, p.q + qoff, ldq, tid);
    load_tile<BQ, D, NT>(sdO + buf * BQ * D, p.dout + qoff, ldq, tid);
    const int64_t loff = (static_cast<int64_t>(b) * p.H + h) * p.S + qb * BQ;
    if (tid < BQ) {
      cp_async4(sL + buf * BQ + tid, p.lse + loff + tid);
      cp_async4(sDv + buf * BQ + tid, p.dvec + loff + tid);
    }
  };
  issue(0, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const int kw0 = kv0 + warp * 16;
  const int key_a = kw0 + (lane >> 2), key_b = key_a + 8;

  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    if (it + 1 < total) issue(it + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int q0 = (qb_first + it % nq) * BQ;
    if (q0 + BQ - 1 >= kw0) {  // warp-uniform: some query of the block sees some key of this warp
      const __nv_bfloat16* q_s = sQ + buf * BQ * D;
      const __nv_bfloat16* do_s = sdO + buf * BQ * D;
      const float* l_s = sL + buf * BQ;
      const float* d_s = sDv + buf * BQ;
      float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
      for (int i = 0; i < BQ / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[4], va[4];
        load_a<D>(ka, sK, warp * 16, kk * 16, lane);
        load_a<D>(va, sV, warp * 16, kk * 16, lane);
#pragma unroll
        for (int nn = 0; nn < BQ / 16; ++nn) {
          uint32_t bq[4], bo[4];
          load_b_nk<D>(bq, q_s, nn * 16, kk * 16, lane);
          load_b_nk<D>(bo, do_s, nn * 16, kk * 16, lane);
          mma16816(st[2 * nn], ka, bq[0], bq[1]);
          mma16816(st[2 * nn + 1], ka, bq[2], bq[3]);
          mma16816(dpt[2 * nn], va, bo[0], bo[1]);
          mma16816(dpt[2 * nn + 1], va, bo[2], bo[3]);
        }
      }
      const bool diag = q0 < kw0 + 15;  // some (query < key) pair in this warp's block
#pragma unroll
      for (int n = 0; n < BQ / 8; ++n) {
        const int cl = n * 8 + ((lane & 3) << 1);
        const int c = q0 + cl;
        const float l0 = l_s[cl] * kLog2e, l1 = l_s[cl + 1] * kLog2e;
        const float d0 = d_s[cl], d1 = d_s[cl + 1];
        float p0 = fast_exp2(fmaf(st[n][0], p.scale_log2, -l0));
        float p1 = fast_exp2(fmaf(st[n][1], p.scale_log2, -l1));
        float p2 = fast_exp2(fmaf(st[n][2], p.scale_log2, -l0));
        float p3 = fast_exp2(fmaf(st[n][3], p.scale_log2, -l1));
        if (diag) {
          if (c < key_a) p0 = 0.f;
          if (c + 1 < key_a) p1 = 0.f;
          if (c < key_b) p2 = 0.f;
          if (c + 1 < key_b) p3 = 0.f;
        }
        st[n][0] = p0;
        st[n][1] = p1;
        st[n][2] = p2;
        st[n][3] = p3;
        dpt[n][0] = p0 * (dpt[n][0] - d0);
        dpt[n][1] = p1 * (dpt[n][1] - d1);
        dpt[n][2] = p2 * (dpt[n][2] - d0);
        dpt[n][3] = p3 * (dpt[n][3] - d1);
      }
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        uint32_t pa[4], sa[4];
        pa[0] = pack_bf16(st[2 * kk][0], st[2 * kk][1]);
        pa[1] = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
        pa[2] = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        pa[3] = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        sa[0] = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
        sa[1] = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
        sa[2] = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        sa[3] = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          uint32_t bo[4], bq[4];
          load_b_kn<D>(bo, do_s, kk * 16, nd * 16, lane);
          load_b_kn<D>(bq, q_s, kk * 16, nd * 16, lane);
          mma16816(dv[2 * nd], pa, bo[0], bo[1]);
          mma16816(dv[2 * nd + 1], pa, bo[2], bo[3]);
          mma16816(dk[2 * nd], sa, bq[0], bq[1]);
          mma16816(dk[2 * nd + 1], sa, bq[2], bq[3]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  const int64_t obase = (static_cast<int64_t>(b) * p.S + kw0) * ldk + hk * D;
  const int r = lane >> 2;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + ((lane & 3) << 1);
    *reinterpret_cast<uint32_t*>(p.dk + obase + r * ldk + c) = pack_bf16(dk[n][0] * p.scale, dk[n][1] * p.scale);
    *reinterpret_cast<uint32_t*>(p.dk + obase + (r + 8) * ldk + c) =
        pack_bf16(dk[n][2] * p.scale, dk[n][3] * p.scale);
    *reinterpret_cast<uint32_t*>(p.dv + obase + r * ldk + c) = pack_bf16(dv[n][0], dv[n][1]);
    *reinterpret_cast<uint32_t*>(p.dv + obase + (r + 8) * ldk + c) = pack_bf16(dv[n][2], dv[n][3]);
  }
}

// One CTA: BQ = 16*NW query rows of one (b, h); loops over kv blocks up to the diagonal.
template <int D, int NW, int BC>
__global__ void __launch_bounds__(NW * 32, 1) attn_bwd_dq_kernel(BwdParams p) {
  constexpr int BQ = 16 * NW, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sdO = sQ + BQ * D;
  __nv_bfloat16* sK = sdO + BQ * D;     // [2][BC*D]
  __nv_bfloat16* sV = sK + 2 * BC * D;  // [2][BC*D]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int qblk = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int q0 = qblk * BQ;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const int64_t qoff = (static_cast<int64_t>(b) * p.S + q0) * ldq + h * D;
  const __nv_bfloat16* kg = p.k + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const __nv_bfloat16* vg = p.v + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const int n_tiles = (q0 + BQ - 1) / BC + 1;

  load_tile<BQ, D, NT>(sQ, p.q + qoff, ldq, tid);
  load_tile<BQ, D, NT>(sdO, p.dout + qoff, ldq, tid);
  cp_async_commit();
  load_tile<BC, D, NT>(sK, kg, ldk, tid);
  load_tile<BC, D, NT>(sV, vg, ldk, tid);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qf[kk], sQ, warp * 16, kk * 16, lane);
  const int qw0 = q0 + warp * 16;
  const int row_a = qw0 + (lane >> 2), row_b = row_a + 8;
  const int64_t lrow = static_cast<int64_t>(bh) * p.S;
  const float lse_a = p.lse[lrow + row_a] * kLog2e, lse_b = p.lse[lrow + row_b] * kLog2e;
  const float dv_a = p.dvec[lrow + row_a], dv_b = p.dvec[lrow + row_b];

  float dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      const int64_t off = static_cast<int64_t>(j + 1) * BC * ldk;
      load_tile<BC, D, NT>(sK + (buf ^ 1) * BC * D, kg + off, ldk, tid);
      load_tile<BC, D, NT>(sV + (buf ^ 1) * BC * D, vg + off, ldk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int kv0 = j * BC;
    if (kv0 <= qw0 + 15) {
      const __nv_bfloat16* k_s = sK + buf * BC * D;
      const __nv_bfloat16* v_s = sV + buf * BC * D;
      float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
      for (int i = 0; i < BC / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t oa[4];
        load_a<D>(oa, sdO, warp * 16, kk * 16, lane);
#pragma unroll
        for (int nn = 0; nn < BC / 16; ++nn) {
          uint32_t bk[4], bv[4];
          load_b_nk<D>(bk, k_s, nn * 16, kk * 16, lane);
          load_b_nk<D>(bv, v_s, nn * 16, kk * 16, lane);
          mma16816(s[2 * nn], qf[kk], bk[0], bk[1]);
          mma16816(s[2 * nn + 1], qf[kk], bk[2], bk[3]);
          mma16816(dp[2 * nn], oa, bv[0], bv[1]);
          mma16816(dp[2 * nn + 1], oa, bv[2], bv[3]);
        }
      }
      const bool diag = kv0 + BC - 1 > qw0;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) {
        const int c = kv0 + n * 8 + ((lane & 3) << 1);
        float p0 = fast_exp2(fmaf(s[n][0], p.scale_log2, -lse_a));
        float p1 = fast_exp2(fmaf(s[n][1], p.scale_log2, -lse_a));
        float p2 = fast_exp2(fmaf(s[n][2], p.scale_log2, -lse_b));
        float p3 = fast_exp2(fmaf(s[n][3], p.scale_log2, -lse_b));
        if (diag) {
          if (c > row_a) p0 = 0.f;
          if (c + 1 > row_a) p1 = 0.f;
          if (c > row_b) p2 = 0.f;
          if (c + 1 > row_b) p3 = 0.f;
        }
        dp[n][0] = p0 * (dp[n][0] - dv_a);
        dp[n][1] = p1 * (dp[n][1] - dv_a);
        dp[n][2] = p2 * (dp[n][2] - dv_b);
        dp[n][3] = p3 * (dp[n][3] - dv_b);
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t sa[4];
        sa[0] = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]);
        sa[1] = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
        sa[2] = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        sa[3] = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          uint32_t bk[4];
          load_b_kn<D>(bk, k_s, kk * 16, nd * 16, lane);
          mma16816(dq[2 * nd], sa, bk[0], bk[1]);
          mma16816(dq[2 * nd + 1], sa, bk[2], bk[3]);
        }
      }
    }
    __syncthreads();
  }

  __nv_bfloat16* dqg = p.dq + qoff + static_cast<int64_t>(warp) * 16 * ldq;
  const int r = lane >> 2;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + ((lane & 3) << 1);
    *reinterpret_cast<uint32_t*>(dqg + r * ldq + c) = pack_bf16(dq[n][0] * p.scale, dq[n][1] * p.scale);
    *reinterpret_cast<uint32_t*>(dqg + (r + 8) * ldq + c) = pack_bf16(dq[n][2] * p.scale, dq[n][3] * p.scale);
  }
}

// ---- RoPE ----------------------------------------------------------------------------------------
__global__ void rope_kernel(const __nv_bfloat16* x, __nv_bfloat16* y, int64_t n_pairs, int S, int nh, int half,
                            double theta, int enabled, double sign, int64_t pos0) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_pairs) return;
  const int i = static_cast<int>(idx % half);
  const int64_t row = idx / half;  // (b, t, h)
  const int64_t t = (row / nh) % S;
  const int64_t base = row * 2 * half;
  const float x1 = __bfloat162float(x[base + i]), x2 = __bfloat162float(x[base + i + half]);
  if (!enabled) {
    y[base + i] = __float2bfloat16_rn(x1);
    y[base + i + half] = __float2bfloat16_rn(x2);
    return;
  }
  const double f = pow(theta, -static_cast<double>(i) / static_cast<double>(half));
  double sn, cs;
  sincos(static_cast<double>(t + pos0) * f, &sn, &cs);
  const float c = static_cast<float>(cs), s = static_cast<float>(sign * sn);
  y[base + i] = __float2bfloat16_rn(x1 * c - x2 * s);
  y[base + i + half] = __float2bfloat16_rn(x2 * c + x1 * s);
}

__global__ void fill_kernel(__nv_bfloat16* p, int64_t n, uint64_t seed, float amp) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0,1)
    p[i] = __float2bfloat16_rn((2.f * u - 1.f) * amp);
  }
}

int g_fwd_cfg = 0;
int g_bwd_cfg = 0;

template <int D, int NW, int BC>
void launch_fwd(const AttnShape& s, const FwdParams& fp, cudaStream_t st) {
  constexpr int BR = 16 * NW;
  const size_t smem = static_cast<size_t>(BR * D + 4 * BC * D) * 2;
  auto kern = attn_fwd_kernel<D, NW, BC>;
  MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  dim3 grid(static_cast<unsigned>(s.S / BR), static_cast<unsigned>(s.B * s.H));
  kern<<<grid, NW * 32, smem, st>>>(fp);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

template <int D, int NWKV, int BQ, int NWQ, int BC>
void launch_bwd(const AttnShape& s, const BwdParams& bp, cudaStream_t st, int parts = 7) {
  const int64_t rows = s.B * s.S * s.H;
  if (parts & 1) {
    attn_bwd_pre_kernel<D><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, st>>>(bp, rows);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  if (parts & 2) {
    constexpr int BKV = 16 * NWKV;
    const size_t smem = static_cast<size_t>(2 * BKV * D + 4 * BQ * D) * 2 + 4 * BQ * 4;
    auto kern = attn_bwd_dkdv_kernel<D, NWKV, BQ>;
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    dim3 grid(static_cast<unsigned>(s.S / BKV), static_cast<unsigned>(s.B * s.Hk));
    kern<<<grid, NWKV * 32, smem, st>>>(bp);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  if (parts & 4) {
    constexpr int BQQ = 16 * NWQ;
    const size_t smem = static_cast<size_t>(2 * BQQ * D + 4 * BC * D) * 2;
    auto kern = attn_bwd_dq_kernel<D, NWQ, BC>;
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    dim3 grid(static_cast<unsigned>(s.S / BQQ), static_cast<unsigned>(s.B * s.H));
    kern<<<grid, NWQ * 32, smem, st>>>(bp);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
}

BwdParams make_bwd_params(const AttnShape& s, const AttnBwdArgs& a, void* workspace) {
  const float sc = effective_scale(s, a.scale);
  return BwdParams{static_cast<const __nv_bfloat16*>(a.q), static_cast<const __nv_bfloat16*>(a.k),
                   static_cast<const __nv_bfloat16*>(a.v), static_cast<const __nv_bfloat16*>(a.o),
                   static_cast<const __nv_bfloat16*>(a.dout), a.lse, static_cast<float*>(workspace),
                   static_cast<__nv_bfloat16*>(a.dq), static_cast<__nv_bfloat16*>(a.dk),
                   static_cast<__nv_bfloat16*>(a.dv), static_cast<int>(s.S), static_cast<int>(s.H),
                   static_cast<int>(s.Hk), sc, sc * kLog2e};
}

}  // namespace

void dispatch_bwd(const AttnShape& s, const BwdParams& bp, cudaStream_t st, int parts);

std::string native_unsupported_reason(const AttnShape& s) {
  if (s.B <= 0 || s.S <= 0 || s.H <= 0 || s.Hk <= 0) return "native: B,S,heads,kv_heads must be positive";
  if (s.D != 64 && s.D != 128)
    return "native: head_dim=" + std::to_string(s.D) + " not supported (supported: 64,128)";
  if (s.S % 128 != 0) return "native: S=" + std::to_string(s.S) + " not supported (S % 128 == 0 required)";
  if (s.H % s.Hk != 0)
    return "native: heads=" + std::to_string(s.H) + " not a multiple of kv_heads=" + std::to_string(s.Hk);
  if (s.S > (1 << 30)) return "native: S=" + std::to_string(s.S) + " exceeds 2^30 (32-bit row indices)";
  if (s.B * s.H > 65535)
    return "native: B*heads=" + std::to_string(s.B * s.H) + " exceeds the grid limit 65535";
  return "";
}
size_t native_fwd_workspace_bytes(const AttnShape&) { return 0; }
size_t native_bwd_workspace_bytes(const AttnShape& s) { return static_cast<size_t>(s.B * s.H * s.S) * 4; }
void native_set_fwd_config(int cfg) { g_fwd_cfg = cfg; }
void native_set_bwd_config(int cfg) { g_bwd_cfg = cfg; }

void native_fwd(const AttnShape& s, const AttnFwdArgs& a, void* stream) {
  const std::string why = native_unsupported_reason(s);
  if (!why.empty()) throw std::invalid_argument(why);
  FwdParams fp{static_cast<const __nv_bfloat16*>(a.q), static_cast<const __nv_bfloat16*>(a.k),
               static_cast<const __nv_bfloat16*>(a.v), static_cast<__nv_bfloat16*>(a.o), a.lse,
               static_cast<int>(s.S), static_cast<int>(s.H), static_cast<int>(s.Hk),
               effective_scale(s, a.scale) * kLog2e};
  auto st = static_cast<cudaStream_t>(stream);
  // Default tiles (measured on H100, docs/perf/attention.md, run 2): D=128: 8 warps x 16 rows (BR=128);
  // D=64: 4 warps (BR=64, more CTAs). cfg 1 = the other one (A/B in the bench).
  const bool wide = (s.D == 128) != (g_fwd_cfg == 1);
  if (s.D == 128) {
    if (wide) launch_fwd<128, 8, 64>(s, fp, st);
    else launch_fwd<128, 4, 64>(s, fp, st);
  } else {
    if (wide) launch_fwd<64, 8, 64>(s, fp, st);
    else launch_fwd<64, 4, 64>(s, fp, st);
  }
}

void native_bwd(const AttnShape& s, const AttnBwdArgs& a, void* workspace, size_t workspace_bytes, void* stream) {
  const std::string why = native_unsupported_reason(s);
  if (!why.empty()) throw std::invalid_argument(why);
  if (workspace_bytes < native_bwd_workspace_bytes(s) || workspace == nullptr)
    throw std::invalid_argument("native_bwd: workspace of " + std::to_string(workspace_bytes) + " bytes < needed " +
                                std::to_string(native_bwd_workspace_bytes(s)));
  const BwdParams bp = make_bwd_params(s, a, workspace);
  dispatch_bwd(s, bp, static_cast<cudaStream_t>(stream), 7);
}


void dispatch_bwd(const AttnShape& s, const BwdParams& bp, cudaStream_t st, int parts) {
  // Tile configs <D, dkdv warps, dkdv query block, dq warps, dq kv block>; 0 is the default.
  if (s.D == 128) {
    switch (g_bwd_cfg) {
      case 1: launch_bwd<128, 8, 32, 4, 64>(s, bp, st, parts); break;
      case 2: launch_bwd<128, 8, 32, 4, 32>(s, bp, st, parts); break;
      case 3: launch_bwd<128, 8, 32, 8, 64>(s, bp, st, parts); break;
      default: launch_bwd<128, 8, 64, 4, 64>(s, bp, st, parts);  // best of run 2 at 4k-16k
    }
  } else {
    switch (g_bwd_cfg) {
      case 1: launch_bwd<64, 8, 32, 4, 64>(s, bp, st, parts); break;
      case 2: launch_bwd<64, 8, 64, 4, 32>(s, bp, st, parts); break;
      case 3: launch_bwd<64, 8, 64, 8, 64>(s, bp, st, parts); break;
      default: launch_bwd<64, 8, 64, 4, 64>(s, bp, st, parts);
    }
  }
}

std::vector<std::pair<std::string, double>> native_bwd_profile(const AttnShape& s, const AttnBwdArgs& a,
                                                               void* workspace, size_t workspace_bytes, int iters) {
  native_bwd(s, a, workspace, workspace_bytes, nullptr);  // validates, fills Dv
  const BwdParams bp = make_bwd_params(s, a, workspace);
  std::vector<std::pair<std::string, double>> r;
  const char* names[3] = {"bwd_pre", "bwd_dkdv", "bwd_dq"};
  for (int i = 0; i < 3; ++i)
    r.emplace_back(names[i], time_gpu([&] { dispatch_bwd(s, bp, nullptr, 1 << i); }, 2, iters).median_ms);
  return r;
}

std::string native_kernel_report(int64_t D) {
  nlohmann::json j = nlohmann::json::array();
  if (D == 128) {
    j.push_back(to_json(kernel_resources("attn_fwd<128,8,64>", (const void*)attn_fwd_kernel<128, 8, 64>, 256,
                                         (128 * 128 + 4 * 64 * 128) * 2)));
    j.push_back(to_json(kernel_resources("attn_fwd<128,4,64>", (const void*)attn_fwd_kernel<128, 4, 64>, 128,
                                         (64 * 128 + 4 * 64 * 128) * 2)));
    j.push_back(to_json(kernel_resources("attn_bwd_dkdv<128,8,64>", (const void*)attn_bwd_dkdv_kernel<128, 8, 64>,
                                         256, (2 * 128 * 128 + 4 * 64 * 128) * 2 + 4 * 64 * 4)));
    j.push_back(to_json(kernel_resources("attn_bwd_dq<128,4,64>", (const void*)attn_bwd_dq_kernel<128, 4, 64>, 128,
                                         (2 * 64 * 128 + 4 * 64 * 128) * 2)));
  } else {
    j.push_back(to_json(kernel_resources("attn_fwd<64,8,64>", (const void*)attn_fwd_kernel<64, 8, 64>, 256,
                                         (128 * 64 + 4 * 64 * 64) * 2)));
    j.push_back(to_json(kernel_resources("attn_fwd<64,4,64>", (const void*)attn_fwd_kernel<64, 4, 64>, 128,
                                         (64 * 64 + 4 * 64 * 64) * 2)));
    j.push_back(to_json(kernel_resources("attn_bwd_dkdv<64,8,64>", (const void*)attn_bwd_dkdv_kernel<64, 8, 64>,
                                         256, (2 * 128 * 64 + 4 * 64 * 64) * 2 + 4 * 64 * 4)));
    j.push_back(to_json(kernel_resources("attn_bwd_dq<64,4,64>", (const void*)attn_bwd_dq_kernel<64, 4, 64>, 128,
                                         (2 * 64 * 64 + 4 * 64 * 64) * 2)));
  }
  return j.dump();
}

void rope_bf16(const void* x, void* y, int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled,
               bool inverse, int64_t pos0, void* stream) {
  if (D % 2 != 0) throw std::invalid_argument("rope: head_dim=" + std::to_string(D) + " must be even");
  if (enabled && !(theta > 0)) throw std::invalid_argument("rope: theta must be > 0");
  const int64_t n_pairs = B * S * nh * (D / 2);
  if (n_pairs == 0) return;
  rope_kernel<<<static_cast<unsigned>((n_pairs + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), n_pairs, static_cast<int>(S),
      static_cast<int>(nh), static_cast<int>(D / 2), theta, enabled ? 1 : 0, inverse ? -1.0 : 1.0, pos0);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void fill_uniform_bf16(void* p, int64_t n, uint64_t seed, float amp, void* stream) {
  if (n <= 0) return;
  fill_kernel<<<1024, 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<__nv_bfloat16*>(p), n, seed, amp);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

}  // namespace megacpp::attn
