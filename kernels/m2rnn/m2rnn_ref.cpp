// m2rnn_ref.cpp — float64 reference of the M²RNN block and scan core (math in m2rnn_ref.hpp).
// Plain loops, no tricks: this is the ground truth for the CUDA kernels and the finite-difference tests.
#include "kernels/m2rnn/m2rnn_ref.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/common/host_rng.hpp"

namespace megacpp::m2rnn {

namespace {
void req(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("m2rnn: " + what);
}
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double silu(double x) { return x * sigmoid(x); }
double dsilu(double x) {
  const double s = sigmoid(x);
  return s * (1.0 + x * (1.0 - s));
}
double softplus(double x) { return x > 30 ? x : std::log1p(std::exp(x)); }
void check_size(const std::vector<double>& v, std::size_t n, const char* name, bool allow_empty = false) {
  if (allow_empty && v.empty()) return;
  if (v.size() != n)
    throw std::invalid_argument(std::string("m2rnn: ") + name + " has " + std::to_string(v.size()) +
                                " elements, expected " + std::to_string(n));
}
}  // namespace

Clip parse_clip(const std::string& s) {
  if (s == "off") return Clip::Off;
  if (s == "kernel") return Clip::Kernel;
  if (s == "total") return Clip::Total;
  throw std::invalid_argument("m2rnn: clip mode '" + s + "' not supported (supported: off, kernel, total)");
}
const char* clip_name(Clip c) {
  switch (c) {
    case Clip::Off: return "off";
    case Clip::Kernel: return "kernel";
    case Clip::Total: return "total";
  }
  return "?";
}

void validate(const ScanShape& s) {
  req(s.B >= 1, "B=" + std::to_string(s.B) + " must be >= 1");
  req(s.S >= 1, "S=" + std::to_string(s.S) + " must be >= 1");
  req(s.N >= 1, "heads=" + std::to_string(s.N) + " must be >= 1");
  req(s.K >= 1, "key_dim=" + std::to_string(s.K) + " must be >= 1");
  req(s.V >= 1, "value_dim=" + std::to_string(s.V) + " must be >= 1");
  req(s.Nq >= 1 && s.N % s.Nq == 0,
      "q_heads=" + std::to_string(s.Nq) + " must divide heads=" + std::to_string(s.N));
  req(s.Nk >= 1 && s.N % s.Nk == 0,
      "k_heads=" + std::to_string(s.Nk) + " must divide heads=" + std::to_string(s.N));
}

// ---- scan core --------------------------------------------------------------------------------
namespace {
void check_scan_inputs(const ScanShape& s, const ScanInputs& in) {
  validate(s);
  check_size(in.q, s.q_size(), "q");
  check_size(in.k, s.k_size(), "k");
  check_size(in.v, s.v_size(), "v");
  check_size(in.f, s.f_size(), "f");
  check_size(in.W, s.w_size(), "W");
  check_size(in.D, s.d_size(), "D");
  check_size(in.h0, s.h_size(), "h0", true);
}

// All states of one (b, n): Hs[t] = state before step t (t = 0..S), Zs[t] = Z of step t.
void scan_head(const ScanShape& s, const ScanInputs& in, int b, int n, std::vector<double>& Hs,
               std::vector<double>& Zs) {
  const int K = s.K, V = s.V, S = s.S, N = s.N;
  const int qh = n / (N / s.Nq), kh = n / (N / s.Nk);
  const std::size_t KV = std::size_t(K) * V;
  Hs.assign((S + 1) * KV, 0.0);
  Zs.assign(S * KV, 0.0);
  if (!in.h0.empty())
    std::copy_n(in.h0.begin() + (std::size_t(b) * N + n) * KV, KV, Hs.begin());
  const double* Wn = &in.W[std::size_t(n) * V * V];
  for (int t = 0; t < S; ++t) {
    const std::size_t bt = std::size_t(b) * S + t;
    const double* kt = &in.k[(bt * s.Nk + kh) * K];
    const double* vt = &in.v[(bt * N + n) * V];
    const double f = in.f[bt * N + n];
    const double* Hp = &Hs[t * KV];
    double* Hc = &Hs[(t + 1) * KV];
    double* Z = &Zs[t * KV];
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < V; ++j) {
        double p = kt[i] * vt[j];
        for (int a = 0; a < V; ++a) p += Hp[i * V + a] * Wn[a * V + j];
        const double z = std::tanh(p);
        Z[i * V + j] = z;
        Hc[i * V + j] = f * Hp[i * V + j] + (1.0 - f) * z;
      }
  }
  (void)qh;
}
}  // namespace

void scan_forward(const ScanShape& s, const ScanInputs& in, ScanOutputs& out) {
  check_scan_inputs(s, in);
  const int K = s.K, V = s.V, S = s.S, N = s.N;
  const std::size_t KV = std::size_t(K) * V;
  out.o.assign(s.v_size(), 0.0);
  out.hT.assign(s.h_size(), 0.0);
  std::vector<double> Hs, Zs;
  for (int b = 0; b < s.B; ++b)
    for (int n = 0; n < N; ++n) {
      scan_head(s, in, b, n, Hs, Zs);
      const int qh = n / (N / s.Nq);
      for (int t = 0; t < S; ++t) {
        const std::size_t bt = std::size_t(b) * S + t;
        const double* qt = &in.q[(bt * s.Nq + qh) * K];
        const double* vt = &in.v[(bt * N + n) * V];
        const double* H = &Hs[(t + 1) * KV];
        double* o = &out.o[(bt * N + n) * V];
        for (int j = 0; j < V; ++j) {
          double acc = in.D[std::size_t(n) * V + j] * vt[j];
          for (int i = 0; i < K; ++i) acc += qt[i] * H[i * V + j];
          o[j] = acc;
        }
      }
      std::copy_n(Hs.begin() + S * KV, KV, out.hT.begin() + (std::size_t(b) * N + n) * KV);
    }
}

void scan_backward(const ScanShape& s, const ScanInputs& in, const std::vector<double>& dout,
                   const std::vector<double>& dhT, Clip clip, double clip_value, ScanGrads& g) {
  check_scan_inputs(s, in);
  check_size(dout, s.v_size(), "do");
  check_size(dhT, s.h_size(), "dhT", true);
  req(clip == Clip::Off || clip_value > 0, "clip value must be > 0");
  const int K = s.K, V = s.V, S = s.S, N = s.N;
  const std::size_t KV = std::size_t(K) * V;
  g.dq.assign(s.q_size(), 0.0);
  g.dk.assign(s.k_size(), 0.0);
  g.dv.assign(s.v_size(), 0.0);
  g.df.assign(s.f_size(), 0.0);
  g.dW.assign(s.w_size(), 0.0);
  g.dD.assign(s.d_size(), 0.0);
  g.dh0.assign(s.h_size(), 0.0);
  auto clamp = [&](double x) { return std::clamp(x, -clip_value, clip_value); };
  std::vector<double> Hs, Zs, G(KV), Gt(KV), dP(KV);
  for (int b = 0; b < s.B; ++b)
    for (int n = 0; n < N; ++n) {
      scan_head(s, in, b, n, Hs, Zs);
      const int qh = n / (N / s.Nq), kh = n / (N / s.Nk);
      const double* Wn = &in.W[std::size_t(n) * V * V];
      double* dWn = &g.dW[std::size_t(n) * V * V];
      const double* Dn = &in.D[std::size_t(n) * V];
      if (dhT.empty())
        std::fill(G.begin(), G.end(), 0.0);
      else
        std::copy_n(dhT.begin() + (std::size_t(b) * N + n) * KV, KV, G.begin());
      for (int t = S - 1; t >= 0; --t) {
        const std::size_t bt = std::size_t(b) * S + t;
        const double* qt = &in.q[(bt * s.Nq + qh) * K];
        const double* kt = &in.k[(bt * s.Nk + kh) * K];
        const double* vt = &in.v[(bt * N + n) * V];
        const double* dot = &dout[(bt * N + n) * V];
        const double f = in.f[bt * N + n];
        const double* Hp = &Hs[t * KV];
        const double* Hc = &Hs[(t + 1) * KV];
        const double* Z = &Zs[t * KV];
        double* dqt = &g.dq[(bt * s.Nq + qh) * K];
        double* dkt = &g.dk[(bt * s.Nk + kh) * K];
        double* dvt = &g.dv[(bt * N + n) * V];
        double df = 0;
        for (std::size_t e = 0; e < KV; ++e) {
          double gg = G[e];
          if (clip == Clip::Kernel) gg = clamp(gg);
          gg += qt[e / V] * dot[e % V];
          if (clip == Clip::Total) gg = clamp(gg);
          Gt[e] = gg;
          df += gg * (Hp[e] - Z[e]);
          dP[e] = (1.0 - f) * gg * (1.0 - Z[e] * Z[e]);
        }
        g.df[bt * N + n] = df;
        for (int i = 0; i < K; ++i) {
          double aq = 0, ak = 0;
          for (int j = 0; j < V; ++j) {
            aq += Hc[i * V + j] * dot[j];
            ak += dP[i * V + j] * vt[j];
          }
          dqt[i] += aq;
          dkt[i] += ak;
        }
        for (int j = 0; j < V; ++j) {
          double a = Dn[j] * dot[j];
          for (int i = 0; i < K; ++i) a += dP[i * V + j] * kt[i];
          dvt[j] = a;
          g.dD[std::size_t(n) * V + j] += dot[j] * vt[j];
        }
        for (int a = 0; a < V; ++a)
          for (int j = 0; j < V; ++j) {
            double acc = 0;
            for (int i = 0; i < K; ++i) acc += Hp[i * V + a] * dP[i * V + j];
            dWn[a * V + j] += acc;
          }
        for (int i = 0; i < K; ++i)
          for (int a = 0; a < V; ++a) {
            double acc = f * Gt[i * V + a];
            for (int j = 0; j < V; ++j) acc += dP[i * V + j] * Wn[a * V + j];
            G[i * V + a] = acc;
          }
      }
      std::copy_n(G.begin(), KV, g.dh0.begin() + (std::size_t(b) * N + n) * KV);
    }
}

// ---- block ------------------------------------------------------------------------------------
int default_heads(int hidden, int key_dim, int value_dim) {
  req(hidden > 0 && key_dim > 0 && value_dim > 0, "hidden, key_dim and value_dim must be > 0");
  const int h = hidden / (key_dim + value_dim);
  req(h >= 1, "hidden=" + std::to_string(hidden) + " too small for key_dim+value_dim=" +
                  std::to_string(key_dim + value_dim));
  return h;
}

void validate(const BlockConfig& c) {
  req(c.hidden >= 1, "hidden=" + std::to_string(c.hidden) + " must be >= 1");
  req(c.conv_width >= 1, "conv_width=" + std::to_string(c.conv_width) + " must be >= 1");
  req(c.norm_eps > 0 && c.prenorm_eps > 0, "norm eps must be > 0");
  req(c.clip == Clip::Off || c.clip_value > 0, "clip value must be > 0");
  validate(c.scan_shape(1, 1));
}

std::vector<ParamInfo> param_shapes(const BlockConfig& c) {
  const int64_t d = c.hidden, N = c.heads, V = c.value_dim, C = c.conv_channels();
  std::vector<ParamInfo> r = {{"w_in", {d, c.proj_width()}}, {"conv_w", {C, c.conv_width}},
                              {"A_log", {N}},                 {"dt_bias", {N}},
                              {"W", {N, V, V}},               {"D", {N, V}},
                              {"gamma", {N * V}},             {"w_out", {N * V, d}}};
  if (c.prenorm_residual) r.push_back({"w_pre", {d}});
  return r;
}

BlockParams init_params(const BlockConfig& c, uint64_t seed, int n_layers) {
  validate(c);
  HostRng rng(seed);
  const int d = c.hidden, N = c.heads, V = c.value_dim, C = c.conv_channels(), P = c.proj_width();
  BlockParams p;
  p.w_in.resize(std::size_t(d) * P);
  for (auto& w : p.w_in) w = 0.02 * rng.normal();
  p.conv_w.resize(std::size_t(C) * c.conv_width);
  for (auto& w : p.conv_w) w = 0.02 * rng.normal();
  p.A_log.resize(N);
  for (auto& a : p.A_log) a = std::log(rng.uniform(1e-6, 16.0));
  p.dt_bias.resize(N);
  for (auto& b : p.dt_bias) {
    double dt = std::exp(rng.uniform(std::log(1e-3), std::log(0.1)));
    dt = std::max(dt, 1e-4);
    b = dt + std::log(-std::expm1(-dt));  // softplus⁻¹(dt)
  }
  p.W.assign(std::size_t(N) * V * V, 0.0);
  for (int n = 0; n < N; ++n)
    for (int a = 0; a < V; ++a) p.W[(std::size_t(n) * V + a) * V + a] = 1.0;
  p.D.assign(std::size_t(N) * V, 1.0);
  p.gamma.assign(std::size_t(N) * V, 1.0);
  p.w_out.resize(std::size_t(N) * V * d);
  const double so = 0.02 / std::sqrt(2.0 * std::max(1, n_layers));
  for (auto& w : p.w_out) w = so * rng.normal();
  if (c.prenorm_residual) p.w_pre.assign(d, 1.0);
  return p;
}

void check_params(const BlockConfig& c, const BlockParams& p) {
  validate(c);
  const auto shapes = param_shapes(c);
  const std::vector<const std::vector<double>*> ptrs = {&p.w_in, &p.conv_w, &p.A_log, &p.dt_bias,
                                                        &p.W,    &p.D,      &p.gamma, &p.w_out, &p.w_pre};
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    std::size_t n = 1;
    for (auto e : shapes[i].shape) n *= std::size_t(e);
    check_size(*ptrs[i], n, shapes[i].name.c_str());
  }
}

BlockState zero_state(const BlockConfig& c, int B) {
  BlockState s;
  s.H.assign(std::size_t(B) * c.heads * c.key_dim * c.value_dim, 0.0);
  s.conv_tail.assign(std::size_t(B) * (c.conv_width - 1) * c.conv_channels(), 0.0);
  return s;
}

namespace {
// Everything the forward computes, kept for the reference backward.
struct Fwd {
  std::vector<double> rho_x;  // [B,S] (prenorm only)
  std::vector<double> xn;     // [B,S,d]
  std::vector<double> u;      // [B,S,P]
  std::vector<double> aext;   // [B, w-1+S, C] pre-conv rows with the carried tail in front
  std::vector<double> pre;    // [B,S,C] conv output before SiLU
  std::vector<double> phi_s;  // [B,S,N] φ + dt_bias
  ScanInputs scan;
  ScanOutputs so;
  std::vector<double> m, rho;  // [B,S,NV], [B,S]
};

void forward_impl(const BlockConfig& c, const BlockParams& p, int B, int S, const std::vector<double>& x,
                  const BlockState* st, Fwd& F, std::vector<double>& y, BlockState* st_out) {
  check_params(c, p);
  req(B >= 1 && S >= 1, "B and S must be >= 1");
  const int d = c.hidden, N = c.heads, K = c.key_dim, V = c.value_dim, w = c.conv_width;
  const int C = c.conv_channels(), P = c.proj_width(), NV = N * V, Wm1 = w - 1;
  const int QK = c.q_heads * K, KK = c.k_heads * K;
  check_size(x, std::size_t(B) * S * d, "x");
  if (st) {
    check_size(st->H, std::size_t(B) * N * K * V, "state H", true);
    check_size(st->conv_tail, std::size_t(B) * Wm1 * C, "state conv_tail", true);
  }
  const std::size_t BS = std::size_t(B) * S;
  // pre-norm
  F.xn = x;
  F.rho_x.assign(BS, 1.0);
  if (c.prenorm_residual) {
    for (std::size_t r = 0; r < BS; ++r) {
      double ss = 0;
      for (int i = 0; i < d; ++i) ss += x[r * d + i] * x[r * d + i];
      const double rho = std::sqrt(ss / d + c.prenorm_eps);
      F.rho_x[r] = rho;
      for (int i = 0; i < d; ++i) F.xn[r * d + i] = p.w_pre[i] * x[r * d + i] / rho;
    }
  }
  // projection
  F.u.assign(BS * P, 0.0);
  for (std::size_t r = 0; r < BS; ++r)
    for (int i = 0; i < d; ++i) {
      const double xi = F.xn[r * d + i];
      const double* wr = &p.w_in[std::size_t(i) * P];
      double* ur = &F.u[r * P];
      for (int j = 0; j < P; ++j) ur[j] += xi * wr[j];
    }
  // conv over [tail; a]
  const int T = Wm1 + S;
  F.aext.assign(std::size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b) {
    if (st && !st->conv_tail.empty())
      std::copy_n(st->conv_tail.begin() + std::size_t(b) * Wm1 * C, std::size_t(Wm1) * C,
                  F.aext.begin() + std::size_t(b) * T * C);
    for (int t = 0; t < S; ++t)
      std::copy_n(F.u.begin() + (std::size_t(b) * S + t) * P, C,
                  F.aext.begin() + (std::size_t(b) * T + Wm1 + t) * C);
  }
  F.pre.assign(BS * C, 0.0);
  ScanShape ss = c.scan_shape(B, S);
  ScanInputs& si = F.scan;
  si.q.assign(ss.q_size(), 0);
  si.k.assign(ss.k_size(), 0);
  si.v.assign(ss.v_size(), 0);
  si.f.assign(ss.f_size(), 0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t) {
      const std::size_t r = std::size_t(b) * S + t;
      for (int ch = 0; ch < C; ++ch) {
        double acc = 0;
        for (int j = 0; j < w; ++j)
          acc += p.conv_w[std::size_t(ch) * w + j] * F.aext[(std::size_t(b) * T + t + j) * C + ch];
        F.pre[r * C + ch] = acc;
        const double cv = silu(acc);
        if (ch < QK)
          si.q[r * QK + ch] = cv;
        else if (ch < QK + KK)
          si.k[r * KK + ch - QK] = cv;
        else
          si.v[r * NV + ch - QK - KK] = cv;
      }
    }
  F.phi_s.assign(BS * N, 0.0);
  for (std::size_t r = 0; r < BS; ++r)
    for (int n = 0; n < N; ++n) {
      const double s = F.u[r * P + C + n] + p.dt_bias[n];
      F.phi_s[r * N + n] = s;
      si.f[r * N + n] = std::exp(-std::exp(p.A_log[n]) * softplus(s));
    }
  si.W = p.W;
  si.D = p.D;
  si.h0.clear();
  if (st && !st->H.empty()) si.h0 = st->H;
  scan_forward(ss, si, F.so);
  // gate, norm, out-projection
  F.m.assign(BS * NV, 0.0);
  F.rho.assign(BS, 0.0);
  y.assign(BS * d, 0.0);
  std::vector<double> r(NV);
  for (std::size_t rr = 0; rr < BS; ++rr) {
    double sq = 0;
    for (int e = 0; e < NV; ++e) {
      const double m = F.so.o[rr * NV + e] * silu(F.u[rr * P + C + N + e]);
      F.m[rr * NV + e] = m;
      sq += m * m;
    }
    const double rho = std::sqrt(sq / NV + c.norm_eps);
    F.rho[rr] = rho;
    for (int e = 0; e < NV; ++e) r[e] = p.gamma[e] * F.m[rr * NV + e] / rho;
    double* yr = &y[rr * d];
    for (int e = 0; e < NV; ++e) {
      const double* wo = &p.w_out[std::size_t(e) * d];
      for (int i = 0; i < d; ++i) yr[i] += r[e] * wo[i];
    }
    if (c.prenorm_residual)
      for (int i = 0; i < d; ++i) yr[i] += x[rr * d + i];
  }
  if (st_out) {
    st_out->H = F.so.hT;
    st_out->conv_tail.assign(std::size_t(B) * Wm1 * C, 0.0);
    for (int b = 0; b < B; ++b)
      std::copy_n(F.aext.begin() + (std::size_t(b) * T + S) * C, std::size_t(Wm1) * C,
                  st_out->conv_tail.begin() + std::size_t(b) * Wm1 * C);
  }
}
}  // namespace

void block_forward(const BlockConfig& c, const BlockParams& p, int B, int S, const std::vector<double>& x,
                   const BlockState* state_in, std::vector<double>& y, BlockState* state_out) {
  Fwd F;
  forward_impl(c, p, B, S, x, state_in, F, y, state_out);
}

void block_backward(const BlockConfig& c, const BlockParams& p, int B, int S, const std::vector<double>& x,
                    const BlockState* state_in, const std::vector<double>& dy, const BlockState* dstate_out,
                    BlockGrads& g) {
  Fwd F;
  std::vector<double> y;
  forward_impl(c, p, B, S, x, state_in, F, y, nullptr);
  const int d = c.hidden, N = c.heads, K = c.key_dim, V = c.value_dim, w = c.conv_width;
  const int C = c.conv_channels(), P = c.proj_width(), NV = N * V, Wm1 = w - 1, T = Wm1 + S;
  const int QK = c.q_heads * K, KK = c.k_heads * K;
  const std::size_t BS = std::size_t(B) * S;
  check_size(dy, BS * d, "dy");
  if (dstate_out) {
    check_size(dstate_out->H, std::size_t(B) * N * K * V, "dstate H", true);
    check_size(dstate_out->conv_tail, std::size_t(B) * Wm1 * C, "dstate conv_tail", true);
  }
  BlockParams& dp = g.dparams;
  dp.w_in.assign(p.w_in.size(), 0.0);
  dp.conv_w.assign(p.conv_w.size(), 0.0);
  dp.A_log.assign(p.A_log.size(), 0.0);
  dp.dt_bias.assign(p.dt_bias.size(), 0.0);
  dp.gamma.assign(p.gamma.size(), 0.0);
  dp.w_out.assign(p.w_out.size(), 0.0);
  dp.w_pre.assign(p.w_pre.size(), 0.0);
  g.dx.assign(BS * d, 0.0);
  // out-projection, norm, gate
  const ScanShape ss = c.scan_shape(B, S);
  std::vector<double> dout(ss.v_size(), 0.0), du(BS * P, 0.0), dr(NV), dm(NV);
  for (std::size_t rr = 0; rr < BS; ++rr) {
    const double* dyr = &dy[rr * d];
    const double rho = F.rho[rr];
    const double* m = &F.m[rr * NV];
    double dot = 0;
    for (int e = 0; e < NV; ++e) {
      const double* wo = &p.w_out[std::size_t(e) * d];
      double* dwo = &dp.w_out[std::size_t(e) * d];
      const double re = p.gamma[e] * m[e] / rho;
      double a = 0;
      for (int i = 0; i < d; ++i) {
        a += dyr[i] * wo[i];
        dwo[i] += re * dyr[i];
      }
      dr[e] = a;
      dp.gamma[e] += a * m[e] / rho;
      dot += p.gamma[e] * a * m[e];
    }
    for (int e = 0; e < NV; ++e) {
      dm[e] = p.gamma[e] * dr[e] / rho - m[e] * dot / (NV * rho * rho * rho);
      const double gg = F.u[rr * P + C + N + e];
      dout[rr * NV + e] = dm[e] * silu(gg);
      du[rr * P + C + N + e] = dm[e] * F.so.o[rr * NV + e] * dsilu(gg);
    }
  }
  // scan
  ScanGrads sg;
  std::vector<double> dhT;
  if (dstate_out) dhT = dstate_out->H;
  scan_backward(ss, F.scan, dout, dhT, c.clip, c.clip_value, sg);
  dp.W = sg.dW;
  dp.D = sg.dD;
  g.dstate_in.H = sg.dh0;
  // gate chain
  for (std::size_t r = 0; r < BS; ++r)
    for (int n = 0; n < N; ++n) {
      const double s = F.phi_s[r * N + n];
      const double A = std::exp(p.A_log[n]);
      const double f = F.scan.f[r * N + n];
      const double dfv = sg.df[r * N + n];
      const double dphi = dfv * f * (-A) * sigmoid(s);
      du[r * P + C + n] = dphi;
      dp.dt_bias[n] += dphi;
      dp.A_log[n] += dfv * f * (-A * softplus(s));
    }
  // conv + SiLU
  std::vector<double> daext(std::size_t(B) * T * C, 0.0);
  if (dstate_out && !dstate_out->conv_tail.empty())
    for (int b = 0; b < B; ++b)
      for (int rI = 0; rI < Wm1; ++rI)
        for (int ch = 0; ch < C; ++ch)
          daext[(std::size_t(b) * T + S + rI) * C + ch] += dstate_out->conv_tail[(std::size_t(b) * Wm1 + rI) * C + ch];
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t) {
      const std::size_t r = std::size_t(b) * S + t;
      for (int ch = 0; ch < C; ++ch) {
        double dc;
        if (ch < QK)
          dc = sg.dq[r * QK + ch];
        else if (ch < QK + KK)
          dc = sg.dk[r * KK + ch - QK];
        else
          dc = sg.dv[r * NV + ch - QK - KK];
        const double dpre = dc * dsilu(F.pre[r * C + ch]);
        for (int j = 0; j < w; ++j) {
          const std::size_t ai = (std::size_t(b) * T + t + j) * C + ch;
          daext[ai] += p.conv_w[std::size_t(ch) * w + j] * dpre;
          dp.conv_w[std::size_t(ch) * w + j] += F.aext[ai] * dpre;
        }
      }
    }
  g.dstate_in.conv_tail.assign(std::size_t(B) * Wm1 * C, 0.0);
  for (int b = 0; b < B; ++b) {
    std::copy_n(daext.begin() + std::size_t(b) * T * C, std::size_t(Wm1) * C,
                g.dstate_in.conv_tail.begin() + std::size_t(b) * Wm1 * C);
    for (int t = 0; t < S; ++t)
      for (int ch = 0; ch < C; ++ch)
        du[(std::size_t(b) * S + t) * P + ch] = daext[(std::size_t(b) * T + Wm1 + t) * C + ch];
  }
  // input projection
  std::vector<double> dxn(BS * d, 0.0);
  input_projection_backward(F.xn.data(), p.w_in.data(), du.data(), BS, d, P, dp.w_in.data(), dxn.data());
  // pre-norm + residual
  if (c.prenorm_residual) {
    for (std::size_t r = 0; r < BS; ++r) {
      const double rho = F.rho_x[r];
      double dot = 0;
      for (int i = 0; i < d; ++i) {
        const double xi = x[r * d + i];
        dp.w_pre[i] += dxn[r * d + i] * xi / rho;
        dot += p.w_pre[i] * dxn[r * d + i] * xi;
      }
      for (int i = 0; i < d; ++i) {
        const double xi = x[r * d + i];
        g.dx[r * d + i] = dy[r * d + i] + p.w_pre[i] * dxn[r * d + i] / rho - xi * dot / (d * rho * rho * rho);
      }
    }
  } else {
    g.dx = dxn;
  }
}

void input_projection_backward(const double* x, const double* w_in, const double* du, std::size_t rows, int d, int P,
                               double* dw_in, double* dx) {
  for (std::size_t r = 0; r < rows; ++r)
    for (int i = 0; i < d; ++i) {
      const double xi = x[r * d + i];
      const double* wr = &w_in[std::size_t(i) * P];
      double* dwr = &dw_in[std::size_t(i) * P];
      const double* dur = &du[r * P];
      double a = 0;
      for (int j = 0; j < P; ++j) {
        dwr[j] += xi * dur[j];
        a += dur[j] * wr[j];
      }
      dx[r * d + i] = a;
    }
}

}  // namespace megacpp::m2rnn
