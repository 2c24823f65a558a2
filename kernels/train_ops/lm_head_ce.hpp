// lm_head_ce.hpp — fused LM head + cross-entropy, chunked over the vocabulary: the [M, V] logits are
// never materialised, only one [M, chunk] fp32 block at a time.
//   loss_sum = Σ_{m: t_m ≥ 0} (lse_m − x_m·W[t_m]),  lse_m = log Σ_v exp(x_m·W[v])
//   forward per chunk: logits = x·W_cᵀ (cuBLASLt, fp32 out) → online max / sum-exp per row, target logit.
//   saved for backward: lse [M] fp32.  loss_sum: one double, fixed-order reduction (deterministic).
//   backward per chunk: recompute logits, G = scale·(softmax − onehot) in bf16 (0 for ignored rows),
//     dx_f32 (+)= G·W_c, dW_c += Gᵀ·x (fp32); finally dx = bf16(dx_f32).
// x bf16 [M,C], W bf16 [V,C], targets int32 [M] (−1: ignored), dW fp32 [V,C] accumulated, dx bf16 [M,C].
// Limits: C, V, chunk % 8 == 0; targets < V.
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

std::size_t lm_head_ce_workspace_bytes(int64_t M, int64_t C, int64_t V, int64_t chunk);
void lm_head_ce_fwd(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t V,
                    int64_t chunk, float* lse, double* loss_sum, void* workspace, std::size_t workspace_bytes,
                    cudaStream_t stream);
void lm_head_ce_bwd(const bf16* x, const bf16* W, const int32_t* targets, const float* lse, int64_t M, int64_t C,
                    int64_t V, int64_t chunk, float scale, bf16* dx, float* dW, void* workspace,
                    std::size_t workspace_bytes, cudaStream_t stream);
std::vector<KernelInfo> lm_head_ce_kernel_info();

}  // namespace megacpp::train_ops
