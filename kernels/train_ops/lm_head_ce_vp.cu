// lm_head_ce_vp.cu — vocabulary-parallel fused LM head + cross-entropy (math, shapes: lm_head_ce_vp.hpp).
//
// partial, per vocabulary chunk of this rank's slice: logits [M, vc] fp32 = x·W_cᵀ (cuBLASLt);
//   vp_stats_kernel: one warp per row, online (max, Σexp) merged into the running (mrun, srun), the target
//   logit captured when the GLOBAL target falls in [v_off + c0, v_off + c0 + vc). vp_partial_finish_kernel:
//   stats[m] = (mrun + log srun, target logit or 0).
// combine: vp_combine_kernel (thread per row, ranks in order) → lse, per-row loss (fp64);
//   vp_sum_kernel: one block, fixed order → loss_sum (deterministic, identical on every rank).
// backward, per chunk: recompute logits; vp_grad_kernel G = bf16(scale·(exp(z − lse) − onehot)) (0 for
//   ignored rows); dx_f32 (chunk 0: =, then +=) G·W_c; dW_c += Gᵀ·x (cuBLASLt, fp32 out).
// Workspace: logits fp32 [M,ldz] + G bf16 [M,ldz] + mrun/srun/tgt fp32 [M] + loss rows fp64 [M], with
//   ldz = min(chunk, Vl) rounded up to 8: every GEMM leading dimension is a multiple of 8 elements even when
//   the slice (vocab/tp) is not (e.g. 264/2 = 132): the last chunk is narrower than ldz, the padding columns
//   are never read.
// FLOPs per rank: fwd 2·M·Vl·C, bwd 6·M·Vl·C. Resources: row kernels 256 threads (a warp per row), no
// smem; elementwise 256 threads; sum kernel 1024 threads, 8 KB smem. No atomics.
// The kernel bodies, workspace layout, checks and chunk GEMMs are shared with lm_head_ce.cu:
// lm_head_ce_device.cuh.
#include <cmath>

#include "kernels/train_ops/lm_head_ce_device.cuh"
#include "kernels/train_ops/lm_head_ce_vp.hpp"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = detail::kCeRowThreads, kRowsPerBlock = detail::kCeRowsPerBlock;
constexpr int kEwThreads = detail::kCeEwThreads, kSumThreads = detail::kCeSumThreads;

__global__ void vp_init_kernel(float* mrun, float* srun, float* tgt, int64_t M) { detail::ce_init_rows(mrun, srun, tgt, M); }

// lo = the global vocabulary id of the chunk's first column.
__global__ void __launch_bounds__(kRowThreads) vp_stats_kernel(const float* __restrict__ logits,
                                                               const int32_t* __restrict__ targets, float* __restrict__ mrun,
                                                               float* __restrict__ srun, float* __restrict__ tgt, int64_t M,
                                                               int vc, int ldz, int64_t lo) {
  detail::ce_chunk_stats_rows(logits, targets, mrun, srun, tgt, M, vc, ldz, lo);
}

__global__ void vp_partial_finish_kernel(const float* mrun, const float* srun, const float* tgt, float* stats, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  stats[2 * i] = mrun[i] + logf(srun[i]);
  stats[2 * i + 1] = tgt[i];
}

__global__ void vp_combine_kernel(const float* __restrict__ gathered, int P, const int32_t* __restrict__ targets,
                                  float* __restrict__ lse, double* __restrict__ loss_rows, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  float mx = -INFINITY;
  for (int q = 0; q < P; ++q) mx = fmaxf(mx, gathered[(int64_t(q) * M + i) * 2]);
  float s = 0.f, tl = 0.f;
  for (int q = 0; q < P; ++q) {
    s += expf(gathered[(int64_t(q) * M + i) * 2] - mx);
    tl += gathered[(int64_t(q) * M + i) * 2 + 1];  // one rank owns the target: the others add 0
  }
  const float l = mx + logf(s);
  lse[i] = l;
  loss_rows[i] = targets[i] < 0 ? 0.0 : double(l) - double(tl);
}

__global__ void __launch_bounds__(kSumThreads) vp_sum_kernel(const double* __restrict__ rows, int64_t M, double* out) {
  detail::ce_sum_rows_fixed_order(rows, M, out);
}

__global__ void __launch_bounds__(kEwThreads) vp_grad_kernel(const float* __restrict__ logits, const float* __restrict__ lse,
                                                             const int32_t* __restrict__ targets, bf16* __restrict__ G,
                                                             int64_t M, int vc, int ldz, int64_t lo, float scale) {
  detail::ce_grad_elem<false>(logits, lse, targets, G, M, vc, ldz, lo, scale);
}

__global__ void vp_cast_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  detail::ce_cast_elem(src, dst, n);
}

int64_t ld_of(int64_t chunk, int64_t Vl) { return ((chunk < Vl ? chunk : Vl) + 7) / 8 * 8; }

void check(const char* op, int64_t M, int64_t C, int64_t Vl, int64_t v_off, int64_t chunk, std::size_t ws_bytes) {
  detail::ce_require_rows_channels(op, M, C);
  detail::require(Vl > 0, std::string(op) + ": this rank's vocabulary slice must be non-empty");
  detail::require(v_off >= 0 && v_off + Vl < (int64_t(1) << 31), std::string(op) + ": v_off out of range");
  detail::ce_require_chunk_workspace(op, chunk, ws_bytes, lm_head_ce_vp_workspace_bytes(M, C, Vl, chunk),
                                     "lm_head_ce_vp_workspace_bytes");
}

}  // namespace

std::size_t lm_head_ce_vp_workspace_bytes(int64_t M, int64_t /*C*/, int64_t Vl, int64_t chunk) {
  return detail::ce_workspace_bytes(M, ld_of(chunk, Vl), 0);  // no dx_f32: the caller owns it
}

void lm_head_ce_vp_partial(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t Vl,
                           int64_t v_off, int64_t chunk, float* stats, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream) {
  check("lm_head_ce_vp_partial", M, C, Vl, v_off, chunk, workspace_bytes);
  const int64_t ldz = ld_of(chunk, Vl);
  chunk = chunk < Vl ? chunk : Vl;
  const detail::CeWorkspace w = detail::ce_carve(workspace, M, ldz, 0);
  vp_init_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  for (int64_t c0 = 0; c0 < Vl; c0 += chunk) {
    const int64_t vc = chunk < Vl - c0 ? chunk : Vl - c0;
    detail::ce_chunk_logits(x, W, M, C, c0, vc, ldz, w.logits, stream);
    vp_stats_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(w.logits, targets, w.mrun, w.srun, w.tgt,
                                                                                    M, int(vc), int(ldz), v_off + c0);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  vp_partial_finish_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, stats, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void lm_head_ce_vp_combine(const float* gathered, int P, const int32_t* targets, int64_t M, float* lse, double* loss_sum,
                           void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  detail::require(M > 0 && P >= 1, "lm_head_ce_vp_combine: need M > 0 and P >= 1");
  detail::require(workspace_bytes >= detail::ce_round256(std::size_t(M) * 8),
                  "lm_head_ce_vp_combine: workspace too small (need lm_head_ce_vp_workspace_bytes)");
  double* rows = static_cast<double*>(workspace);  // per-row losses (fp64 [M]) at the workspace's start
  vp_combine_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(gathered, P, targets, lse, rows, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  vp_sum_kernel<<<1, kSumThreads, 0, stream>>>(rows, M, loss_sum);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void lm_head_ce_vp_bwd(const bf16* x, const bf16* W, const int32_t* targets, const float* lse, int64_t M, int64_t C,
                       int64_t Vl, int64_t v_off, int64_t chunk, float scale, float* dx_f32, float* dW, void* workspace,
                       std::size_t workspace_bytes, cudaStream_t stream) {
  check("lm_head_ce_vp_bwd", M, C, Vl, v_off, chunk, workspace_bytes);
  const int64_t ldz = ld_of(chunk, Vl);
  chunk = chunk < Vl ? chunk : Vl;
  const detail::CeWorkspace w = detail::ce_carve(workspace, M, ldz, 0);
  for (int64_t c0 = 0; c0 < Vl; c0 += chunk) {
    const int64_t vc = chunk < Vl - c0 ? chunk : Vl - c0;
    detail::ce_chunk_logits(x, W, M, C, c0, vc, ldz, w.logits, stream);
    vp_grad_kernel<<<detail::grid_1d(M * vc, kEwThreads), kEwThreads, 0, stream>>>(w.logits, lse, targets, w.G, M, int(vc),
                                                                                    int(ldz), v_off + c0, scale);
    MEGACPP_CUDA_CHECK_LAUNCH();
    detail::ce_chunk_grad_gemms(w.G, W, x, M, C, c0, vc, ldz, dx_f32, dW, stream);
  }
}

void cast_f32_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream) {
  detail::require(n > 0, "cast_f32_to_bf16: n must be > 0");
  vp_cast_kernel<<<detail::grid_1d(n, kEwThreads), kEwThreads, 0, stream>>>(src, dst, n);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> lm_head_ce_vp_kernel_info() {
  return {{"vp_stats_kernel", (const void*)vp_stats_kernel, kRowThreads, 0},
          {"vp_combine_kernel", (const void*)vp_combine_kernel, kEwThreads, 0},
          {"vp_grad_kernel", (const void*)vp_grad_kernel, kEwThreads, 0},
          {"vp_sum_kernel", (const void*)vp_sum_kernel, kSumThreads, 0}};
}

}  // namespace megacpp::train_ops
