// cpu_ops.hpp — the CPU reference backend's primitives (fp32 for runs, float64 in tests).
// Row-major; a "linear" is y[M,N] = x[M,K]·Wᵀ with W stored [N,K] (the PyTorch / Megatron layout).
// Backward functions ACCUMULATE into parameter gradients (gradient accumulation over micro-batches)
// and OVERWRITE input gradients unless the name says _acc.
#pragma once
#include <cstdint>

namespace megacpp::cpu {

// y = x·Wᵀ                                   x [M,K], W [N,K], y [M,N]
template <typename T> void linear_fwd(const T* x, const T* W, T* y, int64_t M, int64_t K, int64_t N);
// dx = dy·W (overwrite), dW += dyᵀ·x           dy [M,N]
template <typename T> void linear_bwd(const T* x, const T* W, const T* dy, T* dx, T* dW, int64_t M, int64_t K, int64_t N);
// dx += dy·W (accumulate)
template <typename T> void linear_bwd_acc(const T* x, const T* W, const T* dy, T* dx, T* dW, int64_t M, int64_t K, int64_t N);

// y = x / rms(x) · w over the last dim C; saves rstd [M]
template <typename T> void rmsnorm_fwd(const T* x, const T* w, T* y, T* rstd, int64_t M, int64_t C, double eps);
// dx (overwrite or accumulate) and dw += ...
template <typename T> void rmsnorm_bwd(const T* x, const T* w, const T* rstd, const T* dy, T* dx, T* dw, int64_t M,
                                       int64_t C, bool accumulate_dx);

// SwiGLU: a = silu(g)·u ; relu²: a = max(g,0)²; gelu (tanh approx)
enum class Act { swiglu, relu2, gelu };
template <typename T> void act_fwd(Act act, const T* g, const T* u, T* a, int64_t n);
template <typename T> void act_bwd(Act act, const T* g, const T* u, const T* da, T* dg, T* du, int64_t n);

// Fused, row-chunked LM head + cross-entropy: never materialises [M, V] logits.
// loss_sum = Σ_rows −log softmax(x·Wᵀ)[target]; rows with target < 0 are ignored.
// Backward (when dx != nullptr): dx = scale·(p − onehot)·W, dW += scale·(p − onehot)ᵀ·x.
template <typename T>
double lm_head_ce(const T* x, const T* W, const int32_t* targets, int64_t M, int64_t C, int64_t V, T* dx, T* dW,
                  double scale);

double silu(double x);
double sigmoid(double x);
double softplus(double x);

}  // namespace megacpp::cpu
