// lm_head_ce.cu — fused LM head + cross-entropy, chunked over the vocabulary.
//
// Math: z = x·Wᵀ (never stored whole); lse_m = log Σ_v exp(z_mv); loss_m = lse_m − z_{m,t_m} (t_m ≥ 0)
//   forward, per chunk [v0, v0+vc): logits[M,vc] fp32 = x·W_cᵀ (cuBLASLt); ce_chunk_stats_kernel: one
//     warp per row, online (max, Σexp) in fp32 merged into the running (mrun, srun); the target logit
//     captured when t_m falls in the chunk. ce_finish_kernel: lse, per-row loss (0 for t < 0).
//     ce_sum_kernel: one block, fp64, fixed order → *loss_sum (deterministic).
//   backward, per chunk: recompute logits; ce_grad_kernel: G = bf16(scale·(exp(z − lse) − [v = t])), 0 for
//     ignored rows; dx_f32 (chunk 0: =, then +=) G·W_c and dW_c += Gᵀ·x (cuBLASLt, fp32 out);
//     finally ce_cast_kernel dx = bf16(dx_f32).
// Shapes: x bf16 [M,C], W bf16 [V,C], targets int32 [M], lse fp32 [M] (saved), dW fp32 [V,C], dx bf16 [M,C].
// Workspace: logits fp32 [M,chunk] + G bf16 [M,chunk] + dx_f32 [M,C] + mrun/srun/tgt fp32 [M] + loss fp64 [M].
// FLOPs: fwd 2·M·V·C, bwd 6·M·V·C (recompute + 2 GEMMs). Resources: row kernels 256 threads (8 warps,
// a warp per row), no smem; elementwise kernels 256 threads; sum kernel 1024 threads, 8 KB smem.
#include <cmath>

#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/lm_head_ce.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = 256, kRowsPerBlock = 8, kEwThreads = 256, kSumThreads = 1024;

__global__ void ce_init_kernel(float* mrun, float* srun, float* tgt, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  mrun[i] = -INFINITY;
  srun[i] = 0.f;
  tgt[i] = 0.f;
}

__global__ void __launch_bounds__(kRowThreads) ce_chunk_stats_kernel(const float* __restrict__ logits,
                                                                     const int32_t* __restrict__ targets,
                                                                     float* __restrict__ mrun, float* __restrict__ srun,
                                                                     float* __restrict__ tgt, int64_t M, int vc,
                                                                     int64_t v0) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float* z = logits + row * vc;
  float mx = -INFINITY, s = 0.f;
  for (int j = lane; j < vc; j += 32) {
    const float v = z[j];
    if (v > mx) {
      s = s * expf(mx - v) + 1.0f;  // exp(-inf) = 0 on the first element
      mx = v;
    } else {
      s += expf(v - mx);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mn = fmaxf(mx, m2);
    s = (mx == -INFINITY ? 0.f : s * expf(mx - mn)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mn));
    mx = mn;
  }
  if (lane == 0) {
    const float m0 = mrun[row], s0 = srun[row];
    const float mn = fmaxf(m0, mx);
    srun[row] = (m0 == -INFINITY ? 0.f : s0 * expf(m0 - mn)) + (mx == -INFINITY ? 0.f : s * expf(mx - mn));
    mrun[row] = mn;
    const int32_t t = targets[row];
    if (t >= v0 && t < v0 + vc) tgt[row] = z[t - v0];
  }
}

__global__ void ce_finish_kernel(const float* mrun, const float* srun, const float* tgt, const int32_t* targets,
                                 float* lse, double* loss_rows, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  const float l = mrun[i] + logf(srun[i]);
  lse[i] = l;
  loss_rows[i] = targets[i] < 0 ? 0.0 : double(l) - double(tgt[i]);
}

// One block: thread k sums rows k, k+1024, ... in order, then a fixed tree → deterministic.
__global__ void __launch_bounds__(kSumThreads) ce_sum_kernel(const double* __restrict__ rows, int64_t M, double* out) {
  __shared__ double sh[kSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < M; i += kSumThreads) s += rows[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sh[0];
}

__global__ void __launch_bounds__(kEwThreads) ce_grad_kernel(const float* __restrict__ logits, const float* __restrict__ lse,
                                                             const int32_t* __restrict__ targets, bf16* __restrict__ G,
                                                             int64_t M, int vc, int64_t v0, float scale) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M * vc) return;
  const int64_t row = i / vc;
  const int j = int(i % vc);
  const int32_t t = targets[row];
  float g = 0.f;
  if (t >= 0) g = scale * (expf(logits[i] - lse[row]) - (v0 + j == t ? 1.0f : 0.0f));
  G[i] = __float2bfloat16_rn(g);
}

__global__ void ce_cast_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

std::size_t ru(std::size_t b) { return (b + 255) / 256 * 256; }
struct Ws {
  float* logits;
  bf16* G;
  float* dxf;
  float *mrun, *srun, *tgt;
  double* loss_rows;
};
Ws carve(void* w, int64_t M, int64_t C, int64_t chunk) {
  char* p = static_cast<char*>(w);
  Ws s;
  s.logits = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * chunk * 4);
  s.G = reinterpret_cast<bf16*>(p);
  p += ru(std::size_t(M) * chunk * 2);
  s.dxf = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * C * 4);
  s.mrun = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.srun = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.tgt = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.loss_rows = reinterpret_cast<double*>(p);
  return s;
}

void check(const char* op, int64_t M, int64_t C, int64_t V, int64_t chunk, std::size_t ws_bytes) {
  detail::require(M > 0, std::string(op) + ": M must be > 0");
  detail::require(C > 0 && C % 8 == 0, std::string(op) + ": C=" + std::to_string(C) + " not supported (C % 8 == 0)");
  detail::require(V > 0 && V % 8 == 0, std::string(op) + ": V=" + std::to_string(V) + " not supported (V % 8 == 0)");
  detail::require(chunk > 0 && chunk % 8 == 0 && chunk <= (int64_t(1) << 30),
                  std::string(op) + ": chunk=" + std::to_string(chunk) + " not supported (multiple of 8)");
  detail::require(ws_bytes >= lm_head_ce_workspace_bytes(M, C, V, chunk),
                  std::string(op) + ": workspace too small (need lm_head_ce_workspace_bytes)");
}

}  // namespace

std::size_t lm_head_ce_workspace_bytes(int64_t M, int64_t C, int64_t V, int64_t chunk) {
  const int64_t ch = chunk < V ? chunk : V;
  return ru(std::size_t(M) * ch * 4) + ru(std::size_t(M) * ch * 2) + ru(std::size_t(M) * C * 4) + 3 * ru(std::size_t(M) * 4) +
         ru(std::size_t(M) * 8);
}

void lm_head_ce_fwd(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t V, int64_t chunk,
                    float* lse, double* loss_sum, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  check("lm_head_ce_fwd", M, C, V, chunk, workspace_bytes);
  chunk = chunk < V ? chunk : V;
  const Ws w = carve(workspace, M, C, chunk);
  ce_init_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t vc = chunk < V - v0 ? chunk : V - v0;
    const GemmDesc g{false, true, M, vc, C, C, C, vc, GemmOut::f32};
    gemm_rm(g, x, W + v0 * C, w.logits, 1.0f, 0.0f, stream);
    ce_chunk_stats_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(w.logits, targets, w.mrun, w.srun,
                                                                                          w.tgt, M, int(vc), v0);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  ce_finish_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, targets, lse,
                                                                               w.loss_rows, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  ce_sum_kernel<<<1, kSumThreads, 0, stream>>>(w.loss_rows, M, loss_sum);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void lm_head_ce_bwd(const bf16* x, const bf16* W, const int32_t* targets, const float* lse, int64_t M, int64_t C, int64_t V,
                    int64_t chunk, float scale, bf16* dx, float* dW, void* workspace, std::size_t workspace_bytes,
                    cudaStream_t stream) {
  check("lm_head_ce_bwd", M, C, V, chunk, workspace_bytes);
  chunk = chunk < V ? chunk : V;
  const Ws w = carve(workspace, M, C, chunk);
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t vc = chunk < V - v0 ? chunk : V - v0;
    const GemmDesc gl{false, true, M, vc, C, C, C, vc, GemmOut::f32};
    gemm_rm(gl, x, W + v0 * C, w.logits, 1.0f, 0.0f, stream);
    ce_grad_kernel<<<detail::grid_1d(M * vc, kEwThreads), kEwThreads, 0, stream>>>(w.logits, lse, targets, w.G, M, int(vc),
                                                                                    v0, scale);
    MEGACPP_CUDA_CHECK_LAUNCH();
    // dx_f32[M,C] (+)= G[M,vc]·W_c[vc,C]
    const GemmDesc gx{false, false, M, C, vc, vc, C, C, GemmOut::f32};
    gemm_rm(gx, w.G, W + v0 * C, w.dxf, 1.0f, v0 == 0 ? 0.0f : 1.0f, stream);
    // dW_c[vc,C] += G[M,vc]ᵀ·x[M,C]
    const GemmDesc gw{true, false, vc, C, M, vc, C, C, GemmOut::f32};
    gemm_rm(gw, w.G, x, dW + v0 * C, 1.0f, 1.0f, stream);
  }
  ce_cast_kernel<<<detail::grid_1d(M * C, kEwThreads), kEwThreads, 0, stream>>>(w.dxf, dx, M * C);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> lm_head_ce_kernel_info() {
  return {{"ce_chunk_stats_kernel", (const void*)ce_chunk_stats_kernel, kRowThreads, 0},
          {"ce_grad_kernel", (const void*)ce_grad_kernel, kEwThreads, 0},
          {"ce_sum_kernel", (const void*)ce_sum_kernel, kSumThreads, 0},
          {"ce_cast_kernel", (const void*)ce_cast_kernel, kEwThreads, 0}};
}

}  // namespace megacpp::train_ops
