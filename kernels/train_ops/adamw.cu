// adamw.cu — AdamW step over a flat fp32 buffer (+ bf16 shadow) and the deterministic global grad norm.
//
// Math (fp32 per element; bias corrections and 1−β in double on the host, passed as fp32):
//   g = grad·clip; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= lr·((m/bc1)/(sqrt(v/bc2)+eps) + wd·mask·p)
//   shadow = bf16(p).  Same rule and order as engine/train/optimizer.cpp.
// grad_norm: pass 1 grid of ≤ 1024 blocks × 256 threads, grid-stride over float4, fp64 squares summed per
//   thread, fixed smem tree per block → partial[b]; pass 2 one block sums partials in fixed order, sqrt,
//   and the clip scale. Grid size depends only on n → bitwise reproducible.
// Shapes: params/grads/m/v fp32 [n], shadow bf16 [n], decay_mask uint8 [n]. Saved: m, v (state).
// Resources: adamw 256 threads, 4 elements per thread (16-byte loads when n % 4 == 0 and aligned), no
//   smem; memory-bound at 4·4 + 4·3 + 2 + 1 = 31 bytes/element.
#include <cmath>

#include "kernels/train_ops/adamw.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

constexpr int kThreads = 256, kNormThreads = 256, kNormMaxBlocks = 1024;

struct Hyp {
  float lr, b1, omb1, b2, omb2, eps, wd, inv_bc1, inv_bc2;
};

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, bool decay, const Hyp& h) {
  m = h.b1 * m + h.omb1 * g;
  v = h.b2 * v + h.omb2 * g * g;
  const float upd = (m * h.inv_bc1) / (sqrtf(v * h.inv_bc2) + h.eps) + (decay ? h.wd * p : 0.f);
  p = p - h.lr * upd;
}

__global__ void __launch_bounds__(kThreads) adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                                                         float* __restrict__ m, float* __restrict__ v,
                                                         bf16* __restrict__ shadow, const uint8_t* __restrict__ mask,
                                                         int64_t n, Hyp h, const float* __restrict__ clip, bool vec) {
  const int64_t i0 = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * 4;
  if (i0 >= n) return;
  const float cs = clip ? *clip : 1.0f;
  if (vec && i0 + 3 < n) {
    float4 pp = *reinterpret_cast<const float4*>(p + i0);
    const float4 gg = *reinterpret_cast<const float4*>(g + i0);
    float4 mm = *reinterpret_cast<const float4*>(m + i0);
    float4 vv = *reinterpret_cast<const float4*>(v + i0);
    uchar4 dk = make_uchar4(1, 1, 1, 1);
    if (mask) dk = *reinterpret_cast<const uchar4*>(mask + i0);
    adam_one(pp.x, gg.x * cs, mm.x, vv.x, dk.x != 0, h);
    adam_one(pp.y, gg.y * cs, mm.y, vv.y, dk.y != 0, h);
    adam_one(pp.z, gg.z * cs, mm.z, vv.z, dk.z != 0, h);
    adam_one(pp.w, gg.w * cs, mm.w, vv.w, dk.w != 0, h);
    *reinterpret_cast<float4*>(p + i0) = pp;
    *reinterpret_cast<float4*>(m + i0) = mm;
    *reinterpret_cast<float4*>(v + i0) = vv;
    if (shadow) {
      __nv_bfloat162 s[2] = {__floats2bfloat162_rn(pp.x, pp.y), __floats2bfloat162_rn(pp.z, pp.w)};
      *reinterpret_cast<uint2*>(shadow + i0) = *reinterpret_cast<const uint2*>(s);
    }
    return;
  }
  for (int64_t i = i0; i < n && i < i0 + 4; ++i) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_one(pi, g[i] * cs, mi, vi, mask ? mask[i] != 0 : true, h);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (shadow) shadow[i] = __float2bfloat16_rn(pi);
  }
}

__global__ void __launch_bounds__(kNormThreads) norm_partial_kernel(const float* __restrict__ g, int64_t n,
                                                                    double* __restrict__ partial, bool vec) {
  __shared__ double sh[kNormThreads];
  double s = 0.0;
  const int64_t stride = int64_t(gridDim.x) * kNormThreads;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = int64_t(blockIdx.x) * kNormThreads + threadIdx.x; i < n4; i += stride) {
      const float4 q = reinterpret_cast<const float4*>(g)[i];
      s += double(q.x) * q.x + double(q.y) * q.y + double(q.z) * q.z + double(q.w) * q.w;
    }
    // tail (n % 4 elements): block 0, threads 0..2
    if (blockIdx.x == 0 && int64_t(threadIdx.x) < n - n4 * 4) {
      const double q = g[n4 * 4 + threadIdx.x];
      s += q * q;
    }
  } else {
    for (int64_t i = int64_t(blockIdx.x) * kNormThreads + threadIdx.x; i < n; i += stride) {
      const double q = g[i];
      s += q * q;
    }
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kNormThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void __launch_bounds__(kNormMaxBlocks) norm_final_kernel(const double* __restrict__ partial, int nb,
                                                                    double* norm_out, float* clip_out, float clip) {
  __shared__ double sh[kNormMaxBlocks];
  sh[threadIdx.x] = int(threadIdx.x) < nb ? partial[threadIdx.x] : 0.0;
  __syncthreads();
  for (int w = kNormMaxBlocks / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double nrm = sqrt(sh[0]);
    if (norm_out) *norm_out = nrm;
    if (clip_out) *clip_out = (clip > 0.f && nrm > double(clip)) ? float(double(clip) / (nrm + 1e-6)) : 1.0f;
  }
}

int norm_blocks(int64_t n) {
  const int64_t b = (n / 4 + kNormThreads * 8 - 1) / (kNormThreads * 8);  // ≥ 8 float4 per thread
  return int(b < 1 ? 1 : (b > kNormMaxBlocks ? kNormMaxBlocks : b));
}

}  // namespace

void adamw_step(float* params, const float* grads, float* m, float* v, bf16* shadow, const uint8_t* decay_mask, int64_t n,
                const AdamWHyper& hy, const float* clip_scale, cudaStream_t stream) {
  detail::require(n > 0, "adamw_step: n must be > 0");
  detail::require(params && grads && m && v, "adamw_step: null params/grads/m/v");
  detail::require(hy.beta1 >= 0 && hy.beta1 < 1 && hy.beta2 >= 0 && hy.beta2 < 1 && hy.step >= 0,
                  "adamw_step: need 0 ≤ beta1, beta2 < 1 and step ≥ 0");
  Hyp h;
  h.lr = float(hy.lr);
  h.b1 = float(hy.beta1);
  h.omb1 = float(1.0 - hy.beta1);
  h.b2 = float(hy.beta2);
  h.omb2 = float(1.0 - hy.beta2);
  h.eps = float(hy.eps);
  h.wd = float(hy.weight_decay);
  h.inv_bc1 = float(1.0 / (1.0 - std::pow(hy.beta1, double(hy.step + 1))));
  h.inv_bc2 = float(1.0 / (1.0 - std::pow(hy.beta2, double(hy.step + 1))));
  const bool vec = detail::aligned16(params) && detail::aligned16(grads) && detail::aligned16(m) && detail::aligned16(v) &&
                   (!shadow || (reinterpret_cast<uintptr_t>(shadow) & 7u) == 0) &&
                   (!decay_mask || (reinterpret_cast<uintptr_t>(decay_mask) & 3u) == 0);
  adamw_kernel<<<detail::grid_1d((n + 3) / 4, kThreads), kThreads, 0, stream>>>(params, grads, m, v, shadow, decay_mask, n,
                                                                                 h, clip_scale, vec);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::size_t grad_norm_workspace_doubles(int64_t n) { return std::size_t(norm_blocks(n)); }

void grad_norm(const float* grads, int64_t n, double* workspace, double* norm_out, float* clip_scale_out, float clip,
               cudaStream_t stream) {
  detail::require(n > 0 && grads && workspace, "grad_norm: need n > 0, grads and workspace");
  const int nb = norm_blocks(n);
  norm_partial_kernel<<<nb, kNormThreads, 0, stream>>>(grads, n, workspace, detail::aligned16(grads));
  MEGACPP_CUDA_CHECK_LAUNCH();
  norm_final_kernel<<<1, kNormMaxBlocks, 0, stream>>>(workspace, nb, norm_out, clip_scale_out, clip);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> adamw_kernel_info() {
  return {{"adamw_kernel", (const void*)adamw_kernel, kThreads, 0},
          {"norm_partial_kernel", (const void*)norm_partial_kernel, kNormThreads, 0},
          {"norm_final_kernel", (const void*)norm_final_kernel, kNormMaxBlocks, 0}};
}

}  // namespace megacpp::train_ops
