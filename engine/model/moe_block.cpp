#include "engine/model/moe_block.hpp"

#include <stdexcept>

namespace megacpp {

template <typename T>
MoeBlock<T>::MoeBlock(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t max_tokens) {
  const auto& m = r.model.moe;
  if (m.shared_expert_hidden > 0 && m.shared_activation != "swiglu")
    throw std::runtime_error("model.moe.shared_activation=" + m.shared_activation +
                             ": the MoE block's shared expert is SwiGLU (the NAM56R choice); relu2 is not implemented");
  cfg_.tokens = max_tokens;
  cfg_.hidden = r.model.hidden;
  cfg_.experts = m.experts;
  cfg_.top_k = m.top_k;
  cfg_.ffn_hidden = m.ffn_hidden;
  cfg_.shared_hidden = m.shared_expert_hidden;
  cfg_.act = m.activation == "swiglu" ? moe::Activation::SwiGLU : moe::Activation::Relu2;
  cfg_.score = m.score == "sigmoid" ? moe::Score::Sigmoid : moe::Score::Softmax;
  cfg_.aux_coef = m.aux_loss_coef;
  cfg_.z_coef = m.z_loss_coef;
  cfg_.capacity_factor = m.capacity_factor;
  cfg_.validate();
  const int64_t H = cfg_.hidden, E = cfg_.experts, F = cfg_.ffn_hidden, S = cfg_.shared_hidden;
  router_ = ps.add(p + "moe.router", {E, H}, Init::normal, true);
  w1_ = ps.add(p + "moe.w1", {E, cfg_.ffn1(), H}, Init::normal, true);
  w2_ = ps.add(p + "moe.w2", {E, H, F}, Init::normal_scaled_out, true);
  if (S > 0) {
    s1_ = ps.add(p + "moe.shared_w1", {2 * S, H}, Init::normal, true);
    s2_ = ps.add(p + "moe.shared_w2", {H, S}, Init::normal_scaled_out, true);
  }
}

template <typename T>
moe::MoeParamsRef MoeBlock<T>::gather() const {
  moe::MoeParamsRef w;
  auto cp = [&](int i, std::vector<double>& d) {
    if (i < 0) return;
    d.assign(ps_->param(i), ps_->param(i) + ps_->spec(i).numel);
  };
  cp(router_, w.router), cp(w1_, w.w1), cp(w2_, w.w2), cp(s1_, w.s1), cp(s2_, w.s2);
  return w;
}

template <typename T>
void MoeBlock<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  cfg_.tokens = B * S;
  const int64_t n = cfg_.tokens * cfg_.hidden;
  x_.assign(x, x + n);
  f_ = moe::moe_forward_ref(cfg_, x_, gather());
  aux_.aux = f_.aux_loss;
  aux_.z = f_.z_loss;
  aux_.tokens_per_expert = f_.stats.tokens_per_expert;
  aux_.dropped_frac = f_.stats.dropped_frac;
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(f_.y[i]);
}

template <typename T>
void MoeBlock<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  cfg_.tokens = B * S;
  const int64_t n = cfg_.tokens * cfg_.hidden;
  const std::vector<double> d(dy, dy + n);
  // The reference differentiates <dy,y> + L_aux + L_z; scale the auxiliary terms like the main loss.
  moe::MoeConfig c = cfg_;
  c.aux_coef *= aux_scale_;
  c.z_coef *= aux_scale_;
  const moe::MoeGradsRef g = moe::moe_backward_ref(c, x_, gather(), f_, d);
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(g.x[i]);
  auto acc = [&](int i, const std::vector<double>& s) {
    if (i < 0) return;
    T* gp = ps_->grad(i);
    for (std::size_t k = 0; k < s.size(); ++k) gp[k] = static_cast<T>(gp[k] + s[k]);
  };
  acc(router_, g.router), acc(w1_, g.w1), acc(w2_, g.w2), acc(s1_, g.s1), acc(s2_, g.s2);
}

template <typename T>
double MoeBlock<T>::flops_per_token(int64_t) const {
  const double H = static_cast<double>(cfg_.hidden), F = static_cast<double>(cfg_.ffn_hidden);
  const double expert = 2.0 * H * (static_cast<double>(cfg_.ffn1()) + F);
  const double shared = cfg_.shared_hidden > 0 ? 2.0 * H * 3.0 * static_cast<double>(cfg_.shared_hidden) : 0.0;
  return 2.0 * H * static_cast<double>(cfg_.experts) + static_cast<double>(cfg_.top_k) * expert + shared;
}

template class MoeBlock<float>;
template class MoeBlock<double>;

}  // namespace megacpp
