// m2rnn_glue.cu — the element-wise and reduction kernels around the M²RNN scan core (R block, CUDA backend).
//
// Math (spec ../shared/docs/m2rnn-spec.md §2, §4; float64 reference: m2rnn_ref.cpp block_forward/backward).
// M = B·S tokens, row r = b·S + t; u = x·W_in (fp32 [M, ldu]) with columns [q K | k K | v N·V | φ N | g N·V];
// C = 2K + N·V conv channels; w = conv width (≤ 8); a = u[:, :C] (the conv input).
//   conv_silu_fwd   pre[r,ch] = Σ_j κ[ch,j]·a[b, t−(w−1)+j, ch] (a = 0 before t = 0),  c = SiLU(pre) → bf16 [M, C]
//   decay_fwd       f[r,n] = exp(−exp(A_log[n])·softplus(φ[r,n] + dt_bias[n]))          → fp32 [M, N]
//   out_gate_fwd    m = o ⊙ SiLU(g)                                                      → bf16 [M, N·V]
//   (RMSNorm over all N·V channels and the projections are train_ops / cuBLASLt, in the block.)
//   out_gate_bwd    do = dm ⊙ SiLU(g) (fp32),  dg = dm ⊙ o ⊙ SiLU'(g)  (bf16 into du),  SiLU'(x) = σ(x)(1 + x(1 − σ(x)))
//   decay_bwd       s = φ + dt_bias, A = exp(A_log):  dφ = df·f·(−A)·σ(s) (bf16 into du),
//                   ddt_bias[n] += Σ_r dφ,  dA_log[n] += Σ_r df·f·(−A·softplus(s))
//   conv_silu_bwd   dpre = dc·SiLU'(pre) (pre recomputed from u, κ),  da[r,ch] = Σ_j κ[ch,j]·dpre[b, t+(w−1)−j, ch]
//                   (bf16 into du[:, :C]),  dκ[ch,j] += Σ_r a[b, t−(w−1)+j, ch]·dpre[r,ch]
// Saved for backward (by the block, not here): u, f, o, m; c is the scan's saved input.
// Determinism: decay_bwd reduces each head in one CTA (fixed thread↔row map, fixed tree); dκ uses per-256-row
//   chunk partials (fixed 8-lane order) reduced over chunks in index order by a second kernel. No atomics.
// Resources: all kernels 256 threads, fp32 math, no shared memory except the reductions (decay_bwd 2 KB,
//   conv dκ partial 8 KB). Memory-bound, one pass over their operands each (conv_silu_bwd: three passes).
#include "kernels/m2rnn/m2rnn_glue.hpp"

#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"

namespace megacpp::m2rnn::glue {

namespace {

constexpr int kThreads = 256;
constexpr int kConvRowsPerChunk = 256;  // rows per dκ partial
constexpr int kConvLanesY = 8;

void req(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("m2rnn glue: " + what);
}
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  req(b < (int64_t(1) << 31), "too many elements (" + std::to_string(n) + ")");
  return static_cast<unsigned>(b);
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x * sigmoidf_(x); }
__device__ __forceinline__ float dsiluf_(float x) {
  const float s = sigmoidf_(x);
  return s * (1.0f + x * (1.0f - s));
}
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__global__ void conv_silu_fwd_kernel(const float* __restrict__ u, int64_t ldu, const float* __restrict__ cw,
                                     bf16* __restrict__ c, int64_t M, int64_t S, int64_t C, int w) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const int64_t r = i / C, ch = i % C, t = r % S;
  float acc = 0.0f;
  for (int j = 0; j < w; ++j) {
    const int64_t dt = (w - 1) - j;  // how many tokens back
    if (t - dt >= 0) acc = fmaf(cw[ch * w + j], u[(r - dt) * ldu + ch], acc);
  }
  c[i] = __float2bfloat16(siluf_(acc));
}

__global__ void decay_fwd_kernel(const float* __restrict__ u, int64_t ldu, int64_t phi_col,
                                 const float* __restrict__ A_log, const float* __restrict__ dt_bias,
                                 float* __restrict__ f, int64_t M, int64_t N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  const int64_t r = i / N, n = i % N;
  const float s = u[r * ldu + phi_col + n] + dt_bias[n];
  f[i] = expf(-expf(A_log[n]) * softplusf_(s));
}

__global__ void out_gate_fwd_kernel(const float* __restrict__ o, const float* __restrict__ u, int64_t ldu,
                                    int64_t g_col, bf16* __restrict__ m, int64_t M, int64_t NV) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * NV) return;
  const int64_t r = i / NV, e = i % NV;
  const float g = u[r * ldu + g_col + e];
  m[i] = __float2bfloat16(o[i] * siluf_(g));
}

__global__ void out_gate_bwd_kernel(const bf16* __restrict__ dm, const float* __restrict__ o,
                                    const float* __restrict__ u, int64_t ldu, int64_t g_col, float* __restrict__ dout,
                                    bf16* __restrict__ du, int64_t M, int64_t NV) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * NV) return;
  const int64_t r = i / NV, e = i % NV;
  const float g = u[r * ldu + g_col + e];
  const float d = __bfloat162float(dm[i]);
  dout[i] = d * siluf_(g);
  du[r * ldu + g_col + e] = __float2bfloat16(d * o[i] * dsiluf_(g));
}

// One CTA per head n: threads stride over the rows; two fixed-order tree reductions.
__global__ void __launch_bounds__(kThreads) decay_bwd_kernel(const float* __restrict__ df, const float* __restrict__ u,
                                                             int64_t ldu, int64_t phi_col,
                                                             const float* __restrict__ A_log,
                                                             const float* __restrict__ dt_bias,
                                                             const float* __restrict__ f, bf16* __restrict__ du,
                                                             float* __restrict__ dA_log, float* __restrict__ ddt_bias,
                                                             int64_t M, int64_t N) {
  __shared__ float red[2][kThreads];
  const int n = blockIdx.x, tid = threadIdx.x;
  const float A = expf(A_log[n]), bias = dt_bias[n];
  float acc_dt = 0.0f, acc_a = 0.0f;
  for (int64_t r = tid; r < M; r += kThreads) {
    const float s = u[r * ldu + phi_col + n] + bias;
    const float dff = df[r * N + n] * f[r * N + n];
    const float dphi = dff * (-A) * sigmoidf_(s);
    du[r * ldu + phi_col + n] = __float2bfloat16(dphi);
    acc_dt += dphi;
    acc_a += dff * (-A * softplusf_(s));
  }
  red[0][tid] = acc_dt;
  red[1][tid] = acc_a;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h >>= 1) {
    if (tid < h) {
      red[0][tid] += red[0][tid + h];
      red[1][tid] += red[1][tid + h];
    }
    __syncthreads();
  }
  if (tid == 0) {
    ddt_bias[n] += red[0][0];
    dA_log[n] += red[1][0];
  }
}

__device__ __forceinline__ float conv_dc(const float* dq, const float* dk, const float* dv, int64_t r, int64_t ch,
                                         int64_t K, int64_t NV) {
  if (ch < K) return dq[r * K + ch];
  if (ch < 2 * K) return dk[r * K + ch - K];
  return dv[r * NV + ch - 2 * K];
}

__global__ void conv_dpre_kernel(const float* __restrict__ u, int64_t ldu, const float* __restrict__ cw,
                                 const float* __restrict__ dq, const float* __restrict__ dk,
                                 const float* __restrict__ dv, int64_t K, int64_t NV, float* __restrict__ dpre,
                                 int64_t M, int64_t S, int64_t C, int w) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const int64_t r = i / C, ch = i % C, t = r % S;
  float pre = 0.0f;
  for (int j = 0; j < w; ++j) {
    const int64_t dt = (w - 1) - j;
    if (t - dt >= 0) pre = fmaf(cw[ch * w + j], u[(r - dt) * ldu + ch], pre);
  }
  dpre[i] = conv_dc(dq, dk, dv, r, ch, K, NV) * dsiluf_(pre);
}

__global__ void conv_dx_kernel(const float* __restrict__ dpre, const float* __restrict__ cw, bf16* __restrict__ du,
                               int64_t ldu, int64_t M, int64_t S, int64_t C, int w) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * C) return;
  const int64_t r = i / C, ch = i % C, t = r % S;
  float acc = 0.0f;
  for (int j = 0; j < w; ++j) {
    const int64_t dt = (w - 1) - j;  // token t feeds the output at t + dt through tap j
    if (t + dt < S) acc = fmaf(cw[ch * w + j], dpre[(r + dt) * C + ch], acc);
  }
  du[r * ldu + ch] = __float2bfloat16(acc);
}

// grid (⌈C/32⌉, chunks), block (32, 8): partial[chunk, ch, j] = Σ over the chunk's rows, fixed order.
__global__ void __launch_bounds__(32 * kConvLanesY) conv_dw_partial_kernel(const float* __restrict__ u, int64_t ldu,
                                                                           const float* __restrict__ dpre,
                                                                           float* __restrict__ partial, int64_t M,
                                                                           int64_t S, int64_t C, int w) {
  __shared__ float red[kConvLanesY][kMaxConvWidth][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = int64_t(blockIdx.x) * 32 + tx;
  const int64_t chunk = blockIdx.y;
  float acc[kMaxConvWidth];
#pragma unroll
  for (int j = 0; j < kMaxConvWidth; ++j) acc[j] = 0.0f;
  if (ch < C) {
    const int64_t r_end = min(M, (chunk + 1) * kConvRowsPerChunk);
    for (int64_t r = chunk * kConvRowsPerChunk + ty; r < r_end; r += kConvLanesY) {
      const float d = dpre[r * C + ch];
      const int64_t t = r % S;
#pragma unroll
      for (int j = 0; j < kMaxConvWidth; ++j) {
        const int64_t dt = (w - 1) - j;
        if (j < w && t - dt >= 0) acc[j] = fmaf(u[(r - dt) * ldu + ch], d, acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxConvWidth; ++j) red[ty][j][tx] = acc[j];
  __syncthreads();
  if (ty == 0 && ch < C) {
    for (int j = 0; j < w; ++j) {
      float s = 0.0f;
      for (int y = 0; y < kConvLanesY; ++y) s += red[y][j][tx];
      partial[(chunk * C + ch) * w + j] = s;
    }
  }
}

__global__ void conv_dw_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dcw, int64_t chunks,
                                      int64_t Cw) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= Cw) return;
  float s = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * Cw + i];
  dcw[i] += s;
}

__global__ void accumulate_kernel(float* __restrict__ g, const float* __restrict__ s, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) g[i] += s[i];
}

}  // namespace

void conv_silu_fwd(const float* u, int64_t ldu, const float* conv_w, bf16* c, int64_t B, int64_t S, int64_t C, int w,
                   cudaStream_t stream) {
  req(u && conv_w && c, "conv_silu_fwd: null pointer");
  req(B >= 1 && S >= 1 && C >= 1, "conv_silu_fwd: B, S, C must be >= 1");
  req(w >= 1 && w <= kMaxConvWidth,
      "conv_width=" + std::to_string(w) + " not supported (supported: 1.." + std::to_string(kMaxConvWidth) + ")");
  req(ldu >= C, "conv_silu_fwd: ldu < C");
  const int64_t M = B * S;
  conv_silu_fwd_kernel<<<blocks_for(M * C), kThreads, 0, stream>>>(u, ldu, conv_w, c, M, S, C, w);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void decay_fwd(const float* u, int64_t ldu, int64_t phi_col, const float* A_log, const float* dt_bias, float* f,
               int64_t M, int64_t N, cudaStream_t stream) {
  req(u && A_log && dt_bias && f, "decay_fwd: null pointer");
  req(M >= 1 && N >= 1 && ldu >= phi_col + N, "decay_fwd: bad shape");
  decay_fwd_kernel<<<blocks_for(M * N), kThreads, 0, stream>>>(u, ldu, phi_col, A_log, dt_bias, f, M, N);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void out_gate_fwd(const float* o, const float* u, int64_t ldu, int64_t g_col, bf16* m, int64_t M, int64_t NV,
                  cudaStream_t stream) {
  req(o && u && m, "out_gate_fwd: null pointer");
  req(M >= 1 && NV >= 1 && ldu >= g_col + NV, "out_gate_fwd: bad shape");
  out_gate_fwd_kernel<<<blocks_for(M * NV), kThreads, 0, stream>>>(o, u, ldu, g_col, m, M, NV);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void out_gate_bwd(const bf16* dm, const float* o, const float* u, int64_t ldu, int64_t g_col, float* dout, bf16* du,
                  int64_t M, int64_t NV, cudaStream_t stream) {
  req(dm && o && u && dout && du, "out_gate_bwd: null pointer");
  req(M >= 1 && NV >= 1 && ldu >= g_col + NV, "out_gate_bwd: bad shape");
  out_gate_bwd_kernel<<<blocks_for(M * NV), kThreads, 0, stream>>>(dm, o, u, ldu, g_col, dout, du, M, NV);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void decay_bwd(const float* df, const float* u, int64_t ldu, int64_t phi_col, const float* A_log, const float* dt_bias,
               const float* f, bf16* du, float* dA_log, float* ddt_bias, int64_t M, int64_t N, cudaStream_t stream) {
  req(df && u && A_log && dt_bias && f && du && dA_log && ddt_bias, "decay_bwd: null pointer");
  req(M >= 1 && N >= 1 && N < (int64_t(1) << 31) && ldu >= phi_col + N, "decay_bwd: bad shape");
  decay_bwd_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(df, u, ldu, phi_col, A_log, dt_bias, f, du,
                                                                      dA_log, ddt_bias, M, N);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::size_t conv_bwd_workspace_floats(int64_t B, int64_t S, int64_t C, int w) {
  const int64_t M = B * S;
  const int64_t chunks = (M + kConvRowsPerChunk - 1) / kConvRowsPerChunk;
  return static_cast<std::size_t>(M * C + chunks * C * w);
}

void conv_silu_bwd(const float* u, int64_t ldu, const float* conv_w, const float* dq, const float* dk, const float* dv,
                   int64_t K, int64_t NV, bf16* du, float* dconv_w, float* workspace, int64_t B, int64_t S, int w,
                   cudaStream_t stream) {
  req(u && conv_w && dq && dk && dv && du && dconv_w && workspace, "conv_silu_bwd: null pointer");
  req(w >= 1 && w <= kMaxConvWidth,
      "conv_width=" + std::to_string(w) + " not supported (supported: 1.." + std::to_string(kMaxConvWidth) + ")");
  req(B >= 1 && S >= 1 && K >= 1 && NV >= 1, "conv_silu_bwd: bad shape");
  const int64_t C = 2 * K + NV, M = B * S;
  req(ldu >= C, "conv_silu_bwd: ldu < C");
  const int64_t chunks = (M + kConvRowsPerChunk - 1) / kConvRowsPerChunk;
  req(chunks < 65536 && (C + 31) / 32 < (int64_t(1) << 31), "conv_silu_bwd: too many rows");
  float* dpre = workspace;
  float* partial = workspace + M * C;
  conv_dpre_kernel<<<blocks_for(M * C), kThreads, 0, stream>>>(u, ldu, conv_w, dq, dk, dv, K, NV, dpre, M, S, C, w);
  MEGACPP_CUDA_CHECK_LAUNCH();
  conv_dx_kernel<<<blocks_for(M * C), kThreads, 0, stream>>>(dpre, conv_w, du, ldu, M, S, C, w);
  MEGACPP_CUDA_CHECK_LAUNCH();
  const dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(chunks));
  conv_dw_partial_kernel<<<grid, dim3(32, kConvLanesY), 0, stream>>>(u, ldu, dpre, partial, M, S, C, w);
  MEGACPP_CUDA_CHECK_LAUNCH();
  conv_dw_reduce_kernel<<<blocks_for(C * w), kThreads, 0, stream>>>(partial, dconv_w, chunks, C * w);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void accumulate(float* g, const float* s, int64_t n, cudaStream_t stream) {
  req(g && s && n >= 0, "accumulate: bad arguments");
  if (n == 0) return;
  accumulate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(g, s, n);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

}  // namespace megacpp::m2rnn::glue
