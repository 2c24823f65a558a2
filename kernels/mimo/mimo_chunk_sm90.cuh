// mimo_chunk_sm90.cuh — the Hopper (sm_90a) chunk loop of mimo_fwd (BWD=false) and mimo_bwd_fwd (BWD=true):
// two warpgroups (256 threads) per (h, b), the chunk GEMMs on warpgroup MMA (wgmma), the state fp32 in the wgmma
// accumulator registers, the next chunk's inputs copied with cp.async while this chunk computes.
//
// Math (as mimo_fwd_core.cuh, which stays the path for the shapes this one does not take): per chunk c of Lc = 64/R
// steps, M = 64 rows (row i = s·R + r), a = inclusive decay cumsum, ā = a_last − a, γ, factor:
//   Q̄, K̄ = Rot_θ(q + bias), Rot_θ(k + bias)      bf16, 128B-swizzled tiles [64][N] (q, k copied in, rotated in place)
//   V = bf16(x·Ψ), Vd = bf16(V·factor·e^{ā})       bf16 [64][64] tiles (MN-major B operands)
//   S1 = Q̄·K̄ᵀ                                     wgmma m64n32k16 per warpgroup (its 32 columns), N/16 steps
//   Pm = S1 ⊙ W  (W[i,j] = factor_j e^{a_i−a_j} for s_i > s_j, γ_{s_i} for s_i = s_j, else 0)   bf16 smem tile
//   Y = diag(e^{a})·(Q̄·S_c) + Pm·V + D·V          warpgroup 1: wgmma, Q̄·S_c with S_c as bf16 Sb [N][P] (MN-major)
//   S_{c+1} = e^{a_last}·S_c + K̄ᵀ·Vd               each warpgroup its 64 rows of S (N=64: both the one block):
//                                                  A = K̄ read MN-major (transpose-A), B = Vd, 4 k16 steps
//   out[t,p] = Σ_r Φ[r,p]·silu(z[t,p]Ζ[r,p])·Y[(t,r),p]   from Y in smem (fp32); thread = (step, column pair) with
//        up to 4 of its ranks in registers, Σ_r in a fixed order (then over the lanes of the pair's other ranks)
// BWD: instead of out, dZ[t,p]; per-(b,h) partials of dΦ, dΖ (4 registers per rank the thread owns, reduced once
// after the sweep in a fixed order: deterministic, no atomics); the bf16 chunk-entry states S_c (B,H,nc,N,P) for
// mimo_bwd_bwd.
// Rounding follows mimo_fwd_core.cuh (bf16 Q̄/K̄/V/Vd/Pm/Sb, fp32 elsewhere); σ uses the SFU's approximate exp2 and
// reciprocal (fp32, ~2 ulp) instead of the IEEE division.
//
// Per chunk (5 barriers): (1) chunk c's inputs, scalars and the forward's sin/cos table are ready → the step-weight
// table W, rotate Q̄/K̄, build V/Vd → (2) → wgmma S1 half + state; mask (W) → Pm; warpgroup 1 issues Q̄·S_c →
// (P, named barrier 1) → warpgroup 1: Y = e^a·Yq + Pm·V, Y + D·V → smem; meanwhile warpgroup 0, once warpgroup 1's
// Yq and state products completed (named barrier 2), issues chunk c+1's copies and stores its bf16 S_{c+1} block →
// (3) → warpgroup 1's Sb block (N = 128); epilogue of chunk c → wait for c+1's copies → (4) → warp 0: chunk c+1's
// scalars (one step per lane at Lc ≤ 16), all: its sin/cos table.
// Taken when M = 64, P = 64, N ∈ {64, 128}, n_ang a power of two ≥ 8 and 16-byte aligned inputs (mimo_chunk_sm90.cu;
// MEGACPP_MIMO_SM90=0 forces the mma.sync kernels, for A/B timing). R (so Lc) is a template parameter.
// Resources (ptxas -v, sm_90a, v14): __launch_bounds__(256, 2) → 128 registers and 20–148 B of spill (N=128 R=4:
// forward 32 B, backward 40 B; device cuobjdump of the forward: 17 LDL/STL, the copy addresses reloaded in
// warpgroup 0's wait window and one store/reload around the rotation phase, none in the wgmma, mask or epilogue
// loops; the backward 30; docs/perf/mimo.md); smem sm90_layout(): N=128, R=4: 115,584 B forward (with
// the sin/cos table), 115,328 B backward (with the dout buffers) → 2 CTAs/SM (16 warps); N=64: 85,888 / 87,680 B.
// R = 4 also has a one-CTA-per-SM instance (MINB = 1: 170–189 registers, no spill), launched when B·H ≤ the SM count
// (mimo_chunk_sm90.cu).
#pragma once
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/mimo/mimo_common.cuh"
#include "kernels/mimo/mimo_sm90_common.cuh"

namespace megacpp::mimo::dev::sm90 {

constexpr int kM = 64, kP = 64, kThr = kSm90Threads;  // two warpgroups

// Padded row strides (v14). The rotation / V phase reads the bias, Ψ and sin/cos rows with a rank or step index that
// changes between neighbouring threads; unpadded, those rows lie a multiple of 128 B apart, so every LDS.128 of a
// quarter warp hit 2–4 addresses in one bank group (ablation, docs/perf/mimo.md: that phase was 32 % of mimo_fwd).
// 16 B of padding per row puts them in different banks.
__host__ __device__ constexpr int bias_ld(int N) { return N + 4; }           // q/k bias rows (floats)
constexpr int kPsiLd = kP + 4;                                                // Ψ rows (floats)
__host__ __device__ constexpr int ang_ld(int n_ang) { return n_ang + 4; }    // staged angle rows (floats)
__host__ __device__ constexpr int tab_ld(int n_ang) { return n_ang + 2; }    // (sin, cos) table rows (float2)

// Byte offsets from the 1024-aligned base; the wgmma tiles of 64 rows first (multiples of 8 KB).
struct Sm90Layout {
  uint32_t q, k, v, vd, pm, sb, ys, vraw, zraw, draw, ang, tab, sc, w, psi, phi, zeta, qb, kb, total;
  uint32_t raw_bytes;  // one Lc×P bf16 block (v; one half of the z / dout double buffers)
};
// table: the forward keeps a per-chunk (sin θ, cos θ) table (prep, after the copies landed); the backward computes
// them inline (its smem has no room for the table at 2 CTAs/SM).
__host__ __device__ inline Sm90Layout sm90_layout(int N, int R, int n_ang, bool bwd) {
  const int Lc = kM / R;
  Sm90Layout L{};
  uint32_t o = 0;
  auto take = [&](uint32_t bytes) { uint32_t r = o; o = (o + bytes + 127u) & ~127u; return r; };
  L.q = take(2u * kM * N);
  L.k = take(2u * kM * N);
  L.v = take(2u * kM * kP);
  L.vd = take(2u * kM * kP);
  L.pm = take(2u * kM * kM);
  L.sb = take(2u * N * kP);
  L.ys = take(4u * kM * kP);
  L.raw_bytes = 2u * Lc * kP;
  L.vraw = take(L.raw_bytes);
  L.zraw = take(2u * L.raw_bytes);
  L.draw = bwd ? take(2u * L.raw_bytes) : 0u;
  L.sc = take(4u * 16 * kMaxLc);
  L.w = R == 2 ? take(4u * Lc * Lc) : 0u;  // the step-weight table; R >= 4: in free scalar slots, R = 1: none
  L.psi = take(4u * R * kPsiLd);
  L.phi = take(4u * R * kP);
  L.zeta = take(4u * R * kP);
  L.qb = take(4u * R * bias_ld(N));
  L.kb = take(4u * R * bias_ld(N));
  L.ang = take(4u * Lc * ang_ld(n_ang));  // last: every offset before it is a compile-time constant in the kernel
  L.tab = bwd ? 0u : take(8u * Lc * tab_ld(n_ang));
  L.total = o + 1024u;  // + alignment slack of the dynamic smem base
  return L;
}
// Y (fp32 [64][64]) in smem: the float2 pair index is XORed with 4·(row & 7), so that the accumulator-fragment
// stores (8 rows × 4 pairs per warp) hit distinct banks and the epilogue's reads (R rows × 32/R pairs) at most 2-way.
__device__ __forceinline__ int ys_index(int row, int col) {
  return row * kP + ((((col >> 1) ^ ((row & 7) << 2)) & 31) << 1) + (col & 1);
}

// Barrier 1 over all 256 threads, reached from the two warpgroups' different branches (barrier 0 is
// __syncthreads, used where the whole CTA runs the same code).
__device__ __forceinline__ void named_barrier_1() { asm volatile("bar.sync 1, %0;\n" ::"n"(kThr) : "memory"); }
// Barrier 2, split: warpgroup 1 arrives (does not wait) once its reads of Q̄/K̄/Sb are done; warpgroup 0 waits for that.
__device__ __forceinline__ void named_arrive_2() { asm volatile("bar.arrive 2, %0;\n" ::"n"(kThr) : "memory"); }
__device__ __forceinline__ void named_sync_2() { asm volatile("bar.sync 2, %0;\n" ::"n"(kThr) : "memory"); }

// σ(x) from the SFU's approximate exp2 and reciprocal (ex2.approx.ftz, rcp.approx.ftz): two operations, no IEEE
// division slow path and no denormal branches in the epilogue; σ(−∞) = 0, σ(+∞) = 1.
__device__ __forceinline__ float sigmoid_fast(float x) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.f + e));
  return r;
}

// MINB: CTAs per SM the registers are budgeted for (2: ≤ 128 registers; 1: when B·H ≤ the SM count, see
// mimo_chunk_sm90.cu).
template <int N_, bool BWD, int R_, int MINB>
__global__ void __launch_bounds__(kThr, MINB) mimo_chunk_sm90_kernel(const KParams kp) {
  using namespace megacpp::wgmma;
  static_assert(N_ == 64 || N_ == 128, "mimo_chunk_sm90: N in {64,128}");
  static_assert(R_ == 1 || R_ == 2 || R_ == 4 || R_ == 8, "mimo_chunk_sm90: R in {1,2,4,8}");
  constexpr int R = R_, lR = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : 3, Lc = kM / R;
  constexpr bool kTable = !BWD;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t s0 = smem_addr(smem_raw);
  const uint32_t sbase = (s0 + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (sbase - s0);
  const MimoDims& d = kp.d;
  const int n_ang = d.n_ang, lac = __ffs(n_ang >> 2) - 1;  // n_ang ∈ {8, .., 64}: a power of two
  const int angld = ang_ld(n_ang), tabld = tab_ld(n_ang);
  const Sm90Layout L = sm90_layout(N_, R, n_ang, BWD);
  const int h = blockIdx.x, b = blockIdx.y, g_ = h / (d.H / d.G);
  const int tid = threadIdx.x, wg = tid >> 7, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int row0 = 16 * (warp & 3) + gq;  // this thread's first accumulator row in its warpgroup's 64-row tile
  const size_t bh = static_cast<size_t>(b) * d.H + h;
  float* sc = reinterpret_cast<float*>(smem + L.sc);
  float* psi = reinterpret_cast<float*>(smem + L.psi);
  float* phi = reinterpret_cast<float*>(smem + L.phi);
  float* zeta = reinterpret_cast<float*>(smem + L.zeta);
  float* qbias = reinterpret_cast<float*>(smem + L.qb);
  float* kbias = reinterpret_cast<float*>(smem + L.kb);
  float* ys = reinterpret_cast<float*>(smem + L.ys);
  const float* ang = reinterpret_cast<const float*>(smem + L.ang);
  float2* tab = reinterpret_cast<float2*>(smem + L.tab);
  // Step-weight table W[si·Lc + sj] (step_weight) of the chunk, built after barrier (1), read by the mask after (2):
  // one exp per step pair instead of one per accumulator pair. R >= 4 (Lc·Lc <= 256): the scalar slots kDA..kDfac,
  // which this kernel does not use; R = 2: its own region; R = 1 (64×64 distinct pairs): computed inline.
  constexpr bool kWTab = R >= 2;
  static_assert(R < 4 || Lc * Lc <= 4 * kMaxLc, "W fits slots kDA..kDfac");
  float* wt = R >= 4 ? sc + kDA * kMaxLc : reinterpret_cast<float*>(smem + L.w);
  const float Dh = kp.in.d[h];
  // State block of this warpgroup: rows 64·wg.. of S at N = 128. At N = 64 both warpgroups compute the one block
  // (the wgmma then sits on no thread-dependent branch, which would make ptxas serialise every wgmma) and only
  // warpgroup 0 stores it.
  const bool owns_state = N_ == 128 || wg == 0;
  const int sblk = N_ == 128 ? wg : 0;

  // Base descriptors of the wgmma operand tiles (see wgmma_sm90.cuh), advanced per k16 step with desc_add.
  // Three kinds (K-major; MN-major of 64 rows; MN-major of N rows), each one 64-bit register pair held over the
  // loop: a tile's descriptor is its kind's base plus the tile offset (compile-time constants but for wg).
  const uint64_t dKmaj = desc_kmajor<kM>(sbase, 0, 0), dMn64 = desc_mnmajor<kM>(sbase, 0), dMnN = desc_mnmajor<N_>(sbase, 0);
  load_params<kThr>(kp, h, psi, phi, zeta, qbias, kbias, kPsiLd, bias_ld(N_));
  for (int i = tid; i < N_ * kP / 8; i += kThr) reinterpret_cast<uint4*>(smem + L.sb)[i] = make_uint4(0, 0, 0, 0);

  // Copies of chunk c's inputs, issued by warpgroup 0 (v14: in the window where it waits for warpgroup 1's Y products;
  // warp 0 also the raw scalars, as its own cp.async group).
  constexpr int kIss = 128;  // threads that issue the copies
  auto issue = [&](int c) {
    const int t0 = c * Lc, par = c & 1;
    constexpr int CH = N_ / 8;  // 16-byte chunks per q/k row
    // 64-bit base of the chunk's first step, 32-bit offsets inside the chunk (no 64-bit multiplies per copy)
    const size_t tok = static_cast<size_t>(b) * d.S + t0;
    const bf16_bits* qg = kp.in.q + (tok * R * d.G + g_) * N_;
    const bf16_bits* kg = kp.in.k + (tok * R * d.G + g_) * N_;
#pragma unroll
    for (int it = 0; it < kM * CH / kIss; ++it) {
      const int idx = tid + it * kIss, i = idx / CH, cc = idx % CH;  // row i = s·R + r: row offset i·G·N
      const uint32_t off = 2u * sw128_offset<kM>(i, cc * 8), go = static_cast<uint32_t>(i * d.G * N_ + cc * 8);
      cp16(sbase + L.q + off, qg + go);
      cp16(sbase + L.k + off, kg + go);
    }
    const size_t hp = (tok * d.H + h) * kP;
    const int HP = d.H * kP;
#pragma unroll
    for (int it = 0; it < (Lc * 8 + kIss - 1) / kIss; ++it) {
      const int idx = tid + it * kIss, s = idx >> 3, cc = idx & 7;
      if (idx < Lc * 8) {
        const uint32_t go = static_cast<uint32_t>(s * HP + cc * 8);
        const uint32_t so = 2u * (s * kP + cc * 8), sp = par * L.raw_bytes + so;
        cp16(sbase + L.vraw + so, kp.in.v + hp + go);
        cp16(sbase + L.zraw + sp, kp.in.z + hp + go);
        if constexpr (BWD) cp16(sbase + L.draw + sp, kp.dout + hp + go);
      }
    }
    const float* ag = kp.in.angles + (tok * d.H + h) * n_ang;
    for (int idx = tid; idx < Lc << lac; idx += kIss) {  // 16-byte chunks of the angle rows (2^lac per row)
      const int s = idx >> lac, j = idx & ((1 << lac) - 1);
      cp16(sbase + L.ang + 4u * (s * angld + 4 * j), ag + static_cast<uint32_t>(s * d.H * n_ang + 4 * j));
    }
    if (warp == 0) stage_scalars_issue(kp, b, h, t0, sc);
    cp_async_commit();
  };
  // After chunk c's copies landed (wait + barrier): warp 0 turns the staged raw scalars into the chunk scalars;
  // the forward's (sin, cos) table of the chunk's angles (once per (step, angle), not once per rank).
  auto prep = [&](int c) {
    if (warp == 0) chunk_scalars_staged_for<Lc>(d.S, c * Lc, sc);
    if constexpr (kTable) {
      for (int i = tid; i < Lc * n_ang; i += kThr) {
        const int s = i >> (lac + 2), a = i & (n_ang - 1);
        float sn, cs;
        fast_sincos(ang[s * angld + a], &sn, &cs);
        tab[s * tabld + a] = make_float2(sn, cs);
      }
    }
  };

  float S[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) S[i] = 0.f;
  // Epilogue mapping (fixed over the sweep): a thread owns RT ranks re = rg·RT + j of a (step, column pair) and sums
  // them in registers; the RG = R/RT rank groups of a pair sit in adjacent lanes and are summed by log2(RG) shuffles
  // (v14; v12 had one rank per lane, RG = R). RT = 4 (RG = 1 for R <= 4: pair = lane, a warp reads one row of Y
  // and z and stores 128 contiguous bytes of out; steps warp + 8k), except in the backward at 2 CTAs/SM, where RT = 2
  // bounds the dΦ/dΖ partials the thread holds over the sweep (4·RT registers). Steps sg + SG·k, SG = 8/RG.
  constexpr int kMaxRT = BWD && MINB == 2 ? 2 : 4, RT = R < kMaxRT ? R : kMaxRT, RG = R / RT;
  constexpr int PW = 32 / RG, SG = 8 / RG;
  const int rg = lane % RG, pe = 2 * ((warp % RG) * PW + lane / RG), sg = warp / RG;
  // BWD: this thread's dΦ / dΖ partials (ranks rg·RT + j, columns pe, pe + 1)
  float dphi_acc[RT][2], dzeta_acc[RT][2];
#pragma unroll
  for (int j = 0; j < RT; ++j) dphi_acc[j][0] = dphi_acc[j][1] = dzeta_acc[j][0] = dzeta_acc[j][1] = 0.f;

  if (wg == 0) issue(0);
  cp_async_wait_all();
  __syncthreads();
  prep(0);

  fence_proxy_async();  // Sb zeros → async proxy

  for (int c = 0; c < d.nc; ++c) {
    const int t0 = c * Lc, par = c & 1;
    __syncthreads();  // (1) chunk c's inputs, scalars (and table); Sb holds bf16(S_c)
    if constexpr (BWD) {  // S_c (bf16) for mimo_bwd_bwd, row-major [n][p]
      bf16_bits* dst = kp.states + (bh * d.nc + c) * static_cast<size_t>(N_) * kP;
#pragma unroll
      for (int it = 0; it < N_ * 8 / kThr; ++it) {
        const int idx = tid + it * kThr, n = idx >> 3, j = idx & 7;
        *reinterpret_cast<uint4*>(dst + n * kP + j * 8) =
            *reinterpret_cast<const uint4*>(smem + L.sb + 2 * sw128_offset<N_>(n, j * 8));
      }
    }
    if constexpr (kWTab) {
      for (int e = tid; e < Lc * Lc; e += kThr) wt[e] = step_weight(sc, e / Lc, e % Lc);
    }
    // Q̄, K̄ in place: item (row, column chunk cc) with its partner chunk cc + N/16 (columns + N/2).
    {
      const int row = tid & 63, s = row >> lR, r = row & (R - 1);
      const float* qb = qbias + r * bias_ld(N_);
      const float* kb = kbias + r * bias_ld(N_);
#pragma unroll 1
      for (int k = 0; k < N_ / 64; ++k) {  // not unrolled: two items' 64 values plus S exceed 128 registers
        const int cc = (tid >> 6) + 4 * k, c1 = cc * 8, c2 = c1 + N_ / 2;
        uint4* pq1 = reinterpret_cast<uint4*>(smem + L.q + 2 * sw128_offset<kM>(row, c1));
        uint4* pq2 = reinterpret_cast<uint4*>(smem + L.q + 2 * sw128_offset<kM>(row, c2));
        uint4* pk1 = reinterpret_cast<uint4*>(smem + L.k + 2 * sw128_offset<kM>(row, c1));
        uint4* pk2 = reinterpret_cast<uint4*>(smem + L.k + 2 * sw128_offset<kM>(row, c2));
        float q1[8], q2[8], k1[8], k2[8];
        unpack8(*pq1, q1), unpack8(*pq2, q2), unpack8(*pk1, k1), unpack8(*pk2, k2);
        add8(q1, qb + c1), add8(q2, qb + c2), add8(k1, kb + c1), add8(k2, kb + c2);
        if (c1 < n_ang) {
          float sn[8], cs[8];
          if constexpr (kTable) {
            const float4* tp = reinterpret_cast<const float4*>(tab + s * tabld + c1);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float4 u = tp[e];
              sn[2 * e] = u.x, cs[2 * e] = u.y, sn[2 * e + 1] = u.z, cs[2 * e + 1] = u.w;
            }
          } else {
            const float* th = ang + s * angld + c1;
#pragma unroll
            for (int e = 0; e < 8; ++e) fast_sincos(th[e], &sn[e], &cs[e]);
          }
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float a1 = cs[e] * q1[e] - sn[e] * q2[e], a2 = sn[e] * q1[e] + cs[e] * q2[e];
            q1[e] = a1, q2[e] = a2;
            const float b1 = cs[e] * k1[e] - sn[e] * k2[e], b2 = sn[e] * k1[e] + cs[e] * k2[e];
            k1[e] = b1, k2[e] = b2;
          }
        }
        *pq1 = pack8(q1), *pq2 = pack8(q2), *pk1 = pack8(k1), *pk2 = pack8(k2);
      }
    }
    // V, Vd: item (row, 8-column chunk); the PsiV cache (forward) from the same values.
    {
      const int row = tid & 63, s = row >> lR, r = row & (R - 1);
      const float w = sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s];
      const bf16_bits* xr = reinterpret_cast<const bf16_bits*>(smem + L.vraw) + s * kP;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int c1 = ((tid >> 6) + 4 * k) * 8;
        float x[8];
        unpack8(*reinterpret_cast<const uint4*>(xr + c1), x);
        const float* ps = psi + r * kPsiLd + c1;
        float xv[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) xv[e] = x[e] * ps[e];
        const uint4 vv = pack8(xv);  // V = bf16(x·Ψ); Vd from the rounded V (as mimo_fwd_core.cuh)
        float v[8], vd[8];
        unpack8(vv, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) vd[e] = v[e] * w;
        *reinterpret_cast<uint4*>(smem + L.v + 2 * sw128_offset<kM>(row, c1)) = vv;
        *reinterpret_cast<uint4*>(smem + L.vd + 2 * sw128_offset<kM>(row, c1)) = pack8(vd);
        if (!BWD && kp.in.psiv_cache)
          *reinterpret_cast<uint4*>(kp.in.psiv_cache + ((bh * d.S + t0) * R + row) * kP + c1) = vv;
      }
    }
    fence_proxy_async();
    __syncthreads();  // (2) Q̄, K̄, V, Vd → wgmma

    // Both warpgroups: S1 columns 32·wg.. (m64n32) → Pm; their state block S ← e^{a_last}·S + K̄ᵀ·Vd.
    // Warpgroup 1 also: Yq = Q̄·S_c, Y = e^{a}·Yq + Pm·V (after the named barrier), Y + D·V → ys.
    const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
    for (int i = 0; i < 32; ++i) S[i] *= el;
    float S1[16], Y[32];
    // k16 step kk of a K-major tile of 64 rows: + (kk/4)·8 KB + (kk%4)·32 B; of an MN-major tile: + kk·2 KB
    auto kmaj = [](int kk) { return static_cast<uint32_t>((kk >> 2) * kM * 128 + (kk & 3) * 32); };
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < N_ / 16; ++kk)
      wgmma_m64n32k16_ss(S1, desc_add(dKmaj, L.q + kmaj(kk)), desc_add(dKmaj, L.k + 32 * 128 * wg + kmaj(kk)), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kM / 16; ++kk)
      wgmma_m64n64k16_ss<1, 1>(S, desc_add(dMn64, L.k + sblk * 64 * 128 + kk * 2048), desc_add(dMn64, L.vd + kk * 2048), 1);
    wgmma_commit();
    wgmma_wait<1>();
    reg_fence(S1);
    {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = row0 + 8 * hh, si = row >> lR;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int col = 32 * wg + 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          float w2[2];
          if constexpr (kWTab) {  // both columns of the pair are one step
            w2[0] = w2[1] = wt[si * Lc + (col >> lR)];
          } else {
            w2[0] = step_weight(sc, si, col), w2[1] = step_weight(sc, si, col + 1);
          }
          *reinterpret_cast<uint32_t*>(smem + L.pm + 2 * sw128_offset<kM>(row, col)) = pack2(S1[i] * w2[0], S1[i + 1] * w2[1]);
        }
      }
    }
    fence_proxy_async();
    // Warpgroup 1 issues Yq only now (S1's registers are dead: ≤ 128 registers without spills); the tensor cores
    // run it while the warpgroups meet at the barrier.
    if (wg == 1) {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < N_ / 16; ++kk)
        wgmma_m64n64k16_ss<1>(Y, desc_add(dKmaj, L.q + kmaj(kk)), desc_add(dMnN, L.sb + kk * 2048), kk > 0);
      wgmma_commit();
    }
    named_barrier_1();  // (P) both halves of Pm → warpgroup 1's Pm·V
    if (wg == 1) {
      wgmma_wait<0>();  // Yq and this warpgroup's state product: its reads of Q̄, K̄ and Sb are done
      reg_fence(Y);
      named_arrive_2();
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float ea = sc[kEA * kMaxLc + ((row0 + 8 * hh) >> lR)];
#pragma unroll
        for (int q = 0; q < 8; ++q) Y[4 * q + 2 * hh] *= ea, Y[4 * q + 2 * hh + 1] *= ea;
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kM / 16; ++kk)
        wgmma_m64n64k16_ss<1>(Y, desc_add(dKmaj, L.pm + kmaj(kk)), desc_add(dMn64, L.v + kk * 2048), 1);
      wgmma_commit();
    }
    wgmma_wait<0>();
    reg_fence(Y);
    reg_fence(S);
    // bf16(S_{c+1}) → Sb (this warpgroup's block) for the next chunk's Q̄·S_c, once the wgmma that read Sb completed
    auto store_sb = [&] {
      store_acc64_bf16<N_>(smem + L.sb, sblk, row0, t4, S);
      fence_proxy_async();
    };
    if (wg == 1) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = row0 + 8 * hh;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int col = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          const float2 vv = ld_bf16x2(reinterpret_cast<const bf16_bits*>(smem + L.v + 2 * sw128_offset<kM>(row, col)));
          *reinterpret_cast<float2*>(ys + ys_index(row, col)) = make_float2(Y[i] + Dh * vv.x, Y[i + 1] + Dh * vv.y);
        }
      }
    } else {
      // v14: warpgroup 0 would idle here until warpgroup 1's Y is in ys. Once warpgroup 1's Yq and state products
      // have completed (named barrier 2; its own completed at the wait above), nothing reads Q̄, K̄ or Sb of chunk c
      // any more: it issues chunk c+1's copies (into the Q̄/K̄ tiles, v, the other z half, angles, raw scalars)
      // and stores its Sb block, work that before v14 all eight warps did after barrier (3).
      named_sync_2();
      if (c + 1 < d.nc) issue(c + 1);
      store_sb();  // N = 64: the one block (both warpgroups computed it)
    }
    __syncthreads();  // (3) every wgmma of chunk c has read its tiles; Y in ys
    if (N_ == 128 && wg == 1) store_sb();
    // Epilogue of chunk c: thread (ranks rg·RT + j, pair pe), steps sg + SG·k; Σ_r in registers, then over the RG
    // lanes of the pair. Ζ, Φ of the thread's ranks are read per chunk: not held over the rotation phase.
    {
      const bf16_bits* zr = reinterpret_cast<const bf16_bits*>(smem + L.zraw + par * L.raw_bytes);
      const bf16_bits* dr = reinterpret_cast<const bf16_bits*>(smem + L.draw + par * L.raw_bytes);
      bf16_bits* og = (BWD ? kp.dz : kp.in.out) + ((static_cast<size_t>(b) * d.S + t0) * d.H + h) * kP + pe;
      const int HP = d.H * kP;
#pragma unroll 1
      for (int k = 0; k < Lc / SG; ++k) {
        const int s = sg + SG * k;
        const float2 zz = ld_bf16x2(zr + s * kP + pe);
        float2 go = make_float2(0.f, 0.f);
        if constexpr (BWD) go = ld_bf16x2(dr + s * kP + pe);
        float o0 = 0.f, o1 = 0.f;
#pragma unroll
        for (int j = 0; j < RT; ++j) {
          const int re = rg * RT + j;  // ranks of one thread in adjacent Y rows: its RG lanes read different banks
          const float2 zt = *reinterpret_cast<const float2*>(zeta + re * kP + pe);
          const float2 ph = *reinterpret_cast<const float2*>(phi + re * kP + pe);
          const float2 y = *reinterpret_cast<const float2*>(ys + ys_index(s * R + re, pe));
          const float u0 = zz.x * zt.x, u1 = zz.y * zt.y;
          const float sg0 = sigmoid_fast(u0), sg1 = sigmoid_fast(u1);
          const float si0 = u0 * sg0, si1 = u1 * sg1;
          if constexpr (!BWD) {
            o0 += ph.x * si0 * y.x;
            o1 += ph.y * si1 * y.y;
          } else {
            const float c0 = go.x * ph.x * y.x * sg0 * (1.f + u0 * (1.f - sg0));
            const float c1 = go.y * ph.y * y.y * sg1 * (1.f + u1 * (1.f - sg1));
            o0 += c0 * zt.x, o1 += c1 * zt.y;
            dphi_acc[j][0] += go.x * si0 * y.x;
            dphi_acc[j][1] += go.y * si1 * y.y;
            dzeta_acc[j][0] += c0 * zz.x;
            dzeta_acc[j][1] += c1 * zz.y;
          }
        }
#pragma unroll
        for (int off = 1; off < RG; off <<= 1) {
          o0 += __shfl_xor_sync(0xffffffffu, o0, off);
          o1 += __shfl_xor_sync(0xffffffffu, o1, off);
        }
        if (rg == 0) st_bf16x2g(og + static_cast<uint32_t>(s * HP), o0, o1);
      }
    }
    if (c + 1 < d.nc) {
      cp_async_wait_all();
      __syncthreads();  // (4) chunk c+1's copies (every thread's) have landed
      prep(c + 1);
    }
  }

  if constexpr (!BWD) {
    if (kp.in.final_state && owns_state) {
      float* fs = kp.in.final_state + bh * static_cast<size_t>(N_) * kP;
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int n = 64 * sblk + row0 + 8 * hh, p = 8 * q + 2 * t4, i = 4 * q + 2 * hh;
          *reinterpret_cast<float2*>(fs + n * kP + p) = make_float2(S[i], S[i + 1]);
        }
    }
  } else {
    // Deterministic dΦ/dΖ partials of (b,h): thread (ranks rg·RT + j, pair pe, step group sg) holds steps sg + SG·k
    // of every chunk; per-thread partials [which][sg][re][p] (2·SG·R·64 = 2·8·RT·64 floats ≤ 16 KB) in the (now free) tiles from
    // Q̄ on, summed over the SG step groups in order.
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem + L.q);
#pragma unroll
    for (int j = 0; j < RT; ++j) {
      const int re = rg * RT + j, o = (sg * R + re) * kP + pe, o2 = ((SG + sg) * R + re) * kP + pe;
      red[o] = dphi_acc[j][0], red[o + 1] = dphi_acc[j][1];
      red[o2] = dzeta_acc[j][0], red[o2 + 1] = dzeta_acc[j][1];
    }
    __syncthreads();
    for (int o = tid; o < 2 * R * kP; o += kThr) {
      const int which = o / (R * kP), rp = o % (R * kP);
      float acc = 0.f;
      for (int g = 0; g < SG; ++g) acc += red[((which * SG + g) * R) * kP + rp];
      (which ? kp.p_dzeta : kp.p_dphi)[bh * R * kP + rp] = acc;
    }
  }
}

}  // namespace megacpp::mimo::dev::sm90
