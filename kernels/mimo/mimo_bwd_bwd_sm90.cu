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
//   the issue of these runs async: the step sums of Z and the ∂a_last reduction run while the tensor cores work.
//   P3a/P3b (un-rotation and dθ, the decay/trapezoid scalar gradients, the dq/dk/dx writes and the per-(b,h)
//   partials) are mimo_bwd_bwd.cu's, reading the swizzled tiles; dQ̄/dK̄/dV pass through fp32 shared memory.
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
#include "kernels/mimo/mimo_common.cuh"

namespace megacpp::mimo::dev::sm90b {

constexpr int kM = 64, kP = 64, kThr = kSm90BwdThreads, kW = kThr / 32;

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
  L.zs = take(4u * Lc * (Lc + 1));  // the step weights W (L1..P1), then the step sums of Z (P2..P3b)
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
  L.total = o + 1024u;                        // + alignment slack of the dynamic smem base
  return L;
}

__device__ __forceinline__ void cp16(uint32_t saddr, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr), "l"(g));
}
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
// 8 consecutive fp32, 16-byte aligned: ldg8a from global memory (the angles: alignment checked by the refusal,
// offsets multiples of 8), lds8 from shared memory (the per-head parameters).
__device__ __forceinline__ void ldg8a(const float* p, float (&x)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p + 4));
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ __forceinline__ void lds8(const float* p, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t delta_bytes) { return d + (delta_bytes >> 4); }

template <int N_, int R_>
__global__ void __launch_bounds__(kThr, 1) mimo_bwd_bwd_sm90_kernel(const KParams kp) {
  using namespace megacpp::wgmma;
  static_assert(N_ == 64 || N_ == 128, "mimo_bwd_bwd_sm90: N in {64,128}");
  constexpr int R = R_, lR = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : 3, Lc = kM / R, lLc = 6 - lR;
  constexpr int NB = N_ / 64, half = N_ / 2, lhalf = N_ == 128 ? 6 : 5, lN = lhalf + 1;
  constexpr int kQBK = 2048 / kThr, kPSK = 1024 / kThr;  // bias / dΨ partial slots per thread (R·N ≤ 2048, R·P ≤ 1024)
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
  float* W = Zs;
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
  float qb_acc[kQBK], kb_acc[kQBK], psi_acc[kPSK], dd_acc = 0.f;
#pragma unroll
  for (int k = 0; k < kQBK; ++k) qb_acc[k] = kb_acc[k] = 0.f;
#pragma unroll
  for (int k = 0; k < kPSK; ++k) psi_acc[k] = 0.f;
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
    if (warp == 0) {
      const float al = chunk_scalars(kp, b, h, t0, sc);
      if (lane == 0) sc[kWork * kMaxLc] = al;
      __syncwarp();
      step_weights(sc, W, Lc);
    }
    // Q̄, K̄: item (row i, 8 columns cc·8..) with its partner columns + N/2; bias, rotation, bf16, swizzled store
    if (tid < kM * (N_ / 16)) {
      const int i = tid / (N_ / 16), cc = tid % (N_ / 16), s = i >> lR, r = i & (R - 1), c1 = 8 * cc, c2 = c1 + half;
      const size_t qrow = ((tok0 + s) * R * d.G + static_cast<size_t>(r) * d.G + g_) * N_;
      float q1[8], q2[8], k1[8], k2[8], bq[8];
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.in.q + qrow + c1)), q1);
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.in.q + qrow + c2)), q2);
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.in.k + qrow + c1)), k1);
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.in.k + qrow + c2)), k2);
      lds8(qbias + r * N_ + c1, bq);
#pragma unroll
      for (int e = 0; e < 8; ++e) q1[e] += bq[e];
      lds8(qbias + r * N_ + c2, bq);
#pragma unroll
      for (int e = 0; e < 8; ++e) q2[e] += bq[e];
      lds8(kbias + r * N_ + c1, bq);
#pragma unroll
      for (int e = 0; e < 8; ++e) k1[e] += bq[e];
      lds8(kbias + r * N_ + c2, bq);
#pragma unroll
      for (int e = 0; e < 8; ++e) k2[e] += bq[e];
      if (c1 < n_ang) {
        float th[8];
        ldg8a(kp.in.angles + ((tok0 + s) * d.H + h) * n_ang + c1, th);
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
      const int i = tid >> 3, p0 = 8 * (tid & 7), s = i >> lR, r = i & (R - 1);
      const size_t gi = ((tok0 + s) * d.H + h) * kP + p0;
      const uint4 xr = __ldg(reinterpret_cast<const uint4*>(kp.in.v + gi));
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
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.in.z + gi)), z);
      unpack8(__ldg(reinterpret_cast<const uint4*>(kp.dout + gi)), go);
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
#pragma unroll
          for (int e = 0; e < 2; ++e) w2[e] = W[si * Lc + ((col + e) >> lR)];
          *reinterpret_cast<uint32_t*>(smem + L.pm + 2 * sw128_offset<kM>(row, col)) = pack2(S1[i] * w2[0], S1[i + 1] * w2[1]);
          *reinterpret_cast<uint32_t*>(smem + L.gm + 2 * sw128_offset<kM>(row, col)) = pack2(G1[i] * w2[0], G1[i + 1] * w2[1]);
          Z[row * ldz + col] = S1[i] * G1[i];  // odd row stride (bank spread): scalar stores
          Z[row * ldz + col + 1] = S1[i + 1] * G1[i + 1];
        }
      }
    }
    fence_proxy_async();
    __syncthreads();  // (2) Pm, Gm, Gd, Z, red

    // ---- P2: the gradient products (async) and, meanwhile, the step sums of Z and ∂a_last ------------------------
    // run by warpgroup 2 (the lightest: one m64n64k64 product) after its product
    auto side_work = [&]() {  // E[i][j] = e^{a_i − a_j}·Σ_{r,r'} Z (i > j), Σ Z on the diagonal, 0 above (W is dead)
      for (int it = tid - 256; it < Lc * Lc; it += 128) {
        const int ti = it >> lLc, tj = it & (Lc - 1);
        float s = 0.f;
        if (ti >= tj) {
          for (int r = 0; r < R; ++r)
            for (int r2 = 0; r2 < R; ++r2) s += Z[(ti * R + r) * ldz + tj * R + r2];
          if (ti > tj) s *= __expf(sc[kA * kMaxLc + ti] - sc[kA * kMaxLc + tj]);
        }
        Zs[ti * ldzs + tj] = s;
      }
      if (warp == 8) {
        float s = 0.f;
        for (int q = 0; q < kW; ++q) s += red[lane * kW + q];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0) sc[kWork * kMaxLc + 1] = s;
      }
    };
    // per-row scale factor·e^{ā} of the dK̄ / dV state terms
    auto row_w = [&](int row) { const int s = row >> lR; return sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s]; };
    if (wg == 0) {  // dQ̄, one 64-column block at a time
#pragma unroll 1
      for (int nb = 0; nb < NB; ++nb) {
        float acc[32];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kP / 16; ++kk)
          wgmma_m64n64k16_ss<0>(acc, desc_add(dK, L.gd + kmaj(kk)), desc_add(dK, L.scb + nb * 64 * 128 + kmaj(kk)), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {  // row dots Q̄·(Gd·S_cᵀ) of this block
          const int row = row0 + 8 * hh;
          float part = 0.f;
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            const int col = 64 * nb + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
            const float2 u = ld_bf16x2(Qt + sw128_offset<kM>(row, col));
            part += u.x * acc[i] + u.y * acc[i + 1];
          }
          part += __shfl_xor_sync(0xffffffffu, part, 1);
          part += __shfl_xor_sync(0xffffffffu, part, 2);
          if (t4 == 0) rowa[row * NB + nb] = part;
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kM / 16; ++kk)
          wgmma_m64n64k16_ss<1>(acc, desc_add(dK, L.gm + kmaj(kk)), desc_add(dMN, L.k + nb * kM * 128 + kk * 2048), 1);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
#pragma unroll
        for (int q = 0; q < 8; ++q)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = row0 + 8 * hh, col = 64 * nb + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
            *reinterpret_cast<float2*>(dQf + row * ldf + col) = make_float2(acc[i], acc[i + 1]);
          }
      }
    } else if (wg == 1) {  // dK̄
#pragma unroll 1
      for (int nb = 0; nb < NB; ++nb) {
        float acc[32];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kP / 16; ++kk)
          wgmma_m64n64k16_ss<0>(acc, desc_add(dK, L.v + kmaj(kk)), desc_add(dK, L.dsb + nb * 64 * 128 + kmaj(kk)), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const float w = row_w(row0 + 8 * hh);
#pragma unroll
          for (int q = 0; q < 8; ++q) acc[4 * q + 2 * hh] *= w, acc[4 * q + 2 * hh + 1] *= w;
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kM / 16; ++kk)
          wgmma_m64n64k16_ss<1, 1>(acc, desc_add(dMN, L.gm + kk * 2048), desc_add(dMN, L.q + nb * kM * 128 + kk * 2048), 1);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(acc);
#pragma unroll
        for (int q = 0; q < 8; ++q)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = row0 + 8 * hh, col = 64 * nb + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
            *reinterpret_cast<float2*>(dKf + row * ldf + col) = make_float2(acc[i], acc[i + 1]);
          }
      }
    } else if (wg == 2) {  // dS block 0 ← e^{a_last}·dS + Q̄ᵀ·Gd; then the step sums
      const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
      for (int i = 0; i < 32; ++i) dS[i] *= el;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kM / 16; ++kk)
        wgmma_m64n64k16_ss<1, 1>(dS, desc_add(dMN, L.q + kk * 2048), desc_add(dMN, L.gd + kk * 2048), 1);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dS);
      side_work();
    } else {  // warpgroup 3: dV; at N = 128 also dS block 1
      float acc[32];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < N_ / 16; ++kk)
        wgmma_m64n64k16_ss<1>(acc, desc_add(dK, L.k + kmaj(kk)), desc_add(dMN, L.dsb + kk * 2048), kk > 0);
      wgmma_commit();
      if constexpr (N_ == 128) {
        const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
        for (int i = 0; i < 32; ++i) dS[i] *= el;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kM / 16; ++kk)
          wgmma_m64n64k16_ss<1, 1>(dS, desc_add(dMN, L.q + kM * 128 + kk * 2048), desc_add(dMN, L.gd + kk * 2048), 1);
        wgmma_commit();
        wgmma_wait<1>();
      } else {
        wgmma_wait<0>();
      }
      reg_fence(acc);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {  // row dots V·(K̄·dS), then the factor·e^{ā} scale
        const int row = row0 + 8 * hh;
        float part = 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int col = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          const float2 u = ld_bf16x2(Vt + sw128_offset<kM>(row, col));
          part += u.x * acc[i] + u.y * acc[i + 1];
        }
        part += __shfl_xor_sync(0xffffffffu, part, 1);
        part += __shfl_xor_sync(0xffffffffu, part, 2);
        if (t4 == 0) rowx[row] = part;
        const float w = row_w(row);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[4 * q + 2 * hh] *= w, acc[4 * q + 2 * hh + 1] *= w;
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
          const int row = row0 + 8 * hh, col = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          const float2 g2 = ld_bf16x2(Gt + sw128_offset<kM>(row, col));
          *reinterpret_cast<float2*>(dVf + row * ldvf + col) = make_float2(acc[i] + Dh * g2.x, acc[i + 1] + Dh * g2.y);
        }
    }
    __syncthreads();  // (3)

    // ---- P3a: per-step row dots; column suffix sums of the step table; un-rotation of dQ̄/dK̄ and dθ ----------
#pragma unroll 1
    for (int s = warp; s < Lc; s += kW) {
      float da = 0.f, xs = 0.f;
      for (int e = lane; e < R * NB; e += 32) da += rowa[s * R * NB + e];
      for (int e = lane; e < R; e += 32) xs += rowx[s * R + e];
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
    if (tid >= kThr - Lc) {  // Cs[i][j] = Σ_{i' ≥ i} Zs[i'][j] into the Z region (free after P2)
      const int j = tid - (kThr - Lc);
      float acc = 0.f;
      for (int i = Lc - 1; i >= 0; --i) {
        acc += Zs[i * ldzs + j];
        Z[i * ldzs + j] = acc;
      }
    }
#pragma unroll 2
    for (int it = tid; it < Lc * half; it += kThr) {
      const int s = it >> lhalf, j = it & (half - 1), t = t0 + s;
      const bool rot = j < n_ang;
      float sn = 0.f, cs = 1.f;
      if (rot) fast_sincos(__ldg(kp.in.angles + ((tok0 + s) * d.H + h) * n_ang + j), &sn, &cs);
      float dth = 0.f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int i = s * R + r;
        {
          const float e1 = dQf[i * ldf + j], e2 = dQf[i * ldf + j + half];
          const float u1 = bf2f(Qt[sw128_offset<kM>(i, j)]), u2 = bf2f(Qt[sw128_offset<kM>(i, j + half)]);
          dth += e2 * u1 - e1 * u2;
          dQf[i * ldf + j] = cs * e1 + sn * e2;
          dQf[i * ldf + j + half] = -sn * e1 + cs * e2;
        }
        {
          const float e1 = dKf[i * ldf + j], e2 = dKf[i * ldf + j + half];
          const float u1 = bf2f(Kt[sw128_offset<kM>(i, j)]), u2 = bf2f(Kt[sw128_offset<kM>(i, j + half)]);
          dth += e2 * u1 - e1 * u2;
          dKf[i * ldf + j] = cs * e1 + sn * e2;
          dKf[i * ldf + j + half] = -sn * e1 + cs * e2;
        }
      }
      if (rot) kp.dangles[((static_cast<size_t>(b) * d.S + t) * d.H + h) * n_ang + j] = dth;
    }
    __syncthreads();  // (4)

    // ---- P3b: decay/trapezoid scalar gradients; gradient writes; partials; bf16 dS for the next chunk ------------
    if (tid < Lc) {
      const int s = tid;
      const float* fac = sc + kFac * kMaxLc;
      const float* eab = sc + kEAB * kMaxLc;
      const float* dA = sc + kDA * kMaxLc;
      const float* Xsum = sc + kXs * kMaxLc;
      const float* Cs = Z;
      const float dlast = __expf(sc[kWork * kMaxLc]) * sc[kWork * kMaxLc + 1];
      const float dfac = eab[s] * Xsum[s] + (s + 1 < Lc ? Cs[(s + 1) * ldzs + s] : 0.f);
      float gsum = dlast;
      for (int t = s; t < Lc; ++t) gsum += dA[t];
      for (int j = 0; j < s; ++j) gsum += fac[j] * (eab[j] * Xsum[j] + Cs[s * ldzs + j]);
      const size_t o = bh * d.S + t0 + s;
      kp.dadt[o] = gsum;
      kp.dfac[o] = dfac;
      kp.dgam[o] = Zs[s * ldzs + s];
    }
#pragma unroll 2
    for (int it = tid; it < kM * half; it += kThr) {  // dQ/dK per value head (bf16)
      const int i = it >> lhalf, n = (it & (half - 1)) * 2, s = i >> lR, r = i & (R - 1);
      const size_t o = (((tok0 + s) * R + r) * d.H + h) * N_ + n;
      st_bf16x2g(kp.dq_h + o, dQf[i * ldf + n], dQf[i * ldf + n + 1]);
      st_bf16x2g(kp.dk_h + o, dKf[i * ldf + n], dKf[i * ldf + n + 1]);
    }
#pragma unroll
    for (int k = 0; k < kQBK; ++k) {
      const int it = tid + kThr * k;
      if (it < R * N_) {
        const int r = it >> lN, n = it & (N_ - 1);
        float sq = 0.f, sk = 0.f;
        for (int s = 0; s < Lc; ++s) sq += dQf[(s * R + r) * ldf + n], sk += dKf[(s * R + r) * ldf + n];
        qb_acc[k] += sq;
        kb_acc[k] += sk;
      }
    }
    for (int it = tid; it < Lc * 32; it += kThr) {  // dx = Σ_r dV·Ψ: item (step, column pair)
      const int s = it >> 5, p = 2 * (it & 31);
      {
        float a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float2 dv = *reinterpret_cast<const float2*>(dVf + (s * R + r) * ldvf + p);
          a0 += dv.x * psi[r * kP + p], a1 += dv.y * psi[r * kP + p + 1];
        }
        st_bf16x2g(kp.dv + ((tok0 + s) * d.H + h) * kP + p, a0, a1);
      }
    }
#pragma unroll
    for (int k = 0; k < kPSK; ++k) {
      const int it = tid + kThr * k;
      if (it < R * kP) {
        const int r = it >> 6, p = it & (kP - 1);
        float sacc = 0.f;
        for (int s = 0; s < Lc; ++s) sacc += dVf[(s * R + r) * ldvf + p] * bf2f(Xs[s * kP + p]);
        psi_acc[k] += sacc;
      }
    }
    {  // dD partial: Σ g∘V, item (row, 8 columns)
      const int i = tid >> 3, p0 = 8 * (tid & 7);
      float x[8], y[8];
      unpack8(*tile16(L.g, i, p0), x);
      unpack8(*tile16(L.v, i, p0), y);
#pragma unroll
      for (int e = 0; e < 8; ++e) dd_acc += x[e] * y[e];
    }
    if (owns_ds) {  // bf16(dS) → the swizzled [N][64] tile (B operand of the next chunk's dK̄ and dV)
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int n = 64 * sblk + row0 + 8 * hh, p = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          *reinterpret_cast<uint32_t*>(smem + L.dsb + 2 * sw128_offset<N_>(n, p)) = pack2(dS[i], dS[i + 1]);
        }
    }
    fence_proxy_async();
    __syncthreads();  // (5)
  }

  // per-(b,h) partials: each (r,n)/(r,p) element is owned by exactly one thread; dD reduced in fixed order
#pragma unroll
  for (int k = 0; k < kQBK; ++k) {
    const int it = tid + kThr * k;
    if (it < R * N_) {
      kp.p_dqb[bh * R * N_ + it] = qb_acc[k];
      kp.p_dkb[bh * R * N_ + it] = kb_acc[k];
    }
  }
#pragma unroll
  for (int k = 0; k < kPSK; ++k) {
    const int it = tid + kThr * k;
    if (it < R * kP) kp.p_dpsi[bh * R * kP + it] = psi_acc[k];
  }
  red[tid] = dd_acc;
  __syncthreads();
  if (warp == 0) {
    float s = 0.f;
    for (int q = 0; q < kW; ++q) s += red[lane * kW + q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) kp.p_dd[bh] = s;
  }
}

}  // namespace megacpp::mimo::dev::sm90b

namespace megacpp::mimo::dev {
namespace {
bool aligned16b(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
bool forced_off_b() {
  static const bool off = [] {
    const char* e = std::getenv("MEGACPP_MIMO_SM90");
    return e != nullptr && std::string(e) == "0";
  }();
  return off;
}
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
  if (forced_off_b()) return "MEGACPP_MIMO_SM90=0";
  if (d.M != 64) return "M=Lc*R=" + std::to_string(d.M) + " (needs 64)";
  if (d.P != 64) return "P=" + std::to_string(d.P) + " (needs 64)";
  if (d.N != 64 && d.N != 128) return "N=" + std::to_string(d.N) + " (needs 64 or 128)";
  if (d.n_ang < 8 || (d.n_ang & (d.n_ang - 1)) != 0)
    return "n_ang=" + std::to_string(d.n_ang) + " (needs a power of two >= 8)";
  if (sm90_bwd_bwd_smem(d) > kSmemLimit) return "shared memory " + std::to_string(sm90_bwd_bwd_smem(d)) + " B";
  return {};
}
std::string sm90_bwd_bwd_refusal(const KParams& kp) {
  std::string r = sm90_bwd_bwd_refusal(kp.d);
  if (!r.empty()) return r;
  const MimoFwdArgs& a = kp.in;
  if (!aligned16b(a.q) || !aligned16b(a.k) || !aligned16b(a.v) || !aligned16b(a.z) || !aligned16b(a.angles) ||
      !aligned16b(kp.dout) || !aligned16b(kp.states) || (a.psiv_cache && !aligned16b(a.psiv_cache)))
    return "a q/k/v/z/angles/dout/states pointer is not 16-byte aligned";
  return {};
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
