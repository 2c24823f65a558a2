#include "engine/model/model.hpp"

#include <algorithm>
#include <cmath>

#include "engine/model/cpu_ops.hpp"
#include "kernels/common/host_rng.hpp"

namespace megacpp {

namespace {
// Vocabulary-parallel fused LM head + cross-entropy (Megatron's vocab-parallel CE): this rank holds W
// rows [v0, v0 + Vl). Rows in chunks; per chunk the local maxima are all-gathered (global max), the
// sum of exp and the target logit (owned by one rank) all-reduced in float64; dx (partial: this rank's
// vocabulary) is all-reduced over TP. Same math as cpu::lm_head_ce on the full W.
template <typename T>
double vocab_parallel_ce(Communicator& tp, const T* x, const T* W, const int32_t* targets, int64_t M, int64_t C,
                         int64_t Vl, int64_t v0, T* dx, T* dW, double scale) {
  constexpr int64_t kChunk = 64;
  const int P = tp.world();
  std::vector<double> logits(static_cast<std::size_t>(kChunk * Vl)), lmax(kChunk), allmax(static_cast<std::size_t>(kChunk * P)),
      stats(2 * kChunk), drow(static_cast<std::size_t>(C));
  double loss = 0;
  for (int64_t m0 = 0; m0 < M; m0 += kChunk) {
    const int64_t mc = std::min(kChunk, M - m0);
    for (int64_t i = 0; i < mc; ++i) {
      const T* xr = x + (m0 + i) * C;
      double mx = -INFINITY;
      for (int64_t v = 0; v < Vl; ++v) {
        const T* wr = W + v * C;
        double acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += static_cast<double>(xr[c]) * wr[c];
        logits[static_cast<std::size_t>(i * Vl + v)] = acc;
        mx = std::max(mx, acc);
      }
      lmax[static_cast<std::size_t>(i)] = mx;
    }
    tp.all_gather(lmax.data(), allmax.data(), static_cast<std::size_t>(mc));
    for (int64_t i = 0; i < mc; ++i) {
      double gm = -INFINITY;
      for (int q = 0; q < P; ++q) gm = std::max(gm, allmax[static_cast<std::size_t>(q * mc + i)]);
      lmax[static_cast<std::size_t>(i)] = gm;
      const int32_t tgt = targets[m0 + i];
      double se = 0;
      for (int64_t v = 0; v < Vl; ++v) se += std::exp(logits[static_cast<std::size_t>(i * Vl + v)] - gm);
      stats[static_cast<std::size_t>(2 * i)] = se;
      stats[static_cast<std::size_t>(2 * i + 1)] = tgt >= v0 && tgt < v0 + Vl ? logits[static_cast<std::size_t>(i * Vl + (tgt - v0))] : 0.0;
    }
    tp.all_reduce_sum(stats.data(), static_cast<std::size_t>(2 * mc));
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t m = m0 + i;
      const int32_t tgt = targets[m];
      if (dx) std::fill(dx + m * C, dx + (m + 1) * C, T(0));
      if (tgt < 0) continue;
      const double lse = lmax[static_cast<std::size_t>(i)] + std::log(stats[static_cast<std::size_t>(2 * i)]);
      loss += lse - stats[static_cast<std::size_t>(2 * i + 1)];
      if (!dx) continue;
      const T* xr = x + m * C;
      std::fill(drow.begin(), drow.end(), 0.0);
      for (int64_t v = 0; v < Vl; ++v) {
        const double g = scale * (std::exp(logits[static_cast<std::size_t>(i * Vl + v)] - lse) - (v0 + v == tgt ? 1.0 : 0.0));
        const T* wr = W + v * C;
        T* dwr = dW + v * C;
        for (int64_t c = 0; c < C; ++c) {
          drow[static_cast<std::size_t>(c)] += g * wr[c];
          dwr[c] = static_cast<T>(dwr[c] + g * xr[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) dx[m * C + c] = static_cast<T>(drow[static_cast<std::size_t>(c)]);
    }
  }
  if (dx) tp.all_reduce_sum(dx, static_cast<std::size_t>(M * C));
  return loss;
}
}  // namespace

template <typename T>
Model<T>::Model(const Recipe& r, int64_t max_batch, int64_t seq_len, const ModelParallel& mp)
    : r_(r), mp_(mp), maxB_(max_batch), S_(seq_len), hidden_(r.model.hidden), vocab_(r.model.vocab) {
  const int64_t M = maxB_ * S_, h = hidden_;
  const int64_t tp = mp_.tp_size;
  if ((mp_.tp_size > 1 && !mp_.tp) || (mp_.ep_size > 1 && !mp_.ep))
    throw std::invalid_argument("Model: tp/ep size > 1 without its communicator");
  if (vocab_ % tp != 0)
    throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " does not divide model.vocab=" + std::to_string(vocab_) +
                             " (the embedding and the LM head are vocabulary-parallel)");
  vl_ = vocab_ / tp, v0_ = mp_.tp_rank * vl_;
  const ModelParallel* bp = mp_.active() ? &mp_ : nullptr;
  wte_ = ps_.add("embedding", {vl_, h}, Init::normal, true);
  if (tp > 1) shard_rows(ps_, wte_, ShardGroup::tp, {vocab_, h}, {{v0_, vl_}});
  const auto& layers = r.layers.layers;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::string prefix = "layers." + std::to_string(l) + ".";
    norm_.push_back(ps_.add(prefix + "norm", {h}, Init::ones, false));
    blocks_.push_back(make_block<T>(layers[l], r, ps_, prefix, M, bp));
    layer_names_.push_back(std::string(1, block_letter(layers[l])) + ":" + blocks_.back()->name());
  }
  final_norm_ = ps_.add("final_norm", {h}, Init::ones, false);
  head_ = r.model.tie_embeddings ? wte_ : ps_.add("lm_head", {vl_, h}, Init::normal, true);
  if (tp > 1 && head_ != wte_) shard_rows(ps_, head_, ShardGroup::tp, {vocab_, h}, {{v0_, vl_}});
  ps_.finalize();
  for (auto& b : blocks_) b->bind(ps_);
  const auto L = static_cast<int64_t>(layers.size());
  resid_.resize((L + 1) * M * h);
  normed_.resize(L * M * h);
  rstd_.resize(L * M);
  fnormed_.resize(M * h), frstd_.resize(M), ybuf_.resize(M * h), dresid_.resize(M * h), dnormed_.resize(M * h);
  dfinal_.resize(M * h);
  targets_.resize(M);
}

template <typename T>
void Model<T>::init_params(uint64_t seed) {
  if (mp_.active()) {  // the tp = ep = 1 model's values, this rank's shard of each tensor
    Model<T> full(r_, 1, S_);
    full.init_params(seed);
    shard_from_full(ps_, full.params().data.data(), ps_.data.data());
    return;
  }
  HostRng rng(seed);
  const double std0 = r_.model.init_std;
  const double out_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(r_.model.depth));
  const auto& mb = r_.model.mamba;
  for (std::size_t i = 0; i < ps_.specs.size(); ++i) {
    const ParamSpec& s = ps_.specs[i];
    T* p = ps_.param(static_cast<int>(i));
    for (int64_t k = 0; k < s.numel; ++k) {
      double v = 0;
      switch (s.init) {
        case Init::normal: v = std0 * rng.normal(); break;
        case Init::normal_scaled_out: v = std0 * out_scale * rng.normal(); break;
        case Init::ones: v = 1; break;
        case Init::zeros: v = 0; break;
        case Init::constant: v = s.init_value; break;
        case Init::identity_per_head: v = 0; break;
        case Init::mamba_dt_bias: {
          // Δ0 log-uniform in [dt_min, dt_max], floored; bias = softplus⁻¹(Δ0) = Δ0 + log(−expm1(−Δ0)).
          double dt = std::exp(std::log(mb.dt_min) + rng.uniform() * (std::log(mb.dt_max) - std::log(mb.dt_min)));
          dt = std::max(dt, mb.dt_init_floor);
          v = dt + std::log(-std::expm1(-dt));
          break;
        }
      }
      p[k] = static_cast<T>(v);
    }
  }
  for (std::size_t l = 0; l < blocks_.size(); ++l) blocks_[l]->init_params(seed * 1000003ull + l, r_.model.depth);
}

template <typename T>
double Model<T>::run(const int32_t* tokens, int64_t B, bool backward, double grad_scale) {
  if (B > maxB_) throw std::invalid_argument("Model: batch larger than the batch the model was sized for");
  const int64_t S = S_, h = hidden_, M = B * S;
  const auto L = static_cast<int64_t>(blocks_.size());
  const double eps = r_.model.norm_eps;
  // embedding + targets
  const T* wte = ps_.param(wte_);
  const bool vp = mp_.tp_size > 1;  // vocabulary-parallel: this rank holds rows [v0_, v0_ + vl_)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) {
      const int32_t tok = tokens[b * (S + 1) + t];
      if (tok < 0 || tok >= vocab_)
        throw std::out_of_range("token id " + std::to_string(tok) + " outside the vocabulary (" + std::to_string(vocab_) + ")");
      T* dst = resid_.data() + (b * S + t) * h;
      if (!vp) std::copy(wte + tok * h, wte + (tok + 1) * h, dst);
      else if (tok >= v0_ && tok < v0_ + vl_) std::copy(wte + (tok - v0_) * h, wte + (tok - v0_ + 1) * h, dst);
      else std::fill(dst, dst + h, T(0));
      targets_[b * S + t] = tokens[b * (S + 1) + t + 1];
    }
  if (vp) mp_.tp->all_reduce_sum(resid_.data(), static_cast<std::size_t>(M * h));  // exactly one rank holds each row
  for (int64_t l = 0; l < L; ++l) {
    T* x = resid_.data() + l * M * h;
    T* xn = normed_.data() + l * M * h;
    cpu::rmsnorm_fwd(x, ps_.param(norm_[l]), xn, rstd_.data() + l * M, M, h, eps);
    blocks_[l]->forward(xn, ybuf_.data(), B, S);
    T* nx = resid_.data() + (l + 1) * M * h;
    for (int64_t i = 0; i < M * h; ++i) nx[i] = x[i] + ybuf_[i];
  }
  const T* xl = resid_.data() + L * M * h;
  cpu::rmsnorm_fwd(xl, ps_.param(final_norm_), fnormed_.data(), frstd_.data(), M, h, eps);
  const double loss =
      vp ? vocab_parallel_ce(*mp_.tp, fnormed_.data(), ps_.param(head_), targets_.data(), M, h, vl_, v0_,
                             backward ? dfinal_.data() : static_cast<T*>(nullptr),
                             backward ? ps_.grad(head_) : static_cast<T*>(nullptr), grad_scale)
         : cpu::lm_head_ce(fnormed_.data(), ps_.param(head_), targets_.data(), M, h, vocab_,
                           backward ? dfinal_.data() : static_cast<T*>(nullptr),
                           backward ? ps_.grad(head_) : static_cast<T*>(nullptr), grad_scale);
  if (!backward) return loss;
  // Auxiliary losses (MoE) are per-micro-batch means: weight them like B·S tokens of the main loss.
  for (auto& b : blocks_) b->set_aux_scale(grad_scale * static_cast<double>(B * S));
  cpu::rmsnorm_bwd(xl, ps_.param(final_norm_), frstd_.data(), dfinal_.data(), dresid_.data(), ps_.grad(final_norm_), M,
                   h, false);
  for (int64_t l = L - 1; l >= 0; --l) {
    // dresid holds ∂/∂h_{l+1}; the residual passes it through, the block adds its part.
    blocks_[l]->backward(dresid_.data(), dnormed_.data(), B, S);
    cpu::rmsnorm_bwd(resid_.data() + l * M * h, ps_.param(norm_[l]), rstd_.data() + l * M, dnormed_.data(),
                     dresid_.data(), ps_.grad(norm_[l]), M, h, true);
  }
  T* gwte = ps_.grad(wte_);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) {
      const int32_t tok = tokens[b * (S + 1) + t];
      if (vp && (tok < v0_ || tok >= v0_ + vl_)) continue;  // another TP rank's row
      const T* d = dresid_.data() + (b * S + t) * h;
      for (int64_t c = 0; c < h; ++c) gwte[(tok - v0_) * h + c] += d[c];
    }
  return loss;
}

template <typename T>
double Model<T>::forward_backward(const int32_t* tokens, int64_t B, double grad_scale) {
  return run(tokens, B, true, grad_scale);
}

template <typename T>
double Model<T>::forward_loss(const int32_t* tokens, int64_t B) {
  return run(tokens, B, false, 0.0);
}

template <typename T>
AuxLosses Model<T>::aux_losses() const {
  AuxLosses sum;
  for (const auto& b : blocks_) add_aux_losses(sum, b->aux_losses());
  return sum;
}

template <typename T>
double Model<T>::flops_per_token_fwd() const {
  double f = 2.0 * static_cast<double>(hidden_ * vl_);  // under TP/EP: this rank's share (its shards)
  for (const auto& b : blocks_) f += b->flops_per_token(S_);
  return f;
}

template class Model<float>;
template class Model<double>;

}  // namespace megacpp
