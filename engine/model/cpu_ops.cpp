// cpu_ops.cpp — straightforward loops, ordered for cache-friendliness (the inner loop runs over the
// contiguous dimension), deterministic (fixed summation order), accumulation in double.
#include "engine/model/cpu_ops.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace megacpp::cpu {

double silu(double x) { return x / (1.0 + std::exp(-x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

template <typename T>
void linear_fwd(const T* x, const T* W, T* y, int64_t M, int64_t K, int64_t N) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * K;
    for (int64_t n = 0; n < N; ++n) {
      const T* wr = W + n * K;
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(xr[k]) * wr[k];
      y[m * N + n] = static_cast<T>(acc);
    }
  }
}

template <typename T>
static void linear_bwd_impl(const T* x, const T* W, const T* dy, T* dx, T* dW, int64_t M, int64_t K, int64_t N,
                            bool acc_dx) {
  if (dx) {
    std::vector<double> row(static_cast<std::size_t>(K));
    for (int64_t m = 0; m < M; ++m) {
      std::fill(row.begin(), row.end(), 0.0);
      const T* dyr = dy + m * N;
      for (int64_t n = 0; n < N; ++n) {
        const double g = dyr[n];
        if (g == 0) continue;
        const T* wr = W + n * K;
        for (int64_t k = 0; k < K; ++k) row[k] += g * wr[k];
      }
      T* dxr = dx + m * K;
      for (int64_t k = 0; k < K; ++k) dxr[k] = static_cast<T>(acc_dx ? dxr[k] + row[k] : row[k]);
    }
  }
  if (dW) {
    std::vector<double> row(static_cast<std::size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t m = 0; m < M; ++m) {
        const double g = dy[m * N + n];
        if (g == 0) continue;
        const T* xr = x + m * K;
        for (int64_t k = 0; k < K; ++k) row[k] += g * xr[k];
      }
      T* dwr = dW + n * K;
      for (int64_t k = 0; k < K; ++k) dwr[k] = static_cast<T>(dwr[k] + row[k]);
    }
  }
}

template <typename T>
void linear_bwd(const T* x, const T* W, const T* dy, T* dx, T* dW, int64_t M, int64_t K, int64_t N) {
  linear_bwd_impl(x, W, dy, dx, dW, M, K, N, false);
}
template <typename T>
void linear_bwd_acc(const T* x, const T* W, const T* dy, T* dx, T* dW, int64_t M, int64_t K, int64_t N) {
  linear_bwd_impl(x, W, dy, dx, dW, M, K, N, true);
}

template <typename T>
void rmsnorm_fwd(const T* x, const T* w, T* y, T* rstd, int64_t M, int64_t C, double eps) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(C) + eps);
    rstd[m] = static_cast<T>(r);
    for (int64_t c = 0; c < C; ++c) y[m * C + c] = static_cast<T>(xr[c] * r * w[c]);
  }
}

template <typename T>
void rmsnorm_bwd(const T* x, const T* w, const T* rstd, const T* dy, T* dx, T* dw, int64_t M, int64_t C,
                 bool accumulate_dx) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * C;
    const T* dyr = dy + m * C;
    const double r = rstd[m];
    double dot = 0;  // Σ dy·w·x̂
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * w[c] * xr[c] * r;
    dot /= static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = xr[c] * r;
      const double g = r * (static_cast<double>(dyr[c]) * w[c] - xhat * dot);
      dx[m * C + c] = static_cast<T>(accumulate_dx ? dx[m * C + c] + g : g);
      if (dw) dw[c] = static_cast<T>(dw[c] + static_cast<double>(dyr[c]) * xhat);
    }
  }
}

template <typename T>
void act_fwd(Act act, const T* g, const T* u, T* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[i];
    switch (act) {
      case Act::swiglu: a[i] = static_cast<T>(silu(x) * u[i]); break;
      case Act::relu2: a[i] = static_cast<T>(x > 0 ? x * x : 0.0); break;
      case Act::gelu: {
        const double c = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        a[i] = static_cast<T>(0.5 * x * (1.0 + std::tanh(c)));
        break;
      }
    }
  }
}

template <typename T>
void act_bwd(Act act, const T* g, const T* u, const T* da, T* dg, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[i];
    switch (act) {
      case Act::swiglu: {
        const double s = sigmoid(x);
        dg[i] = static_cast<T>(da[i] * u[i] * s * (1.0 + x * (1.0 - s)));
        du[i] = static_cast<T>(da[i] * x * s);
        break;
      }
      case Act::relu2: dg[i] = static_cast<T>(x > 0 ? 2.0 * x * da[i] : 0.0); break;
      case Act::gelu: {
        const double k = 0.7978845608028654, c = k * (x + 0.044715 * x * x * x), t = std::tanh(c);
        const double dc = k * (1.0 + 3 * 0.044715 * x * x);
        dg[i] = static_cast<T>(da[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dc));
        break;
      }
    }
  }
}

template <typename T>
double lm_head_ce(const T* x, const T* W, const int32_t* targets, int64_t M, int64_t C, int64_t V, T* dx, T* dW,
                  double scale) {
  std::vector<double> logits(static_cast<std::size_t>(V)), drow(static_cast<std::size_t>(C));
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t tgt = targets[m];
    const T* xr = x + m * C;
    if (dx) std::fill(dx + m * C, dx + (m + 1) * C, T(0));
    if (tgt < 0) continue;
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      const T* wr = W + v * C;
      double acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += static_cast<double>(xr[c]) * wr[c];
      logits[v] = acc;
      mx = std::max(mx, acc);
    }
    double se = 0;
    for (int64_t v = 0; v < V; ++v) se += std::exp(logits[v] - mx);
    const double lse = mx + std::log(se);
    loss += lse - logits[tgt];
    if (!dx) continue;
    std::fill(drow.begin(), drow.end(), 0.0);
    for (int64_t v = 0; v < V; ++v) {
      const double g = scale * (std::exp(logits[v] - lse) - (v == tgt ? 1.0 : 0.0));
      const T* wr = W + v * C;
      T* dwr = dW + v * C;
      for (int64_t c = 0; c < C; ++c) {
        drow[c] += g * wr[c];
        dwr[c] = static_cast<T>(dwr[c] + g * xr[c]);
      }
    }
    for (int64_t c = 0; c < C; ++c) dx[m * C + c] = static_cast<T>(drow[c]);
  }
  return loss;
}

#define MC_INST(T)                                                                                          \
  template void linear_fwd<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                           \
  template void linear_bwd<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t);             \
  template void linear_bwd_acc<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t);         \
  template void rmsnorm_fwd<T>(const T*, const T*, T*, T*, int64_t, int64_t, double);                       \
  template void rmsnorm_bwd<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t, bool);     \
  template void act_fwd<T>(Act, const T*, const T*, T*, int64_t);                                           \
  template void act_bwd<T>(Act, const T*, const T*, const T*, T*, T*, int64_t);                             \
  template double lm_head_ce<T>(const T*, const T*, const int32_t*, int64_t, int64_t, int64_t, T*, T*, double);
MC_INST(float)
MC_INST(double)
#undef MC_INST

}  // namespace megacpp::cpu
