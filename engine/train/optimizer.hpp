// optimizer.hpp — AdamW with decoupled weight decay (not applied to norms, biases and the Mamba
// scalar parameters: ParamSpec::decay), global-norm gradient clipping, and the LR schedules.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/config/recipe.hpp"
#include "engine/model/params.hpp"

namespace megacpp {

// lr at `step` (0-based): linear warmup over train.warmup steps, then
//   cosine:   min_lr + (lr − min_lr)·½(1 + cos(π·p)), p = progress after warmup in [0, 1]
//   constant: lr
//   wsd:      lr until the last decay_fraction of the steps, then linear to min_lr
double learning_rate(const TrainConfig& t, int64_t step);

template <typename T>
class AdamW {
 public:
  AdamW(const TrainConfig& t, int64_t numel);
  // Global L2 norm of the gradients (computed in double, fixed order).
  static double grad_norm(const ParamStore<T>& ps);
  // Clips (scales grads so that the norm is ≤ clip when clip > 0), then updates params. `step` is the
  // 0-based optimizer step (bias correction uses step+1).
  void step(ParamStore<T>& ps, double lr, double grad_norm, int64_t step);
  // ZeRO-1: updates only ps.data[lo, hi) from `shard_grads` (element k at shard_grads[k - lo]: this
  // rank's reduce-scattered gradient shard); m and v hold only the shard (m[k - lo]). The arithmetic
  // per element is the same as step()'s.
  void step_shard(ParamStore<T>& ps, const T* shard_grads, int64_t lo, int64_t hi, double lr, double grad_norm, int64_t step);

  std::vector<T> m, v;  // fp32 (T) state, same layout as the ParamStore

 private:
  double beta1_, beta2_, eps_, wd_, clip_;
};

}  // namespace megacpp
