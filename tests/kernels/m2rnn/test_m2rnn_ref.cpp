// test_m2rnn_ref.cpp — the float64 M²RNN reference against central finite differences (clip off),
// a sequence in two halves with carried (H, conv tail) against one pass (forward and backward),
// the clipping modes, and input validation. CPU only, small shapes (whole file well under 20 s).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "kernels/common/host_rng.hpp"
#include "kernels/m2rnn/m2rnn_ref.hpp"

namespace megacpp::m2rnn {
namespace {

std::vector<double> rnd(std::size_t n, HostRng& r, double sd, double mean = 0.0) {
  std::vector<double> v(n);
  for (auto& e : v) e = mean + sd * r.normal();
  return v;
}
double dotv(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Max over elements of |fd - analytic| / max(max|analytic|, 1e-12): every element is perturbed.
double fd_check(std::vector<double>& x, const std::vector<double>& grad, const std::function<double()>& loss,
                double h = 1e-5) {
  EXPECT_EQ(x.size(), grad.size());
  double gmax = 0, emax = 0;
  for (double v : grad) gmax = std::max(gmax, std::fabs(v));
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    emax = std::max(emax, std::fabs((lp - lm) / (2 * h) - grad[i]));
  }
  return emax / std::max(gmax, 1e-12);
}

// ---- scan core ------------------------------------------------------------------------------------
struct ScanCase {
  ScanShape s;
  ScanInputs in;
  std::vector<double> wo, wh;  // loss = <o, wo> + <hT, wh>
};
ScanCase make_scan(uint64_t seed, ScanShape s) {
  HostRng r(seed);
  ScanCase c;
  c.s = s;
  c.in.q = rnd(s.q_size(), r, 0.7);
  c.in.k = rnd(s.k_size(), r, 0.7);
  c.in.v = rnd(s.v_size(), r, 0.7);
  c.in.f.resize(s.f_size());
  for (auto& f : c.in.f) f = r.uniform(0.05, 0.95);
  c.in.W = rnd(s.w_size(), r, 0.5);
  c.in.D = rnd(s.d_size(), r, 1.0);
  c.in.h0 = rnd(s.h_size(), r, 0.5);
  c.wo = rnd(s.v_size(), r, 1.0);
  c.wh = rnd(s.h_size(), r, 1.0);
  return c;
}

TEST(M2rnnRef, ScanGradientsMatchFiniteDifferences) {
  ScanCase c = make_scan(101, {2, 6, 4, 3, 2, 2, 1});  // B S N K V Nq Nk: q shared by 2 heads, k by 4
  auto loss = [&] {
    ScanOutputs o;
    scan_forward(c.s, c.in, o);
    return dotv(o.o, c.wo) + dotv(o.hT, c.wh);
  };
  ScanGrads g;
  scan_backward(c.s, c.in, c.wo, c.wh, Clip::Off, 1.0, g);
  EXPECT_LT(fd_check(c.in.q, g.dq, loss), 1e-6) << "dq";
  EXPECT_LT(fd_check(c.in.k, g.dk, loss), 1e-6) << "dk";
  EXPECT_LT(fd_check(c.in.v, g.dv, loss), 1e-6) << "dv";
  EXPECT_LT(fd_check(c.in.f, g.df, loss), 1e-6) << "df";
  EXPECT_LT(fd_check(c.in.W, g.dW, loss), 1e-6) << "dW";
  EXPECT_LT(fd_check(c.in.D, g.dD, loss), 1e-6) << "dD";
  EXPECT_LT(fd_check(c.in.h0, g.dh0, loss), 1e-6) << "dh0";
}

TEST(M2rnnRef, ScanStateStaysBounded) {
  ScanCase c = make_scan(7, {1, 40, 2, 5, 3, 1, 1});
  for (auto& h : c.in.h0) h = std::clamp(h, -1.0, 1.0);
  for (auto& k : c.in.k) k *= 10;  // saturate tanh
  ScanOutputs o;
  scan_forward(c.s, c.in, o);
  for (double h : o.hT) EXPECT_LE(std::fabs(h), 1.0);
}

TEST(M2rnnRef, ScanTwoHalvesEqualOnePass) {
  ScanCase c = make_scan(5, {2, 10, 2, 4, 3, 1, 1});
  ScanOutputs full;
  scan_forward(c.s, c.in, full);
  const int S1 = 4, S = c.s.S;
  auto slice = [&](const std::vector<double>& t, int per_tok, int t0, int len) {
    std::vector<double> r;
    for (int b = 0; b < c.s.B; ++b)
      r.insert(r.end(), t.begin() + (std::size_t(b) * S + t0) * per_tok,
               t.begin() + (std::size_t(b) * S + t0 + len) * per_tok);
    return r;
  };
  auto part = [&](int t0, int len, const std::vector<double>& h0) {
    ScanShape s = c.s;
    s.S = len;
    ScanInputs in;
    in.q = slice(c.in.q, s.Nq * s.K, t0, len);
    in.k = slice(c.in.k, s.Nk * s.K, t0, len);
    in.v = slice(c.in.v, s.N * s.V, t0, len);
    in.f = slice(c.in.f, s.N, t0, len);
    in.W = c.in.W;
    in.D = c.in.D;
    in.h0 = h0;
    ScanOutputs o;
    scan_forward(s, in, o);
    return o;
  };
  ScanOutputs a = part(0, S1, c.in.h0), b = part(S1, S - S1, a.hT);
  const auto o1 = slice(full.o, c.s.N * c.s.V, 0, S1), o2 = slice(full.o, c.s.N * c.s.V, S1, S - S1);
  for (std::size_t i = 0; i < o1.size(); ++i) EXPECT_NEAR(a.o[i], o1[i], 1e-14);
  for (std::size_t i = 0; i < o2.size(); ++i) EXPECT_NEAR(b.o[i], o2[i], 1e-14);
  for (std::size_t i = 0; i < full.hT.size(); ++i) EXPECT_NEAR(b.hT[i], full.hT[i], 1e-14);
}

TEST(M2rnnRef, ClipModesDifferAndBound) {
  ScanCase c = make_scan(9, {1, 8, 2, 4, 3, 1, 1});
  for (auto& w : c.wo) w *= 20;  // large output gradients so that clipping is active
  ScanGrads off, ker, tot;
  scan_backward(c.s, c.in, c.wo, c.wh, Clip::Off, 1.0, off);
  scan_backward(c.s, c.in, c.wo, c.wh, Clip::Kernel, 1.0, ker);
  scan_backward(c.s, c.in, c.wo, c.wh, Clip::Total, 1.0, tot);
  double d1 = 0, d2 = 0;
  for (std::size_t i = 0; i < off.dW.size(); ++i) {
    d1 = std::max(d1, std::fabs(off.dW[i] - ker.dW[i]));
    d2 = std::max(d2, std::fabs(ker.dW[i] - tot.dW[i]));
  }
  EXPECT_GT(d1, 1e-6);
  EXPECT_GT(d2, 1e-6);
  // Total mode: |G_t| ≤ 1 elementwise, so |df_t| ≤ Σ|H_{t-1} - Z_t| ≤ 2·K·V.
  for (double v : tot.df) EXPECT_LE(std::fabs(v), 2.0 * c.s.K * c.s.V);
}

// ---- block -----------------------------------------------------------------------------------------
BlockConfig small_cfg(bool prenorm) {
  BlockConfig c;
  c.hidden = 6;
  c.heads = 4;
  c.key_dim = 3;
  c.value_dim = 2;
  c.conv_width = 4;
  c.q_heads = 1;
  c.k_heads = 2;
  c.prenorm_residual = prenorm;
  return c;
}
// Larger-than-default random parameters so that every non-linearity is exercised.
BlockParams rand_params(const BlockConfig& c, uint64_t seed) {
  BlockParams p = init_params(c, seed, 2);
  HostRng r(seed + 1);
  for (auto& w : p.w_in) w = 0.5 * r.normal();
  for (auto& w : p.conv_w) w = 0.6 * r.normal();
  for (auto& a : p.A_log) a = r.uniform(-1.5, 1.0);
  for (auto& b : p.dt_bias) b = r.uniform(-1.0, 1.0);
  for (auto& w : p.W) w += 0.4 * r.normal();
  for (auto& w : p.D) w += 0.3 * r.normal();
  for (auto& w : p.gamma) w += 0.3 * r.normal();
  for (auto& w : p.w_out) w = 0.5 * r.normal();
  for (auto& w : p.w_pre) w += 0.3 * r.normal();
  return p;
}

void block_fd(bool prenorm) {
  const BlockConfig c = small_cfg(prenorm);
  const int B = 2, S = 5;
  BlockParams p = rand_params(c, 33);
  HostRng r(44);
  std::vector<double> x = rnd(std::size_t(B) * S * c.hidden, r, 1.0);
  BlockState st = zero_state(c, B);
  st.H = rnd(st.H.size(), r, 0.4);
  st.conv_tail = rnd(st.conv_tail.size(), r, 0.8);
  const std::vector<double> wy = rnd(x.size(), r, 1.0);
  BlockState wst = zero_state(c, B);
  wst.H = rnd(wst.H.size(), r, 1.0);
  wst.conv_tail = rnd(wst.conv_tail.size(), r, 1.0);
  auto loss = [&] {
    std::vector<double> y;
    BlockState so;
    block_forward(c, p, B, S, x, &st, y, &so);
    return dotv(y, wy) + dotv(so.H, wst.H) + dotv(so.conv_tail, wst.conv_tail);
  };
  BlockGrads g;
  block_backward(c, p, B, S, x, &st, wy, &wst, g);
  EXPECT_LT(fd_check(p.w_in, g.dparams.w_in, loss), 1e-6) << "w_in";
  EXPECT_LT(fd_check(p.conv_w, g.dparams.conv_w, loss), 1e-6) << "conv_w";
  EXPECT_LT(fd_check(p.A_log, g.dparams.A_log, loss), 1e-6) << "A_log";
  EXPECT_LT(fd_check(p.dt_bias, g.dparams.dt_bias, loss), 1e-6) << "dt_bias";
  EXPECT_LT(fd_check(p.W, g.dparams.W, loss), 1e-6) << "W";
  EXPECT_LT(fd_check(p.D, g.dparams.D, loss), 1e-6) << "D";
  EXPECT_LT(fd_check(p.gamma, g.dparams.gamma, loss), 1e-6) << "gamma";
  EXPECT_LT(fd_check(p.w_out, g.dparams.w_out, loss), 1e-6) << "w_out";
  if (prenorm) EXPECT_LT(fd_check(p.w_pre, g.dparams.w_pre, loss), 1e-6) << "w_pre";
  EXPECT_LT(fd_check(x, g.dx, loss), 1e-6) << "x";
  EXPECT_LT(fd_check(st.H, g.dstate_in.H, loss), 1e-6) << "state H";
  EXPECT_LT(fd_check(st.conv_tail, g.dstate_in.conv_tail, loss), 1e-6) << "state conv tail";
}
TEST(M2rnnRef, BlockGradientsMatchFiniteDifferences) { block_fd(false); }
TEST(M2rnnRef, BlockWithPrenormResidualGradientsMatchFiniteDifferences) { block_fd(true); }

std::vector<double> tok_slice(const std::vector<double>& t, int B, int S, int per, int t0, int len) {
  std::vector<double> r;
  for (int b = 0; b < B; ++b)
    r.insert(r.end(), t.begin() + (std::size_t(b) * S + t0) * per, t.begin() + (std::size_t(b) * S + t0 + len) * per);
  return r;
}

TEST(M2rnnRef, BlockTwoHalvesEqualOnePassForwardAndBackward) {
  const BlockConfig c = small_cfg(true);
  const int B = 2, S = 9, d = c.hidden;
  const BlockParams p = rand_params(c, 3);
  HostRng r(4);
  const std::vector<double> x = rnd(std::size_t(B) * S * d, r, 1.0), dy = rnd(x.size(), r, 1.0);
  for (int S1 : {1, 2, 5}) {  // S1 < w-1 exercises a tail that spans both the old tail and the new rows
    std::vector<double> y, y1, y2;
    BlockState s_full, s1, s2;
    block_forward(c, p, B, S, x, nullptr, y, &s_full);
    const auto x1 = tok_slice(x, B, S, d, 0, S1), x2 = tok_slice(x, B, S, d, S1, S - S1);
    block_forward(c, p, B, S1, x1, nullptr, y1, &s1);
    block_forward(c, p, B, S - S1, x2, &s1, y2, &s2);
    const auto ya = tok_slice(y, B, S, d, 0, S1), yb = tok_slice(y, B, S, d, S1, S - S1);
    for (std::size_t i = 0; i < ya.size(); ++i) ASSERT_NEAR(y1[i], ya[i], 1e-13) << "S1=" << S1;
    for (std::size_t i = 0; i < yb.size(); ++i) ASSERT_NEAR(y2[i], yb[i], 1e-13) << "S1=" << S1;
    for (std::size_t i = 0; i < s_full.H.size(); ++i) ASSERT_NEAR(s2.H[i], s_full.H[i], 1e-13);
    for (std::size_t i = 0; i < s_full.conv_tail.size(); ++i) ASSERT_NEAR(s2.conv_tail[i], s_full.conv_tail[i], 1e-13);
    // backward in two halves: the second half's incoming-state gradient seeds the first half
    BlockGrads gf, g1, g2;
    block_backward(c, p, B, S, x, nullptr, dy, nullptr, gf);
    block_backward(c, p, B, S - S1, x2, &s1, tok_slice(dy, B, S, d, S1, S - S1), nullptr, g2);
    block_backward(c, p, B, S1, x1, nullptr, tok_slice(dy, B, S, d, 0, S1), &g2.dstate_in, g1);
    auto near_sum = [&](const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& f,
                        const char* what) {
      for (std::size_t i = 0; i < f.size(); ++i) ASSERT_NEAR(a[i] + b[i], f[i], 1e-11 * (1 + std::fabs(f[i]))) << what;
    };
    near_sum(g1.dparams.w_in, g2.dparams.w_in, gf.dparams.w_in, "w_in");
    near_sum(g1.dparams.conv_w, g2.dparams.conv_w, gf.dparams.conv_w, "conv_w");
    near_sum(g1.dparams.W, g2.dparams.W, gf.dparams.W, "W");
    near_sum(g1.dparams.A_log, g2.dparams.A_log, gf.dparams.A_log, "A_log");
    near_sum(g1.dparams.w_out, g2.dparams.w_out, gf.dparams.w_out, "w_out");
    const auto dxa = tok_slice(gf.dx, B, S, d, 0, S1), dxb = tok_slice(gf.dx, B, S, d, S1, S - S1);
    for (std::size_t i = 0; i < dxa.size(); ++i) ASSERT_NEAR(g1.dx[i], dxa[i], 1e-11);
    for (std::size_t i = 0; i < dxb.size(); ++i) ASSERT_NEAR(g2.dx[i], dxb[i], 1e-11);
  }
}

TEST(M2rnnRef, StepwiseDecodeEqualsFullSequence) {
  const BlockConfig c = small_cfg(false);
  const int B = 2, S = 7, d = c.hidden;
  const BlockParams p = rand_params(c, 8);
  HostRng r(9);
  const std::vector<double> x = rnd(std::size_t(B) * S * d, r, 1.0);
  std::vector<double> y;
  BlockState s_full;
  block_forward(c, p, B, S, x, nullptr, y, &s_full);
  BlockState st = zero_state(c, B);
  for (int t = 0; t < S; ++t) {  // S = 1 per call: the decode cache is (H, conv tail)
    std::vector<double> yt;
    BlockState next;
    block_forward(c, p, B, 1, tok_slice(x, B, S, d, t, 1), &st, yt, &next);
    const auto ref = tok_slice(y, B, S, d, t, 1);
    for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(yt[i], ref[i], 1e-13) << "t=" << t;
    st = next;
  }
  for (std::size_t i = 0; i < s_full.H.size(); ++i) ASSERT_NEAR(st.H[i], s_full.H[i], 1e-13);
}

TEST(M2rnnRef, MegaCppShapeDefaults) {
  BlockConfig c;  // hidden 3584, K 64, V 16
  EXPECT_EQ(default_heads(3584, 64, 16), 44);
  EXPECT_EQ(c.heads, 44);
  EXPECT_EQ(c.conv_channels(), 64 + 64 + 44 * 16);        // 832
  EXPECT_EQ(c.proj_width(), 832 + 44 + 44 * 16);          // 1580
  const auto ps = param_shapes(c);
  ASSERT_EQ(ps.size(), 8u);
  EXPECT_EQ(ps[0].shape, (std::vector<int64_t>{3584, 1580}));
  EXPECT_EQ(ps[7].shape, (std::vector<int64_t>{704, 3584}));
}

TEST(M2rnnRef, ValidationNamesTheLimit) {
  ScanShape s{1, 4, 6, 8, 4, 4, 1};  // Nq=4 does not divide N=6
  try {
    validate(s);
    FAIL() << "expected invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q_heads=4 must divide heads=6"), std::string::npos) << e.what();
  }
  EXPECT_THROW(validate(ScanShape{0, 4, 2, 8, 4, 1, 1}), std::invalid_argument);
  EXPECT_THROW(validate(ScanShape{1, 4, 2, 0, 4, 1, 1}), std::invalid_argument);
  EXPECT_THROW(parse_clip("global"), std::invalid_argument);
  EXPECT_EQ(parse_clip("kernel"), Clip::Kernel);
  ScanCase c = make_scan(1, {1, 3, 2, 4, 2, 1, 1});
  c.in.v.pop_back();
  ScanOutputs o;
  EXPECT_THROW(scan_forward(c.s, c.in, o), std::invalid_argument);
  BlockConfig bc = small_cfg(false);
  BlockParams p = rand_params(bc, 1);
  p.W.resize(3);
  std::vector<double> y;
  EXPECT_THROW(block_forward(bc, p, 1, 2, std::vector<double>(2 * bc.hidden, 0.5), nullptr, y, nullptr),
               std::invalid_argument);
  EXPECT_THROW(default_heads(40, 64, 16), std::invalid_argument);
}

}  // namespace
}  // namespace megacpp::m2rnn
