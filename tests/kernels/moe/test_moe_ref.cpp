// CPU tests of the float64 MoE reference: every gradient against central finite differences with the
// top-k routing frozen (so the block is differentiable), aux/z-loss gradients alone, routing and stats.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/common/host_rng.hpp"
#include "kernels/moe/moe_ref.hpp"

namespace megacpp::moe {
namespace {

MoeParamsRef random_params(const MoeConfig& c, uint64_t seed) {
  const MoeParamSizes s = param_sizes(c);
  MoeParamsRef w;
  w.router = random_normal(s.router, seed + 1, 1.0 / std::sqrt(double(c.hidden)));
  w.w1 = random_normal(s.w1, seed + 2, 1.0 / std::sqrt(double(c.hidden)));
  w.w2 = random_normal(s.w2, seed + 3, 1.0 / std::sqrt(double(c.ffn_hidden)));
  w.s1 = random_normal(s.s1, seed + 4, 1.0 / std::sqrt(double(c.hidden)));
  w.s2 = random_normal(s.s2, seed + 5, 1.0 / std::sqrt(double(std::max<int64_t>(1, c.shared_hidden))));
  return w;
}

struct FdResult {
  double max_rel = 0;  // max |fd - an| / (max|an| over the tensor)
};

// Central differences of the loss w.r.t. every element of `v` (which is part of x or w).
template <typename Eval>
FdResult fd_check(std::vector<double>& v, const std::vector<double>& an, Eval eval, const char* name) {
  const double eps = 1e-5;
  double amax = 0;
  for (double a : an) amax = std::max(amax, std::fabs(a));
  EXPECT_GT(amax, 0.0) << name << ": analytic gradient is all zero";
  FdResult r;
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + eps;
    const double lp = eval();
    v[i] = keep - eps;
    const double lm = eval();
    v[i] = keep;
    const double fd = (lp - lm) / (2 * eps);
    r.max_rel = std::max(r.max_rel, std::fabs(fd - an[i]) / amax);
  }
  EXPECT_LT(r.max_rel, 1e-6) << name;
  return r;
}

void check_all_grads(const MoeConfig& c, uint64_t seed) {
  std::vector<double> x = random_normal(c.tokens * c.hidden, seed, 1.0);
  MoeParamsRef w = random_params(c, seed);
  const std::vector<double> dy = random_normal(c.tokens * c.hidden, seed + 9, 1.0);
  const MoeForwardRef f0 = moe_forward_ref(c, x, w);
  const std::vector<int32_t> fixed = f0.experts;
  const MoeGradsRef g = moe_backward_ref(c, x, w, f0, dy);
  auto eval = [&] { return moe_loss_ref(moe_forward_ref(c, x, w, &fixed), dy); };
  fd_check(x, g.x, eval, "dx");
  fd_check(w.router, g.router, eval, "drouter");
  fd_check(w.w1, g.w1, eval, "dw1");
  fd_check(w.w2, g.w2, eval, "dw2");
  if (c.shared_hidden > 0) {
    fd_check(w.s1, g.s1, eval, "ds1");
    fd_check(w.s2, g.s2, eval, "ds2");
  }
}

MoeConfig small(Activation act, Score sc, bool renorm, int64_t S, double cf) {
  MoeConfig c;
  c.tokens = 12;
  c.hidden = 16;
  c.experts = 4;
  c.top_k = 2;
  c.ffn_hidden = 8;
  c.shared_hidden = S;
  c.act = act;
  c.score = sc;
  c.renorm = renorm;
  c.capacity_factor = cf;
  c.aux_coef = 0.3;  // large, so the aux/z terms matter in the FD check
  c.z_coef = 0.2;
  return c;
}

TEST(MoeRef, GradientsRelu2SoftmaxShared) { check_all_grads(small(Activation::Relu2, Score::Softmax, true, 8, 0), 101); }
TEST(MoeRef, GradientsSwigluSigmoidCapacity) {
  const MoeConfig c = small(Activation::SwiGLU, Score::Sigmoid, true, 8, 0.75);
  ASSERT_EQ(c.capacity(), 5);  // ceil(0.75 * 24 / 4) = 5 slots per expert
  check_all_grads(c, 202);
}
TEST(MoeRef, GradientsRelu2NoRenormNoShared) { check_all_grads(small(Activation::Relu2, Score::Softmax, false, 0, 0), 303); }
TEST(MoeRef, GradientsSigmoidTop1) {
  MoeConfig c = small(Activation::SwiGLU, Score::Sigmoid, false, 0, 0);
  c.top_k = 1;
  check_all_grads(c, 404);
}

// The aux losses alone (dy = 0): their router and input gradients by finite differences.
TEST(MoeRef, AuxLossGradients) {
  for (Score sc : {Score::Softmax, Score::Sigmoid}) {
    MoeConfig c = small(Activation::Relu2, sc, true, 0, 0);
    std::vector<double> x = random_normal(c.tokens * c.hidden, 7, 1.0);
    MoeParamsRef w = random_params(c, 7);
    const std::vector<double> dy(c.tokens * c.hidden, 0.0);
    const MoeForwardRef f0 = moe_forward_ref(c, x, w);
    EXPECT_GT(f0.aux_loss, 0.0);
    EXPECT_GT(f0.z_loss, 0.0);
    const std::vector<int32_t> fixed = f0.experts;
    const MoeGradsRef g = moe_backward_ref(c, x, w, f0, dy);
    auto eval = [&] { return moe_loss_ref(moe_forward_ref(c, x, w, &fixed), dy); };
    fd_check(w.router, g.router, eval, "aux drouter");
    fd_check(x, g.x, eval, "aux dx");
  }
}

TEST(MoeRef, AuxLossIsOneForUniformRouting) {
  // Uniform scores and perfectly balanced counts: E · Σ f_e P_e = E · E · (1/E)(1/E) = 1.
  MoeConfig c = small(Activation::Relu2, Score::Softmax, true, 0, 0);
  c.aux_coef = 1.0;
  MoeParamsRef w = random_params(c, 1);
  std::fill(w.router.begin(), w.router.end(), 0.0);
  std::vector<double> x = random_normal(c.tokens * c.hidden, 2, 1.0);
  std::vector<int32_t> fixed(c.tokens * c.top_k);
  for (size_t s = 0; s < fixed.size(); ++s) fixed[s] = static_cast<int32_t>(s % c.experts);
  const MoeForwardRef f = moe_forward_ref(c, x, w, &fixed);
  EXPECT_NEAR(f.aux_loss, 1.0, 1e-12);
  EXPECT_NEAR(f.z_loss, c.z_coef * std::log(4.0) * std::log(4.0), 1e-12);
}

TEST(MoeRef, TopKPicksHighestScoresAndRenormalises) {
  MoeConfig c = small(Activation::Relu2, Score::Softmax, true, 0, 0);
  std::vector<double> x = random_normal(c.tokens * c.hidden, 5, 1.0);
  MoeParamsRef w = random_params(c, 5);
  const MoeForwardRef f = moe_forward_ref(c, x, w);
  for (int64_t t = 0; t < c.tokens; ++t) {
    double wsum = 0, minsel = 1e9;
    for (int64_t k = 0; k < c.top_k; ++k) {
      wsum += f.weights[t * c.top_k + k];
      minsel = std::min(minsel, f.probs[t * c.experts + f.experts[t * c.top_k + k]]);
      if (k) EXPECT_GE(f.probs[t * c.experts + f.experts[t * c.top_k + k - 1]],
                       f.probs[t * c.experts + f.experts[t * c.top_k + k]]);
    }
    EXPECT_NEAR(wsum, 1.0, 1e-12);
    for (int64_t e = 0; e < c.experts; ++e) {
      bool sel = false;
      for (int64_t k = 0; k < c.top_k; ++k) sel |= f.experts[t * c.top_k + k] == e;
      if (!sel) EXPECT_LE(f.probs[t * c.experts + e], minsel);
    }
  }
}

TEST(MoeRef, RouterStatsAndCapacity) {
  MoeConfig c = small(Activation::Relu2, Score::Softmax, true, 0, 1.0);  // C = ceil(24/4) = 6
  std::vector<int32_t> ex(c.tokens * c.top_k);
  for (size_t s = 0; s < ex.size(); ++s) ex[s] = (s < 16) ? 0 : static_cast<int32_t>(1 + s % 2);  // 16,4,4,0
  const auto kept = capacity_keep(c, ex);
  for (size_t s = 0; s < ex.size(); ++s) EXPECT_EQ(kept[s], (s < 6 || s >= 16) ? 1 : 0) << s;
  const RouterStats st = router_stats(c, ex, kept);
  EXPECT_EQ(st.tokens_per_expert, (std::vector<int64_t>{16, 4, 4, 0}));
  EXPECT_EQ(st.min, 0);
  EXPECT_EQ(st.max, 16);
  EXPECT_NEAR(st.std, std::sqrt((10.0 * 10 + 2 * 2 + 2 * 2 + 6 * 6) / 4.0), 1e-12);
  EXPECT_NEAR(st.dropped_frac, 10.0 / 24.0, 1e-12);
}

TEST(MoeRef, BadConfigNamesTheLimit) {
  MoeConfig c = small(Activation::Relu2, Score::Softmax, true, 0, 0);
  c.experts = 65;
  try {
    c.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("experts=65 not supported (supported: 1..64)"), std::string::npos) << e.what();
  }
  c = small(Activation::Relu2, Score::Softmax, true, 0, 0);
  c.hidden = 12;
  EXPECT_THROW(c.validate(), std::invalid_argument);
}

}  // namespace
}  // namespace megacpp::moe
