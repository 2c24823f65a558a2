// CPU tests of the float64 attention / RoPE reference: gradients vs central finite differences,
// sampled rows vs full forward, RoPE adjointness and invariants, error messages. Fast (< 1 s).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/attention/attention_ref.hpp"
#include "kernels/common/host_rng.hpp"

namespace megacpp {
namespace {

using attn_ref::Shape;

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(a[i] - b[i]));
    r = std::max(r, std::fabs(b[i]));
  }
  return m / r;
}

struct FdCase {
  Shape s;
  uint64_t seed;
};

class AttnRefFd : public ::testing::TestWithParam<FdCase> {};

TEST_P(AttnRefFd, BackwardMatchesFiniteDifferences) {
  const Shape s = GetParam().s;
  const uint64_t seed = GetParam().seed;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  auto q = random_normal(static_cast<size_t>(s.q_elems()), seed + 1);
  auto k = random_normal(static_cast<size_t>(s.kv_elems()), seed + 2);
  auto v = random_normal(static_cast<size_t>(s.kv_elems()), seed + 3);
  auto w = random_normal(static_cast<size_t>(s.q_elems()), seed + 4);  // dL/dO
  std::vector<double> o(static_cast<size_t>(s.q_elems())), lse(static_cast<size_t>(s.lse_elems()));
  attn_ref::forward(s, scale, q.data(), k.data(), v.data(), o.data(), lse.data());
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  dq.assign(dq.size(), 1e300);  // poisoned: backward must overwrite
  attn_ref::backward(s, scale, q.data(), k.data(), v.data(), o.data(), w.data(), lse.data(), dq.data(), dk.data(),
                     dv.data());
  const double h = 1e-5;
  auto fd = [&](std::vector<double>& x) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = attn_ref::loss(s, scale, q, k, v, w);
      x[i] = x0 - h;
      const double lm = attn_ref::loss(s, scale, q, k, v, w);
      x[i] = x0;
      g[i] = (lp - lm) / (2 * h);
    }
    return g;
  };
  EXPECT_LT(max_rel(dq, fd(q)), 1e-6);
  EXPECT_LT(max_rel(dk, fd(k)), 1e-6);
  EXPECT_LT(max_rel(dv, fd(v)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttnRefFd,
                         ::testing::Values(FdCase{Shape{1, 5, 2, 2, 4}, 1}, FdCase{Shape{2, 4, 4, 2, 8}, 2},
                                           FdCase{Shape{1, 6, 3, 1, 4}, 3}));

TEST(AttnRef, LseAndCausality) {
  const Shape s{1, 7, 2, 1, 4};
  const double scale = 0.5;
  auto q = random_normal(static_cast<size_t>(s.q_elems()), 9);
  auto k = random_normal(static_cast<size_t>(s.kv_elems()), 10);
  auto v = random_normal(static_cast<size_t>(s.kv_elems()), 11);
  std::vector<double> o(q.size()), lse(static_cast<size_t>(s.lse_elems()));
  attn_ref::forward(s, scale, q.data(), k.data(), v.data(), o.data(), lse.data());
  // Row 0 sees only key 0: o = v_0, lse = scale <q_0,k_0>.
  for (int64_t h = 0; h < s.H; ++h) {
    double d = 0;
    for (int64_t x = 0; x < s.D; ++x) d += q[static_cast<size_t>(h * s.D + x)] * k[static_cast<size_t>(x)];
    EXPECT_NEAR(lse[static_cast<size_t>(h * s.S)], scale * d, 1e-12);
    for (int64_t x = 0; x < s.D; ++x) EXPECT_NEAR(o[static_cast<size_t>(h * s.D + x)], v[static_cast<size_t>(x)], 1e-12);
  }
  // Changing a future key must not change earlier rows.
  auto k2 = k;
  k2[static_cast<size_t>(6 * s.Hk * s.D)] += 3.0;
  std::vector<double> o2(q.size()), lse2(lse.size());
  attn_ref::forward(s, scale, q.data(), k2.data(), v.data(), o2.data(), lse2.data());
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t h = 0; h < s.H; ++h)
      EXPECT_EQ(lse[static_cast<size_t>(h * s.S + t)], lse2[static_cast<size_t>(h * s.S + t)]);
  // Sampled rows equal the full computation.
  std::vector<double> o3(q.size(), 0.0), lse3(lse.size(), 0.0);
  attn_ref::forward(s, scale, q.data(), k.data(), v.data(), o3.data(), lse3.data(), {2, 5});
  for (int64_t h = 0; h < s.H; ++h) EXPECT_EQ(lse3[static_cast<size_t>(h * s.S + 5)], lse[static_cast<size_t>(h * s.S + 5)]);
}

TEST(AttnRef, RopeAdjointInverseAndOff) {
  const int64_t B = 2, S = 9, nh = 3, D = 8;
  const size_t n = static_cast<size_t>(B * S * nh * D);
  auto x = random_normal(n, 21), y = random_normal(n, 22);
  std::vector<double> rx(n), rty(n), back(n), off(n);
  attn_ref::rope_forward(B, S, nh, D, 500.0, true, x.data(), rx.data(), 3);
  attn_ref::rope_backward(B, S, nh, D, 500.0, true, y.data(), rty.data(), 3);
  double a = 0, b = 0, nx = 0, nrx = 0;
  for (size_t i = 0; i < n; ++i) a += rx[i] * y[i], b += x[i] * rty[i], nx += x[i] * x[i], nrx += rx[i] * rx[i];
  EXPECT_NEAR(a, b, 1e-10);      // <R x, y> = <x, R^T y>: the backward is the adjoint
  EXPECT_NEAR(nx, nrx, 1e-10);   // rotation preserves norms
  attn_ref::rope_backward(B, S, nh, D, 500.0, true, rx.data(), back.data(), 3);
  EXPECT_LT(max_rel(back, x), 1e-12);  // R^T R = I
  bool moved = false;
  for (size_t i = 0; i < n; ++i) moved |= std::fabs(rx[i] - x[i]) > 1e-3;
  EXPECT_TRUE(moved);
  attn_ref::rope_forward(B, S, nh, D, 500.0, false, x.data(), off.data());
  EXPECT_EQ(off, x);
  // Position 0 of every row is unrotated (pos0 = 0).
  attn_ref::rope_forward(B, S, nh, D, 500.0, true, x.data(), rx.data(), 0);
  for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(rx[static_cast<size_t>(d)], x[static_cast<size_t>(d)], 1e-15);
  // FD check of the derivative: d/dx <rope(x), y> = rope^T(y).
  const double h = 1e-6;
  for (size_t i : {size_t{0}, size_t{37}, n - 1}) {
    auto xp = x, xm = x;
    xp[i] += h, xm[i] -= h;
    std::vector<double> yp(n), ym(n);
    attn_ref::rope_forward(B, S, nh, D, 500.0, true, xp.data(), yp.data(), 3);
    attn_ref::rope_forward(B, S, nh, D, 500.0, true, xm.data(), ym.data(), 3);
    double lp = 0, lm = 0;
    for (size_t j = 0; j < n; ++j) lp += yp[j] * y[j], lm += ym[j] * y[j];
    EXPECT_NEAR((lp - lm) / (2 * h), rty[i], 1e-6);
  }
}

TEST(AttnRef, BadShapesNameTheLimit) {
  std::vector<double> z(64);
  try {
    attn_ref::forward(Shape{1, 2, 3, 2, 4}, 1.0, z.data(), z.data(), z.data(), z.data(), z.data());
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kv_heads=2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(attn_ref::rope_forward(1, 1, 1, 5, 1e4, true, z.data(), z.data()), std::invalid_argument);
}

}  // namespace
}  // namespace megacpp
