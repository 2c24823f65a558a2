// mimo_bwd_tail.cuh — the per-chunk gradient tail of mimo_bwd_bwd, shared by the mma.sync kernel (mimo_bwd_bwd.cu)
// and the wgmma kernel (mimo_bwd_bwd_sm90.cu). After a chunk's products both kernels hold, in shared memory:
//   dQf, dKf  [M][ldf] fp32   dQ̄, dK̄ (rotated frame; un-rotated in place by bwd_unrotate)
//   dVf       [M][ldvf] fp32  dV
//   Zs        [Lc][ldzs]      E[i][j] = e^{a_i − a_j}·Σ_{r,r'} Z (i > j), Σ Z (i = j), 0 above; Cs its column suffix sums
//   rowa / rowx               the row-dot partials of Q̄·(e^{a} g S_cᵀ) and V·(K̄ dS), ka / kx of them per row
//   sc                        the chunk's scalar slots (mimo_common.cuh), kDA / kXs filled here
// and these functions turn them into the kernel outputs (the math is in mimo_bwd_bwd.cu's header). They differ only
// in where Q̄ and K̄ live, so bwd_unrotate reads them through accessors. Loops are strided over NTH threads; each
// partial (r,n) / (r,p) is owned by one thread (deterministic, no atomics). The shape (N, P, R, Lc, M) is passed in:
// compile-time constants in the wgmma kernel's instances, runtime values in the mma.sync kernel.
#pragma once
#include "kernels/mimo/mimo_common.cuh"

namespace megacpp::mimo::dev {

// One thread's running per-(b,h) parameter partials: slot k holds element tid + NTH·k of the (R, N) q/k bias and the
// (R, P) Ψ gradients (R·N ≤ 2048, R·P ≤ 1024), dd its share of Σ g∘V (dD). Registers; zeroed before the sweep.
template <int NTH>
struct BwdPartials {
  static constexpr int KQ = 2048 / NTH, KP = 1024 / NTH;
  float qb[KQ], kb[KQ], psi[KP], dd;
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int k = 0; k < KQ; ++k) qb[k] = kb[k] = 0.f;
#pragma unroll
    for (int k = 0; k < KP; ++k) psi[k] = 0.f;
    dd = 0.f;
  }
};

// The step table E[i][j] = e^{a_i − a_j}·Σ_{r,r'} Z[(i,r)][(j,r')] (i > j), Σ Z on the diagonal, 0 above, into Zs,
// by `nthr` threads (this thread is number `t` of them); and ∂a_last's partial Σ S_c∘dS: the NTH per-thread values
// in `red` summed by warp `wsum` in a fixed order into sc[kWork·kMaxLc + 1].
template <int NTH>
__device__ __forceinline__ void bwd_step_sums(const float* Z, int ldz, float* Zs, int ldzs, const float* red, float* sc,
                                              int Lc, int R, int t, int nthr, int wsum) {
  const int lLc = __ffs(Lc) - 1;
  for (int it = t; it < Lc * Lc; it += nthr) {
    const int ti = it >> lLc, tj = it & (Lc - 1);
    float s = 0.f;
    if (ti >= tj) {
      for (int r = 0; r < R; ++r)
        for (int r2 = 0; r2 < R; ++r2) s += Z[(ti * R + r) * ldz + tj * R + r2];
      if (ti > tj) s *= __expf(sc[kA * kMaxLc + ti] - sc[kA * kMaxLc + tj]);
    }
    Zs[ti * ldzs + tj] = s;
  }
  if ((threadIdx.x >> 5) == wsum) {
    const int lane = threadIdx.x & 31;
    float s = 0.f;
    for (int q = 0; q < NTH / 32; ++q) s += red[lane * (NTH / 32) + q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) sc[kWork * kMaxLc + 1] = s;
  }
}

// Per-step sums of the row-dot partials (one warp per step, fixed shuffle order) → sc[kDA], sc[kXs].
template <int NTH>
__device__ __forceinline__ void bwd_step_row_dots(const float* rowa, int ka, const float* rowx, int kx, float* sc,
                                                  int Lc) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll 1
  for (int s = warp; s < Lc; s += NTH / 32) {
    float da = 0.f, xs = 0.f;
    for (int e = lane; e < ka; e += 32) da += rowa[s * ka + e];
    for (int e = lane; e < kx; e += 32) xs += rowx[s * kx + e];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      da += __shfl_xor_sync(0xffffffffu, da, off);
      xs += __shfl_xor_sync(0xffffffffu, xs, off);
    }
    if (lane == 0) {
      sc[kDA * kMaxLc + s] = da;
      sc[kXs * kMaxLc + s] = xs;
    }
  }
}

// Column suffix sums Cs[i][j] = Σ_{i' ≥ i} Zs[i'][j] (the last Lc threads), so that the per-step sums of
// bwd_step_scalar_grads are O(Lc) instead of O(Lc²). Cs must not alias Zs (the kernels put it in the dead Z region).
template <int NTH>
__device__ __forceinline__ void bwd_step_suffix_sums(const float* Zs, float* Cs, int Lc, int ldzs) {
  const int tid = threadIdx.x;
  if (tid >= NTH - Lc) {
    const int j = tid - (NTH - Lc);
    float acc = 0.f;
    for (int i = Lc - 1; i >= 0; --i) {
      acc += Zs[i * ldzs + j];
      Cs[i * ldzs + j] = acc;
    }
  }
}

// Un-rotation of dQ̄/dK̄ in place (du1 = cosθ e1 + sinθ e2, du2 = −sinθ e1 + cosθ e2) and dθ = Σ_{q,k,r} e2 u1 − e1 u2
// per (step, angle) → kp.dangles. q_at(i, j) / k_at(i, j): the bf16 Q̄ / K̄ value of row i, column j as fp32.
template <int NTH, class QAt, class KAt>
__device__ __forceinline__ void bwd_unrotate(const KParams& kp, int b, int h, int t0, float* dQf, float* dKf, int ldf,
                                             int N, int R, int Lc, QAt q_at, KAt k_at) {
  const MimoDims& d = kp.d;
  const int half = N / 2, lhalf = __ffs(half) - 1, n_ang = d.n_ang;
#pragma unroll 2
  for (int it = threadIdx.x; it < Lc * half; it += NTH) {
    const int s = it >> lhalf, j = it & (half - 1);
    const size_t ao = ((static_cast<size_t>(b) * d.S + t0 + s) * d.H + h) * n_ang + j;
    const bool rot = j < n_ang;
    float sn = 0.f, cs = 1.f;
    if (rot) fast_sincos(__ldg(kp.in.angles + ao), &sn, &cs);
    float dth = 0.f;
    for (int r = 0; r < R; ++r) {
      const int i = s * R + r;
      {
        const float e1 = dQf[i * ldf + j], e2 = dQf[i * ldf + j + half];
        dth += e2 * q_at(i, j) - e1 * q_at(i, j + half);
        dQf[i * ldf + j] = cs * e1 + sn * e2;
        dQf[i * ldf + j + half] = -sn * e1 + cs * e2;
      }
      {
        const float e1 = dKf[i * ldf + j], e2 = dKf[i * ldf + j + half];
        dth += e2 * k_at(i, j) - e1 * k_at(i, j + half);
        dKf[i * ldf + j] = cs * e1 + sn * e2;
        dKf[i * ldf + j + half] = -sn * e1 + cs * e2;
      }
    }
    if (rot) kp.dangles[ao] = dth;
  }
}

// Decay / trapezoid scalar gradients of the chunk's steps (threads tid < Lc):
//   dADT_s = Σ_{t≥s} ∂a_t + Σ_{j<s} factor_j (e^{ā_j} X_j + Cs[s][j]) + ∂a_last,   DFACTOR_s, DGAMMA_s = E[s][s].
__device__ __forceinline__ void bwd_step_scalar_grads(const KParams& kp, size_t bh, int t0, const float* sc,
                                                      const float* Cs, const float* Zs, int ldzs, int Lc) {
  const int s = threadIdx.x;
  if (s >= Lc) return;
  const float* fac = sc + kFac * kMaxLc;
  const float* eab = sc + kEAB * kMaxLc;
  const float* dA = sc + kDA * kMaxLc;
  const float* Xsum = sc + kXs * kMaxLc;
  const float dlast = __expf(sc[kWork * kMaxLc]) * sc[kWork * kMaxLc + 1];
  const float dfac = eab[s] * Xsum[s] + (s + 1 < Lc ? Cs[(s + 1) * ldzs + s] : 0.f);
  float g = dlast;
  for (int t = s; t < Lc; ++t) g += dA[t];
  for (int j = 0; j < s; ++j) g += fac[j] * (eab[j] * Xsum[j] + Cs[s * ldzs + j]);
  const size_t o = bh * kp.d.S + t0 + s;
  kp.dadt[o] = g;
  kp.dfac[o] = dfac;
  kp.dgam[o] = Zs[s * ldzs + s];
}

// dQ / dK per value head (B,S,R,H,N) bf16 (group-reduced later in mimo_bwd_post), from the un-rotated scratch.
template <int NTH>
__device__ __forceinline__ void bwd_write_dqdk(const KParams& kp, int b, int h, int t0, const float* dQf,
                                               const float* dKf, int ldf, int N, int R, int M) {
  const MimoDims& d = kp.d;
  const int half = N / 2, lhalf = __ffs(half) - 1, lR = __ffs(R) - 1;
#pragma unroll 2
  for (int it = threadIdx.x; it < M * half; it += NTH) {
    const int i = it >> lhalf, n = (it & (half - 1)) * 2, s = i >> lR, r = i & (R - 1);
    const size_t o = (((static_cast<size_t>(b) * d.S + t0 + s) * R + r) * d.H + h) * N + n;
    st_bf16x2g(kp.dq_h + o, dQf[i * ldf + n], dQf[i * ldf + n + 1]);
    st_bf16x2g(kp.dk_h + o, dKf[i * ldf + n], dKf[i * ldf + n + 1]);
  }
}

// Running q/k bias partials: slot k of this thread is element tid + NTH·k of (R, N).
template <int NTH, int K>
__device__ __forceinline__ void bwd_bias_partials(float (&qb)[K], float (&kb)[K], const float* dQf, const float* dKf,
                                                  int ldf, int N, int R, int Lc) {
  const int lN = __ffs(N) - 1;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int it = threadIdx.x + NTH * k;
    if (it < R * N) {
      const int r = it >> lN, n = it & (N - 1);
      float sq = 0.f, sk = 0.f;
      for (int s = 0; s < Lc; ++s) sq += dQf[(s * R + r) * ldf + n], sk += dKf[(s * R + r) * ldf + n];
      qb[k] += sq;
      kb[k] += sk;
    }
  }
}

// dx = Σ_r dV·Ψ (B,S,H,P) bf16; psi: this head's Ψ [R][P] (global or shared memory).
template <int NTH>
__device__ __forceinline__ void bwd_write_dx(const KParams& kp, int b, int h, int t0, const float* dVf, int ldvf,
                                             const float* psi, int P, int R, int Lc) {
  const MimoDims& d = kp.d;
  const int lP = __ffs(P) - 1;
  for (int it = threadIdx.x; it < Lc * P / 2; it += NTH) {
    const int s = (it * 2) >> lP, p = (it * 2) & (P - 1);
    float a0 = 0.f, a1 = 0.f;
    for (int r = 0; r < R; ++r) {
      const float2 dv = *reinterpret_cast<const float2*>(dVf + (s * R + r) * ldvf + p);
      a0 += dv.x * psi[r * P + p], a1 += dv.y * psi[r * P + p + 1];
    }
    st_bf16x2g(kp.dv + ((static_cast<size_t>(b) * d.S + t0 + s) * d.H + h) * P + p, a0, a1);
  }
}

// Running dΨ partials Σ_s dV·x: slot k of this thread is element tid + NTH·k of (R, P); xs: the chunk's raw x [Lc][P].
template <int NTH, int K>
__device__ __forceinline__ void bwd_psi_partials(float (&acc)[K], const float* dVf, int ldvf, const bf16_bits* xs, int P,
                                                 int R, int Lc) {
  const int lP = __ffs(P) - 1;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int it = threadIdx.x + NTH * k;
    if (it < R * P) {
      const int r = it >> lP, p = it & (P - 1);
      float a = 0.f;
      for (int s = 0; s < Lc; ++s) a += dVf[(s * R + r) * ldvf + p] * bf2f(xs[s * P + p]);
      acc[k] += a;
    }
  }
}

// After the sweep: the per-(b,h) partials of dq_bias, dk_bias, dΨ (one owner each) and dD (the per-thread sums
// through `red`, NTH floats of shared memory, reduced by warp 0 in a fixed order).
template <int NTH>
__device__ __forceinline__ void bwd_store_partials(const KParams& kp, size_t bh, const BwdPartials<NTH>& pa,
                                                   float* red) {
  const int RN = kp.d.R * kp.d.N, RP = kp.d.R * kp.d.P, tid = threadIdx.x;
#pragma unroll
  for (int k = 0; k < BwdPartials<NTH>::KQ; ++k) {
    const int it = tid + NTH * k;
    if (it < RN) {
      kp.p_dqb[bh * RN + it] = pa.qb[k];
      kp.p_dkb[bh * RN + it] = pa.kb[k];
    }
  }
#pragma unroll
  for (int k = 0; k < BwdPartials<NTH>::KP; ++k) {
    const int it = tid + NTH * k;
    if (it < RP) kp.p_dpsi[bh * RP + it] = pa.psi[k];
  }
  red[tid] = pa.dd;
  __syncthreads();
  if (tid < 32) {
    float s = 0.f;
    for (int q = 0; q < NTH / 32; ++q) s += red[tid * (NTH / 32) + q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (tid == 0) kp.p_dd[bh] = s;
  }
}

}  // namespace megacpp::mimo::dev
