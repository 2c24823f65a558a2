// m2rnn_glue.hpp — launchers of the CUDA kernels around the M²RNN scan core (the R block on the CUDA
// training backend, engine/cuda/m2rnn_block_cuda.cpp). Math and resources: m2rnn_glue.cu; the float64
// ground truth is the block reference of m2rnn_ref.hpp (block_forward / block_backward).
//
// Notation (one R layer, M = B·S tokens, row r = b·S + t): u [M, ldu] fp32 is the input projection
// x·W_in with columns [ q (K) | k (K) | v (N·V) | φ (N) | g (N·V) ]; C = 2K + N·V conv channels (Nq = Nk = 1).
// Every launcher validates its arguments (std::invalid_argument naming the limit), enqueues on `stream`,
// never synchronises. Input gradients are OVERWRITTEN; parameter gradients (fp32) are ACCUMULATED (+=)
// with fixed-order reductions (no atomics: bitwise deterministic).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace megacpp::m2rnn::glue {

using bf16 = __nv_bfloat16;

constexpr int kMaxConvWidth = 8;

// c[r, ch] = SiLU(Σ_{j<w} conv_w[ch, j] · u[b, t-(w-1)+j, ch]) (zero before the sequence start), ch < C.
// c: bf16 [M, C] (the scan's q | k | v with token stride C).
void conv_silu_fwd(const float* u, int64_t ldu, const float* conv_w, bf16* c, int64_t B, int64_t S, int64_t C,
                   int w, cudaStream_t stream);

// f[r, n] = exp(−exp(A_log[n]) · softplus(u[r, phi_col + n] + dt_bias[n]))   (fp32 [M, N])
void decay_fwd(const float* u, int64_t ldu, int64_t phi_col, const float* A_log, const float* dt_bias, float* f,
               int64_t M, int64_t N, cudaStream_t stream);

// m[r, e] = bf16(o[r, e] · SiLU(u[r, g_col + e]))   o fp32 [M, NV], m bf16 [M, NV]
void out_gate_fwd(const float* o, const float* u, int64_t ldu, int64_t g_col, bf16* m, int64_t M, int64_t NV,
                  cudaStream_t stream);

// do[r, e] = dm · SiLU(g) (fp32, the scan's dout);  du[r, g_col + e] = bf16(dm · o · SiLU'(g))
void out_gate_bwd(const bf16* dm, const float* o, const float* u, int64_t ldu, int64_t g_col, float* dout, bf16* du,
                  int64_t M, int64_t NV, cudaStream_t stream);

// s = φ + dt_bias[n], A = exp(A_log[n]):  du[r, phi_col + n] = bf16(df · f · (−A) · σ(s));
// dA_log[n] += Σ_r df · f · (−A · softplus(s));  ddt_bias[n] += Σ_r df · f · (−A) · σ(s).
void decay_bwd(const float* df, const float* u, int64_t ldu, int64_t phi_col, const float* A_log,
               const float* dt_bias, const float* f, bf16* du, float* dA_log, float* ddt_bias, int64_t M, int64_t N,
               cudaStream_t stream);

// Floats of conv_silu_bwd's workspace (dpre [M, C] + per-chunk dconv_w partials).
std::size_t conv_bwd_workspace_floats(int64_t B, int64_t S, int64_t C, int w);
// dc = [dq (K) | dk (K) | dv (N·V)] per token (fp32, packed [M,K], [M,K], [M,NV]); pre recomputed from u;
// dpre = dc · SiLU'(pre);  du[r, ch] = bf16(Σ_j conv_w[ch, j] · dpre[b, t+(w-1)-j, ch])   (ch < C);
// dconv_w[ch, j] += Σ_r u[b, t-(w-1)+j, ch] · dpre[r, ch].
void conv_silu_bwd(const float* u, int64_t ldu, const float* conv_w, const float* dq, const float* dk, const float* dv,
                   int64_t K, int64_t NV, bf16* du, float* dconv_w, float* workspace, int64_t B, int64_t S, int w,
                   cudaStream_t stream);

// g[i] += s[i], i < n (fp32; the scan's overwritten dW / dD into the accumulated parameter gradients).
void accumulate(float* g, const float* s, int64_t n, cudaStream_t stream);

}  // namespace megacpp::m2rnn::glue
