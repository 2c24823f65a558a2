// rmsnorm.hpp — RMSNorm forward/backward and the fused residual add (the seeds' "fused residual").
//   y = x · rstd · w,  rstd = 1/sqrt(mean_c(x²) + eps)          x, y, w bf16; rstd fp32 [M] saved
//   residual: h_out = bf16(h + y); n = RMSNorm(h_out)·w          (h_out may alias h)
//   backward: dx = rstd·(dy·w − x̂·mean_c(dy·w·x̂)) [+ dres],  dw += Σ_m dy·x̂   (x̂ = x·rstd)
// Limits: C % 8 == 0, C ≤ 65536; every bf16 pointer 16-byte aligned (16-byte vector accesses).
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

void rmsnorm_fwd(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t M, int64_t C, float eps,
                 cudaStream_t stream);
void residual_rmsnorm_fwd(const bf16* h, const bf16* y, const bf16* w, bf16* h_out, bf16* n, float* rstd, int64_t M,
                          int64_t C, float eps, cudaStream_t stream);
// Workspace (fp32 elements) for the per-block dw partials of rmsnorm_bwd.
std::size_t rmsnorm_bwd_workspace_floats(int64_t M, int64_t C);
// x: the forward's input (h_out for the residual variant); dres (nullable, may alias dx): the gradient
// already flowing in the residual stream, added to dx (the backward of the fused residual add).
// dw (fp32) is accumulated deterministically: per-block partials, then a fixed-order reduction.
void rmsnorm_bwd(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* dres, bf16* dx,
                 float* dw, float* workspace, int64_t M, int64_t C, cudaStream_t stream);
std::vector<KernelInfo> rmsnorm_kernel_info();

}  // namespace megacpp::train_ops
