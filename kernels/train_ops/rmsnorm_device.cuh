// rmsnorm_device.cuh — the pieces shared by RMSNorm (rmsnorm.cu) and its channel-split tensor-parallel twin
// (rmsnorm_tp.cu): warp-per-row passes over a bf16 row with 16-byte loads (Σx², Σdy·w·x, the scale y =
// x·r·w, the dx expression), the dw partial / reduce bodies and the shape checks. Each .cu keeps its own thin
// __global__ wrappers (kernel names and resources stay per file). All sums are in a fixed order (lanes stride
// the row by 8-element vectors, then a butterfly; dw over 64-row blocks, then blocks ascending): no atomics.
// Launch shapes: row kernels kRmsRowThreads threads (a warp per row, kRmsRowsPerBlock rows per block),
// dw partial kRmsDwThreads threads (one 8-column vector over kRmsDwRows rows each), dw reduce kRmsRedThreads
// threads (one column each); no smem. Every bf16 row pointer 16-byte aligned, C % 8 == 0.
#pragma once
#include <string>

#include "kernels/train_ops/train_ops_common.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops::detail {

constexpr int kRmsRowThreads = 256, kRmsRowsPerBlock = kRmsRowThreads / 32;
constexpr int kRmsDwRows = 64, kRmsDwThreads = 128, kRmsRedThreads = 256;

// The row of this warp in a row kernel (compare with M before use); the lane is threadIdx.x % 32.
__device__ __forceinline__ int64_t rms_warp_row() { return int64_t(blockIdx.x) * kRmsRowsPerBlock + threadIdx.x / 32; }

// Σ_c x[row, c]² by one warp (every lane returns the total). RESIDUAL=false: x = h. RESIDUAL=true: x =
// bf16(h + yin) is formed and written to h_out first (each element stored by the thread that later re-reads it).
template <bool RESIDUAL>
__device__ __forceinline__ float rms_row_sumsq(const bf16* h, const bf16* yin, bf16* h_out, int64_t row, int C, int lane) {
  const int nv = C / 8;
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
  return warp_sum(ss);
}

// rstd = 1/sqrt(ss/c + eps) (c: the row's full channel count, as a float).
__device__ __forceinline__ float rms_rstd(float ss, float c, float eps) { return 1.0f / sqrtf(ss / c + eps); }

// y[row, :] = bf16(x[row, :]·r·w) by one warp; xr = the row's start.
__device__ __forceinline__ void rms_row_scale(const bf16* xr, const bf16* __restrict__ w, bf16* __restrict__ y, int64_t row,
                                              int C, int lane, float r) {
  for (int j = lane; j < C / 8; j += 32) {
    float a[8], ww[8];
    load8(xr + j * 8, a);
    load8(w + j * 8, ww);
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = a[i] * r * ww[i];
    store8(y + row * C + j * 8, a);
  }
}

// Σ_c dy·w·x over row `row` by one warp (every lane returns the total).
__device__ __forceinline__ float rms_row_dot(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                             const bf16* __restrict__ dy, int64_t row, int C, int lane) {
  float dot = 0.f;
  for (int j = lane; j < C / 8; j += 32) {
    float a[8], g[8], ww[8];
    load8(x + row * C + j * 8, a);
    load8(dy + row * C + j * 8, g);
    load8(w + j * 8, ww);
#pragma unroll
    for (int i = 0; i < 8; ++i) dot += g[i] * ww[i] * a[i];
  }
  return warp_sum(dot);
}

// dx[row, :] = bf16(r·(dy·w − x·r·dm) [+ dres]) by one warp, dm = Σdy·w·x · r / C_full.
// ADD_DRES=true: dres (nullable; may alias dx: each element read then written by one thread) is added,
// o = dres (or 0) then o += r·(...) — the plain RMSNorm. ADD_DRES=false: o = r·(...) — no residual gradient.
template <bool ADD_DRES>
__device__ __forceinline__ void rms_row_dx(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ dy,
                                           const bf16* dres, bf16* dx, int64_t row, int C, int lane, float r, float dm) {
  for (int j = lane; j < C / 8; j += 32) {
    float a[8], g[8], ww[8], o[8];
    load8(x + row * C + j * 8, a);
    load8(dy + row * C + j * 8, g);
    load8(w + j * 8, ww);
    if (ADD_DRES) {
      if (dres) {
        load8(dres + row * C + j * 8, o);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] += r * (g[i] * ww[i] - a[i] * r * dm);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = r * (g[i] * ww[i] - a[i] * r * dm);
    }
    store8(dx + row * C + j * 8, o);
  }
}

// partial[p, c] = Σ_{m in rows [64p, 64p+64)} dy[m,c]·(x[m,c]·rstd[m])  (fixed row order), p = blockIdx.y.
// VEC_STORE: two float4 stores (partial 16-byte aligned); else eight scalar stores.
template <bool VEC_STORE>
__device__ __forceinline__ void rms_dw_partial(const bf16* __restrict__ x, const float* __restrict__ rstd,
                                               const bf16* __restrict__ dy, float* __restrict__ partial, int64_t M, int C) {
  const int cv = blockIdx.x * kRmsDwThreads + threadIdx.x;
  if (cv >= C / 8) return;
  const int64_t m0 = int64_t(blockIdx.y) * kRmsDwRows;
  const int64_t m1 = m0 + kRmsDwRows < M ? m0 + kRmsDwRows : M;
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
  if (VEC_STORE) {
    reinterpret_cast<float4*>(out)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    reinterpret_cast<float4*>(out)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = acc[i];
  }
}

// dw[c] += Σ_p partial[p, c]   (p ascending)
__device__ __forceinline__ void rms_dw_reduce(const float* __restrict__ partial, float* __restrict__ dw, int P, int C) {
  const int c = blockIdx.x * kRmsRedThreads + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int p = 0; p < P; ++p) s += partial[int64_t(p) * C + c];
  dw[c] += s;
}

// ---- host side ----

inline void rms_check_shape(const char* op, int64_t M, int64_t C) {
  require(M > 0, std::string(op) + ": M must be > 0");
  require(C > 0 && C % 8 == 0 && C <= 65536,
          std::string(op) + ": C=" + std::to_string(C) + " not supported (C % 8 == 0, 8 ≤ C ≤ 65536)");
}

// The number of 64-row dw partials (grid.y of the partial kernel), after checking the workspace and the limit.
inline int rms_dw_blocks(const char* op, int64_t M, const float* workspace) {
  require(workspace != nullptr, std::string(op) + ": dw requested but workspace is null");
  const int P = int((M + kRmsDwRows - 1) / kRmsDwRows);
  require(P <= 65535, std::string(op) + ": M too large (M ≤ 65535·64)");
  return P;
}

}  // namespace megacpp::train_ops::detail
