// mimo_common.cuh — shared device code of the Mamba-3 MIMO kernels: shared-memory layouts, the warp-level
// bf16 tensor-core tile product (ldmatrix + mma.sync m16n8k16, fp32 accumulate), and the per-chunk loaders
// (decay cumsums, trapezoid weights, rotated q̄/k̄, PsiV). Included by mimo_fwd.cu, mimo_bwd_fwd.cu, mimo_bwd_bwd.cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/mimo/mimo_launch.hpp"

namespace megacpp::mimo::dev {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;  // mimo_fwd / mimo_bwd_fwd
constexpr int kWarps = kThreads / 32;
// mimo_bwd_bwd runs 512 threads (16 warps) at 1 CTA/SM (≤ 128 regs) when N·P ≤ 8192: twice the warps per SM of
// the 256-thread version to hide its latency (N·P = 16384 keeps 256 threads: 512 would spill). Its reduction scratch (red, kBwdThreads floats) fits the 2·kThreads floats reserved
// in the `sc` region of bwd_layout.
constexpr int kBwdThreads = 512;
constexpr int kBwdWarps = kBwdThreads / 32;
static_assert(kBwdThreads <= 2 * kThreads, "bwd_layout sc region holds 2*kThreads floats of scratch");
constexpr int kMaxStateTiles = 8;  // per warp: 8 warps × 8 tiles × 16×16 = N·P ≤ 16384 (template NT ≤ this)
constexpr int kMaxLc = 64;
constexpr std::size_t kSmemLimit = 232448;  // 227 KB opt-in dynamic shared memory per block on sm_90

__host__ __device__ inline std::size_t align16(std::size_t x) { return (x + 15) & ~std::size_t(15); }

// ---- shared-memory layouts (byte offsets), identical on host and device -----------------------------
struct FwdLayout {
  std::size_t psi, phi, zeta, qb, kb, sc, qbar, kbar, v, vd, pm, sb, ys, w, total;
};
__host__ __device__ inline FwdLayout fwd_layout(int N, int P, int R, int Mp, int Lc) {
  FwdLayout L{};
  std::size_t o = 0;
  auto take = [&](std::size_t bytes) { std::size_t r = o; o = align16(o + bytes); return r; };
  L.psi = take(4u * R * P);
  L.phi = take(4u * R * P);
  L.zeta = take(4u * R * P);
  L.qb = take(4u * R * N);
  L.kb = take(4u * R * N);
  // sc: 16 scalar slots, then scratch: 2·kThreads floats, or the 512-thread mimo_bwd_fwd's dΦ/dΖ running sums
  // (2·R·P floats, v10) where that is more (R·P > 256 only)
  L.sc = take(4u * 16 * kMaxLc + 4u * (2 * R * P > 2 * kThreads ? 2 * R * P : 2 * kThreads));
  L.qbar = take(2u * Mp * (N + 8));
  L.kbar = take(2u * Mp * (N + 8));
  L.v = take(2u * Mp * (P + 8));
  L.vd = take(2u * Mp * (P + 8));
  L.pm = take(2u * Mp * (Mp + 8));
  L.sb = take(2u * N * (P + 8));
  L.ys = take(4u * Mp * (P + 4));
  L.w = take(4u * Lc * Lc);
  L.total = o;
  return L;
}

struct BwdLayout {
  std::size_t sc, qbar, kbar, v, g, gd, scb, dsb, pm, gm, z, zs, dqf, dkf, dvf, rowa, rowx,
      x, total;
};
__host__ __device__ inline BwdLayout bwd_layout(int N, int P, int R, int Mp, int Lc) {
  BwdLayout L{};
  std::size_t o = 0;
  auto take = [&](std::size_t bytes) { std::size_t r = o; o = align16(o + bytes); return r; };
  // per-head parameters are read from global memory (L1) here: shared memory is the limit at M=64
  L.sc = take(4u * 16 * kMaxLc + 4u * 2 * kThreads);
  L.qbar = take(2u * Mp * (N + 8));
  L.kbar = take(2u * Mp * (N + 8));
  L.v = take(2u * Mp * (P + 8));
  L.g = take(2u * Mp * (P + 8));
  L.gd = take(2u * Mp * (P + 8));
  L.scb = take(2u * N * (P + 8));
  L.dsb = take(2u * N * (P + 8));
  L.pm = take(2u * Mp * (Mp + 8));
  L.gm = take(2u * Mp * (Mp + 8));
  L.z = take(4u * Mp * (Mp + 1));
  L.zs = take(4u * Lc * (Lc + 1));
  L.dqf = take(4u * Mp * (N + 4));
  L.dkf = take(4u * Mp * (N + 4));
  L.dvf = take(4u * Mp * (P + 4));
  L.rowa = take(4u * Mp * (N / 16));
  L.rowx = take(4u * Mp * (P / 16));
  L.x = take(2u * Lc * P);
  L.total = o;
  return L;
}

// Scalar arrays inside the `sc` region (fp32, kMaxLc each).
enum ScalarSlot { kA = 0, kEA, kEAB, kGam, kFac, kSig, kDt, kDA, kXs, kDAb, kDfac, kWork, kWork2 };

// fwd_layout()'s offsets as 32-bit kernel parameters (v10): mimo_fwd / mimo_bwd_fwd read them from the constant bank
// where they use them instead of computing the layout into registers that live across the chunk loop (the 512-thread
// instances spilled them at their 64-register cap: mimo_fwd 8 B, mimo_bwd_fwd part of its 192 B).
struct FwdOffsets {
  unsigned int psi, phi, zeta, qb, kb, sc, qbar, kbar, v, vd, pm, sb, ys, w;
};
inline FwdOffsets fwd_offsets(const FwdLayout& L) {
  auto u = [](std::size_t x) { return static_cast<unsigned int>(x); };
  return {u(L.psi), u(L.phi), u(L.zeta), u(L.qb), u(L.kb), u(L.sc), u(L.qbar), u(L.kbar), u(L.v), u(L.vd), u(L.pm),
          u(L.sb), u(L.ys), u(L.w)};
}

// Kernel parameters passed by value.
struct KParams {
  MimoDims d;
  int lR, lN4;    // log2(R), log2(N/4)
  FwdOffsets fo;  // fwd_offsets(fwd_layout(d.N, d.P, d.R, d.Mp, d.Lc)), set by make_params
  MimoFwdArgs in;
  const bf16_bits* dout;
  // bwd_fwd outputs
  bf16_bits* states;   // (B,H,nc,N,P) bf16: state entering each chunk
  bf16_bits* dz;       // (B,S,H,P)
  float *p_dphi, *p_dzeta;  // (B,H,R,P) partials
  // bwd_bwd outputs
  bf16_bits *dq_h, *dk_h;  // (B,S,R,H,N) per value head
  bf16_bits* dv;
  float *dadt, *dfac, *dgam;  // (B,H,S)
  float* dangles;             // (B,S,H,N_ang)
  float *p_dpsi, *p_dqb, *p_dkb, *p_dd;  // (B,H,R,P), (B,H,R,N) ×2, (B,H)
};

// ---- PTX wrappers ---------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One warp: acc(16×16 tile at m0,n0) += A·B over K (multiple of 16), operands bf16 in shared memory.
//  AT=false: A stored [m][k] (row stride lda);  AT=true: A stored [k][m].
//  BT=false: B stored [n][k] (i.e. Bᵀ row-major); BT=true: B stored [k][n].
// Fragment layout of acc[nt][e]: row m0 + lane/4 + 8·(e≥2), col n0 + 8·nt + 2·(lane%4) + (e&1).
template <bool AT, bool BT, int UNR = 2>
__device__ __forceinline__ void mma_tile(float (&acc)[2][4], const bf16* A, int lda, const bf16* B, int ldb, int m0,
                                         int n0, int K) {
  const int lane = threadIdx.x & 31, li = lane >> 3, lr = lane & 7;
  const bf16* ap = AT ? A + (lr + ((li >> 1) << 3)) * lda + m0 + ((li & 1) << 3)
                      : A + (m0 + lr + ((li & 1) << 3)) * lda + ((li >> 1) << 3);
  const bf16* bp = BT ? B + (lr + ((li & 1) << 3)) * ldb + n0 + ((li >> 1) << 3)
                      : B + (n0 + lr + ((li >> 1) << 3)) * ldb + ((li & 1) << 3);
  uint32_t aa = smem_u32(ap), ba = smem_u32(bp);
  const uint32_t as = AT ? 32u * lda : 32u, bs = BT ? 32u * ldb : 32u;
#pragma unroll UNR
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t a[4], b[4];
    if constexpr (AT) ldsm_x4_t(a, aa); else ldsm_x4(a, aa);
    if constexpr (BT) ldsm_x4_t(b, ba); else ldsm_x4(b, ba);
    mma16816(acc[0], a, b[0], b[1]);
    mma16816(acc[1], a, b[2], b[3]);
    aa += as;
    ba += bs;
  }
}

__device__ __forceinline__ void zero_acc(float (&acc)[2][4]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }
// sin/cos of a cumulative angle: reduce mod 2π in fp32 (two-part constant), then the fast intrinsic on [−π, π]
// (abs error ~4e-7; the reduction error is below the fp32 ulp of the input angle itself).
__device__ __forceinline__ void fast_sincos(float x, float* s, float* c) {
  const float k = rintf(x * 0.159154943091895336f);
  float r = fmaf(-k, 6.28318548202514648f, x);
  r = fmaf(-k, -1.74845553e-7f, r);
  __sincosf(r, s, c);
}
__device__ __forceinline__ float2 ldg_bf16x2(const bf16_bits* p) {
  const uint32_t u = __ldg(reinterpret_cast<const unsigned int*>(p));
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ float bf2f(bf16_bits b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ __forceinline__ float2 ld_bf16x2(const bf16_bits* p) {
  const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ void st_bf16x2(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void st_bf16x2g(bf16_bits* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// Load per-head parameters into shared memory: Ψ as [R][psi_ld], Φ and Ζ as [R][P], the q/k biases as [R][bias_ld]
// (row strides: the wgmma chunk loop pads Ψ and the biases, see mimo_chunk_sm90.cuh).
template <int NTH = kThreads>
__device__ inline void load_params(const KParams& kp, int h, float* psi, float* phi, float* zeta, float* qb,
                                   float* kb, int psi_ld = 0, int bias_ld = 0) {
  const int R = kp.d.R, P = kp.d.P, N = kp.d.N;
  if (psi_ld == 0) psi_ld = P;
  if (bias_ld == 0) bias_ld = N;
  for (int i = threadIdx.x; i < R * P; i += NTH) {
    psi[(i / P) * psi_ld + i % P] = kp.in.psi[h * R * P + i];
    phi[i] = kp.in.phi[h * R * P + i];
    zeta[i] = kp.in.zeta[h * R * P + i];
  }
  for (int i = threadIdx.x; i < R * N; i += NTH) {
    qb[(i / N) * bias_ld + i % N] = kp.in.q_bias[h * R * N + i];
    kb[(i / N) * bias_ld + i % N] = kp.in.k_bias[h * R * N + i];
  }
}

// Warp 0 only: the chunk's step scalars (fp32). a = inclusive cumsum of ADT, ā = exclusive reverse cumsum
// (= a_last − a, clamped ≤ 0), γ = Δσ(trap), factor = γ + Δ_{t+1}σ(−trap_{t+1}) (0 past S−1).
// Returns a_last in every lane.
// SPL: steps per lane (step s = SPL·lane + u): 2 covers Lc ≤ 64; 1 (Lc ≤ 16, chunk_scalars_staged_lane) halves the
// serial chain of warp 0, which the other warps wait for at the chunk's first barrier.
template <int SPL = 2>
__device__ __forceinline__ float chunk_scalars_finish(const float (&x)[SPL], const float (&gam)[SPL],
                                                      const float (&fac)[SPL], const float (&sg)[SPL],
                                                      const float (&dtv)[SPL], int Lc, float* sc);
__device__ inline float chunk_scalars(const KParams& kp, int b, int h, int t0, float* sc) {
  const int lane = threadIdx.x & 31, Lc = kp.d.Lc, S = kp.d.S;
  const size_t base = (static_cast<size_t>(b) * kp.d.H + h) * S;
  float x[2], gam[2], fac[2], sg[2], dtv[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int s = 2 * lane + u;
    x[u] = 0.f, gam[u] = 0.f, fac[u] = 0.f, sg[u] = 0.f, dtv[u] = 0.f;
    if (s < Lc) {
      const int t = t0 + s;
      x[u] = __ldg(kp.in.adt + base + t);
      dtv[u] = __ldg(kp.in.dt + base + t);
      sg[u] = sigmoidf_(bf2f(__ldg(reinterpret_cast<const unsigned short*>(kp.in.trap) + base + t)));
      gam[u] = dtv[u] * sg[u];
      float gt = 0.f;
      if (t + 1 < S)
        gt = __ldg(kp.in.dt + base + t + 1) *
             sigmoidf_(-bf2f(__ldg(reinterpret_cast<const unsigned short*>(kp.in.trap) + base + t + 1)));
      fac[u] = gam[u] + gt;
    }
  }
  return chunk_scalars_finish(x, gam, fac, sg, dtv, Lc, sc);
}
template <int SPL>
__device__ __forceinline__ float chunk_scalars_finish(const float (&x)[SPL], const float (&gam)[SPL],
                                                      const float (&fac)[SPL], const float (&sg)[SPL],
                                                      const float (&dtv)[SPL], int Lc, float* sc) {
  static_assert(SPL == 1 || SPL == 2, "chunk_scalars_finish: 1 or 2 steps per lane");
  const int lane = threadIdx.x & 31;
  const float p1 = SPL == 2 ? x[0] + x[SPL - 1] : x[0];
  float incl = p1;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  const float excl = incl - p1;
  const float total = __shfl_sync(0xffffffffu, incl, 31);
  float a[SPL];
  a[0] = fminf(excl + x[0], 0.f);
  if constexpr (SPL == 2) a[SPL - 1] = fminf(excl + p1, 0.f);
#pragma unroll
  for (int u = 0; u < SPL; ++u) {
    const int s = SPL * lane + u;
    if (s < kMaxLc) {
      const bool ok = s < Lc;
      sc[kA * kMaxLc + s] = ok ? a[u] : 0.f;
      sc[kEA * kMaxLc + s] = ok ? __expf(a[u]) : 0.f;
      sc[kEAB * kMaxLc + s] = ok ? __expf(fminf(total - a[u], 0.f)) : 0.f;
      sc[kGam * kMaxLc + s] = gam[u];
      sc[kFac * kMaxLc + s] = fac[u];
      sc[kSig * kMaxLc + s] = sg[u];
      sc[kDt * kMaxLc + s] = dtv[u];
    }
  }
  return fminf(total, 0.f);
}

// The step-level mask weight of steps (si, sj) of the chunk (after chunk_scalars):
// factor_sj·e^{a_si − a_sj} (si > sj), γ_si (si = sj), 0 (si < sj).
__device__ __forceinline__ float step_weight(const float* sc, int si, int sj) {
  if (si > sj) return sc[kFac * kMaxLc + sj] * __expf(sc[kA * kMaxLc + si] - sc[kA * kMaxLc + sj]);
  return si == sj ? sc[kGam * kMaxLc + si] : 0.f;
}
// One warp (after chunk_scalars + __syncwarp): the chunk's table W[si·Lc + sj] = step_weight(si, sj).
__device__ inline void step_weights(const float* sc, float* W, int Lc) {
  const int lane = threadIdx.x & 31, lLc = __ffs(Lc) - 1;
  for (int e = lane; e < Lc * Lc; e += 32) W[e] = step_weight(sc, e >> lLc, e & (Lc - 1));
}

// All threads: rotated, biased q̄ and k̄ of the chunk into Qb/Kb ([Mp][N+8] bf16). Half-split rotation pairs
// (j, j+N/2), j < N_ang, angle θ[b,t,h,j] (fp32, cumulative).
// v6: one item per (step s, group of CW columns j..j+CW−1 and their partners j+N/2..), all R rank rows inside.
//   Pass 1 copies the raw bf16 q/k of all the thread's items and ranks straight into Qb/Kb with cp.async (no
//   registers, every load in flight at once: one L2 round trip per chunk for any R; v4 needed one per item per
//   4 ranks and held 16 registers of loads). Pass 2 reads them back in place (each thread only touches the
//   elements it copied itself, so cp.async.wait_all is enough: no barrier), adds the bias, rotates (sin/cos once
//   per step and column) and writes bf16 back. CW = 4 (8-byte copies, Lc·N/8 items) in mimo_fwd / mimo_bwd_fwd
//   when that still gives each of the 256 threads an item (N=128 at Lc=16), else CW = 2 (4-byte copies, Lc·N/4
//   items; also mimo_bwd_bwd's 512 threads). Needs N_ang % CW == 0 and (N/2) % CW == 0 (true for every supported
//   N and rope fraction) and q/k base pointers aligned to 8 bytes (cudaMalloc / the 256-byte arena).
//   Measured (v6, H100, bar shape): mimo_fwd −4.3 %, mimo_bwd_fwd −4.7 % vs v5 (docs/perf/mimo.md).
__device__ __forceinline__ void cp_async_8(void* sdst, const void* gsrc) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_u32(sdst)), "l"(gsrc));
}
__device__ __forceinline__ void cp_async_4(void* sdst, const void* gsrc) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(sdst)), "l"(gsrc));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// v8: the chunk's raw step scalars are staged in shared memory one chunk ahead with cp.async (warp 0), so that
// at the top of the chunk warp 0 computes the scalars and the step weights from shared memory while the q̄/k̄
// copies are in flight, instead of three dependent global round trips that the other warps waited for at the first
// barrier (ncu v7: 18 % of mimo_fwd's warp samples, 7 % of mimo_bwd_bwd's, were that barrier).
// Staging area: the free scalar slots 13..15 of the `sc` region (3·kMaxLc floats):
//   [0, kMaxLc) adt[t0 + s] · [kMaxLc, 2·kMaxLc + 1) dt[t0 + s], s ≤ Lc · then trap as bf16 pairs (words), s ≤ Lc + 1.
constexpr int kStageSlot = 13;
static_assert(kStageSlot > kWork2 && 3 * kMaxLc >= 2 * kMaxLc + 1 + kMaxLc / 2 + 1, "staging fits slots 13..15");
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N_>
__device__ __forceinline__ void cp_async_wait_group() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N_) : "memory"); }
// Warp 0 only: issue the copies of chunk t0's raw scalars into the staging area and commit them as one group.
__device__ inline void stage_scalars_issue(const KParams& kp, int b, int h, int t0, float* sc) {
  const int lane = threadIdx.x & 31, Lc = kp.d.Lc, S = kp.d.S;
  const size_t base = (static_cast<size_t>(b) * kp.d.H + h) * S + t0;  // even (S, t0 multiples of Lc ≥ 2)
  float* st = sc + kStageSlot * kMaxLc;
  for (int s = lane; s < Lc; s += 32) cp_async_4(st + s, kp.in.adt + base + s);
  for (int s = lane; s <= Lc; s += 32)
    if (t0 + s < S) cp_async_4(st + kMaxLc + s, kp.in.dt + base + s);
  uint32_t* tw = reinterpret_cast<uint32_t*>(st + 2 * kMaxLc + 1);
  const bf16_bits* tp = kp.in.trap + base;
  const bool al4 = (reinterpret_cast<uintptr_t>(tp) & 3u) == 0;
  for (int w = lane; w <= Lc / 2; w += 32)
    if (t0 + 2 * w < S) {  // elements t0+2w, t0+2w+1 (both < S: S even)
      if (al4)
        cp_async_4(tw + w, tp + 2 * w);
      else
        tw[w] = static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(tp) + 2 * w)) |
                (static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(tp) + 2 * w + 1)) << 16);
    }
  cp_async_commit();
}
// Warp 0 only, after the staging group completed (cp_async_wait_group + __syncwarp): chunk_scalars from the
// staging area (same arithmetic, same outputs, bit-identical).
__device__ inline float chunk_scalars_staged(int Lc, int S, int t0, float* sc) {
  const int lane = threadIdx.x & 31;
  const float* st = sc + kStageSlot * kMaxLc;
  const unsigned short* tr = reinterpret_cast<const unsigned short*>(st + 2 * kMaxLc + 1);
  float x[2], gam[2], fac[2], sg[2], dtv[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int s = 2 * lane + u;
    x[u] = 0.f, gam[u] = 0.f, fac[u] = 0.f, sg[u] = 0.f, dtv[u] = 0.f;
    if (s < Lc) {
      const int t = t0 + s;
      x[u] = st[s];
      dtv[u] = st[kMaxLc + s];
      sg[u] = sigmoidf_(bf2f(tr[s]));
      gam[u] = dtv[u] * sg[u];
      float gt = 0.f;
      if (t + 1 < S) gt = st[kMaxLc + s + 1] * sigmoidf_(-bf2f(tr[s + 1]));
      fac[u] = gam[u] + gt;
    }
  }
  return chunk_scalars_finish(x, gam, fac, sg, dtv, Lc, sc);
}
// chunk_scalars_staged for Lc ≤ 16 (R ≥ 4 at M = 64): step s = lane. Lane s (s ≤ Lc) also forms Δ_s·σ(−trap_s), the
// next-step term of lane s − 1, which takes it by a shuffle: the same two sigmoids and products per step as above,
// evaluated side by side in different lanes instead of one after another in one lane. The cumsum is a one-term-per-
// lane scan, so a, ā differ from chunk_scalars_staged's by fp32 summation order only.
__device__ inline float chunk_scalars_staged_lane(int Lc, int S, int t0, float* sc) {
  const int lane = threadIdx.x & 31, s = lane, t = t0 + s;
  const float* st = sc + kStageSlot * kMaxLc;
  const unsigned short* tr = reinterpret_cast<const unsigned short*>(st + 2 * kMaxLc + 1);
  float x[1] = {0.f}, gam[1] = {0.f}, fac[1] = {0.f}, sg[1] = {0.f}, dtv[1] = {0.f}, next = 0.f;
  if (s <= Lc && t < S) {
    const float dts = st[kMaxLc + s], trs = bf2f(tr[s]);
    next = dts * sigmoidf_(-trs);
    if (s < Lc) x[0] = st[s], dtv[0] = dts, sg[0] = sigmoidf_(trs), gam[0] = dts * sg[0];
  }
  const float gt = __shfl_down_sync(0xffffffffu, next, 1);  // 0 past S − 1 (that lane's `next` stayed 0)
  if (s < Lc) fac[0] = gam[0] + gt;
  return chunk_scalars_finish<1>(x, gam, fac, sg, dtv, Lc, sc);
}
// Warp 0, chunk length LC known at compile time (the wgmma kernels): one step per lane where it fits (LC ≤ 16), else
// two; a_last goes to sc[kWork] (lane 0) as well as being returned.
template <int LC>
__device__ inline float chunk_scalars_staged_for(int S, int t0, float* sc) {
  const float al = LC <= 16 ? chunk_scalars_staged_lane(LC, S, t0, sc) : chunk_scalars_staged(LC, S, t0, sc);
  if ((threadIdx.x & 31) == 0) sc[kWork * kMaxLc] = al;
  return al;
}


template <int CW>
struct QkVec;  // CW bf16 values: raw bits, fp32 unpack, bf16 pack
template <>
struct QkVec<4> {
  static __device__ __forceinline__ void load(const bf16* p, float (&x)[4]) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    x[0] = __uint_as_float(u.x << 16), x[1] = __uint_as_float(u.x & 0xffff0000u);
    x[2] = __uint_as_float(u.y << 16), x[3] = __uint_as_float(u.y & 0xffff0000u);
  }
  static __device__ __forceinline__ void store(bf16* p, const float (&x)[4]) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(x[0], x[1]), hi = __floats2bfloat162_rn(x[2], x[3]);
    uint2 w;
    w.x = *reinterpret_cast<const uint32_t*>(&lo);
    w.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = w;
  }
  static __device__ __forceinline__ void bias(const float* p, float (&x)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    x[0] += v.x, x[1] += v.y, x[2] += v.z, x[3] += v.w;
  }
  static __device__ __forceinline__ void copy(bf16* sdst, const bf16_bits* gsrc) { cp_async_8(sdst, gsrc); }
  static __device__ __forceinline__ void angles(const float* p, float (&th)[4]) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    th[0] = v.x, th[1] = v.y, th[2] = v.z, th[3] = v.w;
  }
};
template <>
struct QkVec<2> {
  static __device__ __forceinline__ void load(const bf16* p, float (&x)[2]) {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    x[0] = __uint_as_float(u << 16), x[1] = __uint_as_float(u & 0xffff0000u);
  }
  static __device__ __forceinline__ void store(bf16* p, const float (&x)[2]) { st_bf16x2(p, x[0], x[1]); }
  static __device__ __forceinline__ void bias(const float* p, float (&x)[2]) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    x[0] += v.x, x[1] += v.y;
  }
  static __device__ __forceinline__ void copy(bf16* sdst, const bf16_bits* gsrc) { cp_async_4(sdst, gsrc); }
  static __device__ __forceinline__ void angles(const float* p, float (&th)[2]) {
    const float2 v = __ldg(reinterpret_cast<const float2*>(p));
    th[0] = v.x, th[1] = v.y;
  }
};

struct NoBetween {
  __device__ void operator()() const {}
};
// v8: `between()` runs after pass 1's copies are issued (and committed as one cp.async group) and before they are
// waited for: the kernels pass warp 0's staged chunk-scalar work there, so it overlaps the q̄/k̄ round trip.
template <int NTH = kThreads, int CW = 2, class F = NoBetween>
__device__ inline void load_qk_rot(const KParams& kp, int b, int h, int t0, const float* qbias, const float* kbias,
                                   bf16* Qb, bf16* Kb, F between = F{}) {
  static_assert(CW == 2 || CW == 4, "load_qk_rot: CW must be 2 or 4");
  using Vec = QkVec<CW>;
  const MimoDims& d = kp.d;
  const int N = d.N, half = N / 2, ldq = N + 8, R = d.R, G = d.G;
  const int g = h / (d.H / G);
  const int lcols = CW == 4 ? kp.lN4 - 1 : kp.lN4;  // log2(items per step): N/8 or N/4
  const int items = d.Lc << lcols;
  const int lR = kp.lR;
  // pass 1: raw q/k → Qb/Kb (cp.async), and the first item's angles into registers
  float th0[CW];
#pragma unroll
  for (int c = 0; c < CW; ++c) th0[c] = 0.f;
#pragma unroll 1
  for (int it = threadIdx.x; it < items; it += NTH) {
    const int s = it >> lcols, j = (it & ((1 << lcols) - 1)) * CW, t = t0 + s;
    const size_t row0 = (static_cast<size_t>(b) * d.S + t) * R * G + g;
    for (int r = 0; r < R; ++r) {
      const int i = (s << lR) + r;
      const size_t row = (row0 + static_cast<size_t>(r) * G) * N + j;
      Vec::copy(Qb + i * ldq + j, kp.in.q + row);
      Vec::copy(Qb + i * ldq + j + half, kp.in.q + row + half);
      Vec::copy(Kb + i * ldq + j, kp.in.k + row);
      Vec::copy(Kb + i * ldq + j + half, kp.in.k + row + half);
    }
    if (it == static_cast<int>(threadIdx.x) && j < d.n_ang)
      Vec::angles(kp.in.angles + ((static_cast<size_t>(b) * d.S + t) * d.H + h) * d.n_ang + j, th0);
  }
  cp_async_commit();
  between();
  cp_async_wait_all();
  // pass 2: bias + rotation in place
#pragma unroll 1
  for (int it = threadIdx.x; it < items; it += NTH) {
    const int s = it >> lcols, j = (it & ((1 << lcols) - 1)) * CW, t = t0 + s;
    const bool rot = j < d.n_ang;
    float sn[CW], cs[CW];
#pragma unroll
    for (int c = 0; c < CW; ++c) sn[c] = 0.f, cs[c] = 1.f;
    if (rot) {
      float th[CW];
      if (it == static_cast<int>(threadIdx.x)) {
#pragma unroll
        for (int c = 0; c < CW; ++c) th[c] = th0[c];
      } else {
        Vec::angles(kp.in.angles + ((static_cast<size_t>(b) * d.S + t) * d.H + h) * d.n_ang + j, th);
      }
#pragma unroll
      for (int c = 0; c < CW; ++c) fast_sincos(th[c], &sn[c], &cs[c]);
    }
#pragma unroll 1
    for (int r = 0; r < R; ++r) {
      const int i = (s << lR) + r;
#pragma unroll
      for (int which = 0; which < 2; ++which) {  // q̄ then k̄
        bf16* X = which ? Kb : Qb;
        const float* bias = (which ? kbias : qbias) + r * N;
        float x1[CW], x2[CW];
        Vec::load(X + i * ldq + j, x1);
        Vec::load(X + i * ldq + j + half, x2);
        Vec::bias(bias + j, x1);
        Vec::bias(bias + j + half, x2);
        if (rot) {
#pragma unroll
          for (int c = 0; c < CW; ++c) {
            const float a = cs[c] * x1[c] - sn[c] * x2[c], bb = sn[c] * x1[c] + cs[c] * x2[c];
            x1[c] = a, x2[c] = bb;
          }
        }
        Vec::store(X + i * ldq + j, x1);
        Vec::store(X + i * ldq + j + half, x2);
      }
    }
  }
}

// v4: L2 prefetch of one chunk's per-head inputs (the next chunk in loop order), issued one chunk ahead so the
// DRAM round trips of the loaders overlap the current chunk's math. No semantic effect (prefetch only).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
template <int NTH>
__device__ inline void prefetch_chunk(const KParams& kp, int b, int h, int t0, bool with_dout, bool with_v,
                                      bool with_states, int c) {
  const MimoDims& d = kp.d;
  const int tid = threadIdx.x, Lc = d.Lc;
  // per-step rows: v, z, dout (P bf16 each), angles (n_ang fp32): 128-byte lines
  const int lv = (d.P * 2 + 127) >> 7, la = (d.n_ang * 4 + 127) >> 7;
  const int per = 2 * lv + la + (with_dout ? lv : 0);
  for (int it = tid; it < Lc * per; it += NTH) {
    const int s = it / per, k = it - s * per, t = t0 + s;
    const size_t gi = ((static_cast<size_t>(b) * d.S + t) * d.H + h);
    if (k < lv) {
      if (with_v) prefetch_l2(kp.in.v + gi * d.P + k * 64);
    } else if (k < 2 * lv) {
      prefetch_l2(kp.in.z + gi * d.P + (k - lv) * 64);
    } else if (k < 2 * lv + la) {
      prefetch_l2(kp.in.angles + gi * d.n_ang + (k - 2 * lv) * 32);
    } else {
      prefetch_l2(kp.dout + gi * d.P + (k - 2 * lv - la) * 64);
    }
  }
  if (tid < 3) {
    const size_t base = (static_cast<size_t>(b) * d.H + h) * d.S + t0;
    if (tid == 0) prefetch_l2(kp.in.adt + base);
    if (tid == 1) prefetch_l2(kp.in.dt + base);
    if (tid == 2) prefetch_l2(kp.in.trap + base);
  }
  if (with_states) {
    const char* src = reinterpret_cast<const char*>(kp.states + ((static_cast<size_t>(b) * d.H + h) * d.nc + c) *
                                                                    static_cast<size_t>(d.N) * d.P);
    for (int it = tid; it < (d.N * d.P * 2) >> 7; it += NTH) prefetch_l2(src + (static_cast<size_t>(it) << 7));
  }
}

// All threads: V = x·Ψ (bf16, [Mp][P+8]) from x or from the PsiV cache.
template <int NTH = kThreads>
__device__ inline void load_v(const KParams& kp, int b, int h, int t0, const float* psi, bf16* V, bool from_cache) {
  const MimoDims& d = kp.d;
  const int P = d.P, ldv = P + 8, R = d.R;
  const int lP = __ffs(P) - 1;
  if (from_cache) {
    const bf16_bits* src = kp.in.psiv_cache + ((static_cast<size_t>(b) * d.H + h) * d.S + t0) * R * P;
    const int vecs = d.M * P / 8;  // 16-byte vectors
#pragma unroll 4
    for (int it = threadIdx.x; it < vecs; it += NTH) {
      const int i = ((it * 8) >> lP), p = ((it * 8) & (P - 1));
      *reinterpret_cast<uint4*>(V + i * ldv + p) = __ldg(reinterpret_cast<const uint4*>(src + i * P + p));
    }
    return;
  }
  const int items = d.Lc * P / 2;
#pragma unroll 4
  for (int it = threadIdx.x; it < items; it += NTH) {
    const int s = ((it * 2) >> lP), p = ((it * 2) & (P - 1)), t = t0 + s;
    const float2 x = ldg_bf16x2(kp.in.v + ((static_cast<size_t>(b) * d.S + t) * d.H + h) * P + p);
    for (int r = 0; r < R; ++r) st_bf16x2(V + (s * R + r) * ldv + p, x.x * psi[r * P + p], x.y * psi[r * P + p + 1]);
  }
}

// Zero rows [M, Mp) of a bf16 [Mp][ld] buffer (padding rows, only when M < 16).
template <int NTH = kThreads>
__device__ inline void zero_pad_rows(bf16* X, int ld, int M, int Mp) {
  for (int it = threadIdx.x; it < (Mp - M) * ld; it += NTH) X[M * ld + it] = __float2bfloat16(0.f);
}

}  // namespace megacpp::mimo::dev

namespace megacpp::mimo::dev {
// Host-side entry points of the kernel files.
const void* fwd_kernel_ptr(const MimoDims& d);
int fwd_threads(const MimoDims& d);      // mimo_fwd: 512 when N·P ≤ 8192, else 256 (v7)
int bwd_fwd_threads(const MimoDims& d);  // mimo_bwd_fwd: 512 when N·P ≤ 8192 and R ≤ 4, else 256 (v7)
const void* bwd_fwd_kernel_ptr(const MimoDims& d);
const void* bwd_bwd_kernel_ptr(const MimoDims& d);
int bwd_bwd_threads(const MimoDims& d);  // 512 when N·P ≤ 8192, else 256
void launch_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st);
void launch_bwd_fwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st);
void launch_bwd_bwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st);
// The Hopper wgmma chunk loop (mimo_chunk_sm90.cu) for mimo_fwd (bwd=false) and mimo_bwd_fwd (bwd=true):
// Two warpgroups per (h, b); sm90_refusal() returns why it is not taken ("" = taken); by dims (what mimo_kernel_infos reports) or for a launch
// (also the pointers' alignment).
constexpr int kSm90Threads = 256;
// MEGACPP_MIMO_SM90=0: both Hopper paths refuse (A/B timing against the mma.sync kernels); read once.
bool sm90_forced_off();
// The conditions both Hopper paths share: the shape ("" = supported) and, for a launch, 16-byte aligned inputs.
std::string sm90_shape_refusal(const MimoDims& d);
std::string sm90_inputs_refusal(const KParams& kp, bool with_dout);
inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
std::string sm90_refusal(const MimoDims& d, bool bwd, bool psiv_read);
std::string sm90_refusal(const KParams& kp, bool bwd);
std::size_t sm90_smem(const MimoDims& d, bool bwd);
const void* sm90_kernel_ptr(const MimoDims& d, bool bwd);
const char* sm90_path(const MimoDims& d);  // "sm90 wgmma", and which instance
void launch_sm90(const KParams& kp, bool bwd, cudaStream_t st);
// The Hopper wgmma mimo_bwd_bwd (mimo_bwd_bwd_sm90.cu): four warpgroups per (h, b); the same refusal contract.
constexpr int kSm90BwdThreads = 512;
std::string sm90_bwd_bwd_refusal(const MimoDims& d);
std::string sm90_bwd_bwd_refusal(const KParams& kp);
std::size_t sm90_bwd_bwd_smem(const MimoDims& d);
const void* sm90_bwd_bwd_kernel_ptr(const MimoDims& d);
void launch_sm90_bwd_bwd(const KParams& kp, cudaStream_t st);
}  // namespace megacpp::mimo::dev
