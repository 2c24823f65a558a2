#include "engine/model/m2rnn_block.hpp"

namespace megacpp {

template <typename T>
M2rnnBlock<T>::M2rnnBlock(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t) {
  const auto& m = r.model.m2rnn;
  cfg_.hidden = static_cast<int>(r.model.hidden);
  cfg_.heads = static_cast<int>(m.heads);
  cfg_.key_dim = static_cast<int>(m.key_dim);
  cfg_.value_dim = static_cast<int>(m.value_dim);
  cfg_.conv_width = static_cast<int>(m.conv_width);
  cfg_.norm_eps = r.model.norm_eps;
  cfg_.clip = m2rnn::parse_clip(m.grad_clip);
  m2rnn::validate(cfg_);
  for (const auto& info : m2rnn::param_shapes(cfg_)) {
    if (info.name == "w_pre") continue;  // the layer's pre-norm is the engine's
    // Weight decay as the authors: projections, conv and W decay; A_log, dt_bias, D, gamma do not.
    const bool decay = info.name == "w_in" || info.name == "w_out" || info.name == "conv_w" || info.name == "W";
    idx_.push_back(ps.add(p + "m2rnn." + info.name, info.shape, Init::zeros, decay));
  }
  if (idx_.size() != 8) throw std::logic_error("m2rnn block: unexpected parameter list");
}

template <typename T>
void M2rnnBlock<T>::init_params(uint64_t seed, int64_t n_layers) {
  const m2rnn::BlockParams p = m2rnn::init_params(cfg_, seed, static_cast<int>(n_layers));
  const std::vector<const std::vector<double>*> src = {&p.w_in, &p.conv_w, &p.A_log, &p.dt_bias, &p.W, &p.D, &p.gamma, &p.w_out};
  for (std::size_t i = 0; i < idx_.size(); ++i) {
    T* dst = ps_->param(idx_[i]);
    for (std::size_t k = 0; k < src[i]->size(); ++k) dst[k] = static_cast<T>((*src[i])[k]);
  }
}

template <typename T>
m2rnn::BlockParams M2rnnBlock<T>::gather() const {
  m2rnn::BlockParams p;
  std::vector<std::vector<double>*> dst = {&p.w_in, &p.conv_w, &p.A_log, &p.dt_bias, &p.W, &p.D, &p.gamma, &p.w_out};
  for (std::size_t i = 0; i < idx_.size(); ++i) {
    const T* s = ps_->param(idx_[i]);
    dst[i]->assign(s, s + ps_->spec(idx_[i]).numel);
  }
  return p;
}

template <typename T>
void M2rnnBlock<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  const int64_t n = B * S * cfg_.hidden;
  x_.assign(x, x + n);
  std::vector<double> out;
  m2rnn::block_forward(cfg_, gather(), static_cast<int>(B), static_cast<int>(S), x_, nullptr, out, nullptr);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(out[i]);
}

template <typename T>
void M2rnnBlock<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  const int64_t n = B * S * cfg_.hidden;
  const std::vector<double> d(dy, dy + n);
  m2rnn::BlockGrads g;
  m2rnn::block_backward(cfg_, gather(), static_cast<int>(B), static_cast<int>(S), x_, nullptr, d, nullptr, g);
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(g.dx[i]);
  const std::vector<const std::vector<double>*> src = {&g.dparams.w_in, &g.dparams.conv_w, &g.dparams.A_log,
                                                       &g.dparams.dt_bias, &g.dparams.W, &g.dparams.D,
                                                       &g.dparams.gamma, &g.dparams.w_out};
  for (std::size_t i = 0; i < idx_.size(); ++i) {
    T* gp = ps_->grad(idx_[i]);
    for (std::size_t k = 0; k < src[i]->size(); ++k) gp[k] = static_cast<T>(gp[k] + (*src[i])[k]);
  }
}

template <typename T>
double M2rnnBlock<T>::flops_per_token(int64_t) const {
  const double N = cfg_.heads, K = cfg_.key_dim, V = cfg_.value_dim, C = cfg_.conv_channels();
  return 2.0 * cfg_.hidden * (cfg_.proj_width() + N * V) + 2 * N * K * V * V + 2 * N * K * V + N * K * V +
         2 * C * cfg_.conv_width;
}

template class M2rnnBlock<float>;
template class M2rnnBlock<double>;

}  // namespace megacpp
