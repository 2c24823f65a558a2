// train_ops_ref.hpp — float64 CPU references of the train_ops kernels (the oracle of the op cases and
// of tests/kernels/train_ops/test_train_ops_ref.cpp, whose backward passes are checked against central
// finite differences). Same math and conventions as engine/model/cpu_ops.hpp and
// engine/train/optimizer.cpp: row-major, W [N,K] (y = x·Wᵀ), parameter gradients ACCUMULATED (+=),
// input gradients OVERWRITTEN.
#pragma once
#include <cstdint>
#include <vector>

namespace megacpp::train_ops::ref {

using Vec = std::vector<double>;

// y[M,N] = x[M,K]·W[N,K]ᵀ
void linear_fwd(const Vec& x, const Vec& W, Vec& y, int64_t M, int64_t K, int64_t N);
// dx = dy·W (overwrite), dW += dyᵀ·x
void linear_bwd(const Vec& x, const Vec& W, const Vec& dy, Vec& dx, Vec& dW, int64_t M, int64_t K, int64_t N);

// y = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps)     x [M,C], w [C], rstd [M]
void rmsnorm_fwd(const Vec& x, const Vec& w, Vec& y, Vec& rstd, int64_t M, int64_t C, double eps);
// h_out = h + yin (rounded to bf16 when round_bf16: the kernel's stored h_out), n = RMSNorm(h_out)·w
void residual_rmsnorm_fwd(const Vec& h, const Vec& yin, const Vec& w, Vec& h_out, Vec& n, Vec& rstd, int64_t M,
                          int64_t C, double eps, bool round_bf16);
// dx = rstd·(dy·w − x̂·mean(dy·w·x̂)) + dres (dres may be empty), dw += Σ_m dy·x̂
void rmsnorm_bwd(const Vec& x, const Vec& w, const Vec& rstd, const Vec& dy, const Vec& dres, Vec& dx, Vec& dw,
                 int64_t M, int64_t C);

// act: 0 swiglu (a = silu(g)·u), 1 relu2 (a = max(g,0)²); elementwise over n
void act_fwd(int act, const Vec& g, const Vec& u, Vec& a);
void act_bwd(int act, const Vec& g, const Vec& u, const Vec& da, Vec& dg, Vec& du);

// out[m] = wte[tok[m]]; dwte[v] += Σ_{tok[m]=v} dout[m]
void embedding_fwd(const std::vector<int32_t>& tok, const Vec& wte, Vec& out, int64_t C);
void embedding_bwd(const std::vector<int32_t>& tok, const Vec& dout, Vec& dwte, int64_t C);

// loss_sum = Σ_{t≥0} lse − z_t; lse [M] out (0 rows stay for t<0 too); backward when dx != nullptr:
// dx = scale·(p − onehot)·W (0 rows for t<0), dW += scale·(p − onehot)ᵀ·x
double lm_head_ce(const Vec& x, const Vec& W, const std::vector<int32_t>& tgt, int64_t M, int64_t C, int64_t V,
                  double scale, Vec* lse, Vec* dx, Vec* dW);

// One AdamW step (engine/train/optimizer.cpp's rule) on flat buffers; mask empty = decay everywhere.
void adamw(Vec& p, const Vec& g, Vec& m, Vec& v, const std::vector<uint8_t>& mask, double lr, double beta1,
           double beta2, double eps, double wd, int64_t step, double clip_scale);
double grad_norm(const Vec& g);
double clip_scale(double norm, double clip);

}  // namespace megacpp::train_ops::ref
