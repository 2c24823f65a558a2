// mimo_prep_ref.cpp — float64 references of the MIMO pre-ops (angle cumsum, decay preprocessing). See the header.
#include "kernels/mimo/mimo_prep_ref.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

namespace megacpp::mimo::prep {

namespace {
void check_size(const char* what, const std::vector<double>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) != n)
    throw std::invalid_argument(std::string("mimo prep: ") + what + " has " + std::to_string(v.size()) +
                                " elements, expected " + std::to_string(n));
}
}  // namespace

double softplus(double x) { return x > 30.0 ? x : (x < -30.0 ? std::exp(x) : std::log1p(std::exp(x))); }
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}
double a_activation(double x, AActivation act) {
  if (act == AActivation::softplus) return softplus(x);
  return x >= 0 ? 1.0 + x : 1.0 / (1.0 - x);
}
double a_activation_grad(double x, AActivation act) {
  if (act == AActivation::softplus) return sigmoid(x);
  return x >= 0 ? 1.0 : 1.0 / ((1.0 - x) * (1.0 - x));
}
AActivation parse_a_activation(const std::string& name) {
  if (name == "softplus") return AActivation::softplus;
  if (name == "heavy_tail") return AActivation::heavy_tail;
  throw std::invalid_argument("mimo: a_activation '" + name + "' not supported (supported: softplus, heavy_tail)");
}

std::vector<double> angle_cumsum_forward(int64_t B, int64_t S, int64_t H, int64_t NA,
                                         const std::vector<double>& raw, const std::vector<double>& dt) {
  check_size("raw_angles", raw, B * S * NA);
  check_size("dt", dt, B * H * S);
  std::vector<double> th(static_cast<size_t>(B * S * H * NA));
  std::vector<double> acc(static_cast<size_t>(NA));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < S; ++t) {
        const double d = dt[(b * H + h) * S + t];
        const double* a = &raw[(b * S + t) * NA];
        double* o = &th[((b * S + t) * H + h) * NA];
        for (int64_t j = 0; j < NA; ++j) {
          acc[j] += std::numbers::pi * std::tanh(a[j]) * d;
          o[j] = acc[j];
        }
      }
    }
  return th;
}

AngleCumsumGrads angle_cumsum_backward(int64_t B, int64_t S, int64_t H, int64_t NA,
                                       const std::vector<double>& raw, const std::vector<double>& dt,
                                       const std::vector<double>& dth) {
  check_size("raw_angles", raw, B * S * NA);
  check_size("dt", dt, B * H * S);
  check_size("dangles", dth, B * S * H * NA);
  AngleCumsumGrads g;
  g.draw_angles.assign(static_cast<size_t>(B * S * NA), 0.0);
  g.ddt.assign(static_cast<size_t>(B * H * S), 0.0);
  std::vector<double> G(static_cast<size_t>(NA));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(G.begin(), G.end(), 0.0);
      for (int64_t t = S - 1; t >= 0; --t) {
        const double d = dt[(b * H + h) * S + t];
        const double* a = &raw[(b * S + t) * NA];
        const double* e = &dth[((b * S + t) * H + h) * NA];
        double* da = &g.draw_angles[(b * S + t) * NA];
        double sdt = 0.0;
        for (int64_t j = 0; j < NA; ++j) {
          G[j] += e[j];
          const double th = std::tanh(a[j]);
          da[j] += G[j] * d * std::numbers::pi * (1.0 - th * th);
          sdt += G[j] * th;
        }
        g.ddt[(b * H + h) * S + t] = std::numbers::pi * sdt;
      }
    }
  return g;
}

DecayPrepOutputs decay_prep_forward(int64_t B, int64_t S, int64_t H, const std::vector<double>& dd_dt,
                                    const std::vector<double>& dd_A, const std::vector<double>& dt_bias,
                                    AActivation act, double a_floor) {
  check_size("dd_dt", dd_dt, B * S * H);
  check_size("dd_A", dd_A, B * S * H);
  check_size("dt_bias", dt_bias, H);
  DecayPrepOutputs o;
  o.A.resize(static_cast<size_t>(B * H * S));
  o.dt.resize(o.A.size());
  o.adt.resize(o.A.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t i = (b * S + t) * H + h, o_i = (b * H + h) * S + t;
        const double A = std::min(-a_activation(dd_A[i], act), -a_floor);
        const double d = softplus(dd_dt[i] + dt_bias[h]);
        o.A[o_i] = A;
        o.dt[o_i] = d;
        o.adt[o_i] = A * d;
      }
  return o;
}

DecayPrepGrads decay_prep_backward(int64_t B, int64_t S, int64_t H, const std::vector<double>& dd_dt,
                                   const std::vector<double>& dd_A, const std::vector<double>& dt_bias,
                                   const std::vector<double>& dadt, const std::vector<double>& ddt,
                                   AActivation act, double a_floor) {
  check_size("dd_dt", dd_dt, B * S * H);
  check_size("dd_A", dd_A, B * S * H);
  check_size("dt_bias", dt_bias, H);
  check_size("dadt", dadt, B * H * S);
  check_size("ddt", ddt, B * H * S);
  DecayPrepGrads g;
  g.ddd_dt.assign(static_cast<size_t>(B * S * H), 0.0);
  g.ddd_A.assign(g.ddd_dt.size(), 0.0);
  g.ddt_bias.assign(static_cast<size_t>(H), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t i = (b * S + t) * H + h, o_i = (b * H + h) * S + t;
        const double f = a_activation(dd_A[i], act);
        const bool clamped = -f > -a_floor;
        const double A = clamped ? -a_floor : -f;
        const double x = dd_dt[i] + dt_bias[h];
        const double d = softplus(x);
        const double dA = dadt[o_i] * d;
        const double dd_tot = ddt[o_i] + dadt[o_i] * A;
        const double gx = dd_tot * sigmoid(x);
        g.ddd_dt[i] = gx;
        g.ddt_bias[h] += gx;
        g.ddd_A[i] = clamped ? 0.0 : -dA * a_activation_grad(dd_A[i], act);
      }
  return g;
}

}  // namespace megacpp::mimo::prep
