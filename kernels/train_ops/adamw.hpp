// adamw.hpp — AdamW over one flat fp32 parameter buffer, and the global gradient L2 norm.
//   g = grad·clip_scale; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²
//   p −= lr·( (m/bc1) / (sqrt(v/bc2) + eps) + wd·mask·p ),  bc1 = 1−β1^(step+1), bc2 = 1−β2^(step+1)
//   shadow = bf16(p) (the bf16 weights the forward reads; nullable)
// decay_mask: uint8 per element (1: decay; 0: norms, biases, Mamba scalars), nullptr = decay everywhere.
// clip_scale: DEVICE pointer (written by grad_norm, so no host sync), nullptr = 1.
// grad_norm: two passes (per-block fp64 partials, then one block in fixed order) → bitwise deterministic;
//   writes norm (double) and, if clip_scale_out != nullptr, clip_scale = clip/(norm+1e-6) when
//   clip > 0 and norm > clip, else 1 (the CPU optimizer's rule).
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  int64_t step = 0;  // 0-based optimizer step
};
void adamw_step(float* params, const float* grads, float* m, float* v, bf16* shadow, const uint8_t* decay_mask,
                int64_t n, const AdamWHyper& h, const float* clip_scale, cudaStream_t stream);
std::size_t grad_norm_workspace_doubles(int64_t n);
void grad_norm(const float* grads, int64_t n, double* workspace, double* norm_out, float* clip_scale_out, float clip,
               cudaStream_t stream);
std::vector<KernelInfo> adamw_kernel_info();

}  // namespace megacpp::train_ops
