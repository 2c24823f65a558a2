// lm_head_ce_vp.hpp — vocabulary-parallel fused LM head + cross-entropy (Megatron's vocab-parallel CE) for
// the CUDA backend under tensor parallelism; the tp = 1 model uses lm_head_ce.hpp unchanged. CPU twin:
// vocab_parallel_ce in engine/model/model.cpp.
// This rank holds W rows for the vocabulary ids [v_off, v_off + Vl). Per row m with target t_m:
//   partial (this rank):   lse_q,m = log Σ_{v in slice} exp(x_m·W[v]);  tl_q,m = x_m·W[t_m] if t_m in the
//                          slice, else 0                  → stats [M, 2] fp32 = (lse_q, tl_q)
//   [caller: all-gather stats over TP → gathered [P, M, 2], rank order]
//   combine (every rank):  lse_m = max_q lse_q + log Σ_q exp(lse_q − max);  target logit = Σ_q tl_q;
//                          loss_sum = Σ_{t_m ≥ 0} lse_m − target logit  (fp64, fixed order: every rank
//                          computes the identical value)
//   backward (this rank):  G = scale·(exp(x·W_cᵀ − lse) − [v = t]) (0 for t < 0), per vocabulary chunk;
//                          dx_f32 = Σ_chunks G·W_c (OVERWRITTEN, fp32: this rank's vocabulary only — the
//                          caller all-reduces it over TP, then casts with cast_f32_to_bf16);
//                          dW_c += Gᵀ·x (fp32, this rank's rows: complete, no TP reduction).
// x bf16 [M,C], W bf16 [Vl,C], targets int32 [M] (GLOBAL ids; −1 ignored), lse fp32 [M] (saved for backward).
// Limits: C % 8 == 0, chunk % 8 == 0 (Vl is free: the logit buffers' leading dimension is padded to 8);
// targets < the full vocabulary (ids outside the slice are another rank's).
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

std::size_t lm_head_ce_vp_workspace_bytes(int64_t M, int64_t C, int64_t Vl, int64_t chunk);
void lm_head_ce_vp_partial(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t Vl,
                           int64_t v_off, int64_t chunk, float* stats, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream);
void lm_head_ce_vp_combine(const float* gathered, int P, const int32_t* targets, int64_t M, float* lse, double* loss_sum,
                           void* workspace, std::size_t workspace_bytes, cudaStream_t stream);
void lm_head_ce_vp_bwd(const bf16* x, const bf16* W, const int32_t* targets, const float* lse, int64_t M, int64_t C,
                       int64_t Vl, int64_t v_off, int64_t chunk, float scale, float* dx_f32, float* dW, void* workspace,
                       std::size_t workspace_bytes, cudaStream_t stream);
// dst[i] = bf16(src[i]), i < n.
void cast_f32_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream);
std::vector<KernelInfo> lm_head_ce_vp_kernel_info();

}  // namespace megacpp::train_ops
