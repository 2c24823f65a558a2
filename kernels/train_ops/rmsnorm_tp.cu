// rmsnorm_tp.cu — RMSNorm with the channel dimension split over tensor-parallel ranks (math and shapes:
// rmsnorm_tp.hpp). The caller all-reduces the partial row statistics (ss, dot) between the kernels.
// Resources: row kernels 256 threads = 8 warps, one warp per row, 16-byte loads, no smem; dw partial
// 128 threads (one 8-column vector over 64 rows each), dw reduce 256 threads (one column each).
// Saved for backward: rstd [M] (the caller keeps x).
// The row passes, dw bodies and shape checks are shared with rmsnorm.cu: rmsnorm_device.cuh (same
// expressions in the same order, so C == C_full without a reduction is bitwise the plain RMSNorm).
#include "kernels/train_ops/rmsnorm.hpp"
#include "kernels/train_ops/rmsnorm_device.cuh"
#include "kernels/train_ops/rmsnorm_tp.hpp"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = detail::kRmsRowThreads, kRowsPerBlock = detail::kRmsRowsPerBlock;
constexpr int kDwThreads = detail::kRmsDwThreads, kRedThreads = detail::kRmsRedThreads;

// ss[row] = Σ_c x² over this rank's channels.
__global__ void __launch_bounds__(kRowThreads) tp_sumsq_kernel(const bf16* __restrict__ x, float* __restrict__ ss,
                                                               int64_t M, int C) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float s = detail::rms_row_sumsq<false>(x, nullptr, nullptr, row, C, lane);
  if (lane == 0) ss[row] = s;
}

__global__ void __launch_bounds__(kRowThreads) tp_apply_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                               const float* __restrict__ ss, bf16* __restrict__ y,
                                                               float* __restrict__ rstd, int64_t M, int C, float cf,
                                                               float eps) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float r = detail::rms_rstd(ss[row], cf, eps);  // the plain kernel's expression (C = C_full: bitwise equal)
  if (lane == 0) rstd[row] = r;
  detail::rms_row_scale(x + row * C, w, y, row, C, lane, r);
}

// dot[row] = Σ_c dy·w·x over this rank's channels.
__global__ void __launch_bounds__(kRowThreads) tp_dot_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                             const bf16* __restrict__ dy, float* __restrict__ dot,
                                                             int64_t M, int C) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float d = detail::rms_row_dot(x, w, dy, row, C, lane);
  if (lane == 0) dot[row] = d;
}

// dx = rstd·(dy·w − x·rstd·(dot·rstd/C_full))  (the plain kernel's expression, in its order, with the global dot)
__global__ void __launch_bounds__(kRowThreads) tp_dx_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                            const float* __restrict__ rstd, const bf16* __restrict__ dy,
                                                            const float* __restrict__ dot, bf16* __restrict__ dx,
                                                            int64_t M, int C, float cf) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float r = rstd[row];
  detail::rms_row_dx<false>(x, w, dy, nullptr, dx, row, C, lane, r, dot[row] * r / cf);
}

// partial[p, c] = Σ_{m in rows [64p, 64p+64)} dy·x·rstd  (fixed row order)
__global__ void __launch_bounds__(kDwThreads) tp_dw_partial_kernel(const bf16* __restrict__ x, const float* __restrict__ rstd,
                                                                   const bf16* __restrict__ dy, float* __restrict__ partial,
                                                                   int64_t M, int C) {
  detail::rms_dw_partial<false>(x, rstd, dy, partial, M, C);  // workspace alignment not required: scalar stores
}

__global__ void __launch_bounds__(kRedThreads) tp_dw_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dw,
                                                                   int P, int C) {
  detail::rms_dw_reduce(partial, dw, P, C);
}

void check(const char* op, int64_t M, int64_t C, int64_t C_full) {
  detail::rms_check_shape(op, M, C);
  detail::require(C_full >= C, std::string(op) + ": C_full=" + std::to_string(C_full) + " < C=" + std::to_string(C));
}

}  // namespace

void rmsnorm_tp_sumsq(const bf16* x, float* ss, int64_t M, int64_t C, cudaStream_t stream) {
  check("rmsnorm_tp_sumsq", M, C, C);
  detail::require_aligned16(x, "rmsnorm_tp_sumsq", "x");
  tp_sumsq_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, ss, M, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void rmsnorm_tp_apply(const bf16* x, const bf16* w, const float* ss, bf16* y, float* rstd, int64_t M, int64_t C,
                      int64_t C_full, float eps, cudaStream_t stream) {
  check("rmsnorm_tp_apply", M, C, C_full);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)y}) detail::require_aligned16(p, "rmsnorm_tp_apply", "x/w/y");
  tp_apply_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, w, ss, y, rstd, M, int(C),
                                                                                 float(C_full), eps);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void rmsnorm_tp_bwd_dot(const bf16* x, const bf16* w, const bf16* dy, float* dot, int64_t M, int64_t C,
                        cudaStream_t stream) {
  check("rmsnorm_tp_bwd_dot", M, C, C);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)dy}) detail::require_aligned16(p, "rmsnorm_tp_bwd_dot", "x/w/dy");
  tp_dot_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, w, dy, dot, M, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void rmsnorm_tp_bwd(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const float* dot, bf16* dx, float* dw,
                    float* workspace, int64_t M, int64_t C, int64_t C_full, cudaStream_t stream) {
  check("rmsnorm_tp_bwd", M, C, C_full);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)dy, (const void*)dx})
    detail::require_aligned16(p, "rmsnorm_tp_bwd", "x/w/dy/dx");
  detail::require(dx != nullptr, "rmsnorm_tp_bwd: dx is null");
  tp_dx_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, w, rstd, dy, dot, dx, M, int(C),
                                                                              float(C_full));
  MEGACPP_CUDA_CHECK_LAUNCH();
  if (!dw) return;
  const int P = detail::rms_dw_blocks("rmsnorm_tp_bwd", M, workspace);
  tp_dw_partial_kernel<<<dim3(detail::grid_1d(C / 8, kDwThreads), P), kDwThreads, 0, stream>>>(x, rstd, dy, workspace, M,
                                                                                               int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
  tp_dw_reduce_kernel<<<detail::grid_1d(C, kRedThreads), kRedThreads, 0, stream>>>(workspace, dw, P, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> rmsnorm_tp_kernel_info() {
  return {{"tp_sumsq_kernel", (const void*)tp_sumsq_kernel, kRowThreads, 0},
          {"tp_apply_kernel", (const void*)tp_apply_kernel, kRowThreads, 0},
          {"tp_dot_kernel", (const void*)tp_dot_kernel, kRowThreads, 0},
          {"tp_dx_kernel", (const void*)tp_dx_kernel, kRowThreads, 0},
          {"tp_dw_partial_kernel", (const void*)tp_dw_partial_kernel, kDwThreads, 0},
          {"tp_dw_reduce_kernel", (const void*)tp_dw_reduce_kernel, kRedThreads, 0}};
}

}  // namespace megacpp::train_ops
