// rmsnorm.cu — RMSNorm forward (optionally with the fused residual add) and backward.
//
// Math (fp32 in registers, bf16 in HBM):
//   forward : rstd_m = 1/sqrt(Σ_c x²/C + eps); y = bf16(x·rstd·w)
//   residual: h_out = bf16(h + y_in); the norm then reads the ROUNDED h_out (what backward sees)
//   backward: x̂ = x·rstd; dot_m = Σ_c dy·w·x̂ / C; dx = bf16(rstd·(dy·w − x̂·dot) + dres)
//             dw += Σ_m dy·x̂   (two kernels: per-64-row-chunk partials [P,C] fp32, then a fixed-order
//             column sum over the P partials added to dw — deterministic, no atomics)
// Shapes: x,y,h,dy,dx [M,C] bf16, w [C] bf16, rstd [M] fp32, dw [C] fp32, workspace [ceil(M/64), C] fp32.
// Saved for backward: rstd (and the caller keeps x / h_out).
// Resources: row kernels: 256 threads = 8 warps, one warp per row, 16-byte loads, the row re-read from
// L1/L2 in the second pass (no register row cache: C is large); no smem. dw partial: 128 threads, each
// one 8-column vector over 64 rows. Reduce: 256 threads, one column each.
// The row passes, dw bodies and shape checks are shared with rmsnorm_tp.cu: rmsnorm_device.cuh.
#include "kernels/train_ops/rmsnorm.hpp"
#include "kernels/train_ops/rmsnorm_device.cuh"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = detail::kRmsRowThreads, kRowsPerBlock = detail::kRmsRowsPerBlock;
constexpr int kDwRows = detail::kRmsDwRows, kDwThreads = detail::kRmsDwThreads, kRedThreads = detail::kRmsRedThreads;

// RESIDUAL=false: x = h. RESIDUAL=true: h_out = bf16(h + yin) is written first and normalised.
template <bool RESIDUAL>
__global__ void __launch_bounds__(kRowThreads) rmsnorm_fwd_kernel(const bf16* h, const bf16* yin, const bf16* __restrict__ w,
                                                                  bf16* h_out, bf16* __restrict__ y,
                                                                  float* __restrict__ rstd, int64_t M, int C, float eps) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const bf16* xr = (RESIDUAL ? h_out : h) + row * C;
  const float ss = detail::rms_row_sumsq<RESIDUAL>(h, yin, h_out, row, C, lane);
  const float r = detail::rms_rstd(ss, float(C), eps);
  if (lane == 0) rstd[row] = r;
  detail::rms_row_scale(xr, w, y, row, C, lane, r);  // RESIDUAL: this thread's own h_out stores (same thread, same address)
}

// dx = rstd·(dy·w − x̂·dot) + dres ; dres may alias dx (each element read then written by one thread).
__global__ void __launch_bounds__(kRowThreads) rmsnorm_bwd_dx_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                                     const float* __restrict__ rstd,
                                                                     const bf16* __restrict__ dy, const bf16* dres,
                                                                     bf16* dx, int64_t M, int C) {
  const int64_t row = detail::rms_warp_row();
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float r = rstd[row];
  const float dot = detail::rms_row_dot(x, w, dy, row, C, lane) * r / float(C);
  detail::rms_row_dx<true>(x, w, dy, dres, dx, row, C, lane, r, dot);
}

// partial[p, c] = Σ_{m in rows [64p, 64p+64)} dy[m,c]·x[m,c]·rstd[m]   (fixed row order)
__global__ void __launch_bounds__(kDwThreads) rmsnorm_dw_partial_kernel(const bf16* __restrict__ x,
                                                                        const float* __restrict__ rstd,
                                                                        const bf16* __restrict__ dy,
                                                                        float* __restrict__ partial, int64_t M, int C) {
  detail::rms_dw_partial<true>(x, rstd, dy, partial, M, C);  // workspace checked 16-byte aligned: float4 stores
}

// dw[c] += Σ_p partial[p, c]   (p ascending)
__global__ void __launch_bounds__(kRedThreads) rmsnorm_dw_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dw,
                                                                        int P, int C) {
  detail::rms_dw_reduce(partial, dw, P, C);
}

}  // namespace

void rmsnorm_fwd(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t M, int64_t C, float eps, cudaStream_t stream) {
  detail::rms_check_shape("rmsnorm_fwd", M, C);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)y}) detail::require_aligned16(p, "rmsnorm_fwd", "x/w/y");
  rmsnorm_fwd_kernel<false><<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, nullptr, w, nullptr, y, rstd,
                                                                                           M, int(C), eps);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void residual_rmsnorm_fwd(const bf16* h, const bf16* yin, const bf16* w, bf16* h_out, bf16* n, float* rstd, int64_t M,
                          int64_t C, float eps, cudaStream_t stream) {
  detail::rms_check_shape("residual_rmsnorm_fwd", M, C);
  for (const void* p : {(const void*)h, (const void*)yin, (const void*)w, (const void*)h_out, (const void*)n})
    detail::require_aligned16(p, "residual_rmsnorm_fwd", "h/y/w/h_out/n");
  rmsnorm_fwd_kernel<true><<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(h, yin, w, h_out, n, rstd, M,
                                                                                          int(C), eps);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::size_t rmsnorm_bwd_workspace_floats(int64_t M, int64_t C) {
  return static_cast<std::size_t>((M + kDwRows - 1) / kDwRows) * static_cast<std::size_t>(C);
}

void rmsnorm_bwd(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* dres, bf16* dx, float* dw,
                 float* workspace, int64_t M, int64_t C, cudaStream_t stream) {
  detail::rms_check_shape("rmsnorm_bwd", M, C);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)dy, (const void*)dres, (const void*)dx,
                        (const void*)workspace})
    detail::require_aligned16(p, "rmsnorm_bwd", "x/w/dy/dres/dx/workspace");
  detail::require(dx != nullptr, "rmsnorm_bwd: dx is null");
  rmsnorm_bwd_dx_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, w, rstd, dy, dres, dx, M, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
  if (!dw) return;
  const int P = detail::rms_dw_blocks("rmsnorm_bwd", M, workspace);
  const dim3 grid(detail::grid_1d(C / 8, kDwThreads), P);
  rmsnorm_dw_partial_kernel<<<grid, kDwThreads, 0, stream>>>(x, rstd, dy, workspace, M, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
  rmsnorm_dw_reduce_kernel<<<detail::grid_1d(C, kRedThreads), kRedThreads, 0, stream>>>(workspace, dw, P, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> rmsnorm_kernel_info() {
  return {{"rmsnorm_fwd_kernel<false>", (const void*)rmsnorm_fwd_kernel<false>, kRowThreads, 0},
          {"rmsnorm_fwd_kernel<true>", (const void*)rmsnorm_fwd_kernel<true>, kRowThreads, 0},
          {"rmsnorm_bwd_dx_kernel", (const void*)rmsnorm_bwd_dx_kernel, kRowThreads, 0},
          {"rmsnorm_dw_partial_kernel", (const void*)rmsnorm_dw_partial_kernel, kDwThreads, 0},
          {"rmsnorm_dw_reduce_kernel", (const void*)rmsnorm_dw_reduce_kernel, kRedThreads, 0}};
}

}  // namespace megacpp::train_ops
