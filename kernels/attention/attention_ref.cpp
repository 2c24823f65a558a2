// attention_ref.cpp — float64 reference; see attention_ref.hpp for the math and layouts.
#include "kernels/attention/attention_ref.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace megacpp::attn_ref {

void validate(const Shape& s) {
  if (s.B <= 0 || s.S <= 0 || s.H <= 0 || s.Hk <= 0 || s.D <= 0)
    throw std::invalid_argument("attention: B,S,heads,kv_heads,head_dim must be positive");
  if (s.H % s.Hk != 0)
    throw std::invalid_argument("attention: heads=" + std::to_string(s.H) + " not a multiple of kv_heads=" +
                                std::to_string(s.Hk) + " (GQA needs heads % kv_heads == 0)");
}

namespace {
inline int64_t qi(const Shape& s, int64_t b, int64_t t, int64_t h) { return ((b * s.S + t) * s.H + h) * s.D; }
inline int64_t ki(const Shape& s, int64_t b, int64_t t, int64_t h) { return ((b * s.S + t) * s.Hk + h) * s.D; }
inline double dot(const double* a, const double* b, int64_t n) {
  double r = 0;
  for (int64_t i = 0; i < n; ++i) r += a[i] * b[i];
  return r;
}
}  // namespace

void forward(const Shape& s, double scale, const double* q, const double* k, const double* v, double* o,
             double* lse, const std::vector<int64_t>& rows) {
  validate(s);
  const int64_t G = s.H / s.Hk;
  std::vector<int64_t> all;
  const std::vector<int64_t>* rs = &rows;
  if (rows.empty()) {
    all.resize(static_cast<size_t>(s.S));
    for (int64_t i = 0; i < s.S; ++i) all[static_cast<size_t>(i)] = i;
    rs = &all;
  }
  std::vector<double> sc(static_cast<size_t>(s.S));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t hk = h / G;
      for (int64_t i : *rs) {
        const double* qr = q + qi(s, b, i, h);
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          sc[static_cast<size_t>(j)] = scale * dot(qr, k + ki(s, b, j, hk), s.D);
          m = std::max(m, sc[static_cast<size_t>(j)]);
        }
        double l = 0;
        for (int64_t j = 0; j <= i; ++j) l += std::exp(sc[static_cast<size_t>(j)] - m);
        const double L = m + std::log(l);
        lse[(b * s.H + h) * s.S + i] = L;
        double* orow = o + qi(s, b, i, h);
        for (int64_t d = 0; d < s.D; ++d) orow[d] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(sc[static_cast<size_t>(j)] - L);
          const double* vr = v + ki(s, b, j, hk);
          for (int64_t d = 0; d < s.D; ++d) orow[d] += p * vr[d];
        }
      }
    }
}

void backward(const Shape& s, double scale, const double* q, const double* k, const double* v, const double* o,
              const double* dout, const double* lse, double* dq, double* dk, double* dv) {
  validate(s);
  const int64_t G = s.H / s.Hk;
  for (int64_t i = 0; i < s.q_elems(); ++i) dq[i] = 0;
  for (int64_t i = 0; i < s.kv_elems(); ++i) dk[i] = dv[i] = 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t hk = h / G;
      for (int64_t i = 0; i < s.S; ++i) {
        const double* qr = q + qi(s, b, i, h);
        const double* dor = dout + qi(s, b, i, h);
        const double Di = dot(dor, o + qi(s, b, i, h), s.D);
        const double L = lse[(b * s.H + h) * s.S + i];
        double* dqr = dq + qi(s, b, i, h);
        for (int64_t j = 0; j <= i; ++j) {
          const double* kr = k + ki(s, b, j, hk);
          const double* vr = v + ki(s, b, j, hk);
          const double p = std::exp(scale * dot(qr, kr, s.D) - L);
          const double dp = dot(dor, vr, s.D);
          const double ds = p * (dp - Di);
          double* dkr = dk + ki(s, b, j, hk);
          double* dvr = dv + ki(s, b, j, hk);
          for (int64_t d = 0; d < s.D; ++d) {
            dqr[d] += scale * ds * kr[d];
            dkr[d] += scale * ds * qr[d];
            dvr[d] += p * dor[d];
          }
        }
      }
    }
}

double loss(const Shape& s, double scale, const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<double>& w) {
  std::vector<double> o(static_cast<size_t>(s.q_elems())), lse(static_cast<size_t>(s.lse_elems()));
  forward(s, scale, q.data(), k.data(), v.data(), o.data(), lse.data());
  double L = 0;
  for (size_t i = 0; i < o.size(); ++i) L += o[i] * w[i];
  return L;
}

namespace {
void rope_apply(int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled, const double* x, double* y,
                int64_t pos0, double sign) {
  if (D % 2 != 0) throw std::invalid_argument("rope: head_dim=" + std::to_string(D) + " must be even");
  if (enabled && !(theta > 0)) throw std::invalid_argument("rope: theta must be > 0");
  const int64_t half = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t base = ((b * S + t) * nh + h) * D;
        if (!enabled) {
          for (int64_t d = 0; d < D; ++d) y[base + d] = x[base + d];
          continue;
        }
        const double p = static_cast<double>(t + pos0);
        for (int64_t i = 0; i < half; ++i) {
          const double f = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
          const double c = std::cos(p * f), sn = sign * std::sin(p * f);
          const double x1 = x[base + i], x2 = x[base + i + half];
          y[base + i] = x1 * c - x2 * sn;
          y[base + i + half] = x2 * c + x1 * sn;
        }
      }
}
}  // namespace

void rope_forward(int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled, const double* x,
                  double* y, int64_t pos0) {
  rope_apply(B, S, nh, D, theta, enabled, x, y, pos0, 1.0);
}
void rope_backward(int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled, const double* dy,
                   double* dx, int64_t pos0) {
  // The rotation is orthogonal: its transpose is the rotation by -a.
  rope_apply(B, S, nh, D, theta, enabled, dy, dx, pos0, -1.0);
}

}  // namespace megacpp::attn_ref
