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
// The kernel bodies, workspace layout, checks and chunk GEMMs are shared with lm_head_ce_vp.cu:
// lm_head_ce_device.cuh (here every chunk buffer is dense: ldz = vc).
#include <cmath>

#include "kernels/train_ops/lm_head_ce.hpp"
#include "kernels/train_ops/lm_head_ce_device.cuh"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = detail::kCeRowThreads, kRowsPerBlock = detail::kCeRowsPerBlock;
constexpr int kEwThreads = detail::kCeEwThreads, kSumThreads = detail::kCeSumThreads;

__global__ void ce_init_kernel(float* mrun, float* srun, float* tgt, int64_t M) { detail::ce_init_rows(mrun, srun, tgt, M); }

__global__ void __launch_bounds__(kRowThreads) ce_chunk_stats_kernel(const float* __restrict__ logits,
                                                                     const int32_t* __restrict__ targets,
                                                                     float* __restrict__ mrun, float* __restrict__ srun,
                                                                     float* __restrict__ tgt, int64_t M, int vc,
                                                                     int64_t v0) {
  detail::ce_chunk_stats_rows(logits, targets, mrun, srun, tgt, M, vc, vc, v0);
}

__global__ void ce_finish_kernel(const float* mrun, const float* srun, const float* tgt, const int32_t* targets,
                                 float* lse, double* loss_rows, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  const float l = mrun[i] + logf(srun[i]);
  lse[i] = l;
  loss_rows[i] = targets[i] < 0 ? 0.0 : double(l) - double(tgt[i]);
}

__global__ void __launch_bounds__(kSumThreads) ce_sum_kernel(const double* __restrict__ rows, int64_t M, double* out) {
  detail::ce_sum_rows_fixed_order(rows, M, out);
}

__global__ void __launch_bounds__(kEwThreads) ce_grad_kernel(const float* __restrict__ logits, const float* __restrict__ lse,
                                                             const int32_t* __restrict__ targets, bf16* __restrict__ G,
                                                             int64_t M, int vc, int64_t v0, float scale) {
  detail::ce_grad_elem<true>(logits, lse, targets, G, M, vc, vc, v0, scale);
}

__global__ void ce_cast_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  detail::ce_cast_elem(src, dst, n);
}

void check(const char* op, int64_t M, int64_t C, int64_t V, int64_t chunk, std::size_t ws_bytes) {
  detail::ce_require_rows_channels(op, M, C);
  detail::require(V > 0 && V % 8 == 0, std::string(op) + ": V=" + std::to_string(V) + " not supported (V % 8 == 0)");
  detail::ce_require_chunk_workspace(op, chunk, ws_bytes, lm_head_ce_workspace_bytes(M, C, V, chunk),
                                     "lm_head_ce_workspace_bytes");
}

}  // namespace

std::size_t lm_head_ce_workspace_bytes(int64_t M, int64_t C, int64_t V, int64_t chunk) {
  const int64_t ch = chunk < V ? chunk : V;
  return detail::ce_workspace_bytes(M, ch, M * C);
}

void lm_head_ce_fwd(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t V, int64_t chunk,
                    float* lse, double* loss_sum, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  check("lm_head_ce_fwd", M, C, V, chunk, workspace_bytes);
  chunk = chunk < V ? chunk : V;
  const detail::CeWorkspace w = detail::ce_carve(workspace, M, chunk, M * C);
  ce_init_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t vc = chunk < V - v0 ? chunk : V - v0;
    detail::ce_chunk_logits(x, W, M, C, v0, vc, vc, w.logits, stream);
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
  const detail::CeWorkspace w = detail::ce_carve(workspace, M, chunk, M * C);
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t vc = chunk < V - v0 ? chunk : V - v0;
    detail::ce_chunk_logits(x, W, M, C, v0, vc, vc, w.logits, stream);
    ce_grad_kernel<<<detail::grid_1d(M * vc, kEwThreads), kEwThreads, 0, stream>>>(w.logits, lse, targets, w.G, M, int(vc),
                                                                                    v0, scale);
    MEGACPP_CUDA_CHECK_LAUNCH();
    detail::ce_chunk_grad_gemms(w.G, W, x, M, C, v0, vc, vc, w.dxf, dW, stream);  // dx_f32 (+)= G·W_c, dW_c += Gᵀ·x
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
