// linear.hpp — bf16 linear layers (y = x·Wᵀ) and a generic row-major GEMM through cuBLASLt.
//
// One process-wide cuBLASLt context: handle + 32 MiB workspace created on first use (current device);
// per distinct GEMM (transposes, m, n, k, leading dims, output type, beta≠0, pointer alignments) the
// matmul descriptor, layouts and the heuristic's first algorithm are cached; gemm_plans() lists them
// (the "record the algo" of the receipt). Not for use from several devices in one process.
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

enum class GemmOut { bf16, f32 };

// Row-major D[m,n] = alpha·opA(A)·opB(B) + beta·D, fp32 accumulation.
//   A: row-major [m,k] (ta=false) or [k,m] (ta=true), leading dim lda (elements)
//   B: row-major [k,n] (tb=false) or [n,k] (tb=true), leading dim ldb
//   D: row-major [m,n], leading dim ldd, bf16 or fp32 (beta≠0 reads D as C, in place)
struct GemmDesc {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldd = 0;
  GemmOut out = GemmOut::bf16;
};
void gemm_rm(const GemmDesc& d, const bf16* A, const bf16* B, void* D, float alpha, float beta, cudaStream_t stream);
// "ta=0 tb=1 m=.. n=.. k=.. out=bf16 beta=0 → algo id 21 tile 20 stages 8 splitK 1 ws 0 B" per cached GEMM.
std::vector<std::string> gemm_plans();
// The plan line of the most recently cached GEMM matching d (any alignment), or "" if none ran yet.
std::string gemm_plan_for(const GemmDesc& d, float beta);

// y[M,N] = x[M,K]·W[N,K]ᵀ                    (bf16 out)
void linear_fwd(const bf16* x, const bf16* W, bf16* y, int64_t M, int64_t K, int64_t N, cudaStream_t stream);
// dx[M,K] = dy[M,N]·W[N,K]  (accumulate=false: overwrite; true: dx += ..., bf16 in place)
void linear_bwd_dx(const bf16* dy, const bf16* W, bf16* dx, int64_t M, int64_t K, int64_t N, bool accumulate,
                   cudaStream_t stream);
// dW[N,K] += dy[M,N]ᵀ·x[M,K]                 (fp32 gradient accumulation buffer)
void linear_bwd_dw(const bf16* dy, const bf16* x, float* dW, int64_t M, int64_t K, int64_t N, cudaStream_t stream);

}  // namespace megacpp::train_ops
