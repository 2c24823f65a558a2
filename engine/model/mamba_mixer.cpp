#include "engine/model/mamba_mixer.hpp"

#include <cmath>

#include "engine/config/validate.hpp"
#include "engine/model/cpu_ops.hpp"
#include "engine/model/parallel.hpp"

namespace megacpp {

template <typename T>
MambaMixer<T>::MambaMixer(const Recipe& r, ParamStore<T>& ps, const std::string& p, int64_t max_tokens,
                          const ModelParallel* mp)
    : mp_(tp_size(mp) > 1 ? mp : nullptr) {
  const auto& m = r.model;
  hidden_ = m.hidden;
  d_inner_ = mamba_d_inner(m);
  H_ = mamba_heads(m);
  P_ = m.mamba.head_dim;
  G_ = m.mamba.ngroups;
  R_ = m.mamba.mimo_rank;
  N_ = m.mamba.state_dim;
  L_ = m.mamba.chunk_size;
  n_ang_ = mamba_n_angles(m.mamba);
  // Tensor parallelism: this rank's heads and groups (full sizes kept for the shard descriptors).
  const int64_t tp = tp_size(mp), tr = tp_rank(mp), Hf = H_, Gf = G_, Df = d_inner_;
  if (Hf % tp != 0 || Gf % tp != 0 || Df != Hf * P_)
    throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " must divide the Mamba heads (" + std::to_string(Hf) +
                             ") and groups (" + std::to_string(Gf) + ")");
  H_ = Hf / tp, G_ = Gf / tp, d_inner_ = H_ * P_;
  d_in_proj_ = 2 * d_inner_ + 2 * G_ * R_ * N_ + 3 * H_;
  a_floor_ = m.mamba.a_floor;
  rope_fraction_ = m.mamba.rope_fraction;
  norm_eps_ = m.norm_eps;
  act_ = mimo::prep::parse_a_activation(m.mamba.a_activation);
  if (m.mamba.outproj_norm)
    throw std::runtime_error("model.mamba.outproj_norm: the fused output norm is not wired into the M block yet");
  shape(1, L_).validate();  // kernel limits (N, P, R, chunk) refused here with the scan's own message
  w_in_ = ps.add(p + "mamba.in_proj", {d_in_proj_, hidden_}, Init::normal, true);
  w_ang_ = ps.add(p + "mamba.angle_proj", {n_ang_, hidden_}, Init::normal, true);
  w_out_ = ps.add(p + "mamba.out_proj", {hidden_, d_inner_}, Init::normal_scaled_out, true);
  dt_bias_ = ps.add(p + "mamba.dt_bias", {H_}, Init::mamba_dt_bias, false);
  b_bias_ = ps.add(p + "mamba.B_bias", {H_, R_, N_}, Init::ones, false);
  c_bias_ = ps.add(p + "mamba.C_bias", {H_, R_, N_}, Init::ones, false);
  b_norm_ = ps.add(p + "mamba.B_norm", {N_}, Init::ones, false);
  c_norm_ = ps.add(p + "mamba.C_norm", {N_}, Init::ones, false);
  psi_ = ps.add(p + "mamba.mimo_v", {H_, R_, P_}, Init::constant, false, 1.0 / static_cast<double>(R_));
  zeta_ = ps.add(p + "mamba.mimo_z", {H_, R_, P_}, Init::ones, false);
  phi_ = ps.add(p + "mamba.mimo_o", {H_, R_, P_}, Init::constant, false, 1.0 / static_cast<double>(R_));
  d_ = ps.add(p + "mamba.D", {H_}, Init::ones, false);
  if (tp > 1) {
    const int64_t grn = G_ * R_ * N_, GRNf = Gf * R_ * N_;
    shard_rows(ps, w_in_, ShardGroup::tp, {2 * Df + 2 * GRNf + 3 * Hf, hidden_},
               {{tr * d_inner_, d_inner_},                    // z
                {Df + tr * d_inner_, d_inner_},               // x
                {2 * Df + tr * grn, grn},                     // B
                {2 * Df + GRNf + tr * grn, grn},              // C
                {2 * Df + 2 * GRNf + tr * H_, H_},            // dd_dt
                {2 * Df + 2 * GRNf + Hf + tr * H_, H_},       // dd_A
                {2 * Df + 2 * GRNf + 2 * Hf + tr * H_, H_}});  // trap
    shard_cols(ps, w_out_, {hidden_, Df}, tr * d_inner_, d_inner_);
    shard_rows(ps, dt_bias_, ShardGroup::tp, {Hf}, {{tr * H_, H_}});
    shard_rows(ps, d_, ShardGroup::tp, {Hf}, {{tr * H_, H_}});
    shard_rows(ps, b_bias_, ShardGroup::tp, {Hf, R_, N_}, {{tr * H_, H_}});
    shard_rows(ps, c_bias_, ShardGroup::tp, {Hf, R_, N_}, {{tr * H_, H_}});
    for (int i : {psi_, zeta_, phi_}) shard_rows(ps, i, ShardGroup::tp, {Hf, R_, P_}, {{tr * H_, H_}});
    for (int i : {w_ang_, b_norm_, c_norm_}) ps.specs[static_cast<std::size_t>(i)].tp_grad_partial = true;
  }
  proj_.resize(static_cast<std::size_t>(max_tokens * d_in_proj_));
  ang_.resize(static_cast<std::size_t>(max_tokens * n_ang_));
  out_.resize(static_cast<std::size_t>(max_tokens * d_inner_));
}

template <typename T>
mimo::MimoShape MambaMixer<T>::shape(int64_t B, int64_t S) const {
  mimo::MimoShape s{B, S, H_, G_, N_, P_, R_, L_};
  s.rope_fraction = rope_fraction_;  // the angle count (n_ang_) follows the recipe: so must the scan
  return s;
}

template <typename T>
void MambaMixer<T>::forward(const T* x, T* y, int64_t B, int64_t S) {
  const int64_t M = B * S, GRN = G_ * R_ * N_;
  x_ = x;
  cpu::linear_fwd(x, ps_->param(w_in_), proj_.data(), M, hidden_, d_in_proj_);
  cpu::linear_fwd(x, ps_->param(w_ang_), ang_.data(), M, hidden_, n_ang_);
  const T* pr = proj_.data();
  const int64_t oz = 0, ox = d_inner_, oB = 2 * d_inner_, oC = oB + GRN, odt = oC + GRN, oA = odt + H_, otr = oA + H_;
  // Per-token slices into float64 kernel layouts.
  in_.z.resize(M * d_inner_), in_.v.resize(M * d_inner_);
  dd_dt_.resize(M * H_), dd_a_.resize(M * H_), in_.trap.resize(M * H_);
  in_.q.resize(M * GRN), in_.k.resize(M * GRN), braw_rstd_.resize(M * G_ * R_), craw_rstd_.resize(M * G_ * R_);
  raw_angles_.resize(M * n_ang_);
  const T* wB = ps_->param(b_norm_);
  const T* wC = ps_->param(c_norm_);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) {
      const int64_t m = b * S + t;
      const T* row = pr + m * d_in_proj_;
      for (int64_t i = 0; i < d_inner_; ++i) in_.z[m * d_inner_ + i] = row[oz + i], in_.v[m * d_inner_ + i] = row[ox + i];
      for (int64_t h = 0; h < H_; ++h) {
        dd_dt_[m * H_ + h] = row[odt + h];
        dd_a_[m * H_ + h] = row[oA + h];
        in_.trap[(b * H_ + h) * S + t] = row[otr + h];
      }
      for (int64_t j = 0; j < n_ang_; ++j) raw_angles_[m * n_ang_ + j] = ang_[m * n_ang_ + j];
      for (int64_t g = 0; g < G_; ++g)
        for (int64_t r = 0; r < R_; ++r) {
          // projection layout (g r n) → kernel layout (r g n), RMS-normalised over n
          const T* bsrc = row + oB + (g * R_ + r) * N_;
          const T* csrc = row + oC + (g * R_ + r) * N_;
          double sb = 0, sc = 0;
          for (int64_t n = 0; n < N_; ++n) sb += double(bsrc[n]) * bsrc[n], sc += double(csrc[n]) * csrc[n];
          const double rb = 1.0 / std::sqrt(sb / N_ + norm_eps_), rc = 1.0 / std::sqrt(sc / N_ + norm_eps_);
          braw_rstd_[(m * G_ + g) * R_ + r] = rb;
          craw_rstd_[(m * G_ + g) * R_ + r] = rc;
          double* kd = &in_.k[((m * R_ + r) * G_ + g) * N_];
          double* qd = &in_.q[((m * R_ + r) * G_ + g) * N_];
          for (int64_t n = 0; n < N_; ++n) kd[n] = bsrc[n] * rb * wB[n], qd[n] = csrc[n] * rc * wC[n];
        }
    }
  std::vector<double> dt_bias(H_);
  for (int64_t h = 0; h < H_; ++h) dt_bias[h] = ps_->param(dt_bias_)[h];
  auto dec = mimo::prep::decay_prep_forward(B, S, H_, dd_dt_, dd_a_, dt_bias, act_, a_floor_);
  A_ = std::move(dec.A);
  in_.dt = std::move(dec.dt);
  in_.adt = std::move(dec.adt);
  in_.angles = mimo::prep::angle_cumsum_forward(B, S, H_, n_ang_, raw_angles_, in_.dt);
  auto cp = [&](int idx, std::vector<double>& dst) {
    const auto& sp = ps_->spec(idx);
    dst.assign(ps_->param(idx), ps_->param(idx) + sp.numel);
  };
  cp(c_bias_, in_.q_bias), cp(b_bias_, in_.k_bias), cp(psi_, in_.psi), cp(zeta_, in_.zeta), cp(phi_, in_.phi), cp(d_, in_.d);
  const std::vector<double> out = mimo::mimo_forward_chunked(shape(B, S), in_);
  for (int64_t i = 0; i < M * d_inner_; ++i) out_[i] = static_cast<T>(out[i]);
  cpu::linear_fwd(out_.data(), ps_->param(w_out_), y, M, d_inner_, hidden_);
  tp_all_reduce(mp_, y, static_cast<std::size_t>(M * hidden_));
}

template <typename T>
void MambaMixer<T>::backward(const T* dy, T* dx, int64_t B, int64_t S) {
  const int64_t M = B * S, GRN = G_ * R_ * N_;
  std::vector<T> dout_t(M * d_inner_);
  cpu::linear_bwd(out_.data(), ps_->param(w_out_), dy, dout_t.data(), ps_->grad(w_out_), M, d_inner_, hidden_);
  const std::vector<double> dout(dout_t.begin(), dout_t.end());
  const mimo::MimoGrads g = mimo::mimo_backward_chunked(shape(B, S), in_, dout);
  const auto ag = mimo::prep::angle_cumsum_backward(B, S, H_, n_ang_, raw_angles_, in_.dt, g.dangles);
  std::vector<double> ddt_total(g.ddt);
  for (std::size_t i = 0; i < ddt_total.size(); ++i) ddt_total[i] += ag.ddt[i];
  std::vector<double> dt_bias(H_);
  for (int64_t h = 0; h < H_; ++h) dt_bias[h] = ps_->param(dt_bias_)[h];
  const auto dg = mimo::prep::decay_prep_backward(B, S, H_, dd_dt_, dd_a_, dt_bias, g.dadt, ddt_total, act_, a_floor_);
  // parameter gradients of the scan and the preprocessing
  auto acc = [&](int idx, const std::vector<double>& src) {
    T* gp = ps_->grad(idx);
    for (std::size_t i = 0; i < src.size(); ++i) gp[i] = static_cast<T>(gp[i] + src[i]);
  };
  acc(c_bias_, g.dq_bias), acc(b_bias_, g.dk_bias), acc(psi_, g.dpsi), acc(zeta_, g.dzeta), acc(phi_, g.dphi);
  acc(d_, g.dd), acc(dt_bias_, dg.ddt_bias);
  // gradient of the projections
  std::vector<T> dproj(M * d_in_proj_), dang(M * n_ang_);
  const int64_t ox = d_inner_, oB = 2 * d_inner_, oC = oB + GRN, odt = oC + GRN, oA = odt + H_, otr = oA + H_;
  const T* wB = ps_->param(b_norm_);
  const T* wC = ps_->param(c_norm_);
  T* gwB = ps_->grad(b_norm_);
  T* gwC = ps_->grad(c_norm_);
  const T* pr = proj_.data();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) {
      const int64_t m = b * S + t;
      T* drow = dproj.data() + m * d_in_proj_;
      const T* row = pr + m * d_in_proj_;
      for (int64_t i = 0; i < d_inner_; ++i) drow[i] = static_cast<T>(g.dz[m * d_inner_ + i]), drow[ox + i] = static_cast<T>(g.dv[m * d_inner_ + i]);
      for (int64_t h = 0; h < H_; ++h) {
        drow[odt + h] = static_cast<T>(dg.ddd_dt[m * H_ + h]);
        drow[oA + h] = static_cast<T>(dg.ddd_A[m * H_ + h]);
        drow[otr + h] = static_cast<T>(g.dtrap[(b * H_ + h) * S + t]);
      }
      for (int64_t j = 0; j < n_ang_; ++j) dang[m * n_ang_ + j] = static_cast<T>(ag.draw_angles[m * n_ang_ + j]);
      for (int64_t gg = 0; gg < G_; ++gg)
        for (int64_t r = 0; r < R_; ++r) {
          // RMSNorm backward per (token, group, rank): y = x·rstd·w
          for (int which = 0; which < 2; ++which) {
            const T* src = row + (which ? oC : oB) + (gg * R_ + r) * N_;
            const double rs = (which ? craw_rstd_ : braw_rstd_)[(m * G_ + gg) * R_ + r];
            const T* w = which ? wC : wB;
            T* gw = which ? gwC : gwB;
            const double* dyn = &(which ? g.dq : g.dk)[((m * R_ + r) * G_ + gg) * N_];
            double dot = 0;
            for (int64_t n = 0; n < N_; ++n) dot += dyn[n] * w[n] * src[n] * rs;
            dot /= static_cast<double>(N_);
            T* dsrc = drow + (which ? oC : oB) + (gg * R_ + r) * N_;
            for (int64_t n = 0; n < N_; ++n) {
              const double xhat = src[n] * rs;
              dsrc[n] = static_cast<T>(rs * (dyn[n] * w[n] - xhat * dot));
              gw[n] = static_cast<T>(gw[n] + dyn[n] * xhat);
            }
          }
        }
    }
  cpu::linear_bwd(x_, ps_->param(w_in_), dproj.data(), dx, ps_->grad(w_in_), M, hidden_, d_in_proj_);
  cpu::linear_bwd_acc(x_, ps_->param(w_ang_), dang.data(), dx, ps_->grad(w_ang_), M, hidden_, n_ang_);
  // dang (and so angle_proj's gradient and its part of dx) holds this rank's heads only: dx is summed
  // here, angle_proj/B_norm/C_norm gradients by the trainer (tp_grad_partial).
  tp_all_reduce(mp_, dx, static_cast<std::size_t>(M * hidden_));
}

template <typename T>
double MambaMixer<T>::flops_per_token(int64_t) const {
  const double proj = 2.0 * static_cast<double>(hidden_) * static_cast<double>(d_in_proj_ + n_ang_ + d_inner_);
  const double scan = static_cast<double>(H_) * (static_cast<double>((L_ + 1) * R_ * R_ * (N_ + P_)) + 4.0 * R_ * N_ * P_);
  return proj + scan;
}

template class MambaMixer<float>;
template class MambaMixer<double>;

}  // namespace megacpp
