// test_train_ops_ref.cpp — the float64 references of kernels/train_ops/ checked against central finite
// differences of their forwards: for a random cotangent R, L(θ) = Σ R·f(θ) and ∂L/∂θ_i ≈
// (L(θ + h e_i) − L(θ − h e_i)) / 2h, h = 1e-6, on every element of small tensors. Gate: relative error
// max|analytic − fd| / max|analytic| < 1e-6 (float64 FD truncation + round-off ≈ 1e-9).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "kernels/common/host_rng.hpp"
#include "kernels/registry/op_registry.hpp"
#include "kernels/train_ops/train_ops_ref.hpp"

namespace megacpp {
void register_train_ops_ops(OpRegistry& r);
}

namespace megacpp::train_ops {
namespace {

using ref::Vec;
constexpr double kH = 1e-6, kTol = 1e-6;

Vec randn(std::size_t n, uint64_t seed, double sd = 1.0) { return random_normal(n, seed, sd); }
double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
// Central differences of the scalar L(θ) over every element of θ (θ restored afterwards).
Vec fd(Vec& theta, const std::function<double()>& L) {
  Vec g(theta.size());
  for (std::size_t i = 0; i < theta.size(); ++i) {
    const double t0 = theta[i];
    theta[i] = t0 + kH;
    const double lp = L();
    theta[i] = t0 - kH;
    const double lm = L();
    theta[i] = t0;
    g[i] = (lp - lm) / (2 * kH);
  }
  return g;
}
double rel_err(const Vec& a, const Vec& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return den > 0 ? num / den : num;
}
#define EXPECT_GRAD(analytic, numeric) EXPECT_LT(rel_err(analytic, numeric), kTol) << #analytic

TEST(TrainOpsRef, LinearBackwardMatchesFiniteDifferences) {
  const int64_t M = 5, K = 7, N = 6;
  Vec x = randn(M * K, 1), W = randn(N * K, 2), R = randn(M * N, 3);
  auto L = [&] {
    Vec y;
    ref::linear_fwd(x, W, y, M, K, N);
    return dot(R, y);
  };
  Vec dx, dW(N * K, 0.0);
  ref::linear_bwd(x, W, R, dx, dW, M, K, N);
  EXPECT_GRAD(dx, fd(x, L));
  EXPECT_GRAD(dW, fd(W, L));
  // accumulation: a second call adds the same dW again
  Vec dx2, dW2 = dW;
  ref::linear_bwd(x, W, R, dx2, dW2, M, K, N);
  for (std::size_t i = 0; i < dW.size(); ++i) EXPECT_NEAR(dW2[i], 2 * dW[i], 1e-12);
}

TEST(TrainOpsRef, RmsnormBackwardMatchesFiniteDifferences) {
  const int64_t M = 4, C = 9;
  Vec x = randn(M * C, 4), w = randn(C, 5), R = randn(M * C, 6), dres = randn(M * C, 7);
  for (auto& v : w) v += 1.0;
  auto L = [&] {
    Vec y, r;
    ref::rmsnorm_fwd(x, w, y, r, M, C, 1e-5);
    return dot(R, y);
  };
  Vec y, rstd, dx, dw(C, 0.0);
  ref::rmsnorm_fwd(x, w, y, rstd, M, C, 1e-5);
  ref::rmsnorm_bwd(x, w, rstd, R, Vec{}, dx, dw, M, C);
  EXPECT_GRAD(dx, fd(x, L));
  EXPECT_GRAD(dw, fd(w, L));
  // dres is added to dx
  Vec dx2, dw2(C, 0.0);
  ref::rmsnorm_bwd(x, w, rstd, R, dres, dx2, dw2, M, C);
  for (std::size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], dx[i] + dres[i], 1e-12);
}

TEST(TrainOpsRef, ResidualRmsnormBackwardMatchesFiniteDifferences) {
  // L = Σ R1·h_out + Σ R2·n; ∂L/∂h = ∂L/∂y = R1 + rmsnorm_bwd(R2) (the fused residual's backward)
  const int64_t M = 3, C = 8;
  Vec h = randn(M * C, 8), yin = randn(M * C, 9, 0.5), w = randn(C, 10), R1 = randn(M * C, 11), R2 = randn(M * C, 12);
  auto L = [&] {
    Vec ho, n, r;
    ref::residual_rmsnorm_fwd(h, yin, w, ho, n, r, M, C, 1e-5, false);
    return dot(R1, ho) + dot(R2, n);
  };
  Vec ho, n, rstd, dh, dw(C, 0.0);
  ref::residual_rmsnorm_fwd(h, yin, w, ho, n, rstd, M, C, 1e-5, false);
  ref::rmsnorm_bwd(ho, w, rstd, R2, R1, dh, dw, M, C);
  EXPECT_GRAD(dh, fd(h, L));
  EXPECT_GRAD(dh, fd(yin, L));
  EXPECT_GRAD(dw, fd(w, L));
}

TEST(TrainOpsRef, ActivationBackwardMatchesFiniteDifferences) {
  for (int act = 0; act < 2; ++act) {
    Vec g = randn(40, 13 + act, 2.0), u = randn(40, 15), R = randn(40, 16);
    for (auto& v : g)
      if (std::abs(v) < 1e-3) v = 0.1;  // relu² kink at 0
    auto L = [&] {
      Vec a;
      ref::act_fwd(act, g, u, a);
      return dot(R, a);
    };
    Vec dg, du;
    ref::act_bwd(act, g, u, R, dg, du);
    EXPECT_GRAD(dg, fd(g, L)) << " act " << act;
    if (act == 0) EXPECT_GRAD(du, fd(u, L));
  }
}

TEST(TrainOpsRef, EmbeddingBackwardMatchesFiniteDifferences) {
  const int64_t V = 6, C = 5;
  const std::vector<int32_t> tok = {3, 1, 3, 0, 5, 3, 1};
  Vec wte = randn(V * C, 17), R = randn(tok.size() * C, 18);
  auto L = [&] {
    Vec out;
    ref::embedding_fwd(tok, wte, out, C);
    return dot(R, out);
  };
  Vec dwte(V * C, 0.0);
  ref::embedding_bwd(tok, R, dwte, C);
  EXPECT_GRAD(dwte, fd(wte, L));
  // token 2 and 4 never occur: their rows get nothing
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dwte[2 * C + c], 0.0);
}

TEST(TrainOpsRef, LmHeadCeBackwardMatchesFiniteDifferences) {
  const int64_t M = 5, C = 6, V = 11;
  const std::vector<int32_t> tgt = {3, -1, 10, 0, 3};
  Vec x = randn(M * C, 19), W = randn(V * C, 20, 0.5);
  const double scale = 0.37;
  auto L = [&] { return scale * ref::lm_head_ce(x, W, tgt, M, C, V, 1.0, nullptr, nullptr, nullptr); };
  Vec lse, dx, dW(V * C, 0.0);
  const double loss = ref::lm_head_ce(x, W, tgt, M, C, V, scale, &lse, &dx, &dW);
  EXPECT_GRAD(dx, fd(x, L));
  EXPECT_GRAD(dW, fd(W, L));
  // the ignored row has zero gradient; the loss is the sum of per-row lse − target logit
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dx[1 * C + c], 0.0);
  double direct = 0;
  for (int64_t m = 0; m < M; ++m) {
    if (tgt[m] < 0) continue;
    double z = 0;
    for (int64_t c = 0; c < C; ++c) z += x[m * C + c] * W[tgt[m] * C + c];
    direct += lse[m] - z;
  }
  EXPECT_NEAR(loss, direct, 1e-12);
  EXPECT_GT(loss, 0.0);
}

TEST(TrainOpsRef, AdamwStepFollowsTheFormula) {
  // one element by hand, and the decay mask; bias correction at step 0 makes the first update ≈ lr·sign(g)
  Vec p = {1.0, -2.0, 0.5}, g = {0.1, -0.3, 0.0}, m = {0, 0, 0}, v = {0, 0, 0};
  const std::vector<uint8_t> mask = {1, 0, 1};
  ref::adamw(p, g, m, v, mask, 0.01, 0.9, 0.95, 1e-8, 0.1, 0, 1.0);
  EXPECT_NEAR(m[0], 0.01, 1e-15);
  EXPECT_NEAR(v[0], 0.05 * 0.01, 1e-15);
  EXPECT_NEAR(p[0], 1.0 - 0.01 * (0.1 / std::sqrt(0.01) * (1.0 - 0.0) / (1.0 + 1e-8 / 0.1) + 0.1 * 1.0), 1e-9);
  EXPECT_NEAR(p[1], -2.0 - 0.01 * (-1.0), 1e-9);  // no decay, update −lr·sign(g)
  EXPECT_NEAR(p[2], 0.5 - 0.01 * 0.1 * 0.5, 1e-15);  // g = 0: decay only
  EXPECT_NEAR(ref::grad_norm({3.0, 4.0}), 5.0, 1e-15);
  EXPECT_NEAR(ref::clip_scale(5.0, 1.0), 1.0 / (5.0 + 1e-6), 1e-15);
  EXPECT_EQ(ref::clip_scale(0.5, 1.0), 1.0);
  EXPECT_EQ(ref::clip_scale(5.0, 0.0), 1.0);
}

TEST(TrainOpsRef, OpCasesAreRegisteredAndComplete) {
  // The op cases register without a GPU (checks then skip in test_op_registry); every op has a check,
  // test shapes, a bench and its bench default shape resolves.
  OpRegistry r;
  register_train_ops_ops(r);
  const std::vector<std::string> want = {"linear_fwd", "linear_bwd", "rmsnorm_fwd", "residual_rmsnorm_fwd",
                                         "rmsnorm_bwd", "swiglu_fwd", "swiglu_bwd", "relu2_fwd", "relu2_bwd",
                                         "embedding_fwd", "embedding_bwd", "lm_head_ce_fwd", "lm_head_ce_bwd",
                                         "adamw", "grad_norm"};
  EXPECT_EQ(r.all().size(), want.size());
  for (const auto& n : want) {
    const OpDef* op = r.find(n);
    ASSERT_NE(op, nullptr) << n;
    EXPECT_EQ(op->family, "train_ops");
    EXPECT_TRUE(op->needs_gpu);
    EXPECT_TRUE(static_cast<bool>(op->check) && static_cast<bool>(op->bench)) << n;
    EXPECT_FALSE(op->test_shapes().empty()) << n;
    EXPECT_FALSE(op->default_shape().empty()) << n;
  }
}

}  // namespace
}  // namespace megacpp::train_ops
