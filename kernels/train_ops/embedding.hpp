// embedding.hpp — token embedding gather and its deterministic scatter-add backward.
//   forward : out[m, :] = wte[tok[m], :]                       wte bf16 [V,C], out bf16 [M,C]
//   backward: dwte[v, :] += Σ_{m: tok[m]=v} dout[m, :]         dwte fp32 [V,C] (accumulated)
// Backward without float atomics: a stable radix sort of (token, position) pairs (cub, stable, so
// positions stay ascending inside a token), then one block per run start × column tile sums its run in
// ascending position order → bitwise deterministic.
// Out-of-range tokens: forward writes a zero row and sets *err_flag = 1 (if err_flag != nullptr);
// backward skips them. Limits: C % 8 == 0, pointers 16-byte aligned, M < 2^31.
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

void embedding_fwd(const int32_t* tokens, const bf16* wte, bf16* out, int64_t M, int64_t V, int64_t C, int* err_flag,
                   cudaStream_t stream);
std::size_t embedding_bwd_workspace_bytes(int64_t M);
void embedding_bwd(const int32_t* tokens, const bf16* dout, float* dwte, int64_t M, int64_t V, int64_t C,
                   void* workspace, std::size_t workspace_bytes, cudaStream_t stream);
std::vector<KernelInfo> embedding_kernel_info();

}  // namespace megacpp::train_ops
