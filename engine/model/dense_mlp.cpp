#include "engine/model/dense_mlp.hpp"

#include <stdexcept>

#include "engine/model/parallel.hpp"

namespace megacpp {

template <typename T>
DenseMlp<T>::DenseMlp(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t max_tokens,
                      const ModelParallel* mp)
    : mp_(tp_size(mp) > 1 ? mp : nullptr), hidden_(r.model.hidden), ffn_(r.model.mlp.ffn_hidden) {
  const int64_t tp = tp_size(mp), tr = tp_rank(mp), F = ffn_;
  if (F % tp != 0)
    throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " does not divide model.mlp.ffn_hidden=" + std::to_string(F));
  ffn_ = F / tp;
  const std::string& a = r.model.mlp.activation;
  act_ = a == "swiglu" ? cpu::Act::swiglu : a == "relu2" ? cpu::Act::relu2 : cpu::Act::gelu;
  gated_ = act_ == cpu::Act::swiglu;
  if (gated_) w_gate_ = ps.add(p + "mlp.gate", {ffn_, hidden_}, Init::normal, true);
  w_up_ = ps.add(p + "mlp.up", {ffn_, hidden_}, Init::normal, true);
  w_down_ = ps.add(p + "mlp.down", {hidden_, ffn_}, Init::normal_scaled_out, true);
  if (tp > 1) {
    if (gated_) shard_rows(ps, w_gate_, ShardGroup::tp, {F, hidden_}, {{tr * ffn_, ffn_}});
    shard_rows(ps, w_up_, ShardGroup::tp, {F, hidden_}, {{tr * ffn_, ffn_}});
    shard_cols(ps, w_down_, {hidden_, F}, tr * ffn_, ffn_);
  }
  const auto n = static_cast<std::size_t>(max_tokens * ffn_);
  g_.resize(n), a_.resize(n), da_.resize(n), dg_.resize(n);
  if (gated_) u_.resize(n), du_.resize(n);
}

template <typename T>
void DenseMlp<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  const int64_t M = B * S;
  x_ = x;
  // For the ungated activations the "up" matrix produces the pre-activation g.
  cpu::linear_fwd(x, ps_->param(gated_ ? w_gate_ : w_up_), g_.data(), M, hidden_, ffn_);
  if (gated_) cpu::linear_fwd(x, ps_->param(w_up_), u_.data(), M, hidden_, ffn_);
  cpu::act_fwd(act_, g_.data(), gated_ ? u_.data() : g_.data(), a_.data(), M * ffn_);
  cpu::linear_fwd(a_.data(), ps_->param(w_down_), y, M, ffn_, hidden_);
  tp_all_reduce(mp_, y, static_cast<std::size_t>(M * hidden_));  // row-parallel: partial sums
}

template <typename T>
void DenseMlp<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  const int64_t M = B * S;
  cpu::linear_bwd(a_.data(), ps_->param(w_down_), dy, da_.data(), ps_->grad(w_down_), M, ffn_, hidden_);
  cpu::act_bwd(act_, g_.data(), gated_ ? u_.data() : g_.data(), da_.data(), dg_.data(), gated_ ? du_.data() : nullptr,
               M * ffn_);
  const int gi = gated_ ? w_gate_ : w_up_;
  cpu::linear_bwd(x_, ps_->param(gi), dg_.data(), dx, ps_->grad(gi), M, hidden_, ffn_);
  if (gated_) cpu::linear_bwd_acc(x_, ps_->param(w_up_), du_.data(), dx, ps_->grad(w_up_), M, hidden_, ffn_);
  tp_all_reduce(mp_, dx, static_cast<std::size_t>(M * hidden_));  // column-parallel input: partial dx
}

template <typename T>
double DenseMlp<T>::flops_per_token(int64_t) const {
  return 2.0 * static_cast<double>((gated_ ? 3 : 2) * hidden_ * ffn_);
}

template class DenseMlp<float>;
template class DenseMlp<double>;

}  // namespace megacpp
