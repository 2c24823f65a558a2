// mimo_fwd_core.cuh — the forward chunk loop shared by mimo_fwd (BWD=false) and mimo_bwd_fwd (BWD=true).
//
// One CTA (512 or 256 threads, see Resources) per (h, b); chunks of Lc steps (M = Lc·R rows, row i = s·R + r) in order.
// Per chunk c (a = inclusive decay cumsum, ā = a_last − a, γ, factor = γ + γ̃, all fp32):
//   Q̄, K̄ = Rot_θ(q + bias), Rot_θ(k + bias)                       bf16 [M][N] in smem
//   V = x·Ψ, Vd = factor·e^{ā}·V                                     bf16 [M][P]
//   Pm[i,j] = Q̄_i·K̄_j · (s_i > s_j ? factor_j e^{a_i − a_j} : s_i == s_j ? γ_{s_i} : 0)        (MMA, K=N)
//       (same-step blocks: Q̄·K̄ = q·k since the rotations cancel, so the diagonal term needs no extra GEMM)
//   Y = diag(e^{a})·Q̄·S_c + Pm·V + D·V                              (MMA, K=N then K=M) → fp32 smem
//   S_{c+1} = e^{a_last}·S_c + K̄ᵀ·Vd                                 (MMA, state N×P fp32 in registers)
//   out[t,p] = Σ_r Φ[r,p]·silu(z[t,p]Ζ[r,p])·Y[(t,r),p]
// BWD: writes S_c (bf16, the state entering each chunk) for mimo_bwd_bwd, dZ, and per-(b,h) partials of dΦ, dΖ.
// Resources: NTH = 512 threads (NT = 2, ≤ 64 regs, 2 CTAs/SM) when N·P ≤ 8192 (bwd: and R ≤ 4), else 256 threads
// (NT = 4 or 8); state NT·8 fp32 regs/thread; smem fwd_layout() (112,640 B at N=128,P=64,M=64). ptxas (v10, sm_90a):
// no spills in any instance: fwd 512-thread 64 regs, 256-thread NT=8 136; bwd 512-thread 64, NT=4 124, NT=8 178.
// (v8 had fwd 512: 8 B spill; bwd 512: 192 B spill stores / 128 B loads, 72 LDL/STL in SASS.) v10: the smem layout
// offsets come from the kernel parameters (KParams::fo, constant bank) and the 512-thread backward folds its dΦ/dΖ
// partials through shared memory once per chunk instead of holding 16 accumulators per thread (see below).
// v8 (mimo_fwd only): the chunk's raw scalars are staged in shared memory one chunk ahead (stage_scalars_issue).
#pragma once
#include "kernels/mimo/mimo_common.cuh"

namespace megacpp::mimo::dev {

// NTH: threads per CTA (256 or 512); NT: state tiles (16×16) per warp, ≥ ceil(N·P/(16·NTH)); RMAX ≥ R bounds the
// backward's per-thread dΦ/dΖ partials (2·RMAX·2 registers).
// v7: NTH = 512 with NT = 2 (N·P ≤ 8192) and __launch_bounds__(512, 2): 32 warps per SM at ≤ 64 registers instead of
// 16 warps at ≤ 128 (both fill the register file; smem 112,640 B per CTA fits 2 per SM either way).
// NTH = 256: NT = 4 → 2 CTAs/SM (≤ 128 regs), NT = 8 → 1 CTA/SM.
template <bool BWD, int NTH, int NT, int RMAX>
__global__ void __launch_bounds__(NTH, (NTH == 512 || NT <= 4) ? 2 : 1) mimo_fwd_kernel(const KParams kp) {
  constexpr int NW = NTH / 32;
  constexpr int kUnr = 2;  // K-loop unroll of the tile products (1 at 512 threads: no fewer spills, ptxas v7)
  static_assert(RMAX <= 8, "mimo_fwd_kernel: RMAX <= 8");
  extern __shared__ __align__(16) unsigned char smem[];
  const MimoDims& d = kp.d;
  const int h = blockIdx.x, b = blockIdx.y;
  const int N = d.N, P = d.P, R = d.R, M = d.M, Mp = d.Mp, Lc = d.Lc, lR = kp.lR;
  const int ldq = N + 8, ldv = P + 8, ldm = Mp + 8, ldy = P + 4;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const FwdOffsets& Lo = kp.fo;  // v10: fwd_layout()'s offsets from the constant bank, not live registers
  float* psi = reinterpret_cast<float*>(smem + Lo.psi);
  float* phi = reinterpret_cast<float*>(smem + Lo.phi);
  float* zeta = reinterpret_cast<float*>(smem + Lo.zeta);
  float* qbias = reinterpret_cast<float*>(smem + Lo.qb);
  float* kbias = reinterpret_cast<float*>(smem + Lo.kb);
  float* sc = reinterpret_cast<float*>(smem + Lo.sc);
  // dΦ/dΖ reduction scratch (2·NTH floats), used only after the chunk loop: the tile region from Q̄ on is free then
  // (≥ 8 KB at every supported shape; the `sc` region reserves only 2·kThreads floats).
  float* red = reinterpret_cast<float*>(smem + Lo.qbar);
  bf16* Qb = reinterpret_cast<bf16*>(smem + Lo.qbar);
  bf16* Kb = reinterpret_cast<bf16*>(smem + Lo.kbar);
  bf16* V = reinterpret_cast<bf16*>(smem + Lo.v);
  bf16* Vd = reinterpret_cast<bf16*>(smem + Lo.vd);
  bf16* Pm = reinterpret_cast<bf16*>(smem + Lo.pm);
  bf16* Sb = reinterpret_cast<bf16*>(smem + Lo.sb);
  float* Ys = reinterpret_cast<float*>(smem + Lo.ys);
  float* W = reinterpret_cast<float*>(smem + Lo.w);
  const float Dh = kp.in.d[h];

  load_params<NTH>(kp, h, psi, phi, zeta, qbias, kbias);
  for (int i = tid; i < N * ldv; i += NTH) Sb[i] = __float2bfloat16(0.f);
  zero_pad_rows<NTH>(Qb, ldq, M, Mp);
  zero_pad_rows<NTH>(Kb, ldq, M, Mp);
  zero_pad_rows<NTH>(V, ldv, M, Mp);
  zero_pad_rows<NTH>(Vd, ldv, M, Mp);

  float S[NT][2][4];
#pragma unroll
  for (int k = 0; k < NT; ++k) zero_acc(S[k]);
  const int ptiles = P / 16, ntS = (N / 16) * ptiles;
  const int lP = __ffs(P) - 1, lpt = __ffs(ptiles) - 1, lmt = __ffs(Mp / 16) - 1;
  // v10: the 512-thread backward instance keeps no per-thread dΦ/dΖ partials over the sweep (16 registers that made
  // it spill 192 B at the 64-register cap): phase C writes each chunk's per-(s,r,p) contributions to shared memory
  // (dΦ in place over its own Ys entries, dΖ as [M][P] fp32 over the V/Vd/Pm region, both free until the next
  // chunk's first barrier) and at the top of the next chunk the top 2·R·P/4 threads sum them over s into one float4
  // each (fold_dpz). Deterministic: fixed summation order.
  constexpr bool kFold = BWD && NTH == 512;
  static_assert(!kFold || RMAX <= 4, "mimo_fwd_kernel: the folded dPhi/dZeta path needs 2*R*128/4 <= 512");
  constexpr int kAcc = kFold ? 1 : RMAX;
  float dphi_acc[kAcc][2], dzeta_acc[kAcc][2];
#pragma unroll
  for (int r = 0; r < kAcc; ++r) dphi_acc[r][0] = dphi_acc[r][1] = dzeta_acc[r][0] = dzeta_acc[r][1] = 0.f;
  // kFold: the chunk's dΖ contributions dzc [M][P] fp32 over V..Pm (4·M·P ≤ 4·Mp·(P+8) bytes); the running sums
  // (2·R·P floats) in the `sc` region after the scalar slots (fwd_layout reserves max(2·kThreads, 2·R·P) floats
  // there), not in registers: a float4 accumulator kept in registers spilled again (36 B, ptxas). Quads
  // (which, r, p..p+3) are summed by the top nq = 2·R·P/4 threads (warp 0 computes the chunk scalars meanwhile).
  float* dzc = reinterpret_cast<float*>(smem + Lo.v);
  auto fold_dpz = [&](bool last) {  // acc += Σ_s of the last chunk's contributions (after a barrier)
    const int nq = (2 * P * R) >> 2, q = tid - (NTH - nq);
    if (q >= 0) {
      const int qq = q & ((nq >> 1) - 1), which = q >= (nq >> 1);
      const int r = qq >> (lP - 2), p = (qq << 2) & (P - 1);
      const float* src = which ? dzc + r * P + p : Ys + r * ldy + p;
      const int st = which ? (R << lP) : R * ldy;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int s = 0; s < Lc; ++s) {
        const float4 v4 = *reinterpret_cast<const float4*>(src + s * st);
        a.x += v4.x, a.y += v4.y, a.z += v4.z, a.w += v4.w;
      }
      float4* acc = reinterpret_cast<float4*>(sc + 16 * kMaxLc) + q;
      const float4 o = *acc;
      a = make_float4(o.x + a.x, o.y + a.y, o.z + a.z, o.w + a.w);
      if (!last) {
        *acc = a;
      } else {
        float* dst = (which ? kp.p_dzeta : kp.p_dphi) + ((static_cast<size_t>(b) * d.H + h) * R + r) * P + p;
        dst[0] = a.x, dst[1] = a.y, dst[2] = a.z, dst[3] = a.w;
      }
    }
  };
  if constexpr (kFold) {
    for (int i = tid; i < 2 * R * P; i += NTH) sc[16 * kMaxLc + i] = 0.f;
  }
  const size_t bh = static_cast<size_t>(b) * d.H + h;
  if (!BWD && warp == 0) stage_scalars_issue(kp, b, h, 0, sc);  // chunk 0's raw scalars (v8, mimo_fwd only)
  __syncthreads();

  for (int c = 0; c < d.nc; ++c) {
    const int t0 = c * Lc;
    // v8: warp 0 computes the chunk's scalars and step weights from the staging area (filled one chunk ahead)
    // while its q̄/k̄ copies are in flight (load_qk_rot calls this between issuing and waiting).
    const int Sl = d.S;
    auto scalars = [=]() {
      if (warp == 0) {
        cp_async_wait_group<1>();  // the staging group (older than the q̄/k̄ group just committed)
        __syncwarp();
        const float al = chunk_scalars_staged(Lc, Sl, t0, sc);
        if (lane == 0) sc[kWork * kMaxLc] = al;
        __syncwarp();
        step_weights(sc, W, Lc);
      }
    };
    // v6: 4 columns per q̄/k̄ item when that still gives every thread an item (N=128, Lc=16: 256 items), else 2
    // (N=64: 256 items of 2 columns instead of 128 of 4, which left half the CTA idle in this phase: +2 % measured).
    if constexpr (kFold) {
      if (c > 0) fold_dpz(false);
    }
    if constexpr (BWD) {
      // mimo_bwd_fwd keeps v7's order (global-load chunk_scalars before the q̄/k̄ loads): with the staging its
      // 512-thread instance spilled 324 B instead of 192 B and ran 15 % slower (v8 run, docs/perf/mimo.md).
      if (warp == 0) {
        const float al = chunk_scalars(kp, b, h, t0, sc);
        if (lane == 0) sc[kWork * kMaxLc] = al;
        __syncwarp();
        step_weights(sc, W, Lc);
      }
      if ((Lc << (kp.lN4 - 1)) >= NTH)
        load_qk_rot<NTH, 4>(kp, b, h, t0, qbias, kbias, Qb, Kb);
      else
        load_qk_rot<NTH, 2>(kp, b, h, t0, qbias, kbias, Qb, Kb);
    } else {
      if ((Lc << (kp.lN4 - 1)) >= NTH)
        load_qk_rot<NTH, 4>(kp, b, h, t0, qbias, kbias, Qb, Kb, scalars);
      else
        load_qk_rot<NTH, 2>(kp, b, h, t0, qbias, kbias, Qb, Kb, scalars);
    }
    __syncthreads();
    // V, Vd (and the PsiV cache in the forward); states for the backward.
    {
      if constexpr (kFold) {  // the dΖ contributions (dzc) overwrote V/Vd's zero pad rows (only when M < Mp)
        if (c > 0 && M < Mp) {
          zero_pad_rows<NTH>(V, ldv, M, Mp);
          zero_pad_rows<NTH>(Vd, ldv, M, Mp);
        }
      }
      const int items = Lc * P / 2;
      const bool from_cache = BWD && kp.in.psiv_cache != nullptr;
#pragma unroll((BWD || NTH == 512) ? 1 : 2)
      for (int it = tid; it < items; it += NTH) {
        const int s = ((it * 2) >> lP), p = ((it * 2) & (P - 1)), t = t0 + s;
        const float w = sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s];
        float2 x = make_float2(0.f, 0.f);
        if (!from_cache) x = ldg_bf16x2(kp.in.v + ((static_cast<size_t>(b) * d.S + t) * d.H + h) * P + p);
        for (int r = 0; r < R; ++r) {
          const int i = s * R + r;
          __nv_bfloat162 vv;
          if (from_cache) {
            const unsigned int u =
                __ldg(reinterpret_cast<const unsigned int*>(kp.in.psiv_cache + (bh * d.S + t) * R * P + r * P + p));
            vv = *reinterpret_cast<const __nv_bfloat162*>(&u);
          } else {
            vv = __floats2bfloat162_rn(x.x * psi[r * P + p], x.y * psi[r * P + p + 1]);
            if (!BWD && kp.in.psiv_cache)
              *reinterpret_cast<__nv_bfloat162*>(kp.in.psiv_cache + (bh * d.S + t) * R * P + r * P + p) = vv;
          }
          *reinterpret_cast<__nv_bfloat162*>(V + i * ldv + p) = vv;
          const float2 vf = __bfloat1622float2(vv);
          st_bf16x2(Vd + i * ldv + p, vf.x * w, vf.y * w);
        }
      }
      if constexpr (BWD) {
        bf16_bits* dst = kp.states + (bh * d.nc + c) * static_cast<size_t>(N) * P;
        for (int it = tid; it < N * P / 8; it += NTH) {
          const int n = ((it * 8) >> lP), p = ((it * 8) & (P - 1));
          *reinterpret_cast<uint4*>(dst + n * P + p) = *reinterpret_cast<const uint4*>(Sb + n * ldv + p);
        }
      }
    }
    __syncthreads();
    if (c + 1 < d.nc) {
      prefetch_chunk<NTH>(kp, b, h, t0 + Lc, BWD, !(BWD && kp.in.psiv_cache), false, c + 1);
      if (!BWD && warp == 0) stage_scalars_issue(kp, b, h, t0 + Lc, sc);  // read at the top of chunk c+1 (v8)
    }
    // Phase A: masked score matrix Pm (bf16).
    {
      const int mt = Mp / 16;
      for (int tile = warp; tile < mt * mt; tile += NW) {
        const int m0 = (tile >> lmt) * 16, n0 = (tile & (mt - 1)) * 16;
        float acc[2][4];
        zero_acc(acc);
        mma_tile<false, false, kUnr>(acc, Qb, ldq, Kb, ldq, m0, n0, N);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int i = m0 + (lane >> 2) + 8 * hh;
            const int j = n0 + 8 * nt + 2 * (lane & 3);
            float w2[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int jj = j + e;
              const int si = i >> lR, sj = jj >> lR;
              const float w = (i < M && jj < M) ? W[si * Lc + sj] : 0.f;
              w2[e] = w * acc[nt][2 * hh + e];
            }
            st_bf16x2(Pm + i * ldm + j, w2[0], w2[1]);
          }
      }
    }
    __syncthreads();
    // Phase B: Y = e^{a}·Q̄·S + Pm·V + D·V; state update in registers.
    {
      for (int tile = warp; tile < (Mp / 16) * ptiles; tile += NW) {
        const int m0 = (tile >> lpt) * 16, n0 = (tile & (ptiles - 1)) * 16;
        float acc[2][4];
        zero_acc(acc);
        mma_tile<false, true, kUnr>(acc, Qb, ldq, Sb, ldv, m0, n0, N);
        const float e0 = sc[kEA * kMaxLc + ((m0 + (lane >> 2)) >> lR)];
        const float e1 = sc[kEA * kMaxLc + ((m0 + (lane >> 2) + 8) >> lR)];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) acc[nt][0] *= e0, acc[nt][1] *= e0, acc[nt][2] *= e1, acc[nt][3] *= e1;
        mma_tile<false, true, kUnr>(acc, Pm, ldm, V, ldv, m0, n0, Mp);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int i = m0 + (lane >> 2) + 8 * hh, j = n0 + 8 * nt + 2 * (lane & 3);
            const float2 vv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(V + i * ldv + j));
            *reinterpret_cast<float2*>(Ys + i * ldy + j) =
                make_float2(acc[nt][2 * hh] + Dh * vv.x, acc[nt][2 * hh + 1] + Dh * vv.y);
          }
      }
      const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        const int t = warp + NW * k;
        if (t < ntS) {
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[k][nt][e] *= el;
          mma_tile<true, true, kUnr>(S[k], Kb, ldq, Vd, ldv, (t >> lpt) * 16, (t & (ptiles - 1)) * 16, Mp);
        }
      }
    }
    __syncthreads();
    // Phase C: bf16 copy of the new state; output (or backward side outputs) from Y.
#pragma unroll
    for (int k = 0; k < NT; ++k) {
      const int t = warp + NW * k;
      if (t < ntS) {
        const int m0 = (t >> lpt) * 16, n0 = (t & (ptiles - 1)) * 16;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int n = m0 + (lane >> 2) + 8 * hh, p = n0 + 8 * nt + 2 * (lane & 3);
            st_bf16x2(Sb + n * ldv + p, S[k][nt][2 * hh], S[k][nt][2 * hh + 1]);
          }
      }
    }
    {
      const int items = Lc * P / 2;
#pragma unroll((BWD || NTH == 512) ? 1 : 2)
      for (int it = tid; it < items; it += NTH) {
        const int s = ((it * 2) >> lP), p = ((it * 2) & (P - 1)), t = t0 + s;
        const size_t gi = ((static_cast<size_t>(b) * d.S + t) * d.H + h) * P + p;
        const float2 zz = ldg_bf16x2(kp.in.z + gi);
        float o0 = 0.f, o1 = 0.f;
        float2 go = make_float2(0.f, 0.f);
        if constexpr (BWD) go = ldg_bf16x2(kp.dout + gi);
        float dz0 = 0.f, dz1 = 0.f;
#pragma unroll
        for (int r = 0; r < RMAX; ++r) {
          if (r < R) {
            float* yp = Ys + (s * R + r) * ldy + p;
            const float2 y = *reinterpret_cast<const float2*>(yp);
            const float zt0 = zeta[r * P + p], zt1 = zeta[r * P + p + 1];
            const float ph0 = phi[r * P + p], ph1 = phi[r * P + p + 1];
            const float u0 = zz.x * zt0, u1 = zz.y * zt1;
            const float sg0 = sigmoidf_(u0), sg1 = sigmoidf_(u1);
            const float si0 = u0 * sg0, si1 = u1 * sg1;
            if constexpr (!BWD) {
              o0 += ph0 * si0 * y.x;
              o1 += ph1 * si1 * y.y;
            } else {
              const float c0 = go.x * ph0 * y.x * sg0 * (1.f + u0 * (1.f - sg0));
              const float c1 = go.y * ph1 * y.y * sg1 * (1.f + u1 * (1.f - sg1));
              dz0 += c0 * zt0, dz1 += c1 * zt1;
              if constexpr (kFold) {  // this thread alone reads and writes these Ys entries in this phase
                *reinterpret_cast<float2*>(yp) = make_float2(go.x * si0 * y.x, go.y * si1 * y.y);
                *reinterpret_cast<float2*>(dzc + (s * R + r) * P + p) = make_float2(c0 * zz.x, c1 * zz.y);
              } else {
                dphi_acc[r][0] += go.x * si0 * y.x;
                dphi_acc[r][1] += go.y * si1 * y.y;
                dzeta_acc[r][0] += c0 * zz.x;
                dzeta_acc[r][1] += c1 * zz.y;
              }
            }
          }
        }
        if constexpr (!BWD)
          st_bf16x2g(kp.in.out + gi, o0, o1);
        else
          st_bf16x2g(kp.dz + gi, dz0, dz1);
      }
    }
    __syncthreads();
  }

  if constexpr (!BWD) {
    if (kp.in.final_state) {
      float* fs = kp.in.final_state + bh * static_cast<size_t>(N) * P;
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        const int t = warp + NW * k;
        if (t < ntS) {
          const int m0 = (t >> lpt) * 16, n0 = (t & (ptiles - 1)) * 16;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int n = m0 + (lane >> 2) + 8 * hh, p = n0 + 8 * nt + 2 * (lane & 3);
              *reinterpret_cast<float2*>(fs + n * P + p) = make_float2(S[k][nt][2 * hh], S[k][nt][2 * hh + 1]);
            }
        }
      }
    }
  } else if constexpr (kFold) {
    fold_dpz(true);  // the last chunk's contributions (the loop ended with a barrier), then the partials out
  } else {
    // Deterministic reduction of the dΦ/dΖ partials: thread tid owns columns p = 2·(tid mod P/2) + {0,1}.
    const int hp = P / 2, groups = NTH / hp;
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
      if (r < R) {
#pragma unroll
        for (int which = 0; which < 2; ++which) {
          red[2 * tid] = which ? dzeta_acc[r][0] : dphi_acc[r][0];
          red[2 * tid + 1] = which ? dzeta_acc[r][1] : dphi_acc[r][1];
          __syncthreads();
          if (tid < P) {
            const int p = tid;
            float s = 0.f;
            for (int q = 0; q < groups; ++q) s += red[2 * (q * hp + p / 2) + (p & 1)];
            (which ? kp.p_dzeta : kp.p_dphi)[(bh * R + r) * P + p] = s;
          }
          __syncthreads();
        }
      }
    }
  }
}

}  // namespace megacpp::mimo::dev
