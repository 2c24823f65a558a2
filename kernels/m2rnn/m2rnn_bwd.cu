// m2rnn_bwd.cu — M²RNN scan-core backward: BPTT over checkpointed 16-step chunks.
//
// Math (per b, n; reverse over t; G = dL/dH carried, starts at dH_T or 0; clip modes as m2rnn_ref.hpp):
//   G_t = [clamp](G) + q_t ⊗ do_t [then clamp]      dq_t += H_t do_t          df_t = Σ G_t ⊙ (H_{t-1} - Z_t)
//   dP = (1 - f_t) G_t ⊙ (1 - Z_t²)                   dk_t += dP v_t            dv_t = dPᵀ k_t + D ⊙ do_t
//   dW += H_{t-1}ᵀ dP        dD += do_t ⊙ v_t        G ← f_t G_t + dP Wᵀ      (dh0 = G at the end)
// Shapes as m2rnn_fwd.cu; do, dv [B,S,N,V], df [B,S,N], dq [B,S,Nq,K], dk [B,S,Nk,K], dW [N,V,V], dD [N,V].
// Work split: one CTA per (b, n), warp w owns rows 16w..16w+15 (rows are independent), K/16 warps.
//   Chunks of 16 steps are processed from the last to the first. For each chunk: (1) the forward is
//   recomputed from the checkpoint with the forward's exact step code (bit-identical states), storing
//   H_{t-1} and Z_t in shared memory (thread-private slots, conflict-free); (2) the reverse loop keeps G
//   (fp32) in registers. On the recurrence's path: the elementwise G_t, dP, then dP·Wᵀ on tensor cores
//   (dP split into bf16 hi/lo — gradients need fp32 range — three MMAs: "3xBF16", ~2^-16 relative).
//   Off the path (v2, default): dW += H_{t-1}ᵀ dP as three bf16 MMAs per n8 tile with operands
//   transposed in registers by movmatrix, accumulated per chunk and added to an fp32 total; dq_t = H_t do_t
//   and dk_t = dP v_t from one accumulator of five MMAs (do in column 0, v in column 1 of B); dv_t = kᵀ dP
//   as an MMA with k in row 0 of A; df partials in shared memory, reduced once per chunk. No shuffles in
//   the step. (v1, variant 1, the first version kept as baseline/fallback: shuffle reductions per step and
//   one dW accumulator chain over the whole sequence, whose error drifts with S: 2.3e-4 at S=4096.)
// Determinism: no float atomics. dq/dk are written per head to a workspace and summed over the heads
//   that share q/k by a second kernel in a fixed order; dW is written per (b, K-block) and dD per b and
//   summed in a fixed order; dv/df partials of the K/16 warps meet in shared memory.
// Prefetch: the next (earlier) chunk's q, k, v, f, do and checkpoint are copied with cp.async while
//   the current chunk runs (double buffer); the reverse loop loads the next step's operands one step ahead.
// Resources (K=64, sm_90a, ptxas): v2 128 threads, 199 regs, 0 spill, 163 KB dynamic smem (H and Z of 16
//   steps: 132 KB) → 1 CTA per SM; v1 126 regs, 160 KB.
// Measured (H100, B=2, S=4096, N=44, clip kernel): v2 2.98 ms, v1 3.29–3.31 ms (docs/perf/m2rnn.md).
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/m2rnn/m2rnn_common.cuh"
#include "kernels/m2rnn/m2rnn_scan.hpp"

namespace megacpp::m2rnn {

namespace {
using namespace dev;
constexpr int CK = kGpuCheckpointEvery;

struct BwdParams {
  int B, S, N, K, Nq, Nk;
  int64_t ld_q, ld_k, ld_v;
  const __nv_bfloat16 *q, *k, *v;
  const float *f, *W, *D, *ckpt, *dout, *dhT;
  int clip;  // 0 off, 1 kernel, 2 total
  float clipv;
  float *dq_part, *dk_part, *dv, *df, *dW_part, *dD_part, *dh0;
};

__host__ __device__ inline std::size_t buf_bytes(int K) { return std::size_t(K) * 64 + CK * V * 4 + CK * 4 + 2 * std::size_t(CK) * K * 2 + CK * V * 2; }
std::size_t bwd_smem_bytes(int K) {
  const int KB = K / 16;
  return 2 * buf_bytes(K) + std::size_t(KB) * (2 * CK + 1) * 256 * 4 + 2 * std::size_t(CK) * KB * (V + 1) * 4;
}

__device__ __forceinline__ float clampf(float x, float c) { return fminf(fmaxf(x, -c), c); }

// v1 (baseline, run 1 of docs/perf/m2rnn.md): per-step shuffle reductions, one dW accumulator chain.
__global__ void __launch_bounds__(128) m2rnn_bwd_kernel_v1(const BwdParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int K = p.K, KB = K / 16, S = p.S, N = p.N;
  const int bn = blockIdx.x, b = bn / N, n = bn % N;
  const int qh = n / (N / p.Nq), kh = n / (N / p.Nk);
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int row0 = 16 * w + g;
  const std::size_t BUF = buf_bytes(K);
  // per-buffer views
  auto sck = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF); };
  auto sdo = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF + K * 64); };
  auto sf = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF + K * 64 + CK * V * 4); };
  auto sq = [&](int bi) {
    return reinterpret_cast<__nv_bfloat16*>(smem + bi * BUF + K * 64 + CK * V * 4 + CK * 4);
  };
  auto sk = [&](int bi) { return sq(bi) + CK * K; };
  auto sv = [&](int bi) { return sq(bi) + 2 * CK * K; };
  float* Hs = reinterpret_cast<float*>(smem + 2 * BUF) + w * (CK + 1) * 256;  // [CK+1][8][32] of this warp
  float* Zs = reinterpret_cast<float*>(smem + 2 * BUF) + KB * (CK + 1) * 256 + w * CK * 256;
  float* dvp = reinterpret_cast<float*>(smem + 2 * BUF) + KB * (2 * CK + 1) * 256;  // [2][CK][KB][V]
  float* dfp = dvp + 2 * CK * KB * V;                                                // [2][CK][KB]

  const int nck = S / CK;
  auto load_chunk = [&](int j, int bi) {
    const int t0 = j * CK;
    const int cpr = K / 8;
    for (int idx = tid; idx < CK * cpr; idx += nthr) {
      const int t = idx / cpr, ch = idx % cpr;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sq(bi) + t * K + ch * 8, p.q + tok * p.ld_q + qh * K + ch * 8);
      cp_async16(sk(bi) + t * K + ch * 8, p.k + tok * p.ld_k + kh * K + ch * 8);
    }
    for (int idx = tid; idx < CK * 2; idx += nthr) {
      const int t = idx >> 1, ch = idx & 1;
      cp_async16(sv(bi) + t * V + ch * 8, p.v + (int64_t(b) * S + t0 + t) * p.ld_v + n * V + ch * 8);
    }
    for (int idx = tid; idx < CK * 4; idx += nthr) {
      const int t = idx >> 2, ch = idx & 3;
      cp_async16(sdo(bi) + t * V + ch * 4, p.dout + ((int64_t(b) * S + t0 + t) * N + n) * V + ch * 4);
    }
    for (int t = tid; t < CK; t += nthr) cp_async4(sf(bi) + t, p.f + (int64_t(b) * S + t0 + t) * N + n);
    const float* src = p.ckpt + (int64_t(bn) * nck + j) * KB * 256;
    for (int idx = tid; idx < KB * 64; idx += nthr) cp_async16(sck(bi) + idx * 4, src + idx * 4);
  };

  const float* Wn = p.W + int64_t(n) * V * V;
  uint32_t bh[2][2], bl[2][2];  // W as B of H·W (fp16 hi/lo), as in the forward
  load_w_frags(Wn, g, tig, bh, bl);
  uint32_t th[2][2], tl[2][2];  // Wᵀ as B of dP·Wᵀ (k = j, n = a), bf16 hi/lo
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int a = 8 * nt + g;
    split_bf162(Wn[a * V + 2 * tig], Wn[a * V + 2 * tig + 1], th[nt][0], tl[nt][0]);
    split_bf162(Wn[a * V + 2 * tig + 8], Wn[a * V + 2 * tig + 9], th[nt][1], tl[nt][1]);
  }
  float dcol[2][2], G[2][4], dWacc[2][4], dDacc[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * nt + 2 * tig + e;
      dcol[nt][e] = p.D[n * V + col];
      dDacc[nt][e] = 0.0f;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        G[nt][2 * r + e] = p.dhT ? p.dhT[(int64_t(bn) * K + row0 + 8 * r) * V + col] : 0.0f;
        dWacc[nt][2 * r + e] = 0.0f;
      }
    }

  load_chunk(nck - 1, (nck - 1) & 1);
  cp_async_commit();
  for (int j = nck - 1; j >= 0; --j) {
    const int bi = j & 1, t0 = j * CK;
    if (j > 0) {
      load_chunk(j - 1, bi ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16 *cq = sq(bi), *ck = sk(bi), *cv = sv(bi);
    const float *cf = sf(bi), *cdo = sdo(bi);
    // (1) recompute H_{t-1}, Z_t of this chunk from its checkpoint
    {
      float h[2][4];
      const float* src = sck(bi) + w * 256 + lane;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) h[nt][c] = src[(nt * 4 + c) * 32];
#pragma unroll 2
      for (int s = 0; s < CK; ++s) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int c = 0; c < 4; ++c) Hs[(s * 8 + nt * 4 + c) * 32 + lane] = h[nt][c];
        const float k0 = __bfloat162float(ck[s * K + row0]), k1 = __bfloat162float(ck[s * K + row0 + 8]);
        float vv[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const float2 t2 =
              __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(cv + s * V + 8 * nt + 2 * tig));
          vv[nt][0] = t2.x;
          vv[nt][1] = t2.y;
        }
        float z[2][4];
        step(h, z, k0, k1, vv, cf[s], bh, bl);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int c = 0; c < 4; ++c) Zs[(s * 8 + nt * 4 + c) * 32 + lane] = z[nt][c];
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) Hs[(CK * 8 + nt * 4 + c) * 32 + lane] = h[nt][c];
    }
    // (2) reverse through the chunk
    float* cdvp = dvp + bi * CK * KB * V;
    float* cdfp = dfp + bi * CK * KB;
#pragma unroll 2
    for (int s = CK - 1; s >= 0; --s) {
      const int64_t tok = int64_t(b) * S + t0 + s;
      float hp[2][4], hc[2][4], z[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          hp[nt][c] = Hs[(s * 8 + nt * 4 + c) * 32 + lane];
          hc[nt][c] = Hs[((s + 1) * 8 + nt * 4 + c) * 32 + lane];
          z[nt][c] = Zs[(s * 8 + nt * 4 + c) * 32 + lane];
        }
      const float q0 = __bfloat162float(cq[s * K + row0]), q1 = __bfloat162float(cq[s * K + row0 + 8]);
      const float k0 = __bfloat162float(ck[s * K + row0]), k1 = __bfloat162float(ck[s * K + row0 + 8]);
      float vv[2][2], dv_[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float2 t2 =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(cv + s * V + 8 * nt + 2 * tig));
        vv[nt][0] = t2.x;
        vv[nt][1] = t2.y;
        const float2 d2 = *reinterpret_cast<const float2*>(cdo + s * V + 8 * nt + 2 * tig);
        dv_[nt][0] = d2.x;
        dv_[nt][1] = d2.y;
      }
      const float fv = cf[s], omf = 1.0f - fv;
      float Gt[2][4], dP[2][4], dq_r[2] = {0.f, 0.f}, dk_r[2] = {0.f, 0.f}, dvc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
      float dfs = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int r = c >> 1, e = c & 1;
          const float qr = r ? q1 : q0, kr = r ? k1 : k0, dc = dv_[nt][e];
          float gg = G[nt][c];
          if (p.clip == 1) gg = clampf(gg, p.clipv);
          gg = fmaf(qr, dc, gg);
          if (p.clip == 2) gg = clampf(gg, p.clipv);
          Gt[nt][c] = gg;
          dfs = fmaf(gg, hp[nt][c] - z[nt][c], dfs);
          const float dp = omf * gg * (1.0f - z[nt][c] * z[nt][c]);
          dP[nt][c] = dp;
          dq_r[r] = fmaf(hc[nt][c], dc, dq_r[r]);
          dk_r[r] = fmaf(dp, vv[nt][e], dk_r[r]);
          dvc[nt][e] = fmaf(dp, kr, dvc[nt][e]);
        }
      // G ← f·G_t + dP·Wᵀ  (the recurrence's path)
      uint32_t ph[4], pl[4];
      split_bf162(dP[0][0], dP[0][1], ph[0], pl[0]);
      split_bf162(dP[0][2], dP[0][3], ph[1], pl[1]);
      split_bf162(dP[1][0], dP[1][1], ph[2], pl[2]);
      split_bf162(dP[1][2], dP[1][3], ph[3], pl[3]);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        float a0[4], a1[4] = {0.f, 0.f, 0.f, 0.f}, a2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int c = 0; c < 4; ++c) a0[c] = fv * Gt[nt][c];
        mma_bf16(a0, ph, th[nt]);
        mma_bf16(a1, pl, th[nt]);
        mma_bf16(a2, ph, tl[nt]);
#pragma unroll
        for (int c = 0; c < 4; ++c) G[nt][c] = a0[c] + (a1[c] + a2[c]);
      }
      // dW += H_{t-1}ᵀ dP  (off the path; operands transposed in registers)
      {
        uint32_t hh[2][2], hl[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int r = 0; r < 2; ++r) split_bf162(hp[nt][2 * r], hp[nt][2 * r + 1], hh[nt][r], hl[nt][r]);
        const uint32_t ah[4] = {movmatrix_trans(hh[0][0]), movmatrix_trans(hh[1][0]), movmatrix_trans(hh[0][1]),
                                movmatrix_trans(hh[1][1])};
        const uint32_t al[4] = {movmatrix_trans(hl[0][0]), movmatrix_trans(hl[1][0]), movmatrix_trans(hl[0][1]),
                                movmatrix_trans(hl[1][1])};
#pragma unroll
        for (int jt = 0; jt < 2; ++jt) {
          const uint32_t bH[2] = {movmatrix_trans(ph[2 * jt]), movmatrix_trans(ph[2 * jt + 1])};
          const uint32_t bL[2] = {movmatrix_trans(pl[2 * jt]), movmatrix_trans(pl[2 * jt + 1])};
          mma_bf16(dWacc[jt], ah, bH);
          mma_bf16(dWacc[jt], al, bH);
          mma_bf16(dWacc[jt], ah, bL);
        }
      }
      // reductions
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        dq_r[r] += __shfl_xor_sync(0xffffffffu, dq_r[r], 1);
        dq_r[r] += __shfl_xor_sync(0xffffffffu, dq_r[r], 2);
        dk_r[r] += __shfl_xor_sync(0xffffffffu, dk_r[r], 1);
        dk_r[r] += __shfl_xor_sync(0xffffffffu, dk_r[r], 2);
      }
      if (tig == 0) {
        float* dqp = p.dq_part + (tok * N + n) * K + row0;
        float* dkp = p.dk_part + (tok * N + n) * K + row0;
        dqp[0] = dq_r[0];
        dqp[8] = dq_r[1];
        dkp[0] = dk_r[0];
        dkp[8] = dk_r[1];
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = dvc[nt][e];
          x += __shfl_xor_sync(0xffffffffu, x, 4);
          x += __shfl_xor_sync(0xffffffffu, x, 8);
          x += __shfl_xor_sync(0xffffffffu, x, 16);
          dvc[nt][e] = x;
        }
      if (g == 0) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          float2 o2;
          o2.x = dvc[nt][0] + (w == 0 ? dcol[nt][0] * dv_[nt][0] : 0.0f);
          o2.y = dvc[nt][1] + (w == 0 ? dcol[nt][1] * dv_[nt][1] : 0.0f);
          *reinterpret_cast<float2*>(cdvp + (s * KB + w) * V + 8 * nt + 2 * tig) = o2;
          if (w == 0) {
            dDacc[nt][0] = fmaf(dv_[nt][0], vv[nt][0], dDacc[nt][0]);
            dDacc[nt][1] = fmaf(dv_[nt][1], vv[nt][1], dDacc[nt][1]);
          }
        }
      }
#pragma unroll
      for (int m = 1; m < 32; m <<= 1) dfs += __shfl_xor_sync(0xffffffffu, dfs, m);
      if (lane == 0) cdfp[s * KB + w] = dfs;
    }
    __syncthreads();
    for (int idx = tid; idx < CK * V; idx += nthr) {
      const int s = idx / V, jj = idx % V;
      float acc = 0.0f;
      for (int ww = 0; ww < KB; ++ww) acc += cdvp[(s * KB + ww) * V + jj];
      p.dv[((int64_t(b) * S + t0 + s) * N + n) * V + jj] = acc;
    }
    for (int s = tid; s < CK; s += nthr) {
      float acc = 0.0f;
      for (int ww = 0; ww < KB; ++ww) acc += cdfp[s * KB + ww];
      p.df[(int64_t(b) * S + t0 + s) * N + n] = acc;
    }
  }
  // outputs of this (b, n)
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int r = c >> 1, e = c & 1;
      if (p.dh0) p.dh0[(int64_t(bn) * K + row0 + 8 * r) * V + 8 * nt + 2 * tig + e] = G[nt][c];
      // dWacc[jt=nt][c]: row a = g + 8r, col j = 8nt + 2tig + e
      p.dW_part[(int64_t(bn) * KB + w) * V * V + (g + 8 * r) * V + 8 * nt + 2 * tig + e] = dWacc[nt][c];
    }
  if (w == 0 && g == 0) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) p.dD_part[int64_t(bn) * V + 8 * nt + 2 * tig + e] = dDacc[nt][e];
  }
}

std::size_t bwd_smem_bytes_v2(int K) {
  const int KB = K / 16;
  return 2 * buf_bytes(K) + std::size_t(KB) * (2 * CK + 1) * 256 * 4 + std::size_t(CK) * KB * (V + 32) * 4;
}

// Everything one reverse step reads from shared memory, loaded one step ahead (manual prefetch).
struct RevIn {
  float hp[2][4], z[2][4];
  float q0, q1, fv;
  uint32_t kp0, kp8;  // bf16 pairs k[16w+2tig .. +1], k[16w+2tig+8 .. +9] (A operand of dv = kᵀ dP)
  float vv[2][2], dov[2][2];
};

// v2: no per-step shuffles. dq_t = H_t do_t and dk_t = dP v_t come out of one accumulator of five
// bf16 MMAs (do in column 0, v in column 1 of the B operand); dv_t = kᵀ dP is an MMA with k in row 0 of
// A and the movmatrix-transposed dP (already built for dW) as B; df partials go to shared memory and
// are reduced once per chunk. dW is accumulated per chunk in a fresh MMA accumulator and added to an
// fp32 total with ordinary adds (long tensor-core accumulation chains drift). Inputs of the recompute
// are loaded 8 steps at a time into registers; the reverse loop prefetches the next step's operands.
__global__ void __launch_bounds__(128) m2rnn_bwd_kernel(const BwdParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int K = p.K, KB = K / 16, S = p.S, N = p.N;
  const int bn = blockIdx.x, b = bn / N, n = bn % N;
  const int qh = n / (N / p.Nq), kh = n / (N / p.Nk);
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int row0 = 16 * w + g;
  const std::size_t BUF = buf_bytes(K);
  auto sck = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF); };
  auto sdo = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF + K * 64); };
  auto sf = [&](int bi) { return reinterpret_cast<float*>(smem + bi * BUF + K * 64 + CK * V * 4); };
  auto sq = [&](int bi) {
    return reinterpret_cast<__nv_bfloat16*>(smem + bi * BUF + K * 64 + CK * V * 4 + CK * 4);
  };
  auto sk = [&](int bi) { return sq(bi) + CK * K; };
  auto sv = [&](int bi) { return sq(bi) + 2 * CK * K; };
  float* Hs = reinterpret_cast<float*>(smem + 2 * BUF) + w * (CK + 1) * 256;
  float* Zs = reinterpret_cast<float*>(smem + 2 * BUF) + KB * (CK + 1) * 256 + w * CK * 256;
  float* dvp = reinterpret_cast<float*>(smem + 2 * BUF) + KB * (2 * CK + 1) * 256;  // [CK][KB][V]
  float* dfp = dvp + CK * KB * V;                                                    // [CK][KB][32]

  const int nck = S / CK;
  auto load_chunk = [&](int j, int bi) {
    const int t0 = j * CK;
    const int cpr = K / 8;
    for (int idx = tid; idx < CK * cpr; idx += nthr) {
      const int t = idx / cpr, ch = idx % cpr;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sq(bi) + t * K + ch * 8, p.q + tok * p.ld_q + qh * K + ch * 8);
      cp_async16(sk(bi) + t * K + ch * 8, p.k + tok * p.ld_k + kh * K + ch * 8);
    }
    for (int idx = tid; idx < CK * 2; idx += nthr) {
      const int t = idx >> 1, ch = idx & 1;
      cp_async16(sv(bi) + t * V + ch * 8, p.v + (int64_t(b) * S + t0 + t) * p.ld_v + n * V + ch * 8);
    }
    for (int idx = tid; idx < CK * 4; idx += nthr) {
      const int t = idx >> 2, ch = idx & 3;
      cp_async16(sdo(bi) + t * V + ch * 4, p.dout + ((int64_t(b) * S + t0 + t) * N + n) * V + ch * 4);
    }
    for (int t = tid; t < CK; t += nthr) cp_async4(sf(bi) + t, p.f + (int64_t(b) * S + t0 + t) * N + n);
    const float* src = p.ckpt + (int64_t(bn) * nck + j) * KB * 256;
    for (int idx = tid; idx < KB * 64; idx += nthr) cp_async16(sck(bi) + idx * 4, src + idx * 4);
  };

  const float* Wn = p.W + int64_t(n) * V * V;
  uint32_t bh[2][2], bl[2][2];
  load_w_frags(Wn, g, tig, bh, bl);
  uint32_t th[2][2], tl[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int a = 8 * nt + g;
    split_bf162(Wn[a * V + 2 * tig], Wn[a * V + 2 * tig + 1], th[nt][0], tl[nt][0]);
    split_bf162(Wn[a * V + 2 * tig + 8], Wn[a * V + 2 * tig + 9], th[nt][1], tl[nt][1]);
  }
  float dsel[2][2], G[2][4], dWtot[2][4], dDacc[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * nt + 2 * tig + e;
      dsel[nt][e] = w == 0 ? p.D[n * V + col] : 0.0f;
      dDacc[nt][e] = 0.0f;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        G[nt][2 * r + e] = p.dhT ? p.dhT[(int64_t(bn) * K + row0 + 8 * r) * V + col] : 0.0f;
        dWtot[nt][2 * r + e] = 0.0f;
      }
    }

  load_chunk(nck - 1, (nck - 1) & 1);
  cp_async_commit();
  for (int j = nck - 1; j >= 0; --j) {
    const int bi = j & 1, t0 = j * CK;
    if (j > 0) {
      load_chunk(j - 1, bi ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16 *cq = sq(bi), *ck = sk(bi), *cv = sv(bi);
    const float *cf = sf(bi), *cdo = sdo(bi);
    // (1) recompute H_{t-1}, Z_t of this chunk from its checkpoint (the forward's exact step)
    {
      float h[2][4];
      const float* src = sck(bi) + w * 256 + lane;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) h[nt][c] = src[(nt * 4 + c) * 32];
#pragma unroll 1
      for (int s0 = 0; s0 < CK; s0 += 8) {
        float k0[8], k1[8], fv[8], vv[8][2][2];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int s = s0 + u;
          k0[u] = __bfloat162float(ck[s * K + row0]);
          k1[u] = __bfloat162float(ck[s * K + row0 + 8]);
          fv[u] = cf[s];
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const float2 t2 =
                __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(cv + s * V + 8 * nt + 2 * tig));
            vv[u][nt][0] = t2.x;
            vv[u][nt][1] = t2.y;
          }
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int s = s0 + u;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) Hs[(s * 8 + nt * 4 + c) * 32 + lane] = h[nt][c];
          float z[2][4];
          step(h, z, k0[u], k1[u], vv[u], fv[u], bh, bl);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) Zs[(s * 8 + nt * 4 + c) * 32 + lane] = z[nt][c];
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) Hs[(CK * 8 + nt * 4 + c) * 32 + lane] = h[nt][c];
    }
    // (2) reverse through the chunk
    auto load_in = [&](RevIn& x, int s) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          x.hp[nt][c] = Hs[(s * 8 + nt * 4 + c) * 32 + lane];
          x.z[nt][c] = Zs[(s * 8 + nt * 4 + c) * 32 + lane];
        }
      x.q0 = __bfloat162float(cq[s * K + row0]);
      x.q1 = __bfloat162float(cq[s * K + row0 + 8]);
      x.kp0 = *reinterpret_cast<const uint32_t*>(ck + s * K + 16 * w + 2 * tig);
      x.kp8 = *reinterpret_cast<const uint32_t*>(ck + s * K + 16 * w + 2 * tig + 8);
      x.fv = cf[s];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float2 t2 =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(cv + s * V + 8 * nt + 2 * tig));
        x.vv[nt][0] = t2.x;
        x.vv[nt][1] = t2.y;
        const float2 d2 = *reinterpret_cast<const float2*>(cdo + s * V + 8 * nt + 2 * tig);
        x.dov[nt][0] = d2.x;
        x.dov[nt][1] = d2.y;
      }
    };
    float hc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) hc[nt][c] = Hs[(CK * 8 + nt * 4 + c) * 32 + lane];
    float dWc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    RevIn cur;
    load_in(cur, CK - 1);
#pragma unroll 2
    for (int s = CK - 1; s >= 0; --s) {
      RevIn nxt;
      load_in(nxt, s > 0 ? s - 1 : 0);
      const int64_t tok = int64_t(b) * S + t0 + s;
      const float fv = cur.fv, omf = 1.0f - fv;
      float Gt[2][4], dP[2][4], dfs = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float qr = (c >> 1) ? cur.q1 : cur.q0, dc = cur.dov[nt][c & 1];
          float gg = G[nt][c];
          if (p.clip == 1) gg = clampf(gg, p.clipv);
          gg = fmaf(qr, dc, gg);
          if (p.clip == 2) gg = clampf(gg, p.clipv);
          Gt[nt][c] = gg;
          const float zz = cur.z[nt][c];
          dfs = fmaf(gg, cur.hp[nt][c] - zz, dfs);
          dP[nt][c] = omf * gg * (1.0f - zz * zz);
        }
      uint32_t ph[4], pl[4];
      split_bf162(dP[0][0], dP[0][1], ph[0], pl[0]);
      split_bf162(dP[0][2], dP[0][3], ph[1], pl[1]);
      split_bf162(dP[1][0], dP[1][1], ph[2], pl[2]);
      split_bf162(dP[1][2], dP[1][3], ph[3], pl[3]);
      // G ← f·G_t + dP·Wᵀ  (the recurrence's path)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        float a0[4], a1[4] = {0.f, 0.f, 0.f, 0.f}, a2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int c = 0; c < 4; ++c) a0[c] = fv * Gt[nt][c];
        mma_bf16(a0, ph, th[nt]);
        mma_bf16(a1, pl, th[nt]);
        mma_bf16(a2, ph, tl[nt]);
#pragma unroll
        for (int c = 0; c < 4; ++c) G[nt][c] = a0[c] + (a1[c] + a2[c]);
      }
      // dP transposed (B operand with k = row i): for dW and dv
      uint32_t bH[2][2], bL[2][2];
#pragma unroll
      for (int jt = 0; jt < 2; ++jt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          bH[jt][r] = movmatrix_trans(ph[2 * jt + r]);
          bL[jt][r] = movmatrix_trans(pl[2 * jt + r]);
        }
      // dW += H_{t-1}ᵀ dP
      {
        uint32_t hh[2][2], hl[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int r = 0; r < 2; ++r) split_bf162(cur.hp[nt][2 * r], cur.hp[nt][2 * r + 1], hh[nt][r], hl[nt][r]);
        const uint32_t ah[4] = {movmatrix_trans(hh[0][0]), movmatrix_trans(hh[1][0]), movmatrix_trans(hh[0][1]),
                                movmatrix_trans(hh[1][1])};
        const uint32_t al[4] = {movmatrix_trans(hl[0][0]), movmatrix_trans(hl[1][0]), movmatrix_trans(hl[0][1]),
                                movmatrix_trans(hl[1][1])};
#pragma unroll
        for (int jt = 0; jt < 2; ++jt) {
          mma_bf16(dWc[jt], ah, bH[jt]);
          mma_bf16(dWc[jt], al, bH[jt]);
          mma_bf16(dWc[jt], ah, bL[jt]);
        }
      }
      // dq_t = H_t do_t (column 0) and dk_t = dP v_t (column 1) in one accumulator
      {
        uint32_t hcH[4], hcL[4], dH[2], dL[2];
        split_bf162(hc[0][0], hc[0][1], hcH[0], hcL[0]);
        split_bf162(hc[0][2], hc[0][3], hcH[1], hcL[1]);
        split_bf162(hc[1][0], hc[1][1], hcH[2], hcL[2]);
        split_bf162(hc[1][2], hc[1][3], hcH[3], hcL[3]);
        split_bf162(cur.dov[0][0], cur.dov[0][1], dH[0], dL[0]);
        split_bf162(cur.dov[1][0], cur.dov[1][1], dH[1], dL[1]);
        const bool c0 = g == 0, c1 = g == 1;
        const uint32_t bdoH[2] = {c0 ? dH[0] : 0u, c0 ? dH[1] : 0u};
        const uint32_t bdoL[2] = {c0 ? dL[0] : 0u, c0 ? dL[1] : 0u};
        const uint32_t bv[2] = {c1 ? pack_bf162(cur.vv[0][0], cur.vv[0][1]) : 0u,
                                c1 ? pack_bf162(cur.vv[1][0], cur.vv[1][1]) : 0u};
        float cqk[4] = {0.f, 0.f, 0.f, 0.f};
        mma_bf16(cqk, hcH, bdoH);
        mma_bf16(cqk, hcL, bdoH);
        mma_bf16(cqk, hcH, bdoL);
        mma_bf16(cqk, ph, bv);
        mma_bf16(cqk, pl, bv);
        if (tig == 0) {
          float* dqp = p.dq_part + (tok * N + n) * K + row0;
          float* dkp = p.dk_part + (tok * N + n) * K + row0;
          dqp[0] = cqk[0];
          dkp[0] = cqk[1];
          dqp[8] = cqk[2];
          dkp[8] = cqk[3];
        }
      }
      // dv_t = kᵀ dP (row 0 of the result) + D ⊙ do_t (warp 0 only)
      {
        const uint32_t ak[4] = {g == 0 ? cur.kp0 : 0u, 0u, g == 0 ? cur.kp8 : 0u, 0u};
#pragma unroll
        for (int jt = 0; jt < 2; ++jt) {
          float cdv[4] = {0.f, 0.f, 0.f, 0.f};
          mma_bf16(cdv, ak, bH[jt]);
          mma_bf16(cdv, ak, bL[jt]);
          if (g == 0) {
            float2 o2;
            o2.x = fmaf(dsel[jt][0], cur.dov[jt][0], cdv[0]);
            o2.y = fmaf(dsel[jt][1], cur.dov[jt][1], cdv[1]);
            *reinterpret_cast<float2*>(dvp + (s * KB + w) * V + 8 * jt + 2 * tig) = o2;
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) dDacc[nt][e] = fmaf(cur.dov[nt][e], cur.vv[nt][e], dDacc[nt][e]);
      dfp[(s * KB + w) * 32 + lane] = dfs;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) hc[nt][c] = cur.hp[nt][c];
      cur = nxt;
    }
#pragma unroll
    for (int jt = 0; jt < 2; ++jt)
#pragma unroll
      for (int c = 0; c < 4; ++c) dWtot[jt][c] += dWc[jt][c];
    __syncthreads();
    for (int idx = tid; idx < CK * V; idx += nthr) {
      const int s = idx / V, jj = idx % V;
      float acc = 0.0f;
      for (int ww = 0; ww < KB; ++ww) acc += dvp[(s * KB + ww) * V + jj];
      p.dv[((int64_t(b) * S + t0 + s) * N + n) * V + jj] = acc;
    }
    // df: 8 threads per step, each summing KB·4 partials, then a shuffle over the 8 (CK·8 = 128 is a
    // multiple of every block size used, so each warp is either fully active or idle here)
    for (int idx = tid; idx < CK * 8; idx += nthr) {
      const int s = idx >> 3, part = idx & 7;
      float acc = 0.0f;
      for (int m = part; m < KB * 32; m += 8) acc += dfp[s * KB * 32 + m];
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      acc += __shfl_xor_sync(0xffffffffu, acc, 2);
      acc += __shfl_xor_sync(0xffffffffu, acc, 4);
      if (part == 0) p.df[(int64_t(b) * S + t0 + s) * N + n] = acc;
    }
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int r = c >> 1, e = c & 1;
      if (p.dh0) p.dh0[(int64_t(bn) * K + row0 + 8 * r) * V + 8 * nt + 2 * tig + e] = G[nt][c];
      p.dW_part[(int64_t(bn) * KB + w) * V * V + (g + 8 * r) * V + 8 * nt + 2 * tig + e] = dWtot[nt][c];
    }
  if (w == 0 && g == 0) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) p.dD_part[int64_t(bn) * V + 8 * nt + 2 * tig + e] = dDacc[nt][e];
  }
}

// out[bs, hh, i] = Σ_{m < N/Nh} part[bs, hh·(N/Nh) + m, i]  (fixed order)
__global__ void m2rnn_reduce_heads_kernel(const float* __restrict__ part, float* __restrict__ out, int64_t BS, int N,
                                          int Nh, int K) {
  const int64_t total = BS * Nh * K;
  const int grp = N / Nh;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = idx % K;
    const int64_t r = idx / K;
    const int hh = r % Nh;
    const int64_t bs = r / Nh;
    const float* src = part + (bs * N + int64_t(hh) * grp) * K + i;
    float acc = 0.0f;
    for (int m = 0; m < grp; ++m) acc += src[int64_t(m) * K];
    out[idx] = acc;
  }
}

// dW[n] = Σ_b Σ_w dW_part[b, n, w];  dD[n] = Σ_b dD_part[b, n]  (fixed order)
__global__ void m2rnn_reduce_params_kernel(const float* __restrict__ dWp, const float* __restrict__ dDp,
                                           float* __restrict__ dW, float* __restrict__ dD, int B, int N, int KB) {
  const int nW = N * V * V, total = nW + N * V;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    float acc = 0.0f;
    if (idx < nW) {
      const int n = idx / (V * V), e = idx % (V * V);
      for (int b = 0; b < B; ++b)
        for (int w = 0; w < KB; ++w) acc += dWp[((int64_t(b) * N + n) * KB + w) * V * V + e];
      dW[idx] = acc;
    } else {
      const int id = idx - nW, n = id / V, e = id % V;
      for (int b = 0; b < B; ++b) acc += dDp[(int64_t(b) * N + n) * V + e];
      dD[id] = acc;
    }
  }
}

void req(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("m2rnn (CUDA): " + what);
}
}  // namespace

std::size_t gpu_bwd_workspace_floats(const ScanShape& s) {
  const std::size_t BSNK = std::size_t(s.B) * s.S * s.N * s.K;
  return 2 * BSNK + std::size_t(s.B) * s.N * (s.K / 16) * s.V * s.V + std::size_t(s.B) * s.N * s.V;
}

void scan_backward_gpu(const GpuScanArgs& a, const float* ckpt, const float* dout, const float* dhT, Clip clip,
                       float clip_value, const GpuScanGrads& gr, float* workspace, void* stream) {
  gpu_validate(a);
  req(ckpt && dout && workspace, "ckpt, dout and workspace must be non-null");
  req(gr.dq && gr.dk && gr.dv && gr.df && gr.dW && gr.dD, "dq, dk, dv, df, dW, dD must be non-null");
  req(clip == Clip::Off || clip_value > 0, "clip value must be > 0");
  req((reinterpret_cast<uintptr_t>(dout) & 15) == 0 && (reinterpret_cast<uintptr_t>(ckpt) & 15) == 0,
      "do and ckpt must be 16-byte aligned");
  const ScanShape& s = a.shape;
  const std::size_t BSNK = std::size_t(s.B) * s.S * s.N * s.K;
  float* dq_part = workspace;
  float* dk_part = workspace + BSNK;
  float* dW_part = workspace + 2 * BSNK;
  float* dD_part = dW_part + std::size_t(s.B) * s.N * (s.K / 16) * s.V * s.V;
  BwdParams p{s.B, s.S, s.N, s.K, s.Nq, s.Nk,
              a.ld_q ? a.ld_q : int64_t(s.Nq) * s.K, a.ld_k ? a.ld_k : int64_t(s.Nk) * s.K,
              a.ld_v ? a.ld_v : int64_t(s.N) * s.V,
              reinterpret_cast<const __nv_bfloat16*>(a.q), reinterpret_cast<const __nv_bfloat16*>(a.k),
              reinterpret_cast<const __nv_bfloat16*>(a.v), a.f, a.W, a.D, ckpt, dout, dhT,
              clip == Clip::Off ? 0 : (clip == Clip::Kernel ? 1 : 2), clip_value,
              dq_part, dk_part, gr.dv, gr.df, dW_part, dD_part, gr.dh0};
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  static bool attr_set = false;
  if (!attr_set) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(m2rnn_bwd_kernel_v1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(bwd_smem_bytes(64))));
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(m2rnn_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(bwd_smem_bytes_v2(64))));
    attr_set = true;
  }
  if (a.variant == 1)
    m2rnn_bwd_kernel_v1<<<s.B * s.N, 32 * (s.K / 16), bwd_smem_bytes(s.K), st>>>(p);
  else
    m2rnn_bwd_kernel<<<s.B * s.N, 32 * (s.K / 16), bwd_smem_bytes_v2(s.K), st>>>(p);
  MEGACPP_CUDA_CHECK_LAUNCH();
  const int64_t BS = int64_t(s.B) * s.S;
  const int threads = 256;
  auto blocks_for = [&](int64_t n) { return int(std::min<int64_t>((n + threads - 1) / threads, 4096)); };
  m2rnn_reduce_heads_kernel<<<blocks_for(BS * s.Nq * s.K), threads, 0, st>>>(dq_part, gr.dq, BS, s.N, s.Nq, s.K);
  MEGACPP_CUDA_CHECK_LAUNCH();
  m2rnn_reduce_heads_kernel<<<blocks_for(BS * s.Nk * s.K), threads, 0, st>>>(dk_part, gr.dk, BS, s.N, s.Nk, s.K);
  MEGACPP_CUDA_CHECK_LAUNCH();
  m2rnn_reduce_params_kernel<<<blocks_for(int64_t(s.N) * s.V * (s.V + 1)), threads, 0, st>>>(
      dW_part, dD_part, gr.dW, gr.dD, s.B, s.N, s.K / 16);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

GpuKernelInfo gpu_bwd_kernel_info(const ScanShape& s, int variant) {
  if (variant == 1)
    return {reinterpret_cast<const void*>(m2rnn_bwd_kernel_v1), "m2rnn_bwd_kernel_v1", 32 * (s.K / 16),
            bwd_smem_bytes(s.K)};
  return {reinterpret_cast<const void*>(m2rnn_bwd_kernel), "m2rnn_bwd_kernel", 32 * (s.K / 16),
          bwd_smem_bytes_v2(s.K)};
}

}  // namespace megacpp::m2rnn
