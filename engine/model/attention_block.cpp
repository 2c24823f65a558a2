#include "engine/model/attention_block.hpp"

#include <cmath>

#include "engine/model/cpu_ops.hpp"
#include "engine/model/parallel.hpp"
#include "kernels/attention/attention_ref.hpp"

namespace megacpp {

template <typename T>
AttentionBlock<T>::AttentionBlock(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t max_tokens,
                                  const ModelParallel* mp)
    : mp_(tp_size(mp) > 1 ? mp : nullptr),
      hidden_(r.model.hidden),
      H_(r.model.attention.heads),
      Hk_(r.model.attention.kv_heads),
      D_(r.model.attention.head_dim),
      theta_(r.model.attention.rope_theta),
      rope_(r.model.attention.rope) {
  const int64_t tp = tp_size(mp), tr = tp_rank(mp), H = H_, Hk = Hk_;
  if (H % tp != 0 || Hk % tp != 0)
    throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " must divide model.attention.heads=" + std::to_string(H) +
                             " and kv_heads=" + std::to_string(Hk));
  H_ = H / tp, Hk_ = Hk / tp;
  w_qkv_ = ps.add(p + "attention.qkv", {(H_ + 2 * Hk_) * D_, hidden_}, Init::normal, true);
  w_o_ = ps.add(p + "attention.out", {hidden_, H_ * D_}, Init::normal_scaled_out, true);
  if (tp > 1) {
    shard_rows(ps, w_qkv_, ShardGroup::tp, {(H + 2 * Hk) * D_, hidden_},
               {{tr * H_ * D_, H_ * D_}, {(H + tr * Hk_) * D_, Hk_ * D_}, {(H + Hk + tr * Hk_) * D_, Hk_ * D_}});
    shard_cols(ps, w_o_, {hidden_, H * D_}, tr * H_ * D_, H_ * D_);
  }
  qkv_.resize(static_cast<std::size_t>(max_tokens * (H_ + 2 * Hk_) * D_));
  o_t_.resize(static_cast<std::size_t>(max_tokens * H_ * D_));
}

template <typename T>
void AttentionBlock<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  const int64_t M = B * S, W = (H_ + 2 * Hk_) * D_;
  x_ = x;
  cpu::linear_fwd(x, ps_->param(w_qkv_), qkv_.data(), M, hidden_, W);
  std::vector<double> qr(M * H_ * D_), kr(M * Hk_ * D_);
  v_.resize(M * Hk_ * D_);
  for (int64_t m = 0; m < M; ++m) {
    const T* row = qkv_.data() + m * W;
    for (int64_t i = 0; i < H_ * D_; ++i) qr[m * H_ * D_ + i] = row[i];
    for (int64_t i = 0; i < Hk_ * D_; ++i) kr[m * Hk_ * D_ + i] = row[H_ * D_ + i], v_[m * Hk_ * D_ + i] = row[(H_ + Hk_) * D_ + i];
  }
  q_.resize(qr.size()), k_.resize(kr.size());
  attn_ref::rope_forward(B, S, H_, D_, theta_, rope_, qr.data(), q_.data());
  attn_ref::rope_forward(B, S, Hk_, D_, theta_, rope_, kr.data(), k_.data());
  const attn_ref::Shape s{B, S, H_, Hk_, D_};
  o_.resize(M * H_ * D_), lse_.resize(B * H_ * S);
  attn_ref::forward(s, 1.0 / std::sqrt(static_cast<double>(D_)), q_.data(), k_.data(), v_.data(), o_.data(), lse_.data());
  for (int64_t i = 0; i < M * H_ * D_; ++i) o_t_[i] = static_cast<T>(o_[i]);
  cpu::linear_fwd(o_t_.data(), ps_->param(w_o_), y, M, H_ * D_, hidden_);
  tp_all_reduce(mp_, y, static_cast<std::size_t>(M * hidden_));
}

template <typename T>
void AttentionBlock<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  const int64_t M = B * S, W = (H_ + 2 * Hk_) * D_;
  std::vector<T> do_t(M * H_ * D_);
  cpu::linear_bwd(o_t_.data(), ps_->param(w_o_), dy, do_t.data(), ps_->grad(w_o_), M, H_ * D_, hidden_);
  const std::vector<double> dout(do_t.begin(), do_t.end());
  std::vector<double> dq(M * H_ * D_), dk(M * Hk_ * D_), dv(M * Hk_ * D_);
  const attn_ref::Shape s{B, S, H_, Hk_, D_};
  attn_ref::backward(s, 1.0 / std::sqrt(static_cast<double>(D_)), q_.data(), k_.data(), v_.data(), o_.data(),
                     dout.data(), lse_.data(), dq.data(), dk.data(), dv.data());
  std::vector<double> dqr(dq.size()), dkr(dk.size());
  attn_ref::rope_backward(B, S, H_, D_, theta_, rope_, dq.data(), dqr.data());
  attn_ref::rope_backward(B, S, Hk_, D_, theta_, rope_, dk.data(), dkr.data());
  std::vector<T> dqkv(M * W);
  for (int64_t m = 0; m < M; ++m) {
    T* row = dqkv.data() + m * W;
    for (int64_t i = 0; i < H_ * D_; ++i) row[i] = static_cast<T>(dqr[m * H_ * D_ + i]);
    for (int64_t i = 0; i < Hk_ * D_; ++i)
      row[H_ * D_ + i] = static_cast<T>(dkr[m * Hk_ * D_ + i]), row[(H_ + Hk_) * D_ + i] = static_cast<T>(dv[m * Hk_ * D_ + i]);
  }
  cpu::linear_bwd(x_, ps_->param(w_qkv_), dqkv.data(), dx, ps_->grad(w_qkv_), M, hidden_, W);
  tp_all_reduce(mp_, dx, static_cast<std::size_t>(M * hidden_));
}

template <typename T>
double AttentionBlock<T>::flops_per_token(int64_t S) const {
  // projections + causal core (QKᵀ and PV over half the score matrix on average)
  return 2.0 * static_cast<double>(hidden_ * (H_ + 2 * Hk_) * D_ + H_ * D_ * hidden_) +
         2.0 * static_cast<double>(H_ * D_ * S);
}

template class AttentionBlock<float>;
template class AttentionBlock<double>;

}  // namespace megacpp
