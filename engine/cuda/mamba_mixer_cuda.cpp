// mamba_mixer_cuda.cpp — the M letter on the CUDA backend (CPU twin: engine/model/mamba_mixer.cpp).
//   proj = x·W_inᵀ (bf16 [M, d_in_proj]), ang = x·W_angᵀ (bf16 [M, n_ang])          cuBLASLt
//   glue (kernels/mimo/mixer_glue.cu): z, v, RMSNorm'd q (C) / k (B), trap, Δ, ADT, θ = cumsum π·tanh(ang)·Δ
//   out = mimo_fwd(...) (bf16 [M, H·P]);  y = out·W_outᵀ                            kernels/mimo, cuBLASLt
// Saved for backward (arena, sized for max_tokens): proj, ang, out, rstd of B/C, and the PsiV cache
// (B,H,S,R,P) bf16 when features.psiv_cache is on. The scan inputs (z, v, q, k, trap, Δ, ADT, θ) are NOT
// kept: the backward recomputes them with the same glue kernel (bitwise identical, memory-bound) in scratch.
// Backward: out_proj bwd → mimo_bwd (workspace in scratch) → the scan's parameter gradients (written into
// scratch by the kernels, then added into the grad views) → glue backward (dproj, dang, += dt_bias/B_norm/
// C_norm grads) → dW_in, dW_ang, dx = dproj·W_in + dang·W_ang. Deterministic: no float atomics anywhere.
// Tensor parallelism (the CPU twin's contract and the seeds' TP mixer): this rank holds heads/tp heads and
// ngroups/tp groups (in_proj column-parallel over z, x, B, C, dd_dt, dd_A, trap; the per-head parameters
// sharded; out_proj row-parallel); angle_proj, B_norm and C_norm replicated, their gradients left PARTIAL
// (tp_grad_partial: the trainer all-reduces them). y is all-reduced over TP after out_proj; dx (which
// includes this rank's part of dang·W_ang) after the input projections' backward.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/config/validate.hpp"
#include "engine/cuda/blocks.hpp"
#include "kernels/mimo/mimo_launch.hpp"
#include "kernels/mimo/mixer_glue.hpp"
#include "kernels/train_ops/linear.hpp"

namespace megacpp::cuda_backend {
namespace {

namespace to = megacpp::train_ops;
using mimo::bf16_bits;

bf16_bits* bits(bf16* p) { return reinterpret_cast<bf16_bits*>(p); }
const bf16_bits* bits(const bf16* p) { return reinterpret_cast<const bf16_bits*>(p); }

bool one_of(int64_t v, std::initializer_list<int64_t> s) { return std::find(s.begin(), s.end(), v) != s.end(); }

class MambaMixerCuda final : public DeviceBlock {
 public:
  explicit MambaMixerCuda(const BlockBuild& b) : p_(*b.params), arena_(*b.arena), max_tokens_(b.max_tokens) {
    const auto& m = b.recipe->model;
    const auto& mm = m.mamba;
    hidden_ = m.hidden;
    d_inner_ = mamba_d_inner(m);
    H_ = mamba_heads(m), P_ = mm.head_dim, G_ = mm.ngroups, R_ = mm.mimo_rank, N_ = mm.state_dim, L_ = mm.chunk_size;
    if (const int64_t tp = tp_size(b.mp); tp > 1) {
      if (H_ % tp != 0 || G_ % tp != 0 || b.tp == nullptr || b.tp->size() != tp)
        throw std::runtime_error("M block on CUDA: parallel.tp=" + std::to_string(tp) + " must divide the Mamba heads (" +
                                 std::to_string(H_) + ") and model.mamba.ngroups (" + std::to_string(G_) +
                                 ") (with a TP group)");
      H_ /= tp, G_ /= tp, d_inner_ = H_ * P_;  // this rank's heads and groups (the layout's local shards)
      tp_ = b.tp;
    }
    n_ang_ = mamba_n_angles(mm);
    GRN_ = G_ * R_ * N_;
    dip_ = 2 * d_inner_ + 2 * GRN_ + 3 * H_;
    rope_ = mm.rope_fraction;
    psiv_ = b.recipe->features.psiv_cache;
    auto refuse = [](const std::string& key, const std::string& val, const std::string& supported) {
      throw std::runtime_error(key + ": " + val + " is not supported by the M block on the CUDA backend (supported: " +
                               supported + ")");
    };
    if (mm.outproj_norm) refuse("model.mamba.outproj_norm", "true", "false");
    if (!one_of(N_, {16, 32, 64, 128, 256})) refuse("model.mamba.state_dim", std::to_string(N_), "16, 32, 64, 128, 256");
    if (!one_of(P_, {32, 64, 128})) refuse("model.mamba.head_dim", std::to_string(P_), "32, 64, 128");
    if (N_ * P_ > 16384)
      refuse("model.mamba.state_dim x model.mamba.head_dim", std::to_string(N_) + " x " + std::to_string(P_),
             "state_dim*head_dim <= 16384: the scan state lives in the registers of one CTA");
    if (!one_of(R_, {1, 2, 4, 8})) refuse("model.mamba.mimo_rank", std::to_string(R_), "1, 2, 4, 8");
    if (!one_of(L_, {8, 16, 32, 64})) refuse("model.mamba.chunk_size", std::to_string(L_), "8, 16, 32, 64");
    if (G_ <= 0 || H_ % G_ != 0)
      refuse("model.mamba.ngroups", std::to_string(G_), "a divisor of the head count " + std::to_string(H_));
    if (rope_ != 0.5 && rope_ != 1.0) refuse("model.mamba.rope_fraction", std::to_string(rope_), "0.5, 1.0");
    if (H_ > 1024) refuse("model.mamba heads (hidden*expand/head_dim)", std::to_string(H_), "<= 1024");
    if (mm.a_activation == "softplus") heavy_ = false;
    else if (mm.a_activation == "heavy_tail") heavy_ = true;
    else refuse("model.mamba.a_activation", "'" + mm.a_activation + "'", "softplus, heavy_tail");
    if (max_tokens_ < L_ || max_tokens_ % L_ != 0)
      throw std::runtime_error("M block on CUDA: max tokens per micro-batch " + std::to_string(max_tokens_) +
                               " must be a positive multiple of model.mamba.chunk_size=" + std::to_string(L_));
    dims(1, static_cast<int>(L_));  // anything else the scan refuses (shared-memory fit), named by the kernels
    norm_eps_ = m.norm_eps, a_floor_ = mm.a_floor;

    const std::string& pf = b.prefix;
    w_in_ = p_.index(pf + "mamba.in_proj");
    w_ang_ = p_.index(pf + "mamba.angle_proj");
    w_out_ = p_.index(pf + "mamba.out_proj");
    dt_bias_ = p_.index(pf + "mamba.dt_bias");
    b_bias_ = p_.index(pf + "mamba.B_bias");
    c_bias_ = p_.index(pf + "mamba.C_bias");
    b_norm_ = p_.index(pf + "mamba.B_norm");
    c_norm_ = p_.index(pf + "mamba.C_norm");
    psi_ = p_.index(pf + "mamba.mimo_v");
    zeta_ = p_.index(pf + "mamba.mimo_z");
    phi_ = p_.index(pf + "mamba.mimo_o");
    d_ = p_.index(pf + "mamba.D");
    check_numel(w_in_, dip_ * hidden_, "mamba.in_proj");
    check_numel(w_ang_, n_ang_ * hidden_, "mamba.angle_proj");
    check_numel(w_out_, hidden_ * d_inner_, "mamba.out_proj");
    check_numel(b_norm_, N_, "mamba.B_norm");
    check_numel(c_bias_, H_ * R_ * N_, "mamba.C_bias");
    check_numel(psi_, H_ * R_ * P_, "mamba.mimo_v");

    const auto MT = static_cast<std::size_t>(max_tokens_);
    proj_ = arena_.persistent<bf16>(MT * dip_, pf + "mamba.proj");
    ang_ = arena_.persistent<bf16>(MT * n_ang_, pf + "mamba.ang");
    out_ = arena_.persistent<bf16>(MT * d_inner_, pf + "mamba.out");
    rstd_b_ = arena_.persistent<float>(MT * G_ * R_, pf + "mamba.rstd_B");
    rstd_c_ = arena_.persistent<float>(MT * G_ * R_, pf + "mamba.rstd_C");
    if (psiv_) psiv_cache_ = arena_.persistent<bf16>(MT * H_ * R_ * P_, pf + "mamba.psiv_cache");
    // Scratch: the backward's need bounds the forward's (same scan inputs first). The scan workspace grows
    // with B·S and with B alone (per-(b,h) partials): the larger of (1, max_tokens) and (max_tokens/L, L).
    const int64_t MTi = max_tokens_;
    ws_bytes_ = std::max(mimo::mimo_bwd_workspace_bytes(dims(1, static_cast<int>(MTi))),
                         mimo::mimo_bwd_workspace_bytes(dims(static_cast<int>(MTi / L_), static_cast<int>(L_))));
    arena_.want_scratch(scratch_bytes(MTi, ws_bytes_, true));
  }
  const char* name() const override { return "mamba3_mimo"; }

  void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = check_tokens(B, S);
    const mimo::MimoDims md = dims(static_cast<int>(B), static_cast<int>(S));
    x_ = x;
    to::linear_fwd(x, p_.w(w_in_), proj_.get(), M, hidden_, dip_, st);
    to::linear_fwd(x, p_.w(w_ang_), ang_.get(), M, hidden_, n_ang_, st);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    const Scan s = scan_inputs(sc, B, S, st);
    mimo::MimoFwdArgs fa = scan_args(s);
    fa.out = bits(out_.get());
    mimo::mimo_fwd(md, fa, st);
    to::linear_fwd(out_.get(), p_.w(w_out_), y, M, d_inner_, hidden_, st);
    if (tp_) tp_->all_reduce(y, static_cast<std::size_t>(M * hidden_), st);  // row-parallel out_proj
  }

  void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = check_tokens(B, S);
    const mimo::MimoDims md = dims(static_cast<int>(B), static_cast<int>(S));
    const auto Mz = static_cast<std::size_t>(M);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    const Scan s = scan_inputs(sc, B, S, st);  // recomputed (the forward kept proj/ang, not these)
    bf16* dout = sc.take<bf16>(Mz * d_inner_);
    bf16 *dq = sc.take<bf16>(Mz * GRN_), *dk = sc.take<bf16>(Mz * GRN_);
    bf16 *dv = sc.take<bf16>(Mz * d_inner_), *dz = sc.take<bf16>(Mz * d_inner_);
    float *dadt = sc.take<float>(Mz * H_), *ddt = sc.take<float>(Mz * H_), *dtrap = sc.take<float>(Mz * H_);
    float* dangles = sc.take<float>(Mz * H_ * n_ang_);
    const auto HRN = static_cast<std::size_t>(H_ * R_ * N_), HRP = static_cast<std::size_t>(H_ * R_ * P_);
    float *dqb = sc.take<float>(HRN), *dkb = sc.take<float>(HRN);
    float *dpsi = sc.take<float>(HRP), *dzeta = sc.take<float>(HRP), *dphi = sc.take<float>(HRP);
    float* dd = sc.take<float>(static_cast<std::size_t>(H_));
    void* ws = sc.take<unsigned char>(mimo::mimo_bwd_workspace_bytes(md));
    bf16* dproj = sc.take<bf16>(Mz * dip_);
    bf16* dang = sc.take<bf16>(Mz * n_ang_);
    const mimo::MixerGlueDims gd = glue_dims(B, S);
    void* gws = sc.take<unsigned char>(mimo::mixer_glue_bwd_workspace_bytes(gd));

    // out_proj
    to::linear_bwd_dw(dy, out_.get(), p_.g(w_out_), M, d_inner_, hidden_, st);
    to::linear_bwd_dx(dy, p_.w(w_out_), dout, M, d_inner_, hidden_, false, st);
    // the scan
    mimo::MimoBwdArgs ba;
    ba.in = scan_args(s);  // with the PsiV cache (read) when the forward wrote it
    ba.dout = bits(dout);
    ba.dq = bits(dq), ba.dk = bits(dk), ba.dv = bits(dv), ba.dz = bits(dz);
    ba.dadt = dadt, ba.ddt = ddt, ba.dtrap = dtrap, ba.dangles = dangles;
    ba.dq_bias = dqb, ba.dk_bias = dkb, ba.dpsi = dpsi, ba.dzeta = dzeta, ba.dphi = dphi, ba.dd = dd;
    mimo::mimo_bwd(md, ba, ws, st);
    const mimo::AccumSegment segs[6] = {{p_.g(c_bias_), dqb, static_cast<int64_t>(HRN)},
                                        {p_.g(b_bias_), dkb, static_cast<int64_t>(HRN)},
                                        {p_.g(psi_), dpsi, static_cast<int64_t>(HRP)},
                                        {p_.g(zeta_), dzeta, static_cast<int64_t>(HRP)},
                                        {p_.g(phi_), dphi, static_cast<int64_t>(HRP)},
                                        {p_.g(d_), dd, H_}};
    mimo::accumulate_f32(segs, 6, st);
    // the glue
    mimo::MixerGlueBwdArgs ga;
    ga.proj = bits(proj_.get()), ga.ang = bits(ang_.get());
    ga.dt_bias = p_.w32(dt_bias_), ga.b_norm = p_.w32(b_norm_), ga.c_norm = p_.w32(c_norm_);
    ga.dt = s.dt, ga.rstd_b = rstd_b_.get(), ga.rstd_c = rstd_c_.get();
    ga.dq = bits(dq), ga.dk = bits(dk), ga.dv = bits(dv), ga.dz = bits(dz);
    ga.dadt = dadt, ga.ddt = ddt, ga.dtrap = dtrap, ga.dangles = dangles;
    ga.dproj = bits(dproj), ga.dang = bits(dang);
    ga.g_dt_bias = p_.g(dt_bias_), ga.g_b_norm = p_.g(b_norm_), ga.g_c_norm = p_.g(c_norm_);
    mimo::mixer_glue_bwd(gd, ga, gws, st);
    // in_proj, angle_proj
    to::linear_bwd_dw(dproj, x_, p_.g(w_in_), M, hidden_, dip_, st);
    to::linear_bwd_dw(dang, x_, p_.g(w_ang_), M, hidden_, n_ang_, st);
    to::linear_bwd_dx(dproj, p_.w(w_in_), dx, M, hidden_, dip_, false, st);
    to::linear_bwd_dx(dang, p_.w(w_ang_), dx, M, hidden_, n_ang_, true, st);
    // dproj and dang hold this rank's heads only: dx is summed here; the angle_proj / B_norm / C_norm
    // gradients stay partial (tp_grad_partial in the layout) for the trainer's TP reduction.
    if (tp_) tp_->all_reduce(dx, static_cast<std::size_t>(M * hidden_), st);
  }

  nlohmann::json record() const override {
    const mimo::MimoDims md = dims(1, static_cast<int>(L_));
    return {{"block", "mamba3_mimo"},
            {"tp", tp_ ? tp_->size() : 1},
            {"heads_local", H_},
            {"psiv_cache", psiv_},
            {"chunk", L_},
            {"chunk_internal", md.Lc},
            {"scan_inputs", "recomputed in backward (glue forward re-run), not saved"},
            {"kernels", "cuBLASLt in/angle/out proj; mixer_glue fwd/bwd; mimo_fwd, mimo_bwd_fwd/bwd/post"},
            {"scan_paths", mimo::mimo_observed_paths()}};  // the last launches' wgmma / mma.sync choice, as run
  }

 private:
  struct Scan {
    bf16 *z, *v, *q, *k, *trap;
    float *dt, *adt, *angles;
  };

  mimo::MimoDims dims(int B, int S) const {
    try {
      return mimo::mimo_make_dims(B, S, static_cast<int>(H_), static_cast<int>(G_), static_cast<int>(N_),
                                  static_cast<int>(P_), static_cast<int>(R_), static_cast<int>(L_), rope_, false);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("model.mamba (M block on CUDA, B=") + std::to_string(B) +
                               " S=" + std::to_string(S) + "): " + e.what());
    }
  }
  mimo::MixerGlueDims glue_dims(int64_t B, int64_t S) const {
    mimo::MixerGlueDims g;
    g.B = static_cast<int>(B), g.S = static_cast<int>(S), g.H = static_cast<int>(H_), g.G = static_cast<int>(G_);
    g.R = static_cast<int>(R_), g.N = static_cast<int>(N_), g.P = static_cast<int>(P_), g.n_ang = static_cast<int>(n_ang_);
    g.norm_eps = static_cast<float>(norm_eps_), g.a_floor = static_cast<float>(a_floor_), g.heavy_tail = heavy_;
    return g;
  }
  int64_t check_tokens(int64_t B, int64_t S) const {
    if (B <= 0 || S <= 0 || B * S > max_tokens_)
      throw std::runtime_error("M block on CUDA: B*S=" + std::to_string(B * S) + " exceeds the reserved max tokens " +
                               std::to_string(max_tokens_));
    if (S % L_ != 0)
      throw std::runtime_error("M block on CUDA: seq_len " + std::to_string(S) +
                               " is not a multiple of model.mamba.chunk_size=" + std::to_string(L_));
    return B * S;
  }
  void check_numel(int i, int64_t want, const char* what) const {
    if (p_.numel(i) != want)
      throw std::runtime_error(std::string("M block on CUDA: parameter ") + what + " has " + std::to_string(p_.numel(i)) +
                               " elements, expected " + std::to_string(want));
  }
  // Scratch bytes of one call: the scan inputs, then (backward) every gradient, workspace, dproj, dang.
  std::size_t scratch_bytes(int64_t M, std::size_t ws, bool bwd) const {
    using SC = ScratchCarver;
    const auto Mz = static_cast<std::size_t>(M);
    std::size_t b = 2 * SC::bytes_for<bf16>(Mz * d_inner_) + 2 * SC::bytes_for<bf16>(Mz * GRN_) +
                    SC::bytes_for<bf16>(Mz * H_) + 2 * SC::bytes_for<float>(Mz * H_) +
                    SC::bytes_for<float>(Mz * H_ * n_ang_);
    if (!bwd) return b;
    const auto HRN = static_cast<std::size_t>(H_ * R_ * N_), HRP = static_cast<std::size_t>(H_ * R_ * P_);
    b += SC::bytes_for<bf16>(Mz * d_inner_) + 2 * SC::bytes_for<bf16>(Mz * GRN_) + 2 * SC::bytes_for<bf16>(Mz * d_inner_) +
         3 * SC::bytes_for<float>(Mz * H_) + SC::bytes_for<float>(Mz * H_ * n_ang_) + 2 * SC::bytes_for<float>(HRN) +
         3 * SC::bytes_for<float>(HRP) + SC::bytes_for<float>(H_) + SC::bytes_for<unsigned char>(ws) +
         SC::bytes_for<bf16>(Mz * dip_) + SC::bytes_for<bf16>(Mz * n_ang_);
    mimo::MixerGlueDims gd = glue_dims(1, M);
    b += SC::bytes_for<unsigned char>(mimo::mixer_glue_bwd_workspace_bytes(gd));
    return b;
  }
  Scan scan_inputs(ScratchCarver& sc, int64_t B, int64_t S, cudaStream_t st) {
    const auto Mz = static_cast<std::size_t>(B * S);
    Scan s{};
    s.z = sc.take<bf16>(Mz * d_inner_), s.v = sc.take<bf16>(Mz * d_inner_);
    s.q = sc.take<bf16>(Mz * GRN_), s.k = sc.take<bf16>(Mz * GRN_);
    s.trap = sc.take<bf16>(Mz * H_);
    s.dt = sc.take<float>(Mz * H_), s.adt = sc.take<float>(Mz * H_);
    s.angles = sc.take<float>(Mz * H_ * n_ang_);
    mimo::MixerGlueFwdArgs ga;
    ga.proj = bits(proj_.get()), ga.ang = bits(ang_.get());
    ga.dt_bias = p_.w32(dt_bias_), ga.b_norm = p_.w32(b_norm_), ga.c_norm = p_.w32(c_norm_);
    ga.z = bits(s.z), ga.v = bits(s.v), ga.q = bits(s.q), ga.k = bits(s.k), ga.trap = bits(s.trap);
    ga.dt = s.dt, ga.adt = s.adt, ga.angles = s.angles;
    ga.rstd_b = rstd_b_.get(), ga.rstd_c = rstd_c_.get();
    mimo::mixer_glue_fwd(glue_dims(B, S), ga, st);
    return s;
  }
  mimo::MimoFwdArgs scan_args(const Scan& s) const {
    mimo::MimoFwdArgs a;
    a.q = bits(s.q), a.k = bits(s.k), a.v = bits(s.v), a.z = bits(s.z), a.trap = bits(s.trap);
    a.adt = s.adt, a.dt = s.dt, a.angles = s.angles;
    a.q_bias = p_.w32(c_bias_), a.k_bias = p_.w32(b_bias_);  // q = Ĉ, k = B̂ (the CPU twin's convention)
    a.psi = p_.w32(psi_), a.zeta = p_.w32(zeta_), a.phi = p_.w32(phi_), a.d = p_.w32(d_);
    a.psiv_cache = psiv_ ? bits(psiv_cache_.get()) : nullptr;
    return a;
  }

  const DeviceParams& p_;
  DeviceArena& arena_;
  int64_t max_tokens_ = 0;
  int64_t hidden_ = 0, d_inner_ = 0, H_ = 0, P_ = 0, G_ = 0, R_ = 0, N_ = 0, L_ = 0, n_ang_ = 0, GRN_ = 0, dip_ = 0;
  double rope_ = 0.5, norm_eps_ = 1e-5, a_floor_ = 1e-4;
  bool heavy_ = false, psiv_ = false;
  std::size_t ws_bytes_ = 0;
  int w_in_ = -1, w_ang_ = -1, w_out_ = -1, dt_bias_ = -1, b_bias_ = -1, c_bias_ = -1, b_norm_ = -1, c_norm_ = -1,
      psi_ = -1, zeta_ = -1, phi_ = -1, d_ = -1;
  DeviceCollectives* tp_ = nullptr;  // TP group (null: no TP)
  const bf16* x_ = nullptr;
  DevPtr<bf16> proj_, ang_, out_, psiv_cache_;
  DevPtr<float> rstd_b_, rstd_c_;
};

}  // namespace

std::unique_ptr<DeviceBlock> make_mamba_mixer_cuda(const BlockBuild& b) {
  // TP per the CPU twin; EP does not concern this block.
  return std::make_unique<MambaMixerCuda>(b);
}

}  // namespace megacpp::cuda_backend
