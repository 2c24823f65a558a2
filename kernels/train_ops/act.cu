// act.cu — SwiGLU and relu² activations, forward and backward, elementwise.
//
// Math (fp32): swiglu a = g·σ(g)·u; dg = da·u·σ(g)·(1 + g·(1−σ(g))); du = da·g·σ(g)
//              relu2  a = max(g,0)²;  dg = 2·max(g,0)·da
// σ(g) = 1/(1+exp(−g)) with expf (not __expf) so the result tracks the float64 reference to ~1e-7.
// Shapes: [rows, cols] views; g/u/dg/du row stride ld_in, a/da row stride ld_out (all bf16).
// Saved for backward: g and u (the fc1 output). Resources: 256 threads, one 8-element (16-byte) vector
// per thread, grid = rows·cols/8/256; no smem; memory-bound (fwd 6 B/elem, bwd 10 B/elem for swiglu).
#include <cmath>

#include "kernels/train_ops/act.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

using detail::load8;
using detail::store8;
constexpr int kThreads = 256;

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

template <Act A>
__global__ void __launch_bounds__(kThreads) act_fwd_kernel(const bf16* __restrict__ g, const bf16* __restrict__ u,
                                                           bf16* __restrict__ a, int64_t rows, int64_t cols8,
                                                           int64_t ld_in, int64_t ld_out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * cols8) return;
  const int64_t r = i / cols8, c = (i % cols8) * 8;
  float gg[8], o[8];
  load8(g + r * ld_in + c, gg);
  if constexpr (A == Act::swiglu) {
    float uu[8];
    load8(u + r * ld_in + c, uu);
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = gg[k] * sigm(gg[k]) * uu[k];
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = gg[k] > 0.f ? gg[k] * gg[k] : 0.f;
  }
  store8(a + r * ld_out + c, o);
}

template <Act A>
__global__ void __launch_bounds__(kThreads) act_bwd_kernel(const bf16* __restrict__ g, const bf16* __restrict__ u,
                                                           const bf16* __restrict__ da, bf16* __restrict__ dg,
                                                           bf16* __restrict__ du, int64_t rows, int64_t cols8,
                                                           int64_t ld_in, int64_t ld_out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * cols8) return;
  const int64_t r = i / cols8, c = (i % cols8) * 8;
  float gg[8], d[8], og[8];
  load8(g + r * ld_in + c, gg);
  load8(da + r * ld_out + c, d);
  if constexpr (A == Act::swiglu) {
    float uu[8], ou[8];
    load8(u + r * ld_in + c, uu);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float s = sigm(gg[k]);
      og[k] = d[k] * uu[k] * s * (1.0f + gg[k] * (1.0f - s));
      ou[k] = d[k] * gg[k] * s;
    }
    store8(du + r * ld_in + c, ou);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) og[k] = gg[k] > 0.f ? 2.0f * gg[k] * d[k] : 0.f;
  }
  store8(dg + r * ld_in + c, og);
}

void check(const char* op, Act act, const void* u, int64_t rows, int64_t cols, int64_t ld_in, int64_t ld_out) {
  detail::require(rows > 0 && cols > 0, std::string(op) + ": rows and cols must be > 0");
  detail::require(cols % 8 == 0 && ld_in % 8 == 0 && ld_out % 8 == 0,
                  std::string(op) + ": cols=" + std::to_string(cols) + ", ld_in=" + std::to_string(ld_in) +
                      ", ld_out=" + std::to_string(ld_out) + " must be multiples of 8 (16-byte vectors)");
  detail::require(ld_in >= cols && ld_out >= cols, std::string(op) + ": row stride smaller than cols");
  if (act == Act::swiglu) detail::require(u != nullptr, std::string(op) + ": swiglu needs u");
}

}  // namespace

const char* act_name(Act a) { return a == Act::swiglu ? "swiglu" : "relu2"; }

void act_fwd(Act act, const bf16* g, const bf16* u, bf16* a, int64_t rows, int64_t cols, int64_t ld_in, int64_t ld_out,
             cudaStream_t stream) {
  check("act_fwd", act, u, rows, cols, ld_in, ld_out);
  for (const void* p : {(const void*)g, (const void*)u, (const void*)a}) detail::require_aligned16(p, "act_fwd", "g/u/a");
  const unsigned grid = detail::grid_1d(rows * (cols / 8), kThreads);
  if (act == Act::swiglu)
    act_fwd_kernel<Act::swiglu><<<grid, kThreads, 0, stream>>>(g, u, a, rows, cols / 8, ld_in, ld_out);
  else
    act_fwd_kernel<Act::relu2><<<grid, kThreads, 0, stream>>>(g, u, a, rows, cols / 8, ld_in, ld_out);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void act_bwd(Act act, const bf16* g, const bf16* u, const bf16* da, bf16* dg, bf16* du, int64_t rows, int64_t cols,
             int64_t ld_in, int64_t ld_out, cudaStream_t stream) {
  check("act_bwd", act, u, rows, cols, ld_in, ld_out);
  if (act == Act::swiglu) detail::require(du != nullptr, "act_bwd: swiglu needs du");
  for (const void* p : {(const void*)g, (const void*)u, (const void*)da, (const void*)dg, (const void*)du})
    detail::require_aligned16(p, "act_bwd", "g/u/da/dg/du");
  const unsigned grid = detail::grid_1d(rows * (cols / 8), kThreads);
  if (act == Act::swiglu)
    act_bwd_kernel<Act::swiglu><<<grid, kThreads, 0, stream>>>(g, u, da, dg, du, rows, cols / 8, ld_in, ld_out);
  else
    act_bwd_kernel<Act::relu2><<<grid, kThreads, 0, stream>>>(g, u, da, dg, du, rows, cols / 8, ld_in, ld_out);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> act_kernel_info(Act act) {
  if (act == Act::swiglu)
    return {{"act_fwd_kernel<swiglu>", (const void*)act_fwd_kernel<Act::swiglu>, kThreads, 0},
            {"act_bwd_kernel<swiglu>", (const void*)act_bwd_kernel<Act::swiglu>, kThreads, 0}};
  return {{"act_fwd_kernel<relu2>", (const void*)act_fwd_kernel<Act::relu2>, kThreads, 0},
          {"act_bwd_kernel<relu2>", (const void*)act_bwd_kernel<Act::relu2>, kThreads, 0}};
}

}  // namespace megacpp::train_ops
