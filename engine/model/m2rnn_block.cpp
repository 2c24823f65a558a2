#include "engine/model/m2rnn_block.hpp"

#include <cmath>
#include <stdexcept>

#include "engine/model/cpu_ops.hpp"
#include "engine/model/parallel.hpp"

namespace megacpp {

namespace {
double r_softplus(double x) { return x > 30 ? x : std::log1p(std::exp(x)); }  // as m2rnn_ref.cpp
}  // namespace

template <typename T>
M2rnnBlock<T>::M2rnnBlock(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t, const ModelParallel* mp) {
  const int tp = tp_size(mp), tr = tp_rank(mp);
  const auto& m = r.model.m2rnn;
  cfg_.hidden = static_cast<int>(r.model.hidden);
  cfg_.heads = static_cast<int>(m.heads);
  cfg_.key_dim = static_cast<int>(m.key_dim);
  cfg_.value_dim = static_cast<int>(m.value_dim);
  cfg_.conv_width = static_cast<int>(m.conv_width);
  cfg_.norm_eps = r.model.norm_eps;
  cfg_.clip = m2rnn::parse_clip(m.grad_clip);
  heads_full_ = cfg_.heads;
  if (tp > 1) {
    if (cfg_.heads % tp != 0)
      throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " does not divide model.m2rnn.heads=" + std::to_string(cfg_.heads));
    if (cfg_.q_heads != 1 || cfg_.k_heads != 1)
      throw std::runtime_error("M2RNN tensor parallelism supports one shared q/k head (q_heads = k_heads = 1)");
    cfg_.heads /= tp;  // this rank's heads: the reference's parameter shapes below are the local ones
    tpm_ = mp;
  }
  m2rnn::validate(cfg_);
  for (const auto& info : m2rnn::param_shapes(cfg_)) {
    if (info.name == "w_pre") continue;  // the layer's pre-norm is the engine's
    // Weight decay as the authors: projections, conv and W decay; A_log, dt_bias, D, gamma do not.
    const bool decay = info.name == "w_in" || info.name == "w_out" || info.name == "conv_w" || info.name == "W";
    idx_.push_back(ps.add(p + "m2rnn." + info.name, info.shape, Init::zeros, decay));
  }
  if (idx_.size() != 8) throw std::logic_error("m2rnn block: unexpected parameter list");
  if (tp > 1) {
    const int64_t d = cfg_.hidden, N = heads_full_, Nl = cfg_.heads, K = cfg_.key_dim, V = cfg_.value_dim, w = cfg_.conv_width;
    const int64_t QK = 2 * K, NV = N * V, NVl = Nl * V, Pl = cfg_.proj_width();
    auto& S = ps.specs;
    auto set = [&](int i, std::vector<int64_t> full, std::vector<std::pair<int64_t, int64_t>> rows,
                   std::vector<std::pair<int64_t, int64_t>> cols = {}) {
      ParamSpec& s = S[static_cast<std::size_t>(idx_[static_cast<std::size_t>(i)])];
      s.shard = ShardGroup::tp, s.full_shape = std::move(full), s.rows = std::move(rows), s.cols = std::move(cols);
    };
    // w_in [d, P]: columns [q K | k K | v N·V | φ N | g N·V]
    set(0, {d, QK + NV + N + NV}, {}, {{0, QK}, {QK + tr * NVl, NVl}, {QK + NV + tr * Nl, Nl}, {QK + NV + N + tr * NVl, NVl}});
    for (int64_t i = 0; i < d; ++i) S[static_cast<std::size_t>(idx_[0])].tp_replicated.push_back({i * Pl, QK});
    set(1, {QK + NV, w}, {{0, QK}, {QK + tr * NVl, NVl}});  // conv_w [C, w]
    S[static_cast<std::size_t>(idx_[1])].tp_replicated.push_back({0, QK * w});
    set(2, {N}, {{tr * Nl, Nl}});              // A_log
    set(3, {N}, {{tr * Nl, Nl}});              // dt_bias
    set(4, {N, V, V}, {{tr * Nl, Nl}});        // W
    set(5, {N, V}, {{tr * Nl, Nl}});           // D
    set(6, {NV}, {{tr * NVl, NVl}});           // gamma
    set(7, {NV, d}, {{tr * NVl, NVl}});        // w_out
  }
}

// The block of m2rnn_ref.cpp (forward_impl / block_backward) on this rank's heads, with the cross-head
// RMSNorm reductions over TP. Zero initial state, no pre-norm (the engine's layer norm precedes it).
template <typename T>
void M2rnnBlock<T>::tp_forward(int B, int S, std::vector<double>& y) {
  const m2rnn::BlockConfig& c = cfg_;
  const m2rnn::BlockParams p = gather();
  const int d = c.hidden, N = c.heads, K = c.key_dim, V = c.value_dim, w = c.conv_width;
  const int C = c.conv_channels(), P = c.proj_width(), NV = N * V, Wm1 = w - 1, QK = K, KK = K, Tt = Wm1 + S;
  const double NVf = static_cast<double>(heads_full_) * V;
  const std::size_t BS = std::size_t(B) * S;
  u_.assign(BS * P, 0.0);
  for (std::size_t r = 0; r < BS; ++r)
    for (int i = 0; i < d; ++i) {
      const double xi = x_[r * d + i];
      const double* wr = &p.w_in[std::size_t(i) * P];
      double* ur = &u_[r * P];
      for (int j = 0; j < P; ++j) ur[j] += xi * wr[j];
    }
  aext_.assign(std::size_t(B) * Tt * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t)
      std::copy_n(u_.begin() + static_cast<std::ptrdiff_t>((std::size_t(b) * S + t) * P), C,
                  aext_.begin() + static_cast<std::ptrdiff_t>((std::size_t(b) * Tt + Wm1 + t) * C));
  pre_.assign(BS * C, 0.0);
  const m2rnn::ScanShape ss = c.scan_shape(B, S);
  si_.q.assign(ss.q_size(), 0), si_.k.assign(ss.k_size(), 0), si_.v.assign(ss.v_size(), 0), si_.f.assign(ss.f_size(), 0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t) {
      const std::size_t r = std::size_t(b) * S + t;
      for (int ch = 0; ch < C; ++ch) {
        double acc = 0;
        for (int j = 0; j < w; ++j) acc += p.conv_w[std::size_t(ch) * w + j] * aext_[(std::size_t(b) * Tt + t + j) * C + ch];
        pre_[r * C + ch] = acc;
        const double cv = cpu::silu(acc);
        if (ch < QK) si_.q[r * QK + ch] = cv;
        else if (ch < QK + KK) si_.k[r * KK + ch - QK] = cv;
        else si_.v[r * NV + ch - QK - KK] = cv;
      }
    }
  phi_s_.assign(BS * N, 0.0);
  for (std::size_t r = 0; r < BS; ++r)
    for (int n = 0; n < N; ++n) {
      const double s = u_[r * P + C + n] + p.dt_bias[n];
      phi_s_[r * N + n] = s;
      si_.f[r * N + n] = std::exp(-std::exp(p.A_log[n]) * r_softplus(s));
    }
  si_.W = p.W, si_.D = p.D, si_.h0.clear();
  m2rnn::scan_forward(ss, si_, so_);
  m_.assign(BS * NV, 0.0);
  rho_.assign(BS, 0.0);
  for (std::size_t r = 0; r < BS; ++r) {
    double sq = 0;
    for (int e = 0; e < NV; ++e) {
      const double m = so_.o[r * NV + e] * cpu::silu(u_[r * P + C + N + e]);
      m_[r * NV + e] = m;
      sq += m * m;
    }
    rho_[r] = sq;
  }
  tp_all_reduce(tpm_, rho_.data(), rho_.size());  // Σ m² over all heads
  for (auto& v : rho_) v = std::sqrt(v / NVf + c.norm_eps);
  y.assign(BS * d, 0.0);
  for (std::size_t r = 0; r < BS; ++r) {
    double* yr = &y[r * d];
    for (int e = 0; e < NV; ++e) {
      const double re = p.gamma[e] * m_[r * NV + e] / rho_[r];
      const double* wo = &p.w_out[std::size_t(e) * d];
      for (int i = 0; i < d; ++i) yr[i] += re * wo[i];
    }
  }
  tp_all_reduce(tpm_, y.data(), y.size());  // row-parallel w_out
}

template <typename T>
void M2rnnBlock<T>::tp_backward(int B, int S, const std::vector<double>& dy, std::vector<double>& dxo) {
  const m2rnn::BlockConfig& c = cfg_;
  const m2rnn::BlockParams p = gather();
  const int d = c.hidden, N = c.heads, w = c.conv_width, K = c.key_dim;
  const int C = c.conv_channels(), P = c.proj_width(), NV = N * c.value_dim, Wm1 = w - 1, QK = K, KK = K, Tt = Wm1 + S;
  const double NVf = static_cast<double>(heads_full_) * c.value_dim;
  const std::size_t BS = std::size_t(B) * S;
  m2rnn::BlockParams dp;
  dp.w_in.assign(p.w_in.size(), 0.0), dp.conv_w.assign(p.conv_w.size(), 0.0), dp.A_log.assign(p.A_log.size(), 0.0);
  dp.dt_bias.assign(p.dt_bias.size(), 0.0), dp.gamma.assign(p.gamma.size(), 0.0), dp.w_out.assign(p.w_out.size(), 0.0);
  const m2rnn::ScanShape ss = c.scan_shape(B, S);
  std::vector<double> dout(ss.v_size(), 0.0), du(BS * P, 0.0), dr(BS * NV), dot(BS, 0.0);
  for (std::size_t r = 0; r < BS; ++r) {
    const double* dyr = &dy[r * d];
    const double rho = rho_[r];
    for (int e = 0; e < NV; ++e) {
      const double* wo = &p.w_out[std::size_t(e) * d];
      double* dwo = &dp.w_out[std::size_t(e) * d];
      const double m = m_[r * NV + e], re = p.gamma[e] * m / rho;
      double a = 0;
      for (int i = 0; i < d; ++i) {
        a += dyr[i] * wo[i];
        dwo[i] += re * dyr[i];
      }
      dr[r * NV + e] = a;
      dp.gamma[e] += a * m / rho;
      dot[r] += p.gamma[e] * a * m;
    }
  }
  tp_all_reduce(tpm_, dot.data(), dot.size());  // Σ over all heads' channels
  for (std::size_t r = 0; r < BS; ++r) {
    const double rho = rho_[r];
    for (int e = 0; e < NV; ++e) {
      const double m = m_[r * NV + e];
      const double dm = p.gamma[e] * dr[r * NV + e] / rho - m * dot[r] / (NVf * rho * rho * rho);
      const double gg = u_[r * P + C + N + e];
      dout[r * NV + e] = dm * cpu::silu(gg);
      du[r * P + C + N + e] = dm * so_.o[r * NV + e] * (cpu::sigmoid(gg) * (1.0 + gg * (1.0 - cpu::sigmoid(gg))));
    }
  }
  m2rnn::ScanGrads sg;
  m2rnn::scan_backward(ss, si_, dout, {}, c.clip, c.clip_value, sg);
  dp.W = sg.dW, dp.D = sg.dD;
  for (std::size_t r = 0; r < BS; ++r)
    for (int n = 0; n < N; ++n) {
      const double s = phi_s_[r * N + n], A = std::exp(p.A_log[n]), f = si_.f[r * N + n], dfv = sg.df[r * N + n];
      const double dphi = dfv * f * (-A) * cpu::sigmoid(s);
      du[r * P + C + n] = dphi;
      dp.dt_bias[n] += dphi;
      dp.A_log[n] += dfv * f * (-A * r_softplus(s));
    }
  std::vector<double> daext(std::size_t(B) * Tt * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t) {
      const std::size_t r = std::size_t(b) * S + t;
      for (int ch = 0; ch < C; ++ch) {
        const double dc = ch < QK ? sg.dq[r * QK + ch] : ch < QK + KK ? sg.dk[r * KK + ch - QK] : sg.dv[r * NV + ch - QK - KK];
        const double x = pre_[r * C + ch], sgm = cpu::sigmoid(x);
        const double dpre = dc * sgm * (1.0 + x * (1.0 - sgm));
        for (int j = 0; j < w; ++j) {
          const std::size_t ai = (std::size_t(b) * Tt + t + j) * C + ch;
          daext[ai] += p.conv_w[std::size_t(ch) * w + j] * dpre;
          dp.conv_w[std::size_t(ch) * w + j] += aext_[ai] * dpre;
        }
      }
    }
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < S; ++t)
      for (int ch = 0; ch < C; ++ch) du[(std::size_t(b) * S + t) * P + ch] = daext[(std::size_t(b) * Tt + Wm1 + t) * C + ch];
  dxo.assign(BS * d, 0.0);
  m2rnn::input_projection_backward(x_.data(), p.w_in.data(), du.data(), BS, d, P, dp.w_in.data(), dxo.data());
  tp_all_reduce(tpm_, dxo.data(), dxo.size());  // this rank's heads' (and the partial q/k) part of dx
  const std::vector<const std::vector<double>*> src = {&dp.w_in, &dp.conv_w, &dp.A_log, &dp.dt_bias, &dp.W, &dp.D, &dp.gamma, &dp.w_out};
  for (std::size_t i = 0; i < idx_.size(); ++i) {
    T* gp = ps_->grad(idx_[i]);
    for (std::size_t k = 0; k < src[i]->size(); ++k) gp[k] = static_cast<T>(gp[k] + (*src[i])[k]);
  }
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
  if (tpm_) {
    tp_forward(static_cast<int>(B), static_cast<int>(S), out);
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(out[i]);
    return;
  }
  m2rnn::block_forward(cfg_, gather(), static_cast<int>(B), static_cast<int>(S), x_, nullptr, out, nullptr);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(out[i]);
}

template <typename T>
void M2rnnBlock<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  const int64_t n = B * S * cfg_.hidden;
  const std::vector<double> d(dy, dy + n);
  if (tpm_) {
    std::vector<double> dxd;
    tp_backward(static_cast<int>(B), static_cast<int>(S), d, dxd);
    for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(dxd[i]);
    return;
  }
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
