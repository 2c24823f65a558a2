// mimo_bwd_bwd.cu — Mamba-3 MIMO backward: reverse chunk loop producing the gradients (kernel `mimo_bwd_bwd`).
//
// One CTA (512 or 256 threads, see Resources) per (h, b); chunks c = nc−1 … 0, carrying dS (N×P fp32, in registers; dS_nc = 0).
// Per chunk, with Q̄, K̄ (rotated, biased, bf16), V = x·Ψ (or the PsiV cache), g = dout·Φ·silu(zΖ) (M×P),
// S_c (bf16, written by mimo_bwd_fwd), w_ij = factor_j e^{a_i−a_j} (s_i>s_j), γ (s_i=s_j), 0 otherwise:
//   Sc = Q̄K̄ᵀ, Gv = g Vᵀ (M×M, MMA);  Pm = w∘Sc, Gm = w∘Gv (bf16), Z = Sc∘Gv (fp32)
//   dQ̄ = e^{a}·g S_cᵀ + Gm K̄                 (+ row dots Q̄·(e^{a} g S_cᵀ) → ∂/∂a_i)
//   dK̄ = factor·e^{ā}·V dSᵀ + Gmᵀ Q̄
//   dV = factor·e^{ā}·K̄ dS + Pmᵀ g + D g        (+ row dots X_j = V_j·(K̄_j dS) → ∂/∂ā_j, ∂/∂factor_j)
//   dS ← e^{a_last} dS + Q̄ᵀ (e^{a} g)          (∂/∂a_last = e^{a_last} Σ S_c∘dS_{c+1})
//   same-step blocks of Gm/Pm carry the diagonal (γ) term; with the rotated operands they un-rotate to the
//   spec's unrotated diagonal gradients, and their dθ contributions cancel exactly between q and k.
//   Un-rotation: du1 = cosθ e1 + sinθ e2, du2 = −sinθ e1 + cosθ e2, dθ += e2 u1' − e1 u2' (q and k, Σ_r).
//   dADT_s = Σ_{t≥s} ∂a_t + Σ_{j<s} ∂ā_j + Σ_{i≥s>j} ∂seg_ij + ∂a_last  (decay cumsum backward, in-kernel)
//   DFACTOR_t = Σ_{j∈t}[Σ_{i: s_i>t} e^{seg} Z_ij + e^{ā_j} X_j],  DGAMMA_t = Σ_{same step} Z.
// Writes: dQ/dK per value head (B,S,R,H,N) bf16 (group-reduced in mimo_bwd_post), dV→dx (B,S,H,P) bf16,
// dADT, DFACTOR, DGAMMA (B,H,S) fp32, dAngles (B,S,H,N_ang) fp32, per-(b,h) partials of dΨ, dD, dQ_bias, dK_bias.
// P3a/P3b (the tail after the products) are the functions of mimo_bwd_tail.cuh, shared with the Hopper kernel
// mimo_bwd_bwd_sm90.cu, which replaces this one where M = 64, P = 64, N ∈ {64, 128} (mimo_bwd_bwd() in mimo_prep.cu).
// Resources (v5, ptxas sm_90a, no spills; v13: 128 / 246 registers): N·P ≤ 8192: 512 threads, dS NT=2 tiles/warp, 128 regs; N·P = 16384:
// 256 threads, NT=8, 248 regs; 1 CTA/SM; smem bwd_layout() = 231,744 B at N=128,P=64,M=64 (the per-head parameters
// are read from global/L1 to fit).
#include <stdexcept>

#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_bwd_tail.cuh"
#include "kernels/mimo/mimo_common.cuh"

namespace megacpp::mimo::dev {

// v4: kBT threads per CTA, 1 CTA/SM (shared memory). N·P ≤ 8192: 512 threads (16 warps, ≤ 128 regs, dS NT=2
// tiles per warp); N·P = 16384: 256 threads (8 warps, dS NT=8), because 512 threads × NT=4 spill at 128 regs.
template <int kBT, int NT>
__global__ void __launch_bounds__(kBT, 1) mimo_bwd_bwd_kernel(const KParams kp) {
  constexpr int kBW = kBT / 32;
  static_assert(kBT <= 2 * kThreads, "red scratch: bwd_layout reserves 2*kThreads floats");
  extern __shared__ __align__(16) unsigned char smem[];
  const MimoDims& d = kp.d;
  const int h = blockIdx.x, b = blockIdx.y;
  const int N = d.N, P = d.P, R = d.R, M = d.M, Mp = d.Mp, Lc = d.Lc, lR = kp.lR;
  const int ldq = N + 8, ldv = P + 8, ldm = Mp + 8, ldz = Mp + 1, ldzs = Lc + 1, ldf = N + 4, ldvf = P + 4;
  const int nqt = N / 16, npt = P / 16, mt = Mp / 16;
  const int lP = __ffs(P) - 1;
  const int lnqt = __ffs(nqt) - 1, lnpt = __ffs(npt) - 1, lmt = __ffs(mt) - 1;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const BwdLayout Lo = bwd_layout(N, P, R, Mp, Lc);
  const float* psi = kp.in.psi + static_cast<size_t>(h) * R * P;
  const float* phi = kp.in.phi + static_cast<size_t>(h) * R * P;
  const float* zeta = kp.in.zeta + static_cast<size_t>(h) * R * P;
  const float* qbias = kp.in.q_bias + static_cast<size_t>(h) * R * N;
  const float* kbias = kp.in.k_bias + static_cast<size_t>(h) * R * N;
  float* sc = reinterpret_cast<float*>(smem + Lo.sc);
  float* red = sc + 16 * kMaxLc;
  bf16* Qb = reinterpret_cast<bf16*>(smem + Lo.qbar);
  bf16* Kb = reinterpret_cast<bf16*>(smem + Lo.kbar);
  bf16* V = reinterpret_cast<bf16*>(smem + Lo.v);
  bf16* Gs = reinterpret_cast<bf16*>(smem + Lo.g);
  bf16* Gd = reinterpret_cast<bf16*>(smem + Lo.gd);
  bf16* Scb = reinterpret_cast<bf16*>(smem + Lo.scb);
  bf16* dSb = reinterpret_cast<bf16*>(smem + Lo.dsb);
  bf16* Pm = reinterpret_cast<bf16*>(smem + Lo.pm);
  bf16* Gm = reinterpret_cast<bf16*>(smem + Lo.gm);
  float* Z = reinterpret_cast<float*>(smem + Lo.z);
  float* Zs = reinterpret_cast<float*>(smem + Lo.zs);
  float* W = Zs;  // step mask weights (L1..P1) share the Zs region (P2..P3b)
  float* dQf = reinterpret_cast<float*>(smem + Lo.dqf);
  float* dKf = reinterpret_cast<float*>(smem + Lo.dkf);
  float* dVf = reinterpret_cast<float*>(smem + Lo.dvf);
  float* rowa = reinterpret_cast<float*>(smem + Lo.rowa);
  float* rowx = reinterpret_cast<float*>(smem + Lo.rowx);
  bf16* Xs = reinterpret_cast<bf16*>(smem + Lo.x);
  const float Dh = kp.in.d[h];
  const size_t bh = static_cast<size_t>(b) * d.H + h;

  for (int i = tid; i < N * ldv; i += kBT) dSb[i] = __float2bfloat16(0.f);
  zero_pad_rows<kBT>(Qb, ldq, M, Mp);
  zero_pad_rows<kBT>(Kb, ldq, M, Mp);
  zero_pad_rows<kBT>(V, ldv, M, Mp);
  zero_pad_rows<kBT>(Gs, ldv, M, Mp);
  zero_pad_rows<kBT>(Gd, ldv, M, Mp);

  float dS[NT][2][4];
#pragma unroll
  for (int k = 0; k < NT; ++k) zero_acc(dS[k]);
  const int ntS = nqt * npt;
  BwdPartials<kBT> pa;  // the per-(b,h) parameter partials of this thread (mimo_bwd_tail.cuh)
  pa.zero();
  __syncthreads();

  for (int c = d.nc - 1; c >= 0; --c) {
    const int t0 = c * Lc;
    // ---- L1: loads -------------------------------------------------------------------------------
    if (warp == 0) {
      const float al = chunk_scalars(kp, b, h, t0, sc);
      if (lane == 0) sc[kWork * kMaxLc] = al;
      __syncwarp();
      step_weights(sc, W, Lc);
    }
    load_qk_rot<kBT>(kp, b, h, t0, qbias, kbias, Qb, Kb);
    load_v<kBT>(kp, b, h, t0, psi, V, kp.in.psiv_cache != nullptr);
#pragma unroll 2
    for (int it = tid; it < Lc * P / 2; it += kBT) {
      const int s = ((it * 2) >> lP), p = ((it * 2) & (P - 1)), t = t0 + s;
      const size_t gi = ((static_cast<size_t>(b) * d.S + t) * d.H + h) * P + p;
      const float2 zz = ldg_bf16x2(kp.in.z + gi), go = ldg_bf16x2(kp.dout + gi);
      *reinterpret_cast<unsigned int*>(Xs + s * P + p) = __ldg(reinterpret_cast<const unsigned int*>(kp.in.v + gi));
      for (int r = 0; r < R; ++r) {
        const float u0 = zz.x * zeta[r * P + p], u1 = zz.y * zeta[r * P + p + 1];
        st_bf16x2(Gs + (s * R + r) * ldv + p, go.x * phi[r * P + p] * u0 * sigmoidf_(u0),
                  go.y * phi[r * P + p + 1] * u1 * sigmoidf_(u1));
      }
    }
    {
      const bf16_bits* src = kp.states + (bh * d.nc + c) * static_cast<size_t>(N) * P;
#pragma unroll 4
      for (int it = tid; it < N * P / 8; it += kBT) {
        const int n = ((it * 8) >> lP), p = ((it * 8) & (P - 1));
        *reinterpret_cast<uint4*>(Scb + n * ldv + p) = __ldg(reinterpret_cast<const uint4*>(src + n * P + p));
      }
    }
    __syncthreads();
    if (c > 0) prefetch_chunk<kBT>(kp, b, h, t0 - Lc, true, true, true, c - 1);
    // ---- P1: Gd, M×M products, DDA partial -------------------------------------------------------
    for (int it = tid; it < M * P / 2; it += kBT) {
      const int i = ((it * 2) >> lP), p = ((it * 2) & (P - 1));
      const float e = sc[kEA * kMaxLc + (i >> lR)];
      const float2 gg = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(Gs + i * ldv + p));
      st_bf16x2(Gd + i * ldv + p, gg.x * e, gg.y * e);
    }
    for (int tile = warp; tile < mt * mt; tile += kBW) {
      const int m0 = (tile >> lmt) * 16, n0 = (tile & (mt - 1)) * 16;
      float a1[2][4], a2[2][4];
      zero_acc(a1);
      zero_acc(a2);
      mma_tile<false, false>(a1, Qb, ldq, Kb, ldq, m0, n0, N);
      mma_tile<false, false>(a2, Gs, ldv, V, ldv, m0, n0, P);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int i = m0 + (lane >> 2) + 8 * hh, j = n0 + 8 * nt + 2 * (lane & 3);
          float p2[2], g2[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int jj = j + e, si = i >> lR, sj = jj >> lR;
            const bool ok = i < M && jj < M;
            const float w = ok ? W[si * Lc + sj] : 0.f;
            const float x1 = a1[nt][2 * hh + e], x2 = a2[nt][2 * hh + e];
            p2[e] = w * x1;
            g2[e] = w * x2;
            Z[i * ldz + jj] = ok ? x1 * x2 : 0.f;
          }
          st_bf16x2(Pm + i * ldm + j, p2[0], p2[1]);
          st_bf16x2(Gm + i * ldm + j, g2[0], g2[1]);
        }
    }
    {
      float part = 0.f;
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        const int t = warp + kBW * k;
        if (t < ntS) {
          const int m0 = (t >> lnpt) * 16, n0 = (t & (npt - 1)) * 16;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int n = m0 + (lane >> 2) + 8 * hh, p = n0 + 8 * nt + 2 * (lane & 3);
              const float2 s2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(Scb + n * ldv + p));
              part += s2.x * dS[k][nt][2 * hh] + s2.y * dS[k][nt][2 * hh + 1];
            }
        }
      }
      red[tid] = part;
    }
    __syncthreads();
    // ---- P2: step sums of Z, DDA, the gradient products, dS update --------------------------------
    bwd_step_sums<kBT>(Z, ldz, Zs, ldzs, red, sc, Lc, R, tid, kBT, 0);  // mimo_bwd_tail.cuh
    {
      const int nQ = mt * nqt, nV = mt * npt;
      for (int tile = warp; tile < 2 * nQ + nV; tile += kBW) {
        float acc[2][4];
        zero_acc(acc);
        if (tile < nQ) {  // dQ̄
          const int m0 = (tile >> lnqt) * 16, n0 = (tile & (nqt - 1)) * 16;
          mma_tile<false, false>(acc, Gd, ldv, Scb, ldv, m0, n0, P);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int i = m0 + (lane >> 2) + 8 * hh;
            float part = 0.f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
              const int j = n0 + 8 * nt + 2 * (lane & 3);
              const float2 q2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(Qb + i * ldq + j));
              part += q2.x * acc[nt][2 * hh] + q2.y * acc[nt][2 * hh + 1];
            }
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            if ((lane & 3) == 0) rowa[i * nqt + n0 / 16] = part;
          }
          mma_tile<false, true>(acc, Gm, ldm, Kb, ldq, m0, n0, Mp);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int i = m0 + (lane >> 2) + 8 * hh, j = n0 + 8 * nt + 2 * (lane & 3);
              *reinterpret_cast<float2*>(dQf + i * ldf + j) = make_float2(acc[nt][2 * hh], acc[nt][2 * hh + 1]);
            }
        } else if (tile < 2 * nQ) {  // dK̄
          const int tt = tile - nQ;
          const int m0 = (tt >> lnqt) * 16, n0 = (tt & (nqt - 1)) * 16;
          mma_tile<false, false>(acc, V, ldv, dSb, ldv, m0, n0, P);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int s = (m0 + (lane >> 2) + 8 * hh) >> lR;
            const float w = sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) acc[nt][2 * hh] *= w, acc[nt][2 * hh + 1] *= w;
          }
          mma_tile<true, true>(acc, Gm, ldm, Qb, ldq, m0, n0, Mp);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int i = m0 + (lane >> 2) + 8 * hh, j = n0 + 8 * nt + 2 * (lane & 3);
              *reinterpret_cast<float2*>(dKf + i * ldf + j) = make_float2(acc[nt][2 * hh], acc[nt][2 * hh + 1]);
            }
        } else {  // dV
          const int tt = tile - 2 * nQ;
          const int m0 = (tt >> lnpt) * 16, n0 = (tt & (npt - 1)) * 16;
          mma_tile<false, true>(acc, Kb, ldq, dSb, ldv, m0, n0, N);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int i = m0 + (lane >> 2) + 8 * hh;
            float part = 0.f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
              const int j = n0 + 8 * nt + 2 * (lane & 3);
              const float2 v2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(V + i * ldv + j));
              part += v2.x * acc[nt][2 * hh] + v2.y * acc[nt][2 * hh + 1];
            }
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            if ((lane & 3) == 0) rowx[i * npt + n0 / 16] = part;
            const int s = i >> lR;
            const float w = sc[kFac * kMaxLc + s] * sc[kEAB * kMaxLc + s];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) acc[nt][2 * hh] *= w, acc[nt][2 * hh + 1] *= w;
          }
          mma_tile<true, true>(acc, Pm, ldm, Gs, ldv, m0, n0, Mp);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int i = m0 + (lane >> 2) + 8 * hh, j = n0 + 8 * nt + 2 * (lane & 3);
              const float2 g2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(Gs + i * ldv + j));
              *reinterpret_cast<float2*>(dVf + i * ldvf + j) =
                  make_float2(acc[nt][2 * hh] + Dh * g2.x, acc[nt][2 * hh + 1] + Dh * g2.y);
            }
        }
      }
      const float el = __expf(sc[kWork * kMaxLc]);
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        const int t = warp + kBW * k;
        if (t < ntS) {
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dS[k][nt][e] *= el;
          mma_tile<true, true>(dS[k], Qb, ldq, Gd, ldv, (t >> lnpt) * 16, (t & (npt - 1)) * 16, Mp);
        }
      }
    }
    __syncthreads();
    // ---- P3a: per-step row dots; un-rotation of dQ̄/dK̄ and dθ -------------------------------------
    // v5: one warp per step (lanes over the step's R·N/16 and R·P/16 partials, fixed shuffle order) instead of
    // one thread per step summing them serially; the column suffix sums of the step table into the Z region (free
    // after P2) so that P3b's per-step sums are O(Lc) instead of O(Lc²). Shared with the wgmma kernel:
    // mimo_bwd_tail.cuh.
    bwd_step_row_dots<kBT>(rowa, R * nqt, rowx, R * npt, sc, Lc);
    bwd_step_suffix_sums<kBT>(Zs, Z, Lc, ldzs);
    bwd_unrotate<kBT>(kp, b, h, t0, dQf, dKf, ldf, N, R, Lc,
                      [&](int i, int j) { return __bfloat162float(Qb[i * ldq + j]); },
                      [&](int i, int j) { return __bfloat162float(Kb[i * ldq + j]); });
    __syncthreads();
    // ---- P3b: decay/trapezoid scalar gradients; gradient writes; next dS copy ----------------------
    bwd_step_scalar_grads(kp, bh, t0, sc, Z, Zs, ldzs, Lc);
    bwd_write_dqdk<kBT>(kp, b, h, t0, dQf, dKf, ldf, N, R, M);
    bwd_bias_partials<kBT>(pa.qb, pa.kb, dQf, dKf, ldf, N, R, Lc);
    bwd_write_dx<kBT>(kp, b, h, t0, dVf, ldvf, psi, P, R, Lc);
    bwd_psi_partials<kBT>(pa.psi, dVf, ldvf, reinterpret_cast<const bf16_bits*>(Xs), P, R, Lc);
    for (int it = tid; it < M * P; it += kBT) {
      const int i = it >> lP, p = it & (P - 1);
      pa.dd += __bfloat162float(Gs[i * ldv + p]) * __bfloat162float(V[i * ldv + p]);
    }
#pragma unroll
    for (int k = 0; k < NT; ++k) {
      const int t = warp + kBW * k;
      if (t < ntS) {
        const int m0 = (t >> lnpt) * 16, n0 = (t & (npt - 1)) * 16;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int n = m0 + (lane >> 2) + 8 * hh, p = n0 + 8 * nt + 2 * (lane & 3);
            st_bf16x2(dSb + n * ldv + p, dS[k][nt][2 * hh], dS[k][nt][2 * hh + 1]);
          }
      }
    }
    __syncthreads();
  }

  bwd_store_partials<kBT>(kp, bh, pa, red);
}

}  // namespace megacpp::mimo::dev

namespace megacpp::mimo::dev {
namespace {
// 512 threads (NT=2: 16 warps × 2 tiles ≥ N·P/256) when N·P ≤ 8192, else 256 threads with NT=8.
bool wide_bwd(const MimoDims& d) { return (d.N / 16) * (d.P / 16) <= 2 * kBwdWarps; }
}
int bwd_bwd_threads(const MimoDims& d) { return wide_bwd(d) ? kBwdThreads : kThreads; }
const void* bwd_bwd_kernel_ptr(const MimoDims& d) {
  return wide_bwd(d) ? reinterpret_cast<const void*>(&mimo_bwd_bwd_kernel<kBwdThreads, 2>)
                     : reinterpret_cast<const void*>(&mimo_bwd_bwd_kernel<kThreads, 8>);
}
void launch_bwd_bwd_kernel(const KParams& kp, std::size_t smem, cudaStream_t st) {
  auto launch = [&](auto kern, int threads) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<dim3(kp.d.H, kp.d.B), threads, smem, st>>>(kp);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
  };
  if (wide_bwd(kp.d))
    launch(mimo_bwd_bwd_kernel<kBwdThreads, 2>, kBwdThreads);
  else
    launch(mimo_bwd_bwd_kernel<kThreads, 8>, kThreads);
}
}  // namespace megacpp::mimo::dev
