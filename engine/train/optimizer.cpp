#include "engine/train/optimizer.hpp"

#include <algorithm>
#include <cmath>

namespace megacpp {

double learning_rate(const TrainConfig& t, int64_t step) {
  if (t.warmup > 0 && step < t.warmup) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup);
  if (t.schedule == "constant") return t.lr;
  const double total = static_cast<double>(std::max<int64_t>(1, t.steps - t.warmup));
  const double p = std::min(1.0, static_cast<double>(step - t.warmup) / total);
  if (t.schedule == "cosine") return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
  // wsd: warmup, stable, then linear decay over the final decay_fraction of the steps
  const double decay_start = 1.0 - t.decay_fraction;
  if (p < decay_start || t.decay_fraction <= 0) return t.lr;
  const double q = (p - decay_start) / t.decay_fraction;
  return t.lr + (t.min_lr - t.lr) * q;
}

template <typename T>
AdamW<T>::AdamW(const TrainConfig& t, int64_t numel)
    : m(static_cast<std::size_t>(numel), T(0)),
      v(static_cast<std::size_t>(numel), T(0)),
      beta1_(t.beta1),
      beta2_(t.beta2),
      eps_(t.eps),
      wd_(t.weight_decay),
      clip_(t.clip) {}

template <typename T>
double AdamW<T>::grad_norm(const ParamStore<T>& ps) {
  double ss = 0;
  for (const auto& s : ps.specs)
    for (int64_t i = 0; i < s.numel; ++i) {
      const double g = ps.grads[static_cast<std::size_t>(s.offset + i)];
      ss += g * g;
    }
  return std::sqrt(ss);
}

template <typename T>
void AdamW<T>::step(ParamStore<T>& ps, double lr, double gnorm, int64_t step) {
  const double scale = (clip_ > 0 && gnorm > clip_) ? clip_ / (gnorm + 1e-6) : 1.0;
  const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(step + 1));
  const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(step + 1));
  for (const auto& s : ps.specs) {
    const double wd = s.decay ? wd_ : 0.0;
    for (int64_t i = 0; i < s.numel; ++i) {
      const auto k = static_cast<std::size_t>(s.offset + i);
      const double g = ps.grads[k] * scale;
      const double mk = beta1_ * m[k] + (1 - beta1_) * g;
      const double vk = beta2_ * v[k] + (1 - beta2_) * g * g;
      m[k] = static_cast<T>(mk);
      v[k] = static_cast<T>(vk);
      double p = ps.data[k];
      p -= lr * (mk / bc1 / (std::sqrt(vk / bc2) + eps_) + wd * p);
      ps.data[k] = static_cast<T>(p);
    }
  }
}

template <typename T>
void AdamW<T>::step_shard(ParamStore<T>& ps, const T* shard_grads, int64_t lo, int64_t hi, double lr, double gnorm, int64_t step) {
  const double scale = (clip_ > 0 && gnorm > clip_) ? clip_ / (gnorm + 1e-6) : 1.0;
  const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(step + 1));
  const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(step + 1));
  for (const auto& s : ps.specs) {
    const int64_t a = std::max(lo, s.offset), b = std::min(hi, s.offset + s.numel);
    if (a >= b) continue;
    const double wd = s.decay ? wd_ : 0.0;
    for (int64_t k = a; k < b; ++k) {
      const auto j = static_cast<std::size_t>(k - lo);
      const double g = shard_grads[j] * scale;
      const double mk = beta1_ * m[j] + (1 - beta1_) * g;
      const double vk = beta2_ * v[j] + (1 - beta2_) * g * g;
      m[j] = static_cast<T>(mk);
      v[j] = static_cast<T>(vk);
      double p = ps.data[static_cast<std::size_t>(k)];
      p -= lr * (mk / bc1 / (std::sqrt(vk / bc2) + eps_) + wd * p);
      ps.data[static_cast<std::size_t>(k)] = static_cast<T>(p);
    }
  }
}

template class AdamW<float>;
template class AdamW<double>;

}  // namespace megacpp
