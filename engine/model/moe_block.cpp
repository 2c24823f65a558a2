#include "engine/model/moe_block.hpp"

#include <stdexcept>

#include "engine/model/parallel.hpp"

namespace megacpp {

moe::MoeConfig moe_config_from_recipe(const Recipe& r, int64_t tokens) {
  const auto& m = r.model.moe;
  moe::MoeConfig c;
  c.tokens = tokens;
  c.hidden = r.model.hidden;
  c.experts = m.experts;
  c.top_k = m.top_k;
  c.ffn_hidden = m.ffn_hidden;
  c.shared_hidden = m.shared_expert_hidden;
  c.act = m.activation == "swiglu" ? moe::Activation::SwiGLU : moe::Activation::Relu2;
  c.score = m.score == "sigmoid" ? moe::Score::Sigmoid : moe::Score::Softmax;
  c.aux_coef = m.aux_loss_coef;
  c.z_coef = m.z_loss_coef;
  c.capacity_factor = m.capacity_factor;
  return c;
}

template <typename T>
MoeBlock<T>::MoeBlock(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t max_tokens,
                      const ModelParallel* mp)
    : mp_(ep_size(mp) > 1 ? mp : nullptr) {
  const auto& m = r.model.moe;
  if (m.shared_expert_hidden > 0 && m.shared_activation != "swiglu")
    throw std::runtime_error("model.moe.shared_activation=" + m.shared_activation +
                             ": the MoE block's shared expert is SwiGLU (the NAM56R choice); relu2 is not implemented");
  cfg_ = moe_config_from_recipe(r, max_tokens);
  cfg_.validate();
  const int64_t H = cfg_.hidden, E = cfg_.experts, F = cfg_.ffn_hidden, S = cfg_.shared_hidden;
  const int64_t ep = ep_size(mp), tp = tp_size(mp), tr = tp_rank(mp);
  if (E % ep != 0)
    throw std::runtime_error("parallel.ep=" + std::to_string(ep) + " does not divide model.moe.experts=" + std::to_string(E));
  if (F % tp != 0 || S % tp != 0)
    throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " must divide model.moe.ffn_hidden=" + std::to_string(F) +
                             " and shared_expert_hidden=" + std::to_string(S));
  el_ = E / ep, e0_ = ep_rank(mp) * el_;
  // Expert TP: this rank's columns of every FFN (routed and shared); the local reference runs with the
  // local widths and produces partial outputs, summed over TP.
  const int64_t Fl = F / tp, Sl = S / tp;
  cfg_.ffn_hidden = Fl, cfg_.shared_hidden = Sl;
  cfg_.validate();  // the local widths must still be multiples of 8 (the reference's limit)
  router_ = ps.add(p + "moe.router", {E, H}, Init::normal, true);
  w1_ = ps.add(p + "moe.w1", {el_, cfg_.ffn1(), H}, Init::normal, true);
  w2_ = ps.add(p + "moe.w2", {el_, H, Fl}, Init::normal_scaled_out, true);
  if (ep > 1 || tp > 1) {
    const ShardGroup g = ep > 1 && tp > 1 ? ShardGroup::tp_ep : ep > 1 ? ShardGroup::ep : ShardGroup::tp;
    const bool swiglu = cfg_.act == moe::Activation::SwiGLU;
    std::vector<std::pair<int64_t, int64_t>> rows1 = {{tr * Fl, Fl}};
    if (swiglu) rows1.push_back({F + tr * Fl, Fl});  // w1 rows: [gate F | up F]
    shard_general(ps, w1_, g, {E, swiglu ? 2 * F : F, H}, {{e0_, el_}}, rows1);
    shard_general(ps, w2_, g, {E, H, F}, {{e0_, el_}}, {}, tr * Fl, Fl);
  }
  if (ep > 1) {
    c1_ = cfg_;
    c1_.experts = el_, c1_.top_k = 1, c1_.shared_hidden = 0, c1_.aux_coef = 0, c1_.z_coef = 0, c1_.capacity_factor = 0;
    c1_.score = moe::Score::Softmax, c1_.renorm = true;  // top-1 of a fixed expert: weight p/p = 1 exactly
  }
  if (S > 0) {
    s1_ = ps.add(p + "moe.shared_w1", {2 * Sl, H}, Init::normal, true);
    s2_ = ps.add(p + "moe.shared_w2", {H, Sl}, Init::normal_scaled_out, true);
    if (tp > 1) {
      shard_rows(ps, s1_, ShardGroup::tp, {2 * S, H}, {{tr * Sl, Sl}, {S + tr * Sl, Sl}});
      shard_cols(ps, s2_, {H, S}, tr * Sl, Sl);
    }
  }
  if (tp > 1) {
    tpm_ = mp;
    // The router is replicated, but its gradient (through the partial expert outputs) is partial.
    ps.specs[static_cast<std::size_t>(router_)].tp_grad_partial = true;
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
  if (mp_) {  // EP: full-size expert tensors, zero outside this rank's experts (their slots give o = 0)
    const int64_t n1 = cfg_.ffn1() * cfg_.hidden, n2 = cfg_.hidden * cfg_.ffn_hidden;
    std::vector<double> w1(static_cast<std::size_t>(cfg_.experts * n1), 0.0), w2(static_cast<std::size_t>(cfg_.experts * n2), 0.0);
    std::copy(w.w1.begin(), w.w1.end(), w1.begin() + e0_ * n1);
    std::copy(w.w2.begin(), w.w2.end(), w2.begin() + e0_ * n2);
    w.w1.swap(w1), w.w2.swap(w2);
  }
  return w;
}

template <typename T>
moe::MoeParamsRef MoeBlock<T>::gather_local() const {
  moe::MoeParamsRef w;
  w.router.assign(static_cast<std::size_t>(el_ * cfg_.hidden), 0.0);  // unused: the expert is fixed
  w.w1.assign(ps_->param(w1_), ps_->param(w1_) + ps_->spec(w1_).numel);
  w.w2.assign(ps_->param(w2_), ps_->param(w2_) + ps_->spec(w2_).numel);
  return w;
}

// EP forward: f_ already holds the routing of this rank's tokens and the outputs of its local experts
// (zeros for the other ranks' experts). Rows routed to a remote expert (kept slots only) are sent to
// its owner as [expert id, x_t]; the owner runs them through its experts and sends the outputs back;
// they are patched into f_.expert_out and added to f_.y with their routing weights.
template <typename T>
void MoeBlock<T>::ep_forward() {
  Communicator& c = *mp_->ep;
  const int P = mp_->ep_size, me = mp_->ep_rank;
  const int64_t T_ = cfg_.tokens, K = cfg_.top_k, H = cfg_.hidden;
  send_slots_.assign(static_cast<std::size_t>(P), {});
  for (int64_t s = 0; s < T_ * K; ++s) {
    if (!f_.kept[static_cast<std::size_t>(s)]) continue;
    const int owner = static_cast<int>(f_.experts[static_cast<std::size_t>(s)] / el_);
    if (owner != me) send_slots_[static_cast<std::size_t>(owner)].push_back(s);
  }
  std::vector<int64_t> sn(static_cast<std::size_t>(P));
  for (int q = 0; q < P; ++q) sn[static_cast<std::size_t>(q)] = static_cast<int64_t>(send_slots_[static_cast<std::size_t>(q)].size());
  recv_n_.assign(static_cast<std::size_t>(P), 0);
  c.all_to_all_bytes(sn.data(), recv_n_.data(), sizeof(int64_t));
  const int64_t W = H + 1;  // [expert id, x]
  std::vector<std::size_t> sb(P), so(P), rb(P), ro(P);
  std::size_t st = 0, rt = 0;
  for (int q = 0; q < P; ++q) {
    so[q] = st, sb[q] = static_cast<std::size_t>(sn[q] * W) * sizeof(double), st += sb[q];
    ro[q] = rt, rb[q] = static_cast<std::size_t>(recv_n_[q] * W) * sizeof(double), rt += rb[q];
  }
  std::vector<double> sbuf(st / sizeof(double)), rbuf(rt / sizeof(double));
  {
    double* o = sbuf.data();
    for (int q = 0; q < P; ++q)
      for (int64_t s : send_slots_[static_cast<std::size_t>(q)]) {
        *o++ = static_cast<double>(f_.experts[static_cast<std::size_t>(s)]);
        const double* xt = x_.data() + (s / K) * H;
        o = std::copy(xt, xt + H, o);
      }
  }
  c.all_to_all_v(sbuf.data(), sb, so, rbuf.data(), rb, ro);
  const int64_t nr = static_cast<int64_t>(rbuf.size()) / W;
  recv_x_.resize(static_cast<std::size_t>(nr * H)), recv_e_.resize(static_cast<std::size_t>(nr));
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t e = static_cast<int64_t>(rbuf[static_cast<std::size_t>(i * W)]);
    if (e < e0_ || e >= e0_ + el_) throw std::logic_error("MoE EP: received a row for expert " + std::to_string(e) + " not held here");
    recv_e_[static_cast<std::size_t>(i)] = static_cast<int32_t>(e - e0_);
    std::copy(rbuf.begin() + i * W + 1, rbuf.begin() + (i + 1) * W, recv_x_.begin() + i * H);
  }
  std::vector<double> out(static_cast<std::size_t>(nr * H));
  if (nr > 0) {
    c1_.tokens = nr;
    f1_ = moe::moe_forward_ref(c1_, recv_x_, gather_local(), &recv_e_);
    out = f1_.expert_out;  // [nr, 1, H]
  }
  // outputs back: the reverse exchange
  std::vector<std::size_t> sb2(P), so2(P), rb2(P), ro2(P);
  st = rt = 0;
  for (int q = 0; q < P; ++q) {
    so2[q] = st, sb2[q] = static_cast<std::size_t>(recv_n_[q] * H) * sizeof(double), st += sb2[q];
    ro2[q] = rt, rb2[q] = static_cast<std::size_t>(sn[q] * H) * sizeof(double), rt += rb2[q];
  }
  std::vector<double> back(rt / sizeof(double));
  c.all_to_all_v(out.data(), sb2, so2, back.data(), rb2, ro2);
  const double* o = back.data();
  for (int q = 0; q < P; ++q)
    for (int64_t s : send_slots_[static_cast<std::size_t>(q)]) {
      std::copy(o, o + H, f_.expert_out.begin() + s * H);
      const double w = f_.weights[static_cast<std::size_t>(s)];
      double* yt = f_.y.data() + (s / K) * H;
      for (int64_t i = 0; i < H; ++i) yt[i] += w * o[i];
      o += H;
    }
}

// EP backward: the gradient w·dy_t of every remote slot goes to its expert's owner, which accumulates
// its expert weight gradients and returns ∂/∂x of that row; g (from the reference on this rank's
// tokens, which saw zero weights for remote experts) gets those rows added.
template <typename T>
void MoeBlock<T>::ep_backward(const std::vector<double>& dy, moe::MoeGradsRef& g) {
  Communicator& c = *mp_->ep;
  const int P = mp_->ep_size;
  const int64_t K = cfg_.top_k, H = cfg_.hidden;
  std::vector<std::size_t> sb(P), so(P), rb(P), ro(P);
  std::size_t st = 0, rt = 0;
  for (int q = 0; q < P; ++q) {
    const auto ns = static_cast<int64_t>(send_slots_[static_cast<std::size_t>(q)].size());
    so[q] = st, sb[q] = static_cast<std::size_t>(ns * H) * sizeof(double), st += sb[q];
    ro[q] = rt, rb[q] = static_cast<std::size_t>(recv_n_[q] * H) * sizeof(double), rt += rb[q];
  }
  std::vector<double> sbuf(st / sizeof(double)), rbuf(rt / sizeof(double));
  {
    double* o = sbuf.data();
    for (int q = 0; q < P; ++q)
      for (int64_t s : send_slots_[static_cast<std::size_t>(q)]) {
        const double w = f_.weights[static_cast<std::size_t>(s)];
        const double* d = dy.data() + (s / K) * H;
        for (int64_t i = 0; i < H; ++i) *o++ = w * d[i];
      }
  }
  c.all_to_all_v(sbuf.data(), sb, so, rbuf.data(), rb, ro);
  const int64_t nr = static_cast<int64_t>(rbuf.size()) / H;
  std::vector<double> dxr(static_cast<std::size_t>(nr * H));
  if (nr > 0) {
    c1_.tokens = nr;
    const moe::MoeGradsRef g1 = moe::moe_backward_ref(c1_, recv_x_, gather_local(), f1_, rbuf);
    dxr = g1.x;
    const int64_t n1 = cfg_.ffn1() * H, n2 = H * cfg_.ffn_hidden;
    for (std::size_t k = 0; k < g1.w1.size(); ++k) g.w1[static_cast<std::size_t>(e0_ * n1) + k] += g1.w1[k];
    for (std::size_t k = 0; k < g1.w2.size(); ++k) g.w2[static_cast<std::size_t>(e0_ * n2) + k] += g1.w2[k];
  }
  std::vector<double> back(st / sizeof(double));
  c.all_to_all_v(dxr.data(), rb, ro, back.data(), sb, so);
  const double* o = back.data();
  for (int q = 0; q < P; ++q)
    for (int64_t s : send_slots_[static_cast<std::size_t>(q)]) {
      double* dxt = g.x.data() + (s / K) * H;
      for (int64_t i = 0; i < H; ++i) dxt[i] += o[i];
      o += H;
    }
}

template <typename T>
void MoeBlock<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  cfg_.tokens = B * S;
  const int64_t n = cfg_.tokens * cfg_.hidden;
  x_.assign(x, x + n);
  f_ = moe::moe_forward_ref(cfg_, x_, gather());
  if (mp_) ep_forward();
  if (tpm_) tp_all_reduce(tpm_, f_.y.data(), f_.y.size());  // partial expert and shared outputs
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
  if (tpm_) {  // every TP rank adds the (replicated) auxiliary terms; the TP sums of dx and the router
    c.aux_coef /= tpm_->tp_size;  // gradient must count them once
    c.z_coef /= tpm_->tp_size;
  }
  moe::MoeGradsRef g = moe::moe_backward_ref(c, x_, gather(), f_, d);
  if (mp_) ep_backward(d, g);
  if (tpm_) tp_all_reduce(tpm_, g.x.data(), g.x.size());
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(g.x[i]);
  auto acc = [&](int i, const std::vector<double>& s) {
    if (i < 0) return;
    T* gp = ps_->grad(i);
    for (std::size_t k = 0; k < s.size(); ++k) gp[k] = static_cast<T>(gp[k] + s[k]);
  };
  if (mp_) {  // EP: g.w1/g.w2 are full-size; this rank's experts only
    const int64_t n1 = cfg_.ffn1() * cfg_.hidden, n2 = cfg_.hidden * cfg_.ffn_hidden;
    g.w1 = std::vector<double>(g.w1.begin() + e0_ * n1, g.w1.begin() + (e0_ + el_) * n1);
    g.w2 = std::vector<double>(g.w2.begin() + e0_ * n2, g.w2.begin() + (e0_ + el_) * n2);
  }
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
