// mimo_bwd_bwd_sm90.cu — the Hopper (sm_90a) mimo_bwd_bwd: the reverse chunk loop of mimo_bwd_bwd.cu with its ten
// chunk GEMMs on warpgroup MMA (wgmma), four warpgroups (512 threads) per (h, b), 1 CTA/SM.
//
// Math: exactly mimo_bwd_bwd.cu's (its header; the mma.sync kernel stays the path for the shapes this one does not
// take). Per chunk c = nc−1 … 0 of Lc = 64/R steps, M = 64 rows (i = s·R + r), dS (N×64, fp32) carried in the wgmma
// accumulators of warpgroups 2 and 3 (64 rows each; at N = 64 only warpgroup 2's block exists):
//   operands (bf16, 128B-swizzled tiles, kernels/common/wgmma_sm90.cuh): Q̄, K̄ [64][N]; V, g, Gd = e^{a}·g,
//   Pm, Gm [64][64]; S_c (this chunk's entry state from mimo_bwd_fwd) and dS_{c+1} as [N][64]
//   P1: Sc = Q̄K̄ᵀ, Gv = g·Vᵀ          every warpgroup 16 columns (m64n16; A and B K-major)
//       → Pm = w∘Sc, Gm = w∘Gv (bf16 tiles), Z = Sc∘Gv (fp32, for the step sums of P2)
//   P2: warpgroup 0: dQ̄ = Gd·S_cᵀ (row dots with Q̄ → ∂a) + Gm·K̄            (N/64 blocks of m64n64)
//       warpgroup 1: dK̄ = factor·e^{ā}·V·dSᵀ + Gmᵀ·Q̄   (Gmᵀ: transpose-A)
//       warpgroup 3: dV = factor·e^{ā}·K̄·dS (row dots with V → ∂ā, ∂factor) + Pmᵀ·g + D·g
//       warpgroups 2 (and 3 at N = 128): dS ← e^{a_last}·dS + Q̄ᵀ·Gd   (Q̄ᵀ: transpose-A; B = Gd MN-major)
//   one branch per warpgroup; warpgroup 2, the lightest, then computes the step sums of Z and the ∂a_last sum.
//   P3a/P3b (un-rotation and dθ, the decay/trapezoid scalar gradients, the dq/dk/dx writes and the per-(b,h)
//   partials) are the functions of mimo_bwd_tail.cuh, shared with the mma.sync kernel; dQ̄/dK̄/dV pass through fp32
//   shared memory.
// Writes: as mimo_bwd_bwd.cu (dq_h/dk_h per value head, dv, dadt, dfac, dgam, dangles, the parameter partials).
// Deterministic: fixed reduction orders, no atomics.
// Taken when M = 64, P = 64, N ∈ {64, 128}, n_ang a power of two ≥ 8, 16-byte aligned inputs and the layout fits
// (sm90_bwd_bwd_refusal); MEGACPP_MIMO_SM90=0 forces the mma.sync kernel (A/B timing).
// Resources (ptxas -v, sm_90a): __launch_bounds__(512, 1) → 122–128 registers, no spills; smem bwd_sm90_layout():
// N=128, R=4 226,432 B (with the per-head parameters) → 1 CTA/SM (16 warps), like the mma.sync kernel; N=64, R=4
// 158,592 B. SASS: HGMMA 64x16x16 and 64x64x16, no HMMA, no LDL/STL.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/mimo/mimo_bwd_tail.cuh"
#include "kernels/mimo/mimo_common.cuh"
#include "kernels/mimo/mimo_sm90_common.cuh"

namespace megacpp::mimo::dev::sm90b {

constexpr int kM = 64, kP = 64, kThr = kSm90BwdThreads;

// Byte offsets from the 1024-aligned base; the wgmma tiles first (multiples of 8 KB, so every tile is aligned).
struct BwdSm90Layout {
  uint32_t q, k, v, g, gd, scb, dsb, pm, gm, z, zs, dqf, dkf, dvf, rowa, rowx, xs, sc, psi, phi, zeta, qb, kb, total;
};
__host__ __device__ inline BwdSm90Layout bwd_sm90_layout(int N, int R) {
  const int Lc = kM / R;
  BwdSm90Layout L{};
  uint32_t o = 0;
  auto take = [&](uint32_t bytes) { uint32_t r = o; o = (o + bytes + 127u) & ~127u; return r; };
  L.q = take(2u * kM * N);
  L.k = take(2u * kM * N);
  L.v = take(2u * kM * kP);
  L.g = take(2u * kM * kP);
  L.gd = take(2u * kM * kP);
  L.scb = take(2u * N * kP);
  L.dsb = take(2u * N * kP);
  L.pm = take(2u * kM * kM);
  L.gm = take(2u * kM * kM);
  L.z = take(4u * kM * (kM + 1));
  L.zs = take(4u * Lc * (Lc + 1));  // the step sums of Z (P2..P3b)
  L.dqf = take(4u * kM * (N + 4));
  L.dkf = take(4u * kM * (N + 4));
  L.dvf = take(4u * kM * (kP + 4));
  L.rowa = take(4u * kM * (N / 64));
  L.rowx = take(4u * kM);
  L.xs = take(2u * Lc * kP);
  L.sc = take(4u * 16 * kMaxLc + 4u * kThr);  // scalar slots, then the reduction scratch `red`
  // v13c: the per-head parameters, loaded once (read per chunk as float4: v13a's scalar global loads of them were
  // the largest stall of the load phase, LSU global-queue throttle)
  L.psi = take(4u * R * kP);
  L.phi = take(4u * R * kP);
  L.zeta = take(4u * R * kP);
  L.qb = take(4u * R * N);
  L.kb = take(4u * R * N);
  L.total = o + 1024u;  // + alignment slack of the dynamic smem base
  return L;
}

// mimo_sm90_common.cuh
using sm90::cp16, sm90::unpack8, sm90::pack2, sm90::pack8, sm90::add8, sm90::desc_add, sm90::store_acc64_bf16;
// 8 consecutive fp32 of shared memory (the per-head parameters), 16-byte aligned.
__device__ __forceinline__ void lds8(const float* p, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

template <int N_, int R_>
__global__ void __launch_bounds__(kThr, 1) mimo_bwd_bwd_sm90_kernel(const KParams kp) {
  using namespace megacpp::wgmma;
  static_assert(N_ == 64 || N_ == 128, "mimo_bwd_bwd_sm90: N in {64,128}");
  constexpr int R = R_, lR = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : 3, Lc = kM / R;
  constexpr int NB = N_ / 64, half = N_ / 2;
  constexpr int ldf = N_ + 4, ldvf = kP + 4, ldz = kM + 1, ldzs = Lc + 1;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t s0 = smem_addr(smem_raw);
  const uint32_t sbase = (s0 + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (sbase - s0);
  const MimoDims& d = kp.d;
  const BwdSm90Layout L = bwd_sm90_layout(N_, R);
  const int h = blockIdx.x, b = blockIdx.y, g_ = h / (d.H / d.G);
  const int tid = threadIdx.x, wg = tid >> 7, warp = tid >> 5, lane = tid & 31;
  const int row0 = 16 * ((tid >> 5) & 3) + (lane >> 2), t4 = lane & 3;  // first accumulator row / column pair
  const size_t bh = static_cast<size_t>(b) * d.H + h;
  const int n_ang = d.n_ang;
  float* psi = reinterpret_cast<float*>(smem + L.psi);
  float* phi = reinterpret_cast<float*>(smem + L.phi);
  float* zeta = reinterpret_cast<float*>(smem + L.zeta);
  float* qbias = reinterpret_cast<float*>(smem + L.qb);
  float* kbias = reinterpret_cast<float*>(smem + L.kb);
  float* sc = reinterpret_cast<float*>(smem + L.sc);
  float* red = sc + 16 * kMaxLc;
  float* Z = reinterpret_cast<float*>(smem + L.z);
  float* Zs = reinterpret_cast<float*>(smem + L.zs);
  float* dQf = reinterpret_cast<float*>(smem + L.dqf);
  float* dKf = reinterpret_cast<float*>(smem + L.dkf);
  float* dVf = reinterpret_cast<float*>(smem + L.dvf);
  float* rowa = reinterpret_cast<float*>(smem + L.rowa);
  float* rowx = reinterpret_cast<float*>(smem + L.rowx);
  bf16_bits* Xs = reinterpret_cast<bf16_bits*>(smem + L.xs);
  const bf16_bits* Qt = reinterpret_cast<const bf16_bits*>(smem + L.q);
  const bf16_bits* Kt = reinterpret_cast<const bf16_bits*>(smem + L.k);
  const bf16_bits* Vt = reinterpret_cast<const bf16_bits*>(smem + L.v);
  const bf16_bits* Gt = reinterpret_cast<const bf16_bits*>(smem + L.g);
  const float Dh = kp.in.d[h];
  // base descriptors (start address 0; desc_add moves them to a tile and k16 step): K-major, MN-major
  const uint64_t dK = desc_kmajor<kM>(sbase, 0, 0), dMN = desc_mnmajor<kM>(sbase, 0);
  auto kmaj = [](int kk) { return static_cast<uint32_t>((kk >> 2) * kM * 128 + (kk & 3) * 32); };  // 64-row tiles
  auto tile16 = [&](uint32_t tile, int row, int col) -> uint4* {  // 8 bf16 at (row, col) of a 64-row tile
    return reinterpret_cast<uint4*>(smem + tile + 2 * sw128_offset<kM>(row, col));
  };

  // dS block of this warpgroup: warpgroup 2 rows 0..63, warpgroup 3 rows 64..127 (N = 128 only)
  const bool owns_ds = wg == 2 || (N_ == 128 && wg == 3);
  const int sblk = wg - 2;
  float dS[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dS[i] = 0.f;
  for (int i = tid; i < N_ * kP / 8; i += kThr) reinterpret_cast<uint4*>(smem + L.dsb)[i] = make_uint4(0, 0, 0, 0);
  load_params<kThr>(kp, h, psi, phi, zeta, qbias, kbias);
  BwdPartials<kThr> pa;  // the per-(b,h) parameter partials of this thread (mimo_bwd_tail.cuh)
  pa.zero();
  fence_proxy_async();
  __syncthreads();

  for (int c = d.nc - 1; c >= 0; --c) {
    const int t0 = c * Lc;
    const size_t tok0 = static_cast<size_t>(b) * d.S + t0;
    // ---- L1: loads -------------------------------------------------------------------------------------------
    {  // S_c (bf16 [n][p] rows from mimo_bwd_fwd) → the swizzled [N][64] tile, in flight during the rest of L1
      const bf16_bits* src = kp.states + (bh * d.nc + c) * static_cast<size_t>(N_) * kP;
#pragma unroll
      for (int it = 0; it < N_ * 8 / kThr; ++it) {
        const int idx = tid + it * kThr, n = idx >> 3, j = idx & 7;
        cp16(sbase + L.scb + 2 * sw128_offset<N_>(n, 8 * j), src + n * kP + 8 * j);
      }
      cp_async_commit();
    }
    // v14: warp 0 stages the chunk's raw scalars with cp.async now and turns them into the chunk scalars after its
    // items (below), instead of first doing three global round trips and the step-weight table while its items
    // waited: the other fifteen warps waited for that at barrier (1) (15 % of the v14 profile's samples). The step
    // weights are now computed where P1 uses them, by every thread for its own accumulator pairs.
    if (warp == 0) stage_scalars_issue(kp, b, h, t0, sc);
    // v14e: every global load of this phase is issued here, before any of it is used: one round trip per chunk
    // instead of three in a row (q/k, then the angles behind the bias adds, then v, then z/dout).
    const bool qk_item = tid < kM * (N_ / 16);
    const int qi = tid / (N_ / 16), qcc = tid % (N_ / 16), qs = qi >> lR, qr = qi & (R - 1);
    const int qc1 = 8 * qcc, qc2 = qc1 + half;
    uint4 rq1{}, rq2{}, rk1{}, rk2{};
    float4 th0{}, th1{};
    if (qk_item) {
      const size_t qrow = ((tok0 + qs) * R * d.G + static_cast<size_t>(qr) * d.G + g_) * N_;
      rq1 = __ldg(reinterpret_cast<const uint4*>(kp.in.q + qrow + qc1));
      rq2 = __ldg(reinterpret_cast<const uint4*>(kp.in.q + qrow + qc2));
      rk1 = __ldg(reinterpret_cast<const uint4*>(kp.in.k + qrow + qc1));
      rk2 = __ldg(reinterpret_cast<const uint4*>(kp.in.k + qrow + qc2));
      if (qc1 < n_ang) {
        const float* ap = kp.in.angles + ((tok0 + qs) * d.H + h) * n_ang + qc1;
        // 16-byte aligned: the angles pointer is checked by the refusal, the offsets are multiples of 8
        th0 = __ldg(reinterpret_cast<const float4*>(ap)), th1 = __ldg(reinterpret_cast<const float4*>(ap + 4));
      }
    }
    const int vi = tid >> 3, vp0 = 8 * (tid & 7), vs = vi >> lR;
    const size_t vgi = ((tok0 + vs) * d.H + h) * kP + vp0;
    const uint4 rx = __ldg(reinterpret_cast<const uint4*>(kp.in.v + vgi));
    const uint4 rz = __ldg(reinterpret_cast<const uint4*>(kp.in.z + vgi));
    const uint4 rdo = __ldg(reinterpret_cast<const uint4*>(kp.dout + vgi));
    // Q̄, K̄: item (row i, 8 columns cc·8..) with its partner columns + N/2; bias, rotation, bf16, swizzled store
    if (qk_item) {
      const int i = qi, r = qr, c1 = qc1, c2 = qc2;
      float q1[8], q2[8], k1[8], k2[8];
      unpack8(rq1, q1), unpack8(rq2, q2), unpack8(rk1, k1), unpack8(rk2, k2);
      add8(q1, qbias + r * N_ + c1), add8(q2, qbias + r * N_ + c2);
      add8(k1, kbias + r * N_ + c1), add8(k2, kbias + r * N_ + c2);
      if (c1 < n_ang) {
        const float th[8] = {th0.x, th0.y, th0.z, th0.w, th1.x, th1.y, th1.z, th1.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float sn, cs;
          fast_sincos(th[e], &sn, &cs);
          const float a1 = cs * q1[e] - sn * q2[e], a2 = sn * q1[e] + cs * q2[e];
          q1[e] = a1, q2[e] = a2;
          const float b1 = cs * k1[e] - sn * k2[e], b2 = sn * k1[e] + cs * k2[e];
          k1[e] = b1, k2[e] = b2;
        }
      }
      *tile16(L.q, i, c1) = pack8(q1), *tile16(L.q, i, c2) = pack8(q2);
      *tile16(L.k, i, c1) = pack8(k1), *tile16(L.k, i, c2) = pack8(k2);
    }
    // V = bf16(x·Ψ) (or the PsiV cache), g = bf16(dout·Φ·silu(z·Ζ)): item (row i, 8 columns); raw x → Xs
    {
      const int i = vi, p0 = vp0, s = vs, r = i & (R - 1);
      const uint4 xr = rx;
      if (r == 0) *reinterpret_cast<uint4*>(Xs + s * kP + p0) = xr;
      if (kp.in.psiv_cache != nullptr) {
        *tile16(L.v, i, p0) =
            __ldg(reinterpret_cast<const uint4*>(kp.in.psiv_cache + ((bh * d.S + t0) * R + i) * kP + p0));
      } else {
        float x[8], w[8];
        unpack8(xr, x);
        lds8(psi + r * kP + p0, w);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] *= w[e];
        *tile16(L.v, i, p0) = pack8(x);
      }
      float z[8], go[8], ph[8], zt[8];
      unpack8(rz, z);
      unpack8(rdo, go);
      lds8(phi + r * kP + p0, ph);
      lds8(zeta + r * kP + p0, zt);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float u = z[e] * zt[e];
        go[e] = go[e] * ph[e] * u * sigmoidf_(u);
      }
      *tile16(L.g, i, p0) = pack8(go);
    }
    cp_async_wait_all();
    if (warp == 0) {
      __syncwarp();
      chunk_scalars_staged_for<Lc>(d.S, t0, sc);  // as the forward chunk loop: the same summation order
    }
    fence_proxy_async();
    __syncthreads();  // (1)
    if (c > 0) prefetch_chunk<kThr>(kp, b, h, t0 - Lc, true, true, true, c - 1);

    // ---- P1: Sc, Gv (16 columns per warpgroup) → Pm, Gm, Z; Gd; the ∂a_last partial Σ S_c∘dS --------------------
    {
      {  // before the products are issued: no thread-dependent branch while a wgmma is in flight (ptxas C7518)
        float part = 0.f;
        if (owns_ds) {
#pragma unroll
          for (int q = 0; q < 8; ++q)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int n = 64 * sblk + row0 + 8 * hh, p = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
              const float2 s2 = ld_bf16x2(reinterpret_cast<const bf16_bits*>(smem + L.scb) + sw128_offset<N_>(n, p));
              part += s2.x * dS[i] + s2.y * dS[i + 1];
            }
        }
        red[tid] = part;
      }
      float S1[8], G1[8];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < N_ / 16; ++kk)
        wgmma_m64n16k16_ss(S1, desc_add(dK, L.q + kmaj(kk)), desc_add(dK, L.k + 16 * 128 * wg + kmaj(kk)), kk > 0);
#pragma unroll
      for (int kk = 0; kk < kP / 16; ++kk)
        wgmma_m64n16k16_ss(G1, desc_add(dK, L.g + kmaj(kk)), desc_add(dK, L.v + 16 * 128 * wg + kmaj(kk)), kk > 0);
      wgmma_commit();
      {  // Gd = bf16(e^{a_i}·g): item (row, 8 columns), while the products run
        const int i = tid >> 3, p0 = 8 * (tid & 7);
        const float e = sc[kEA * kMaxLc + (i >> lR)];
        float x[8];
        unpack8(*tile16(L.g, i, p0), x);
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] *= e;
        *tile16(L.gd, i, p0) = pack8(x);
      }
      wgmma_wait<0>();
      reg_fence(S1);
      reg_fence(G1);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = row0 + 8 * hh, si = row >> lR;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int col = 16 * wg + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          float w2[2];
          if constexpr (R >= 2) {  // both columns of the pair are one step
            w2[0] = w2[1] = step_weight(sc, si, col >> lR);
          } else {
            w2[0] = step_weight(sc, si, col), w2[1] = step_weight(sc, si, col + 1);
          }
          *reinterpret_cast<uint32_t*>(smem + L.pm + 2 * sw128_offset<kM>(row, col)) = pack2(S1[i] * w2[0], S1[i + 1] * w2[1]);
          *reinterpret_cast<uint32_t*>(smem + L.gm + 2 * sw128_offset<kM>(row, col)) = pack2(G1[i] * w2[0], G1[i + 1] * w2[1]);
          Z[row * ldz + col] = S1[i] * G1[i];  // odd row stride (bank spread): scalar stores
          Z[row * ldz + col + 1] = S1[i + 1] * G1[i + 1];
        }
      }
    }
    fence_proxy_async();
    __syncthreads();  // (2) Pm, Gm, Gd, Z, red

    // ---- P2: the gradient products, one branch per warpgroup; warpgroup 2 also the step sums of Z and ∂a_last ----
    // per-row scale factor·e^{ā} of the dK̄ / dV state terms
    auto row_w = [&](int row) { const int s = row >> lR; return sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s]; };
    // Accumulator helpers (m64n64 fragment: rows row0 + 8·hh, columns 8·q + 2·t4 (+1) at i = 4q + 2hh (+1)).
    // row_dot: Σ over this block's 64 columns of tile[row][col0 + c]·acc (Σ over the quad by shuffles, fixed order)
    auto row_dot = [&](const float(&acc)[32], const bf16_bits* tile, int hh, int col0) {
      const int row = row0 + 8 * hh;
      float part = 0.f;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int i = 4 * q + 2 * hh;
        const float2 u = ld_bf16x2(tile + sw128_offset<kM>(row, col0 + 8 * q + 2 * t4));
        part += u.x * acc[i] + u.y * acc[i + 1];
      }
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      return part + __shfl_xor_sync(0xffffffffu, part, 2);
    };
    auto scale_row = [&](float(&acc)[32], int hh) {  // × factor·e^{ā} of the row's step
      const float w = row_w(row0 + 8 * hh);
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[4 * q + 2 * hh] *= w, acc[4 * q + 2 * hh + 1] *= w;
    };
    auto store_f32 = [&](const float(&acc)[32], float* dst, int ld, int col0) {
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = row0 + 8 * hh, col = col0 + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          *reinterpret_cast<float2*>(dst + row * ld + col) = make_float2(acc[i], acc[i + 1]);
        }
    };
    auto issue_ds = [&](int blk) {  // dS block ← e^{a_last}·dS + Q̄ᵀ·Gd (committed, not waited for)
      const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
      for (int i = 0; i < 32; ++i) dS[i] *= el;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kM / 16; ++kk)
        wgmma_m64n64k16_ss<1, 1>(dS, desc_add(dMN, L.q + blk * kM * 128 + kk * 2048), desc_add(dMN, L.gd + kk * 2048), 1);
      wgmma_commit();
    };
    // the first product of dQ̄ / dK̄ block nb: acc = A·Bᵀ with both K-major, K = P (waited for)
    auto first_product = [&](float(&acc)[32], uint32_t a, uint32_t bt) {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kP / 16; ++kk)
        wgmma_m64n64k16_ss<0>(acc, desc_add(dK, a + kmaj(kk)), desc_add(dK, bt + kmaj(kk)), kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(acc);
    };
    // (one branch per warpgroup, each wgmma on straight-line code: a wgmma under a thread-dependent branch inside
    // a warpgroup's code makes ptxas serialise them all, C7520)
    if (wg == 0) {  // dQ̄ = Gd·S_cᵀ (row dots with Q̄) + Gm·K̄, one 64-column block at a time
#pragma unroll 1
      for (int nb = 0; nb < NB; ++nb) {
        float acc[32];
        first_product(acc, L.gd, L.scb + nb * 64 * 128);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const float part = row_dot(acc, Qt, hh, 64 * nb);
          if (t4 == 0) rowa[(row0 + 8 * hh) * NB + nb] = part;
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kM / 16; ++kk)
          wgmma_m64n64k16_ss<1>(acc, desc_add(dK, L.gm + kmaj(kk)), desc_add(dMN, L.k + nb * kM * 128 + kk * 2048), 1);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
        store_f32(acc, dQf, ldf, 64 * nb);
      }
    } else if (wg == 1) {  // dK̄ = factor·e^{ā}·V·dSᵀ + Gmᵀ·Q̄
#pragma unroll 1
      for (int nb = 0; nb < NB; ++nb) {
        float acc[32];
        first_product(acc, L.v, L.dsb + nb * 64 * 128);
        scale_row(acc, 0);
        scale_row(acc, 1);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kM / 16; ++kk)
          wgmma_m64n64k16_ss<1, 1>(acc, desc_add(dMN, L.gm + kk * 2048), desc_add(dMN, L.q + nb * kM * 128 + kk * 2048), 1);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
        store_f32(acc, dKf, ldf, 64 * nb);
      }
    } else if (wg == 2) {  // dS block 0; then the step sums
      issue_ds(0);
      wgmma_wait<0>();
      reg_fence(dS);
      // the step sums of Z and ∂a_last on warpgroup 2 (the lightest: one m64n64k64 product)
      bwd_step_sums<kThr>(Z, ldz, Zs, ldzs, red, sc, Lc, R, tid - 256, 128, 8);
    } else {  // warpgroup 3: dV = w·K̄·dS (row dots) + Pmᵀ·g + D·g; at N = 128 also dS block 1
      float acc[32];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < N_ / 16; ++kk)
        wgmma_m64n64k16_ss<1>(acc, desc_add(dK, L.k + kmaj(kk)), desc_add(dMN, L.dsb + kk * 2048), kk > 0);
      wgmma_commit();
      if constexpr (N_ == 128) {
        issue_ds(1);
        wgmma_wait<1>();
      } else {
        wgmma_wait<0>();
      }
      reg_fence(acc);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float part = row_dot(acc, Vt, hh, 0);
        if (t4 == 0) rowx[row0 + 8 * hh] = part;
        scale_row(acc, hh);
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kM / 16; ++kk)
        wgmma_m64n64k16_ss<1, 1>(acc, desc_add(dMN, L.pm + kk * 2048), desc_add(dMN, L.g + kk * 2048), 1);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(acc);
      reg_fence(dS);
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const float2 g2 = ld_bf16x2(Gt + sw128_offset<kM>(row0 + 8 * hh, 8 * q + 2 * t4));
          acc[4 * q + 2 * hh] += Dh * g2.x, acc[4 * q + 2 * hh + 1] += Dh * g2.y;
        }
      store_f32(acc, dVf, ldvf, 0);
    }
    __syncthreads();  // (3)

    // ---- P3a: per-step row dots; column suffix sums of the step table; un-rotation of dQ̄/dK̄ and dθ ----------
    bwd_step_row_dots<kThr>(rowa, R * NB, rowx, R, sc, Lc);
    bwd_step_suffix_sums<kThr>(Zs, Z, Lc, ldzs);  // Cs into the Z region (free after P2)
    bwd_unrotate<kThr>(kp, b, h, t0, dQf, dKf, ldf, N_, R, Lc,
                       [&](int i, int j) { return bf2f(Qt[sw128_offset<kM>(i, j)]); },
                       [&](int i, int j) { return bf2f(Kt[sw128_offset<kM>(i, j)]); });
    __syncthreads();  // (4)

    // ---- P3b: decay/trapezoid scalar gradients; gradient writes; partials; bf16 dS for the next chunk ------------
    bwd_step_scalar_grads(kp, bh, t0, sc, Z, Zs, ldzs, Lc);
    bwd_write_dqdk<kThr>(kp, b, h, t0, dQf, dKf, ldf, N_, R, kM);
    bwd_bias_partials<kThr>(pa.qb, pa.kb, dQf, dKf, ldf, N_, R, Lc);
    bwd_write_dx<kThr>(kp, b, h, t0, dVf, ldvf, psi, kP, R, Lc);
    bwd_psi_partials<kThr>(pa.psi, dVf, ldvf, Xs, kP, R, Lc);
    {  // dD partial: Σ g∘V, item (row, 8 columns)
      const int i = tid >> 3, p0 = 8 * (tid & 7);
      float x[8], y[8];
      unpack8(*tile16(L.g, i, p0), x);
      unpack8(*tile16(L.v, i, p0), y);
#pragma unroll
      for (int e = 0; e < 8; ++e) pa.dd += x[e] * y[e];
    }
    if (owns_ds) store_acc64_bf16<N_>(smem + L.dsb, sblk, row0, t4, dS);  // B operand of the next dK̄ and dV
    fence_proxy_async();
    __syncthreads();  // (5)
  }

  bwd_store_partials<kThr>(kp, bh, pa, red);
}

}  // namespace megacpp::mimo::dev::sm90b

namespace megacpp::mimo::dev {
namespace {
template <class Do>
auto with_bwd_kernel(const MimoDims& d, Do&& f) {
  using sm90b::mimo_bwd_bwd_sm90_kernel;
  if (d.N == 64) {
    switch (d.R) {
      case 1: return f(mimo_bwd_bwd_sm90_kernel<64, 1>);
      case 2: return f(mimo_bwd_bwd_sm90_kernel<64, 2>);
      case 4: return f(mimo_bwd_bwd_sm90_kernel<64, 4>);
      default: return f(mimo_bwd_bwd_sm90_kernel<64, 8>);
    }
  }
  switch (d.R) {
    case 1: return f(mimo_bwd_bwd_sm90_kernel<128, 1>);
    case 2: return f(mimo_bwd_bwd_sm90_kernel<128, 2>);
    case 4: return f(mimo_bwd_bwd_sm90_kernel<128, 4>);
    default: return f(mimo_bwd_bwd_sm90_kernel<128, 8>);
  }
}
}  // namespace

std::size_t sm90_bwd_bwd_smem(const MimoDims& d) { return sm90b::bwd_sm90_layout(d.N, d.R).total; }
std::string sm90_bwd_bwd_refusal(const MimoDims& d) {
  if (std::string r = sm90_shape_refusal(d); !r.empty()) return r;
  if (sm90_bwd_bwd_smem(d) > kSmemLimit) return "shared memory " + std::to_string(sm90_bwd_bwd_smem(d)) + " B";
  return {};
}
std::string sm90_bwd_bwd_refusal(const KParams& kp) {
  if (std::string r = sm90_bwd_bwd_refusal(kp.d); !r.empty()) return r;
  if (!aligned16(kp.states)) return "the states pointer is not 16-byte aligned";
  return sm90_inputs_refusal(kp, true);
}
const void* sm90_bwd_bwd_kernel_ptr(const MimoDims& d) {
  return with_bwd_kernel(d, [](auto kern) { return reinterpret_cast<const void*>(kern); });
}
void launch_sm90_bwd_bwd(const KParams& kp, cudaStream_t st) {
  const int smem = static_cast<int>(sm90_bwd_bwd_smem(kp.d));
  with_bwd_kernel(kp.d, [&](auto kern) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(kp.d.H, kp.d.B), sm90b::kThr, smem, st>>>(kp);
    return 0;
  });
  MEGACPP_CUDA_CHECK(cudaGetLastError());
}
}  // namespace megacpp::mimo::dev
