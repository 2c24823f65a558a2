// rmsnorm_tp.hpp — RMSNorm whose channels are split over tensor-parallel ranks (the M²RNN block's output
// norm over all N·V channels when its heads are sharded; CPU twin: engine/model/m2rnn_block.cpp
// tp_forward/tp_backward). Each rank holds C of the C_full channels of every row; the two row statistics
// are partial sums that the caller all-reduces over TP between the two halves of each direction:
//   forward : ss_m = Σ_c x²                    (rmsnorm_tp_sumsq, this rank's channels)
//             [caller: ss ← Σ over TP]
//             rstd_m = 1/sqrt(ss_m/C_full + eps);  y = bf16(x·rstd·w)         (rmsnorm_tp_apply)
//   backward: dot_m = Σ_c dy·w·x                (rmsnorm_tp_bwd_dot)
//             [caller: dot ← Σ over TP]
//             dx = bf16(rstd·(dy·w − x·rstd³·dot/C_full));  dw += Σ_m dy·x·rstd   (rmsnorm_tp_bwd)
// With C == C_full and no reduction in between this is the plain RMSNorm (kernels/train_ops/rmsnorm.cu).
// Shapes: x, y, dy, dx bf16 [M,C]; w bf16 [C]; ss, dot, rstd fp32 [M]; dw fp32 [C] (accumulated);
// workspace rmsnorm_bwd_workspace_floats(M, C) floats (train_ops/rmsnorm.hpp). Limits: C % 8 == 0, ≤ 65536.
// Deterministic: warp-per-row sums in a fixed order, dw in fixed-order 64-row partials, no atomics.
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

void rmsnorm_tp_sumsq(const bf16* x, float* ss, int64_t M, int64_t C, cudaStream_t stream);
void rmsnorm_tp_apply(const bf16* x, const bf16* w, const float* ss, bf16* y, float* rstd, int64_t M, int64_t C,
                      int64_t C_full, float eps, cudaStream_t stream);
void rmsnorm_tp_bwd_dot(const bf16* x, const bf16* w, const bf16* dy, float* dot, int64_t M, int64_t C,
                        cudaStream_t stream);
void rmsnorm_tp_bwd(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const float* dot, bf16* dx, float* dw,
                    float* workspace, int64_t M, int64_t C, int64_t C_full, cudaStream_t stream);
std::vector<KernelInfo> rmsnorm_tp_kernel_info();

}  // namespace megacpp::train_ops
