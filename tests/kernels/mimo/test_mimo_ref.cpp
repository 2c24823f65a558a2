// test_mimo_ref.cpp — the float64 Mamba-3 MIMO reference checked against itself (step form vs chunked form,
// forward and backward) and against central finite differences; the pre-ops (angle cumsum, decay prep) too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/common/host_rng.hpp"
#include "kernels/mimo/mimo_prep_ref.hpp"
#include "kernels/mimo/mimo_ref.hpp"

namespace megacpp::mimo {
namespace {

MimoShape shape(int64_t B, int64_t S, int64_t H, int64_t G, int64_t N, int64_t P, int64_t R, int64_t L,
                bool norm = false, double rope = 0.5) {
  MimoShape s{B, S, H, G, N, P, R, L};
  s.outproj_norm = norm;
  s.rope_fraction = rope;
  return s;
}

std::string name(const MimoShape& s) {
  return "B" + std::to_string(s.B) + " S" + std::to_string(s.S) + " H" + std::to_string(s.H) + " G" +
         std::to_string(s.G) + " N" + std::to_string(s.N) + " P" + std::to_string(s.P) + " R" +
         std::to_string(s.R) + " L" + std::to_string(s.L) + (s.outproj_norm ? " norm" : "") + " rope" +
         std::to_string(s.rope_fraction);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// max|a−b| / max|b|
double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  const double r = max_abs(b);
  return r > 0 ? m / r : m;
}

// The gradients paired with the inputs they belong to.
struct GradPair {
  const char* name;
  std::vector<double> MimoInputs::*in;
  std::vector<double> MimoGrads::*gr;
};
const std::vector<GradPair>& grad_pairs() {
  static const std::vector<GradPair> p = {
      {"dq", &MimoInputs::q, &MimoGrads::dq},
      {"dk", &MimoInputs::k, &MimoGrads::dk},
      {"dv", &MimoInputs::v, &MimoGrads::dv},
      {"dadt", &MimoInputs::adt, &MimoGrads::dadt},
      {"ddt", &MimoInputs::dt, &MimoGrads::ddt},
      {"dtrap", &MimoInputs::trap, &MimoGrads::dtrap},
      {"dq_bias", &MimoInputs::q_bias, &MimoGrads::dq_bias},
      {"dk_bias", &MimoInputs::k_bias, &MimoGrads::dk_bias},
      {"dpsi", &MimoInputs::psi, &MimoGrads::dpsi},
      {"dzeta", &MimoInputs::zeta, &MimoGrads::dzeta},
      {"dphi", &MimoInputs::phi, &MimoGrads::dphi},
      {"dangles", &MimoInputs::angles, &MimoGrads::dangles},
      {"dd", &MimoInputs::d, &MimoGrads::dd},
      {"dz", &MimoInputs::z, &MimoGrads::dz},
      {"dnorm_weight", &MimoInputs::norm_weight, &MimoGrads::dnorm_weight},
  };
  return p;
}

// Fixed entries to sample from a tensor of n entries: all of them if n ≤ max_n, else the argmax of |an|
// plus a deterministic random subset.
std::vector<size_t> sample_indices(const std::vector<double>& an, size_t max_n, uint64_t seed) {
  std::vector<size_t> idx;
  if (an.size() <= max_n) {
    for (size_t i = 0; i < an.size(); ++i) idx.push_back(i);
    return idx;
  }
  size_t am = 0;
  for (size_t i = 0; i < an.size(); ++i)
    if (std::abs(an[i]) > std::abs(an[am])) am = i;
  idx.push_back(am);
  HostRng rng(seed);
  while (idx.size() < max_n) idx.push_back(rng.next_u64() % an.size());
  return idx;
}

double central_fd(const std::function<double()>& loss, double& x) {
  const double x0 = x;
  // h = 1e-5 relative (floor 0.1): at 1e-6 the error is already rounding-dominated (∝ 1/h, ~1e-7 rel.),
  // at 1e-5 it is ~1e-8, and truncation stays negligible up to h = 1e-3.
  const double h = 1e-5 * std::max(std::abs(x0), 0.1);
  x = x0 + h;
  const double lp = loss();
  x = x0 - h;
  const double lm = loss();
  x = x0;
  return (lp - lm) / (2 * h);
}

// ------------------------------------------------------------------------------------------------
TEST(MimoRef, ValidateRefusesBadShapes) {
  auto expect_msg = [](MimoShape s, const std::string& want) {
    try {
      s.validate();
      ADD_FAILURE() << "accepted a bad shape, expected: " << want;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  const MimoShape ok = shape(1, 32, 4, 2, 16, 32, 2, 16);
  EXPECT_NO_THROW(ok.validate());
  auto bad = ok;
  bad.N = 48;
  expect_msg(bad, "mimo: N=48 not supported (supported: 16,32,64,128,256)");
  bad = ok;
  bad.P = 16;
  expect_msg(bad, "mimo: P=16 not supported (supported: 32,64,128)");
  bad = ok;
  bad.R = 3;
  expect_msg(bad, "mimo: R=3 not supported (supported: 1,2,4,8)");
  bad = ok;
  bad.L = 128;
  expect_msg(bad, "mimo: L=128 not supported (supported: 8,16,32,64)");
  bad = ok;
  bad.G = 3;
  expect_msg(bad, "mimo: H=4 must be a multiple of G=3");
  bad = ok;
  bad.S = 40;
  expect_msg(bad, "seq_len S=40 must be a multiple of chunk_size L=16");
  bad = ok;
  bad.B = 0;
  expect_msg(bad, "mimo: B=0 must be > 0");
  bad = ok;
  bad.S = -16;
  expect_msg(bad, "mimo: S=-16 must be > 0");
  bad = ok;
  bad.rope_fraction = 0.25;
  expect_msg(bad, "rope_fraction");
  EXPECT_EQ(shape(1, 16, 1, 1, 128, 64, 4, 16).n_ang(), 32);
  EXPECT_EQ(shape(1, 16, 1, 1, 16, 64, 4, 16).n_ang(), 4);
  EXPECT_EQ(shape(1, 16, 1, 1, 16, 64, 4, 16, false, 1.0).n_ang(), 8);
  EXPECT_EQ(shape(1, 64, 1, 1, 16, 64, 4, 16).nchunks(), 4);
  // wrong input sizes are refused too
  MimoInputs in = make_random_inputs(ok, 1);
  in.angles.pop_back();
  EXPECT_THROW(mimo_forward_step(ok, in), std::invalid_argument);
}

TEST(MimoRef, RandomInputsRealistic) {
  const MimoShape s = shape(2, 64, 4, 2, 32, 32, 4, 16, true);
  const MimoInputs in = make_random_inputs(s, 7);
  for (size_t i = 0; i < in.adt.size(); ++i) {
    ASSERT_LT(in.adt[i], 0.0);
    ASSERT_GT(in.dt[i], 0.0);
    ASSERT_LT(in.dt[i], 2.0);
  }
  for (const auto* v : {&in.q, &in.k, &in.v, &in.z, &in.trap, &in.q_bias, &in.k_bias, &in.psi, &in.zeta,
                        &in.phi, &in.angles, &in.d, &in.norm_weight}) {
    ASSERT_FALSE(v->empty());
    EXPECT_GT(max_abs(*v), 0.0);
  }
  // RMS-normalised q rows
  double ss = 0;
  for (int64_t n = 0; n < s.N; ++n) ss += in.q[n] * in.q[n];
  EXPECT_NEAR(ss / s.N, 1.0, 1e-3);
  // deterministic per seed, different across seeds
  EXPECT_EQ(make_random_inputs(s, 7).q, in.q);
  EXPECT_NE(make_random_inputs(s, 8).q, in.q);
}

const std::vector<MimoShape>& cross_shapes() {
  static const std::vector<MimoShape> v = {
      shape(2, 32, 4, 1, 16, 32, 1, 8),
      shape(1, 32, 4, 2, 16, 32, 2, 16),
      shape(1, 48, 4, 2, 32, 32, 4, 16, true),
      shape(2, 32, 4, 1, 16, 32, 4, 8, true, 1.0),
      shape(1, 32, 2, 2, 16, 32, 8, 8),
      shape(1, 32, 4, 2, 32, 64, 2, 16, false, 1.0),
  };
  return v;
}

TEST(MimoRef, StepEqualsChunkedForward) {
  uint64_t seed = 100;
  for (const MimoShape& s : cross_shapes()) {
    const MimoInputs in = make_random_inputs(s, seed++);
    const auto a = mimo_forward_step(s, in);
    const auto b = mimo_forward_chunked(s, in);
    ASSERT_GT(max_abs(a), 0.0);
    const double e = rel_err(b, a);
    std::printf("  fwd step vs chunked  %-44s rel %.2e\n", name(s).c_str(), e);
    EXPECT_LT(e, 1e-10) << name(s);
  }
}

TEST(MimoRef, ChunkStatesConsistentAcrossChunkSizes) {
  // S_c is the (β-folded) state at position c·L, so it must not depend on L.
  MimoShape s8 = shape(1, 32, 2, 1, 16, 32, 2, 8);
  MimoShape s16 = s8;
  s16.L = 16;
  const MimoInputs in = make_random_inputs(s8, 5);
  const auto st8 = mimo_chunk_states(s8, in), st16 = mimo_chunk_states(s16, in);
  const int64_t NP = s8.N * s8.P;
  ASSERT_EQ(st8.size(), static_cast<size_t>(s8.B * s8.H * 4 * NP));
  ASSERT_EQ(st16.size(), static_cast<size_t>(s8.B * s8.H * 2 * NP));
  for (int64_t h = 0; h < s8.H; ++h)
    for (int64_t c = 0; c < 2; ++c) {
      std::vector<double> a(&st8[(h * 4 + 2 * c) * NP], &st8[(h * 4 + 2 * c) * NP] + NP);
      std::vector<double> b(&st16[(h * 2 + c) * NP], &st16[(h * 2 + c) * NP] + NP);
      if (c == 0) {
        EXPECT_EQ(max_abs(a), 0.0);
        EXPECT_EQ(max_abs(b), 0.0);
      } else {
        ASSERT_GT(max_abs(b), 0.0);
        EXPECT_LT(rel_err(a, b), 1e-12);
      }
    }
}

TEST(MimoRef, StepBackwardEqualsChunkedBackward) {
  uint64_t seed = 200;
  for (const MimoShape& s : cross_shapes()) {
    const MimoInputs in = make_random_inputs(s, seed);
    const auto dout = random_normal(s.vz_numel(), seed + 1);
    seed += 2;
    const MimoGrads a = mimo_backward_step(s, in, dout);
    const MimoGrads b = mimo_backward_chunked(s, in, dout);
    double worst = 0;
    const char* worst_name = "";
    for (const GradPair& gp : grad_pairs()) {
      const auto& ga = a.*gp.gr;
      const auto& gb = b.*gp.gr;
      ASSERT_EQ(ga.size(), (in.*gp.in).size()) << gp.name << " " << name(s);
      ASSERT_EQ(gb.size(), ga.size()) << gp.name;
      if (ga.empty()) continue;  // dnorm_weight without the norm
      EXPECT_GT(max_abs(ga), 0.0) << gp.name << " " << name(s);
      const double e = rel_err(gb, ga);
      if (e >= worst) {
        worst = e;
        worst_name = gp.name;
      }
      EXPECT_LT(e, 1e-10) << gp.name << " " << name(s);
    }
    std::printf("  bwd step vs chunked  %-44s worst rel %.2e (%s)\n", name(s).c_str(), worst, worst_name);
  }
}

// The (b,h)-parallel reference must give bitwise the same result for any number of threads.
TEST(MimoRef, ThreadCountDoesNotChangeResults) {
  const MimoShape s = shape(1, 64, 8, 2, 64, 64, 4, 16);  // above the single-thread size threshold
  const MimoInputs in = make_random_inputs(s, 77);
  const auto dout = random_normal(s.vz_numel(), 78);
  const char* old = std::getenv("MEGACPP_REF_THREADS");
  const std::string saved = old ? old : "";
  setenv("MEGACPP_REF_THREADS", "1", 1);
  const auto o1 = mimo_forward_chunked(s, in);
  const MimoGrads g1 = mimo_backward_chunked(s, in, dout);
  setenv("MEGACPP_REF_THREADS", "3", 1);
  const auto o3 = mimo_forward_chunked(s, in);
  const MimoGrads g3 = mimo_backward_chunked(s, in, dout);
  if (old) setenv("MEGACPP_REF_THREADS", saved.c_str(), 1); else unsetenv("MEGACPP_REF_THREADS");
  EXPECT_EQ(o1, o3);
  for (const GradPair& gp : grad_pairs()) EXPECT_EQ(g1.*gp.gr, g3.*gp.gr) << gp.name;
}

// Every gradient of L = Σ dout ⊙ out against central finite differences of the forward.
void check_fd(const MimoShape& s, uint64_t seed, size_t max_samples) {
  MimoInputs in = make_random_inputs(s, seed);
  const auto dout = random_normal(s.vz_numel(), seed + 99);
  const MimoGrads an = mimo_backward_chunked(s, in, dout);
  auto loss = [&]() {
    const auto out = mimo_forward_step(s, in);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += dout[i] * out[i];
    return l;
  };
  int checked = 0;
  std::printf("  FD at %s\n", name(s).c_str());
  for (const GradPair& gp : grad_pairs()) {
    std::vector<double>& x = in.*gp.in;
    const std::vector<double>& g = an.*gp.gr;
    ASSERT_EQ(g.size(), x.size()) << gp.name;
    if (x.empty()) continue;
    const double gmax = max_abs(g);
    ASSERT_GT(gmax, 0.0) << gp.name;
    double err = 0;
    for (size_t i : sample_indices(g, max_samples, seed + checked)) {
      const double fd = central_fd(loss, x[i]);
      err = std::max(err, std::abs(fd - g[i]));
    }
    std::printf("  fd %-13s rel %.2e  max|an| %.3e\n", gp.name, err / gmax, gmax);
    EXPECT_LT(err / gmax, 1e-6) << gp.name << " " << name(s) << " max|an|=" << gmax;
    ++checked;
  }
  EXPECT_EQ(checked, s.outproj_norm ? 15 : 14);
}

TEST(MimoRef, GradientsMatchFiniteDifferences) {
  check_fd(shape(1, 16, 2, 1, 16, 32, 2, 8), 300, 120);
}
TEST(MimoRef, GradientsMatchFiniteDifferencesGroupsNorm) {
  check_fd(shape(1, 16, 4, 2, 16, 32, 4, 8, true), 310, 120);
}
TEST(MimoRef, GradientsMatchFiniteDifferencesR1FullRope) {
  check_fd(shape(2, 16, 2, 2, 16, 32, 1, 8, false, 1.0), 320, 120);
}

// ------------------------------------------------------------------------------------------------
// Pre-ops
TEST(MimoPrepRef, AngleCumsumForwardAndBackward) {
  const int64_t B = 2, S = 12, H = 3, NA = 4;
  auto raw = random_normal(B * S * NA, 1);
  auto dt = random_uniform(B * H * S, 2, 1e-3, 0.5);
  const auto th = prep::angle_cumsum_forward(B, S, H, NA, raw, dt);
  // forward spot check: θ[b=1, t=5, h=2, j=3]
  double want = 0;
  for (int64_t t = 0; t <= 5; ++t) want += std::numbers::pi * std::tanh(raw[(1 * S + t) * NA + 3]) * dt[(1 * H + 2) * S + t];
  EXPECT_NEAR(th[((1 * S + 5) * H + 2) * NA + 3], want, 1e-14);
  const auto dth = random_normal(th.size(), 3);
  const auto g = prep::angle_cumsum_backward(B, S, H, NA, raw, dt, dth);
  auto loss = [&]() {
    const auto o = prep::angle_cumsum_forward(B, S, H, NA, raw, dt);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += dth[i] * o[i];
    return l;
  };
  std::vector<double> fd_raw(raw.size()), fd_dt(dt.size());
  for (size_t i = 0; i < raw.size(); ++i) fd_raw[i] = central_fd(loss, raw[i]);
  for (size_t i = 0; i < dt.size(); ++i) fd_dt[i] = central_fd(loss, dt[i]);
  EXPECT_GT(max_abs(g.draw_angles), 0.0);
  EXPECT_LT(rel_err(fd_raw, g.draw_angles), 1e-6);
  EXPECT_LT(rel_err(fd_dt, g.ddt), 1e-6);
}

void check_decay_prep(prep::AActivation act) {
  const int64_t B = 2, S = 10, H = 3;
  auto dd_dt = random_normal(B * S * H, 11);
  auto dd_A = random_normal(B * S * H, 12, 2.0);
  auto dt_bias = random_uniform(H, 13, -5.0, -1.0);
  // a few entries deep in the clamp region (A = −a_floor, zero gradient)
  dd_A[3] = act == prep::AActivation::softplus ? -12.0 : -2e4;
  dd_A[17] = act == prep::AActivation::softplus ? -15.0 : -5e4;
  const auto o = prep::decay_prep_forward(B, S, H, dd_dt, dd_A, dt_bias, act);
  // forward spot checks
  const int64_t b = 1, t = 4, h = 2, i = (b * S + t) * H + h, oi = (b * H + h) * S + t;
  const double f = act == prep::AActivation::softplus ? std::log1p(std::exp(dd_A[i]))
                                                      : (dd_A[i] >= 0 ? 1 + dd_A[i] : 1 / (1 - dd_A[i]));
  EXPECT_NEAR(o.A[oi], std::min(-f, -1e-4), 1e-15);
  EXPECT_NEAR(o.dt[oi], std::log1p(std::exp(dd_dt[i] + dt_bias[h])), 1e-15);
  EXPECT_NEAR(o.adt[oi], o.A[oi] * o.dt[oi], 1e-15);
  EXPECT_EQ(o.A[(0 * H + 0) * S + 1], -1e-4);  // dd_A[3] ↔ (b=0, t=1, h=0): clamped
  const auto wa = random_normal(o.adt.size(), 14), wd = random_normal(o.dt.size(), 15);
  const auto g = prep::decay_prep_backward(B, S, H, dd_dt, dd_A, dt_bias, wa, wd, act);
  auto loss = [&]() {
    const auto p = prep::decay_prep_forward(B, S, H, dd_dt, dd_A, dt_bias, act);
    double l = 0;
    for (size_t k = 0; k < p.adt.size(); ++k) l += wa[k] * p.adt[k] + wd[k] * p.dt[k];
    return l;
  };
  std::vector<double> f1(dd_dt.size()), f2(dd_A.size()), f3(dt_bias.size());
  for (size_t k = 0; k < dd_dt.size(); ++k) f1[k] = central_fd(loss, dd_dt[k]);
  for (size_t k = 0; k < dd_A.size(); ++k) f2[k] = central_fd(loss, dd_A[k]);
  for (size_t k = 0; k < dt_bias.size(); ++k) f3[k] = central_fd(loss, dt_bias[k]);
  EXPECT_EQ(g.ddd_A[3], 0.0);
  EXPECT_EQ(g.ddd_A[17], 0.0);
  EXPECT_GT(max_abs(g.ddd_A), 0.0);
  EXPECT_LT(rel_err(f1, g.ddd_dt), 1e-6);
  EXPECT_LT(rel_err(f2, g.ddd_A), 1e-6);
  EXPECT_LT(rel_err(f3, g.ddt_bias), 1e-6);
}
// Both A activations (recipe option a_activation), and the option parser.
TEST(MimoPrepRef, DecayPrepBackward) {
  EXPECT_EQ(prep::parse_a_activation("softplus"), prep::AActivation::softplus);
  EXPECT_EQ(prep::parse_a_activation("heavy_tail"), prep::AActivation::heavy_tail);
  EXPECT_THROW(prep::parse_a_activation("exp"), std::invalid_argument);
  {
    SCOPED_TRACE("softplus");
    check_decay_prep(prep::AActivation::softplus);
  }
  {
    SCOPED_TRACE("heavy_tail");
    check_decay_prep(prep::AActivation::heavy_tail);
  }
}

// The full chain raw angles/Δ → θ → out: the scan's dangles pulled back through the cumsum equals FD on raw.
TEST(MimoPrepRef, AngleChainThroughScan) {
  const MimoShape s = shape(1, 16, 2, 1, 16, 32, 2, 8);
  MimoInputs in = make_random_inputs(s, 400);
  const int64_t NA = s.n_ang();
  auto raw = random_normal(s.B * s.S * NA, 401);
  in.angles = prep::angle_cumsum_forward(s.B, s.S, s.H, NA, raw, in.dt);
  const auto dout = random_normal(s.vz_numel(), 402);
  const MimoGrads g = mimo_backward_chunked(s, in, dout);
  const auto ga = prep::angle_cumsum_backward(s.B, s.S, s.H, NA, raw, in.dt, g.dangles);
  std::vector<double> ddt_total = g.ddt;
  for (size_t i = 0; i < ddt_total.size(); ++i) ddt_total[i] += ga.ddt[i];
  auto loss = [&]() {
    MimoInputs x = in;
    x.angles = prep::angle_cumsum_forward(s.B, s.S, s.H, NA, raw, in.dt);
    const auto out = mimo_forward_chunked(s, x);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += dout[i] * out[i];
    return l;
  };
  std::vector<double> fd_raw(raw.size()), fd_dt(in.dt.size());
  for (size_t i = 0; i < raw.size(); ++i) fd_raw[i] = central_fd(loss, raw[i]);
  for (size_t i = 0; i < in.dt.size(); ++i) fd_dt[i] = central_fd(loss, in.dt[i]);
  EXPECT_LT(rel_err(fd_raw, ga.draw_angles), 1e-6);
  EXPECT_LT(rel_err(fd_dt, ddt_total), 1e-6);
}

}  // namespace
}  // namespace megacpp::mimo
