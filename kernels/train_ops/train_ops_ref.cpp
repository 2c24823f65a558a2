// train_ops_ref.cpp — float64 references of the train_ops kernels (see train_ops_ref.hpp).
#include "kernels/train_ops/train_ops_ref.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/common/host_rng.hpp"

namespace megacpp::train_ops::ref {

void linear_fwd(const Vec& x, const Vec& W, Vec& y, int64_t M, int64_t K, int64_t N) {
  y.assign(std::size_t(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * W[n * K + k];
      y[m * N + n] = s;
    }
}

void linear_bwd(const Vec& x, const Vec& W, const Vec& dy, Vec& dx, Vec& dW, int64_t M, int64_t K, int64_t N) {
  dx.assign(std::size_t(M * K), 0.0);
  if (dW.size() != std::size_t(N * K)) throw std::invalid_argument("ref::linear_bwd: dW size");
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double g = dy[m * N + n];
      for (int64_t k = 0; k < K; ++k) {
        dx[m * K + k] += g * W[n * K + k];
        dW[n * K + k] += g * x[m * K + k];
      }
    }
}

void rmsnorm_fwd(const Vec& x, const Vec& w, Vec& y, Vec& rstd, int64_t M, int64_t C, double eps) {
  y.assign(std::size_t(M * C), 0.0);
  rstd.assign(std::size_t(M), 0.0);
  for (int64_t m = 0; m < M; ++m) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[m * C + c] * x[m * C + c];
    const double r = 1.0 / std::sqrt(ss / double(C) + eps);
    rstd[m] = r;
    for (int64_t c = 0; c < C; ++c) y[m * C + c] = x[m * C + c] * r * w[c];
  }
}

void residual_rmsnorm_fwd(const Vec& h, const Vec& yin, const Vec& w, Vec& h_out, Vec& n, Vec& rstd, int64_t M,
                          int64_t C, double eps, bool round_bf16) {
  h_out.resize(std::size_t(M * C));
  for (std::size_t i = 0; i < h_out.size(); ++i) {
    const double s = h[i] + yin[i];
    // the kernel adds in fp32 then rounds to bf16
    h_out[i] = round_bf16 ? round_to_bf16(double(float(h[i]) + float(yin[i]))) : s;
  }
  rmsnorm_fwd(h_out, w, n, rstd, M, C, eps);
}

void rmsnorm_bwd(const Vec& x, const Vec& w, const Vec& rstd, const Vec& dy, const Vec& dres, Vec& dx, Vec& dw,
                 int64_t M, int64_t C) {
  dx.assign(std::size_t(M * C), 0.0);
  if (dw.size() != std::size_t(C)) throw std::invalid_argument("ref::rmsnorm_bwd: dw size");
  for (int64_t m = 0; m < M; ++m) {
    const double r = rstd[m];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += dy[m * C + c] * w[c] * x[m * C + c] * r;
    dot /= double(C);
    for (int64_t c = 0; c < C; ++c) {
      const double xh = x[m * C + c] * r;
      dx[m * C + c] = r * (dy[m * C + c] * w[c] - xh * dot) + (dres.empty() ? 0.0 : dres[m * C + c]);
      dw[c] += dy[m * C + c] * xh;
    }
  }
}

namespace {
double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

void act_fwd(int act, const Vec& g, const Vec& u, Vec& a) {
  a.resize(g.size());
  for (std::size_t i = 0; i < g.size(); ++i)
    a[i] = act == 0 ? g[i] * sigm(g[i]) * u[i] : (g[i] > 0 ? g[i] * g[i] : 0.0);
}

void act_bwd(int act, const Vec& g, const Vec& u, const Vec& da, Vec& dg, Vec& du) {
  dg.resize(g.size());
  if (act == 0) du.resize(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (act == 0) {
      const double s = sigm(g[i]);
      dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
      du[i] = da[i] * g[i] * s;
    } else {
      dg[i] = g[i] > 0 ? 2.0 * g[i] * da[i] : 0.0;
    }
  }
}

void embedding_fwd(const std::vector<int32_t>& tok, const Vec& wte, Vec& out, int64_t C) {
  const int64_t V = int64_t(wte.size()) / C;
  out.assign(tok.size() * std::size_t(C), 0.0);
  for (std::size_t m = 0; m < tok.size(); ++m) {
    if (tok[m] < 0 || tok[m] >= V) throw std::out_of_range("ref::embedding_fwd: token out of range");
    std::copy(wte.begin() + tok[m] * C, wte.begin() + (tok[m] + 1) * C, out.begin() + int64_t(m) * C);
  }
}

void embedding_bwd(const std::vector<int32_t>& tok, const Vec& dout, Vec& dwte, int64_t C) {
  const int64_t V = int64_t(dwte.size()) / C;
  for (std::size_t m = 0; m < tok.size(); ++m) {
    if (tok[m] < 0 || tok[m] >= V) throw std::out_of_range("ref::embedding_bwd: token out of range");
    for (int64_t c = 0; c < C; ++c) dwte[tok[m] * C + c] += dout[int64_t(m) * C + c];
  }
}

double lm_head_ce(const Vec& x, const Vec& W, const std::vector<int32_t>& tgt, int64_t M, int64_t C, int64_t V,
                  double scale, Vec* lse, Vec* dx, Vec* dW) {
  Vec z(static_cast<std::size_t>(V));
  if (lse) lse->assign(std::size_t(M), 0.0);
  if (dx) dx->assign(std::size_t(M * C), 0.0);
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += x[m * C + c] * W[v * C + c];
      z[v] = s;
      mx = std::max(mx, s);
    }
    double se = 0;
    for (int64_t v = 0; v < V; ++v) se += std::exp(z[v] - mx);
    const double l = mx + std::log(se);
    if (lse) (*lse)[m] = l;
    const int32_t t = tgt[m];
    if (t < 0) continue;
    if (t >= V) throw std::out_of_range("ref::lm_head_ce: target out of range");
    loss += l - z[t];
    if (!dx) continue;
    for (int64_t v = 0; v < V; ++v) {
      const double g = scale * (std::exp(z[v] - l) - (v == t ? 1.0 : 0.0));
      for (int64_t c = 0; c < C; ++c) {
        (*dx)[m * C + c] += g * W[v * C + c];
        if (dW) (*dW)[v * C + c] += g * x[m * C + c];
      }
    }
  }
  return loss;
}

void adamw(Vec& p, const Vec& g, Vec& m, Vec& v, const std::vector<uint8_t>& mask, double lr, double beta1,
           double beta2, double eps, double wd, int64_t step, double clip_scale) {
  const double bc1 = 1.0 - std::pow(beta1, double(step + 1)), bc2 = 1.0 - std::pow(beta2, double(step + 1));
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double gi = g[i] * clip_scale;
    m[i] = beta1 * m[i] + (1 - beta1) * gi;
    v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    const double d = (mask.empty() || mask[i]) ? wd : 0.0;
    p[i] -= lr * (m[i] / bc1 / (std::sqrt(v[i] / bc2) + eps) + d * p[i]);
  }
}

double grad_norm(const Vec& g) {
  double s = 0;
  for (double x : g) s += x * x;
  return std::sqrt(s);
}

double clip_scale(double norm, double clip) { return (clip > 0 && norm > clip) ? clip / (norm + 1e-6) : 1.0; }

}  // namespace megacpp::train_ops::ref
