// moe_ref.cpp — float64 CPU reference of the MoE block (see moe_ref.hpp for the math).
#include "kernels/moe/moe_ref.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace megacpp::moe {

int64_t MoeConfig::capacity() const {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(slots()) / static_cast<double>(experts)));
}

void MoeConfig::validate() const {
  auto bad = [&](const std::string& m) { throw std::invalid_argument("moe: " + m + " (" + to_string() + ")"); };
  if (tokens < 1) bad("tokens=" + std::to_string(tokens) + " must be >= 1");
  if (hidden < 8 || hidden % 8) bad("hidden=" + std::to_string(hidden) + " must be a positive multiple of 8");
  if (experts < 1 || experts > 64) bad("experts=" + std::to_string(experts) + " not supported (supported: 1..64)");
  if (top_k < 1 || top_k > 8 || top_k > experts)
    bad("top_k=" + std::to_string(top_k) + " not supported (supported: 1..min(8, experts))");
  if (ffn_hidden < 8 || ffn_hidden % 8) bad("ffn_hidden=" + std::to_string(ffn_hidden) + " must be a positive multiple of 8");
  if (shared_hidden < 0 || shared_hidden % 8)
    bad("shared_hidden=" + std::to_string(shared_hidden) + " must be 0 (none) or a multiple of 8");
  if (capacity_factor < 0) bad("capacity_factor must be >= 0 (0: dropless)");
  if (tokens * top_k > (int64_t(1) << 30)) bad("tokens*top_k must be < 2^30");
}

std::string MoeConfig::to_string() const {
  std::ostringstream s;
  s << "T=" << tokens << " H=" << hidden << " E=" << experts << " K=" << top_k << " F=" << ffn_hidden
    << " S=" << shared_hidden << " act=" << (act == Activation::SwiGLU ? "swiglu" : "relu2")
    << " score=" << (score == Score::Sigmoid ? "sigmoid" : "softmax") << " renorm=" << renorm
    << " cf=" << capacity_factor;
  return s.str();
}

MoeParamSizes param_sizes(const MoeConfig& c) {
  return {c.experts * c.hidden, c.experts * c.ffn1() * c.hidden, c.experts * c.hidden * c.ffn_hidden,
          2 * c.shared_hidden * c.hidden, c.hidden * c.shared_hidden};
}

std::vector<uint8_t> capacity_keep(const MoeConfig& c, const std::vector<int32_t>& experts) {
  std::vector<uint8_t> kept(experts.size(), 1);
  const int64_t cap = c.capacity();
  if (cap < 0) return kept;
  std::vector<int64_t> used(c.experts, 0);
  for (size_t s = 0; s < experts.size(); ++s) kept[s] = (used[experts[s]]++ < cap) ? 1 : 0;
  return kept;
}

RouterStats router_stats(const MoeConfig& c, const std::vector<int32_t>& experts, const std::vector<uint8_t>& kept) {
  RouterStats st;
  st.tokens_per_expert.assign(c.experts, 0);
  int64_t dropped = 0;
  for (size_t s = 0; s < experts.size(); ++s) {
    st.tokens_per_expert[experts[s]]++;
    dropped += kept[s] ? 0 : 1;
  }
  st.min = *std::min_element(st.tokens_per_expert.begin(), st.tokens_per_expert.end());
  st.max = *std::max_element(st.tokens_per_expert.begin(), st.tokens_per_expert.end());
  double mean = 0, var = 0;
  for (auto n : st.tokens_per_expert) mean += static_cast<double>(n);
  mean /= static_cast<double>(c.experts);
  for (auto n : st.tokens_per_expert) var += (static_cast<double>(n) - mean) * (static_cast<double>(n) - mean);
  st.std = std::sqrt(var / static_cast<double>(c.experts));
  st.dropped_frac = experts.empty() ? 0.0 : static_cast<double>(dropped) / static_cast<double>(experts.size());
  return st;
}

namespace {

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double dsilu(double v) {
  const double s = 1.0 / (1.0 + std::exp(-v));
  return s * (1.0 + v * (1.0 - s));
}

// y[n] = W[n,:]·x   (W row-major [N,Hin])
void matvec(const double* W, const double* x, int64_t N, int64_t Hin, double* y) {
  for (int64_t n = 0; n < N; ++n) {
    double acc = 0;
    const double* wr = W + n * Hin;
    for (int64_t i = 0; i < Hin; ++i) acc += wr[i] * x[i];
    y[n] = acc;
  }
}

// Expert FFN on one row: a [F1], h [F], out [Hout].
void ffn_fwd(bool swiglu, int64_t H, int64_t F, const double* W1, const double* W2, const double* x, double* a,
             double* h, double* out) {
  const int64_t F1 = swiglu ? 2 * F : F;
  matvec(W1, x, F1, H, a);
  for (int64_t f = 0; f < F; ++f) {
    if (swiglu) {
      h[f] = silu(a[f]) * a[F + f];
    } else {
      const double r = a[f] > 0 ? a[f] : 0.0;
      h[f] = r * r;
    }
  }
  matvec(W2, h, H, F, out);
}

// Backward of ffn_fwd for one row with output gradient g [H]: accumulates dW1, dW2, dx.
void ffn_bwd(bool swiglu, int64_t H, int64_t F, const double* W1, const double* W2, const double* x, const double* g,
             double* dW1, double* dW2, double* dx) {
  const int64_t F1 = swiglu ? 2 * F : F;
  std::vector<double> a(F1), h(F), dh(F, 0.0), da(F1);
  matvec(W1, x, F1, H, a.data());
  for (int64_t f = 0; f < F; ++f) {
    if (swiglu) {
      h[f] = silu(a[f]) * a[F + f];
    } else {
      const double r = a[f] > 0 ? a[f] : 0.0;
      h[f] = r * r;
    }
  }
  for (int64_t o = 0; o < H; ++o) {
    const double* w2r = W2 + o * F;
    double* d2 = dW2 + o * F;
    for (int64_t f = 0; f < F; ++f) {
      dh[f] += g[o] * w2r[f];
      d2[f] += g[o] * h[f];
    }
  }
  for (int64_t f = 0; f < F; ++f) {
    if (swiglu) {
      da[f] = dh[f] * dsilu(a[f]) * a[F + f];
      da[F + f] = dh[f] * silu(a[f]);
    } else {
      da[f] = a[f] > 0 ? dh[f] * 2.0 * a[f] : 0.0;
    }
  }
  for (int64_t r = 0; r < F1; ++r) {
    const double* w1r = W1 + r * H;
    double* d1 = dW1 + r * H;
    for (int64_t i = 0; i < H; ++i) {
      d1[i] += da[r] * x[i];
      dx[i] += da[r] * w1r[i];
    }
  }
}

}  // namespace

MoeForwardRef moe_forward_ref(const MoeConfig& c, const std::vector<double>& x, const MoeParamsRef& w,
                              const std::vector<int32_t>* fixed_experts) {
  c.validate();
  const int64_t T = c.tokens, H = c.hidden, E = c.experts, K = c.top_k, F = c.ffn_hidden, S = c.shared_hidden;
  const int64_t F1 = c.ffn1();
  const bool swiglu = c.act == Activation::SwiGLU;
  if (static_cast<int64_t>(x.size()) != T * H) throw std::invalid_argument("moe_forward_ref: x size");
  MoeForwardRef r;
  r.logits.resize(T * E);
  r.probs.resize(T * E);
  r.experts.resize(T * K);
  r.weights.resize(T * K);
  r.expert_out.assign(T * K * H, 0.0);
  r.y.assign(T * H, 0.0);
  double zsum = 0;
  std::vector<double> P(E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = x.data() + t * H;
    double* z = r.logits.data() + t * E;
    double* p = r.probs.data() + t * E;
    matvec(w.router.data(), xt, E, H, z);
    double m = z[0];
    for (int64_t e = 1; e < E; ++e) m = std::max(m, z[e]);
    double se = 0;
    for (int64_t e = 0; e < E; ++e) se += std::exp(z[e] - m);
    const double lse = m + std::log(se);
    zsum += lse * lse;
    double psum = 0;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = c.score == Score::Softmax ? std::exp(z[e] - lse) : 1.0 / (1.0 + std::exp(-z[e]));
      psum += p[e];
    }
    for (int64_t e = 0; e < E; ++e) P[e] += (c.score == Score::Softmax ? p[e] : p[e] / psum) / static_cast<double>(T);
    int32_t* sel = r.experts.data() + t * K;
    if (fixed_experts) {
      for (int64_t k = 0; k < K; ++k) sel[k] = (*fixed_experts)[t * K + k];
    } else {
      std::vector<uint8_t> taken(E, 0);
      for (int64_t k = 0; k < K; ++k) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e)
          if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = 1;
        sel[k] = static_cast<int32_t>(best);
      }
    }
    double ssum = 0;
    for (int64_t k = 0; k < K; ++k) ssum += p[sel[k]];
    for (int64_t k = 0; k < K; ++k) r.weights[t * K + k] = c.renorm ? p[sel[k]] / ssum : p[sel[k]];
  }
  r.kept = capacity_keep(c, r.experts);
  r.stats = router_stats(c, r.experts, r.kept);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e)
    aux += static_cast<double>(r.stats.tokens_per_expert[e]) / static_cast<double>(T * K) * P[e];
  r.aux_loss = c.aux_coef * static_cast<double>(E) * aux;
  r.z_loss = c.z_coef * zsum / static_cast<double>(T);

  std::vector<double> a(std::max(F1, 2 * S)), h(std::max(F, S));
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = x.data() + t * H;
    double* yt = r.y.data() + t * H;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = r.experts[t * K + k];
      double* o = r.expert_out.data() + (t * K + k) * H;
      ffn_fwd(swiglu, H, F, w.w1.data() + e * F1 * H, w.w2.data() + e * H * F, xt, a.data(), h.data(), o);
      if (r.kept[t * K + k])
        for (int64_t i = 0; i < H; ++i) yt[i] += r.weights[t * K + k] * o[i];
    }
    if (S > 0) {
      std::vector<double> os(H);
      ffn_fwd(true, H, S, w.s1.data(), w.s2.data(), xt, a.data(), h.data(), os.data());
      for (int64_t i = 0; i < H; ++i) yt[i] += os[i];
    }
  }
  return r;
}

double moe_loss_ref(const MoeForwardRef& f, const std::vector<double>& dy) {
  double l = 0;
  for (size_t i = 0; i < dy.size(); ++i) l += dy[i] * f.y[i];
  return l + f.aux_loss + f.z_loss;
}

MoeGradsRef moe_backward_ref(const MoeConfig& c, const std::vector<double>& x, const MoeParamsRef& w,
                             const MoeForwardRef& f, const std::vector<double>& dy) {
  const int64_t T = c.tokens, H = c.hidden, E = c.experts, K = c.top_k, F = c.ffn_hidden, S = c.shared_hidden;
  const int64_t F1 = c.ffn1();
  const bool swiglu = c.act == Activation::SwiGLU;
  const MoeParamSizes ps = param_sizes(c);
  MoeGradsRef g;
  g.x.assign(T * H, 0.0);
  g.router.assign(ps.router, 0.0);
  g.w1.assign(ps.w1, 0.0);
  g.w2.assign(ps.w2, 0.0);
  g.s1.assign(ps.s1, 0.0);
  g.s2.assign(ps.s2, 0.0);
  std::vector<double> gk(H), dp(E), dz(E);
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = x.data() + t * H;
    const double* dyt = dy.data() + t * H;
    double* dxt = g.x.data() + t * H;
    const double* p = f.probs.data() + t * E;
    const double* z = f.logits.data() + t * E;
    std::vector<double> dw(K, 0.0);
    for (int64_t k = 0; k < K; ++k) {
      if (!f.kept[t * K + k]) continue;
      const int64_t e = f.experts[t * K + k];
      const double wk = f.weights[t * K + k];
      const double* o = f.expert_out.data() + (t * K + k) * H;
      for (int64_t i = 0; i < H; ++i) {
        dw[k] += dyt[i] * o[i];
        gk[i] = wk * dyt[i];
      }
      ffn_bwd(swiglu, H, F, w.w1.data() + e * F1 * H, w.w2.data() + e * H * F, xt, gk.data(),
              g.w1.data() + e * F1 * H, g.w2.data() + e * H * F, dxt);
    }
    if (S > 0) ffn_bwd(true, H, S, w.s1.data(), w.s2.data(), xt, dyt, g.s1.data(), g.s2.data(), dxt);
    // Router: weights → scores.
    std::fill(dp.begin(), dp.end(), 0.0);
    double ssum = 0, dot = 0;
    for (int64_t k = 0; k < K; ++k) ssum += p[f.experts[t * K + k]];
    for (int64_t k = 0; k < K; ++k) dot += dw[k] * f.weights[t * K + k];
    for (int64_t k = 0; k < K; ++k) dp[f.experts[t * K + k]] += c.renorm ? (dw[k] - dot) / ssum : dw[k];
    // Aux loss: dL/dq_{t,e} = aux_coef · E · f_e / T.
    std::vector<double> dq(E);
    for (int64_t e = 0; e < E; ++e)
      dq[e] = c.aux_coef * static_cast<double>(E) *
              (static_cast<double>(f.stats.tokens_per_expert[e]) / static_cast<double>(T * K)) / static_cast<double>(T);
    if (c.score == Score::Softmax) {
      for (int64_t e = 0; e < E; ++e) dp[e] += dq[e];
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += p[e] * dp[e];
      for (int64_t e = 0; e < E; ++e) dz[e] = p[e] * (dp[e] - s);
    } else {
      double psum = 0, s = 0;
      for (int64_t e = 0; e < E; ++e) psum += p[e];
      for (int64_t e = 0; e < E; ++e) s += dq[e] * p[e] / psum;
      for (int64_t e = 0; e < E; ++e) dp[e] += (dq[e] - s) / psum;
      for (int64_t e = 0; e < E; ++e) dz[e] = dp[e] * p[e] * (1.0 - p[e]);
    }
    // z-loss: d/dz (z_coef/T · lse²) = z_coef · 2·lse/T · softmax(z).
    double m = z[0];
    for (int64_t e = 1; e < E; ++e) m = std::max(m, z[e]);
    double se = 0;
    for (int64_t e = 0; e < E; ++e) se += std::exp(z[e] - m);
    const double lse = m + std::log(se);
    for (int64_t e = 0; e < E; ++e)
      dz[e] += c.z_coef * 2.0 * lse / static_cast<double>(T) * std::exp(z[e] - lse);
    for (int64_t e = 0; e < E; ++e) {
      double* dr = g.router.data() + e * H;
      const double* wr = w.router.data() + e * H;
      for (int64_t i = 0; i < H; ++i) {
        dr[i] += dz[e] * xt[i];
        dxt[i] += dz[e] * wr[i];
      }
    }
  }
  return g;
}

}  // namespace megacpp::moe
