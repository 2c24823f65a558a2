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
#include "kernels/train_ops/rmsnorm.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

using detail::load8;
using detail::store8;
using detail::warp_sum;

constexpr int kRowThreads = 256, kRowsPerBlock = kRowThreads / 32;
constexpr int kDwRows = 64, kDwThreads = 128, kRedThreads = 256;

// RESIDUAL=false: x = h. RESIDUAL=true: h_out = bf16(h + yin) is written first and normalised.
template <bool RESIDUAL>
__global__ void __launch_bounds__(kRowThreads) rmsnorm_fwd_kernel(const bf16* h, const bf16* yin, const bf16* __restrict__ w,
                                                                  bf16* h_out, bf16* __restrict__ y,
                                                                  float* __restrict__ rstd, int64_t M, int C, float eps) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const int nv = C / 8;
  const bf16* xr = (RESIDUAL ? h_out : h) + row * C;
  float ss = 0.f;
  for (int j = lane; j < nv; j += 32) {
    float a[8];
    load8(h + row * C + j * 8, a);
    if (RESIDUAL) {
      float b[8];
      load8(yin + row * C + j * 8, b);
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = __bfloat162float(__float2bfloat16_rn(a[i] + b[i]));
      store8(h_out + row * C + j * 8, a);  // exact: a[] already holds bf16 values
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += a[i] * a[i];
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / float(C) + eps);
  if (lane == 0) rstd[row] = r;
  for (int j = lane; j < nv; j += 32) {
    float a[8], ww[8];
    load8(xr + j * 8, a);  // RESIDUAL: this thread's own h_out stores (same thread, same address)
    load8(w + j * 8, ww);
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = a[i] * r * ww[i];
    store8(y + row * C + j * 8, a);
  }
}

// dx = rstd·(dy·w − x̂·dot) + dres ; dres may alias dx (each element read then written by one thread).
__global__ void __launch_bounds__(kRowThreads) rmsnorm_bwd_dx_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                                     const float* __restrict__ rstd,
                                                                     const bf16* __restrict__ dy, const bf16* dres,
                                                                     bf16* dx, int64_t M, int C) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const int nv = C / 8;
  const float r = rstd[row];
  float dot = 0.f;
  for (int j = lane; j < nv; j += 32) {
    float a[8], g[8], ww[8];
    load8(x + row * C + j * 8, a);
    load8(dy + row * C + j * 8, g);
    load8(w + j * 8, ww);
#pragma unroll
    for (int i = 0; i < 8; ++i) dot += g[i] * ww[i] * a[i];
  }
  dot = warp_sum(dot) * r / float(C);
  for (int j = lane; j < nv; j += 32) {
    float a[8], g[8], ww[8], o[8];
    load8(x + row * C + j * 8, a);
    load8(dy + row * C + j * 8, g);
    load8(w + j * 8, ww);
    if (dres) {
      load8(dres + row * C + j * 8, o);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] += r * (g[i] * ww[i] - a[i] * r * dot);
    store8(dx + row * C + j * 8, o);
  }
}

// partial[p, c] = Σ_{m in rows [64p, 64p+64)} dy[m,c]·x[m,c]·rstd[m]   (fixed row order)
__global__ void __launch_bounds__(kDwThreads) rmsnorm_dw_partial_kernel(const bf16* __restrict__ x,
                                                                        const float* __restrict__ rstd,
                                                                        const bf16* __restrict__ dy,
                                                                        float* __restrict__ partial, int64_t M, int C) {
  const int cv = blockIdx.x * kDwThreads + threadIdx.x;
  if (cv >= C / 8) return;
  const int64_t m0 = int64_t(blockIdx.y) * kDwRows;
  const int64_t m1 = m0 + kDwRows < M ? m0 + kDwRows : M;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t m = m0; m < m1; ++m) {
    float a[8], g[8];
    load8(x + m * C + cv * 8, a);
    load8(dy + m * C + cv * 8, g);
    const float r = rstd[m];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] += g[i] * (a[i] * r);
  }
  float* out = partial + int64_t(blockIdx.y) * C + cv * 8;
  reinterpret_cast<float4*>(out)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  reinterpret_cast<float4*>(out)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
}

// dw[c] += Σ_p partial[p, c]   (p ascending)
__global__ void __launch_bounds__(kRedThreads) rmsnorm_dw_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dw,
                                                                        int P, int C) {
  const int c = blockIdx.x * kRedThreads + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int p = 0; p < P; ++p) s += partial[int64_t(p) * C + c];
  dw[c] += s;
}

void check_shape(const char* op, int64_t M, int64_t C) {
  detail::require(M > 0, std::string(op) + ": M must be > 0");
  detail::require(C > 0 && C % 8 == 0 && C <= 65536,
                  std::string(op) + ": C=" + std::to_string(C) + " not supported (C % 8 == 0, 8 ≤ C ≤ 65536)");
}

}  // namespace

void rmsnorm_fwd(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t M, int64_t C, float eps, cudaStream_t stream) {
  check_shape("rmsnorm_fwd", M, C);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)y}) detail::require_aligned16(p, "rmsnorm_fwd", "x/w/y");
  rmsnorm_fwd_kernel<false><<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, nullptr, w, nullptr, y, rstd,
                                                                                           M, int(C), eps);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void residual_rmsnorm_fwd(const bf16* h, const bf16* yin, const bf16* w, bf16* h_out, bf16* n, float* rstd, int64_t M,
                          int64_t C, float eps, cudaStream_t stream) {
  check_shape("residual_rmsnorm_fwd", M, C);
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
  check_shape("rmsnorm_bwd", M, C);
  for (const void* p : {(const void*)x, (const void*)w, (const void*)dy, (const void*)dres, (const void*)dx,
                        (const void*)workspace})
    detail::require_aligned16(p, "rmsnorm_bwd", "x/w/dy/dres/dx/workspace");
  detail::require(dx != nullptr, "rmsnorm_bwd: dx is null");
  rmsnorm_bwd_dx_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(x, w, rstd, dy, dres, dx, M, int(C));
  MEGACPP_CUDA_CHECK_LAUNCH();
  if (!dw) return;
  detail::require(workspace != nullptr, "rmsnorm_bwd: dw requested but workspace is null");
  const int P = int((M + kDwRows - 1) / kDwRows);
  detail::require(P <= 65535, "rmsnorm_bwd: M too large (M ≤ 65535·64)");
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
