// m2rnn_fwd.cu — M²RNN scan-core forward (sequential in time, parallel over batch × head × K-block).
//
// Math (per b, head n; H ∈ R^{K×16}):  P = H W_n + k_t v_tᵀ ; Z = tanh(P) ; H ← f H + (1-f) Z ;
//   o_t = Hᵀ q_t + D_n ⊙ v_t.   (m2rnn_ref.hpp has the whole block; this is the part that is sequential.)
// Shapes: q [B,S,Nq,K] k [B,S,Nk,K] v [B,S,N,V] bf16 (token strides ld_*), f [B,S,N] fp32, W [N,V,V],
//   D [N,V] fp32, h0/hT [B,N,K,V] fp32, o [B,S,N,V] fp32. V = 16, K ∈ {16,32,48,64}, S % 32 == 0.
// Work split: one CTA per (b, n); warp w owns rows 16w..16w+15 of H (rows are independent in the
//   recurrence), so a CTA has K/16 warps. The state lives in registers as fp32 master values
//   (8 per thread, mma C-fragment layout). Each step: H → fp16 hi/lo A fragments (no shuffles), three
//   m16n8k16 MMAs per n8 tile (hi·Whi + lo·Whi + hi·Wlo, "3xFP16", ~fp32 accuracy since |H| ≤ 1),
//   C initialised with k vᵀ, tanh = 1 - 2/(1+e^{2x}) (ex2 + rcp), gate FMA in fp32.
//   Readout (v2, default): per-thread partial over its 2 rows × 4 columns, one 16-byte smem store per
//   step, reduced over the 8 row groups and K/16 warps (plus D ⊙ v) once per 16-step chunk.
// Prefetch: q, k, v, f of the next 16 steps are copied to shared memory with cp.async while the
//   current 16 run (double buffer); the inputs of 8 steps are then loaded into registers at once, so
//   no load latency sits on the recurrence.
// Saved for backward: H before every 16th step (fp32, fragment order) → ckpt [B,N,S/16,K/16,8,32];
//   B·N·S·K·V/4 bytes (92 MB at B=2, S=4096, N=44, K=64). Not written when ckpt == nullptr.
// Resources (K=64, sm_90a, ptxas): v2 128 threads, 128 regs, 0 spill, 42 KB dynamic smem (4.7 KB × 2
//   input buffers + 32 KB readout partials). v1 (variant 1, the first version kept as baseline/fallback:
//   32-step chunks, per-step shuffle readout, checkpoint branch in the step loop): 80 regs, 34 KB smem.
// Measured (H100, B=2, S=4096, N=44): v2 1.02 ms, v1 1.32–1.34 ms (docs/perf/m2rnn.md).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/m2rnn/m2rnn_common.cuh"
#include "kernels/m2rnn/m2rnn_scan.hpp"

namespace megacpp::m2rnn {

namespace {
using namespace dev;
constexpr int TC = 32;  // v1: steps per shared-memory chunk
constexpr int TC2 = kGpuCheckpointEvery;  // v2: steps per chunk (= checkpoint interval)
constexpr int UNR = 8;  // v2: steps whose inputs are loaded into registers at once
constexpr int CK = kGpuCheckpointEvery;

struct FwdParams {
  int B, S, N, K, Nq, Nk;
  int64_t ld_q, ld_k, ld_v;
  const __nv_bfloat16 *q, *k, *v;
  const float *f, *W, *D, *h0;
  float *o, *hT, *ckpt;
};

std::size_t fwd_smem_bytes(int K) {
  const int KB = K / 16;
  return 2 * (std::size_t(TC) * K * 2 * 2 + std::size_t(TC) * V * 2 + TC * 4) +
         2 * std::size_t(TC) * KB * V * 4;
}

// v1 (baseline, run 1 of docs/perf/m2rnn.md): 32-step chunks, per-step shuffle readout.
__global__ void __launch_bounds__(128) m2rnn_fwd_kernel_v1(const FwdParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int K = p.K, KB = K / 16, S = p.S, N = p.N;
  const int bn = blockIdx.x, b = bn / N, n = bn % N;
  const int qh = n / (N / p.Nq), kh = n / (N / p.Nk);
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;

  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem);  // [2][TC][K]
  __nv_bfloat16* sk = sq + 2 * TC * K;                          // [2][TC][K]
  __nv_bfloat16* sv = sk + 2 * TC * K;                          // [2][TC][V]
  float* sf = reinterpret_cast<float*>(sv + 2 * TC * V);        // [2][TC]
  float* op = sf + 2 * TC;                                      // [2][TC][KB][V]

  auto load_chunk = [&](int c, int bi) {
    const int t0 = c * TC;
    const int cpr = K / 8;  // 16-byte pieces per row of q/k
    for (int idx = tid; idx < TC * cpr; idx += nthr) {
      const int t = idx / cpr, ch = idx % cpr;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sq + (bi * TC + t) * K + ch * 8, p.q + tok * p.ld_q + qh * K + ch * 8);
      cp_async16(sk + (bi * TC + t) * K + ch * 8, p.k + tok * p.ld_k + kh * K + ch * 8);
    }
    for (int idx = tid; idx < TC * 2; idx += nthr) {
      const int t = idx >> 1, ch = idx & 1;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sv + (bi * TC + t) * V + ch * 8, p.v + tok * p.ld_v + n * V + ch * 8);
    }
    for (int t = tid; t < TC; t += nthr) cp_async4(sf + bi * TC + t, p.f + (int64_t(b) * S + t0 + t) * N + n);
  };

  // W fragments, D values of this thread's columns, initial state.
  uint32_t bh[2][2], bl[2][2];
  load_w_frags(p.W + int64_t(n) * V * V, g, tig, bh, bl);
  float dcol[2][2];
  float h[2][4];
  const int row0 = 16 * w + g;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * nt + 2 * tig + e;
      dcol[nt][e] = p.D[n * V + col];
#pragma unroll
      for (int r = 0; r < 2; ++r)
        h[nt][2 * r + e] = p.h0 ? p.h0[((int64_t(bn) * K) + row0 + 8 * r) * V + col] : 0.0f;
    }

  const int nch = S / TC;
  const int nck = S / CK;
  load_chunk(0, 0);
  cp_async_commit();
  for (int c = 0; c < nch; ++c) {
    const int bi = c & 1;
    if (c + 1 < nch) {
      load_chunk(c + 1, bi ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* cq = sq + bi * TC * K;
    const __nv_bfloat16* ck = sk + bi * TC * K;
    const __nv_bfloat16* cv = sv + bi * TC * V;
    const float* cf = sf + bi * TC;
    float* cop = op + bi * TC * KB * V;
#pragma unroll 4
    for (int s = 0; s < TC; ++s) {
      if (p.ckpt && (s % CK) == 0) {
        const int j = (c * TC + s) / CK;
        float* dst = p.ckpt + ((int64_t(bn) * nck + j) * KB + w) * 8 * 32 + lane;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int cc = 0; cc < 4; ++cc) dst[(nt * 4 + cc) * 32] = h[nt][cc];
      }
      const float k0 = __bfloat162float(ck[s * K + row0]), k1 = __bfloat162float(ck[s * K + row0 + 8]);
      const float q0 = __bfloat162float(cq[s * K + row0]), q1 = __bfloat162float(cq[s * K + row0 + 8]);
      float vv[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float2 t2 = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(cv + s * V + 8 * nt + 2 * tig));
        vv[nt][0] = t2.x;
        vv[nt][1] = t2.y;
      }
      const float fv = cf[s];
      float z[2][4];
      step(h, z, k0, k1, vv, fv, bh, bl);
      float r[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = q0 * h[nt][e] + q1 * h[nt][2 + e];
          x += __shfl_xor_sync(0xffffffffu, x, 4);
          x += __shfl_xor_sync(0xffffffffu, x, 8);
          x += __shfl_xor_sync(0xffffffffu, x, 16);
          r[nt][e] = x;
        }
      if (g == 0) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          float2 out;
          out.x = r[nt][0] + (w == 0 ? dcol[nt][0] * vv[nt][0] : 0.0f);
          out.y = r[nt][1] + (w == 0 ? dcol[nt][1] * vv[nt][1] : 0.0f);
          *reinterpret_cast<float2*>(cop + (s * KB + w) * V + 8 * nt + 2 * tig) = out;
        }
      }
    }
    __syncthreads();
    for (int idx = tid; idx < TC * V; idx += nthr) {
      const int s = idx / V, j = idx % V;
      float acc = 0.0f;
      for (int ww = 0; ww < KB; ++ww) acc += cop[(s * KB + ww) * V + j];
      p.o[((int64_t(b) * S + c * TC + s) * N + n) * V + j] = acc;
    }
  }
  if (p.hT) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int cc = 0; cc < 4; ++cc)
        p.hT[(int64_t(bn) * K + row0 + 8 * (cc >> 1)) * V + 8 * nt + 2 * tig + (cc & 1)] = h[nt][cc];
  }
}

std::size_t fwd_smem_bytes_v2(int K) {
  const int KB = K / 16;
  return 2 * (std::size_t(TC2) * K * 2 * 2 + std::size_t(TC2) * V * 2 + TC2 * 4) +
         std::size_t(TC2) * KB * 32 * 4 * 4;
}

// v2: 16-step chunks; the checkpoint is stored at the chunk start (no per-step branch); the inputs of
// 8 steps are loaded into registers before those steps run (no shared-memory load waits on the
// recurrence); the readout is a per-thread partial (2 rows × 4 columns) stored as one 16-byte smem
// write per step, reduced over rows and warps once per chunk (no per-step shuffles or branches).
__global__ void __launch_bounds__(128) m2rnn_fwd_kernel(const FwdParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int K = p.K, KB = K / 16, S = p.S, N = p.N;
  const int bn = blockIdx.x, b = bn / N, n = bn % N;
  const int qh = n / (N / p.Nq), kh = n / (N / p.Nk);
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;

  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem);  // [2][TC2][K]
  __nv_bfloat16* sk = sq + 2 * TC2 * K;                         // [2][TC2][K]
  __nv_bfloat16* sv = sk + 2 * TC2 * K;                         // [2][TC2][V]
  float* sf = reinterpret_cast<float*>(sv + 2 * TC2 * V);       // [2][TC2]
  float4* op = reinterpret_cast<float4*>(sf + 2 * TC2);         // [TC2][KB][32] per-thread readout partials

  auto load_chunk = [&](int c, int bi) {
    const int t0 = c * TC2;
    const int cpr = K / 8;
    for (int idx = tid; idx < TC2 * cpr; idx += nthr) {
      const int t = idx / cpr, ch = idx % cpr;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sq + (bi * TC2 + t) * K + ch * 8, p.q + tok * p.ld_q + qh * K + ch * 8);
      cp_async16(sk + (bi * TC2 + t) * K + ch * 8, p.k + tok * p.ld_k + kh * K + ch * 8);
    }
    for (int idx = tid; idx < TC2 * 2; idx += nthr) {
      const int t = idx >> 1, ch = idx & 1;
      const int64_t tok = int64_t(b) * S + t0 + t;
      cp_async16(sv + (bi * TC2 + t) * V + ch * 8, p.v + tok * p.ld_v + n * V + ch * 8);
    }
    for (int t = tid; t < TC2; t += nthr) cp_async4(sf + bi * TC2 + t, p.f + (int64_t(b) * S + t0 + t) * N + n);
  };

  uint32_t bh[2][2], bl[2][2];
  load_w_frags(p.W + int64_t(n) * V * V, g, tig, bh, bl);
  float dsel[2][2];  // D at this thread's columns, only where (w, g) == (0, 0): the D ⊙ v term is added once
  float h[2][4];
  const int row0 = 16 * w + g;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * nt + 2 * tig + e;
      dsel[nt][e] = (w == 0 && g == 0) ? p.D[n * V + col] : 0.0f;
#pragma unroll
      for (int r = 0; r < 2; ++r)
        h[nt][2 * r + e] = p.h0 ? p.h0[((int64_t(bn) * K) + row0 + 8 * r) * V + col] : 0.0f;
    }

  const int nch = S / TC2;
  load_chunk(0, 0);
  cp_async_commit();
  for (int c = 0; c < nch; ++c) {
    const int bi = c & 1;
    if (c + 1 < nch) {
      load_chunk(c + 1, bi ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (p.ckpt) {  // H before step c·16
      float* dst = p.ckpt + ((int64_t(bn) * nch + c) * KB + w) * 8 * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) dst[(nt * 4 + cc) * 32] = h[nt][cc];
    }
    const __nv_bfloat16* cq = sq + bi * TC2 * K;
    const __nv_bfloat16* ck = sk + bi * TC2 * K;
    const __nv_bfloat16* cv = sv + bi * TC2 * V;
    const float* cf = sf + bi * TC2;
#pragma unroll 1
    for (int s0 = 0; s0 < TC2; s0 += UNR) {
      float k0[UNR], k1[UNR], q0[UNR], q1[UNR], fv[UNR], vv[UNR][2][2];
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const int s = s0 + u;
        k0[u] = __bfloat162float(ck[s * K + row0]);
        k1[u] = __bfloat162float(ck[s * K + row0 + 8]);
        q0[u] = __bfloat162float(cq[s * K + row0]);
        q1[u] = __bfloat162float(cq[s * K + row0 + 8]);
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
      for (int u = 0; u < UNR; ++u) {
        float z[2][4];
        step(h, z, k0[u], k1[u], vv[u], fv[u], bh, bl);
        float4 r;
        r.x = fmaf(q0[u], h[0][0], fmaf(q1[u], h[0][2], dsel[0][0] * vv[u][0][0]));
        r.y = fmaf(q0[u], h[0][1], fmaf(q1[u], h[0][3], dsel[0][1] * vv[u][0][1]));
        r.z = fmaf(q0[u], h[1][0], fmaf(q1[u], h[1][2], dsel[1][0] * vv[u][1][0]));
        r.w = fmaf(q0[u], h[1][1], fmaf(q1[u], h[1][3], dsel[1][1] * vv[u][1][1]));
        op[((s0 + u) * KB + w) * 32 + lane] = r;
      }
    }
    __syncthreads();
    // o[s][col] = Σ_w Σ_g partial[s][w][g·4 + tig(col)][comp(col)]
    const float* opf = reinterpret_cast<const float*>(op);
    for (int idx = tid; idx < TC2 * V; idx += nthr) {
      const int s = idx / V, col = idx % V;
      const int tg = (col & 7) >> 1, comp = (col >> 3) * 2 + (col & 1);
      float acc = 0.0f;
      for (int ww = 0; ww < KB; ++ww) {
        const float* src = opf + ((s * KB + ww) * 32 + tg) * 4 + comp;
#pragma unroll
        for (int gg = 0; gg < 8; ++gg) acc += src[gg * 16];
      }
      p.o[((int64_t(b) * S + c * TC2 + s) * N + n) * V + col] = acc;
    }
  }
  if (p.hT) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int cc = 0; cc < 4; ++cc)
        p.hT[(int64_t(bn) * K + row0 + 8 * (cc >> 1)) * V + 8 * nt + 2 * tig + (cc & 1)] = h[nt][cc];
  }
}

void req(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("m2rnn (CUDA): " + what);
}
}  // namespace

void gpu_validate(const GpuScanArgs& a) {
  const ScanShape& s = a.shape;
  validate(s);
  req(a.variant == 0 || a.variant == 1, "variant=" + std::to_string(a.variant) + " not supported (0 or 1)");
  req(s.V == 16, "value_dim=" + std::to_string(s.V) + " not supported (supported: 16)");
  req(s.K == 16 || s.K == 32 || s.K == 48 || s.K == 64,
      "key_dim=" + std::to_string(s.K) + " not supported (supported: 16, 32, 48, 64)");
  req(s.S % 32 == 0, "S=" + std::to_string(s.S) + " not supported (must be a multiple of 32)");
  const int64_t lq = a.ld_q ? a.ld_q : int64_t(s.Nq) * s.K, lk = a.ld_k ? a.ld_k : int64_t(s.Nk) * s.K,
                lv = a.ld_v ? a.ld_v : int64_t(s.N) * s.V;
  req(lq >= int64_t(s.Nq) * s.K && lq % 8 == 0, "ld_q=" + std::to_string(lq) + " must be >= Nq*K and a multiple of 8");
  req(lk >= int64_t(s.Nk) * s.K && lk % 8 == 0, "ld_k=" + std::to_string(lk) + " must be >= Nk*K and a multiple of 8");
  req(lv >= int64_t(s.N) * s.V && lv % 8 == 0, "ld_v=" + std::to_string(lv) + " must be >= N*V and a multiple of 8");
  req(a.q && a.k && a.v && a.f && a.W && a.D, "q, k, v, f, W, D must be non-null");
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  req(al16(a.q) && al16(a.k) && al16(a.v), "q, k, v must be 16-byte aligned");
  req(int64_t(s.B) * s.N < (int64_t(1) << 31), "B*heads too large");
}

std::size_t gpu_checkpoint_floats(const ScanShape& s) {
  return std::size_t(s.B) * s.N * (s.S / kGpuCheckpointEvery) * s.K * s.V;
}

void scan_forward_gpu(const GpuScanArgs& a, float* o, float* hT, float* ckpt, void* stream) {
  gpu_validate(a);
  req(o != nullptr, "o must be non-null");
  const ScanShape& s = a.shape;
  FwdParams p{s.B, s.S, s.N, s.K, s.Nq, s.Nk,
              a.ld_q ? a.ld_q : int64_t(s.Nq) * s.K, a.ld_k ? a.ld_k : int64_t(s.Nk) * s.K,
              a.ld_v ? a.ld_v : int64_t(s.N) * s.V,
              reinterpret_cast<const __nv_bfloat16*>(a.q), reinterpret_cast<const __nv_bfloat16*>(a.k),
              reinterpret_cast<const __nv_bfloat16*>(a.v), a.f, a.W, a.D, a.h0, o, hT, ckpt};
  static bool attr_set = false;
  if (!attr_set) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(m2rnn_fwd_kernel_v1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(fwd_smem_bytes(64))));
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(m2rnn_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(fwd_smem_bytes_v2(64))));
    attr_set = true;
  }
  if (a.variant == 1)
    m2rnn_fwd_kernel_v1<<<s.B * s.N, 32 * (s.K / 16), fwd_smem_bytes(s.K), static_cast<cudaStream_t>(stream)>>>(p);
  else
    m2rnn_fwd_kernel<<<s.B * s.N, 32 * (s.K / 16), fwd_smem_bytes_v2(s.K), static_cast<cudaStream_t>(stream)>>>(p);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

GpuKernelInfo gpu_fwd_kernel_info(const ScanShape& s, int variant) {
  if (variant == 1)
    return {reinterpret_cast<const void*>(m2rnn_fwd_kernel_v1), "m2rnn_fwd_kernel_v1", 32 * (s.K / 16),
            fwd_smem_bytes(s.K)};
  return {reinterpret_cast<const void*>(m2rnn_fwd_kernel), "m2rnn_fwd_kernel", 32 * (s.K / 16),
          fwd_smem_bytes_v2(s.K)};
}

}  // namespace megacpp::m2rnn
