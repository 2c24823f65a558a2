// m2rnn_block_cuda.cpp — the R letter (M²RNN mixer) on the CUDA backend (CPU twin: engine/model/m2rnn_block.cpp,
// float64 reference kernels/m2rnn/m2rnn_ref.hpp; spec ../shared/docs/m2rnn-spec.md).
//   u = x·W_in                     W_in [hidden, P] row-major, P = C + N + N·V, C = 2K + N·V   (cuBLASLt, fp32 out)
//   c = SiLU(causal depthwise conv(u[:, :C]))  → q | k | v (bf16, token stride C)             (m2rnn_glue)
//   f = exp(−exp(A_log)·softplus(φ + dt_bias))                                                 (m2rnn_glue, fp32)
//   o = scan(q, k, v, f; W, D)     Z = tanh(H·W + k vᵀ), H ← f·H + (1−f)·Z, o = Hᵀq + D⊙v     (m2rnn_fwd.cu, fp32)
//   m = o ⊙ SiLU(g);  r = γ ⊙ m / sqrt(mean(m²) + eps) over all N·V channels                   (glue + train_ops rmsnorm)
//   y = r·W_out                    W_out [N·V, hidden] row-major                               (cuBLASLt)
// Parameter layouts are the CPU twin's (NOT train_ops::linear's [out, in]): gemm_rm with transposes; weight
// gradients accumulate in fp32 through beta = 1. A_log, dt_bias, conv_w, W and D are read from the fp32 master.
// Saved for backward (arena, sized for max_tokens): u fp32 [M,P] (rows padded to 8; fp32 because φ enters
//   f = exp(−A·softplus(φ+dt_bias)) with gain up to A = 16, where bf16's 0.4% would become several % in f), c bf16 [M,C], f fp32 [M,N], o fp32 [M,NV],
//   m bf16 [M,NV], rstd fp32 [M], the scan's H checkpoints fp32 (M/16 · N·K·V). r is recomputed in the backward.
// Scratch (backward): r, dr, dm bf16 [M,NV]; do, dv fp32 [M,NV]; du bf16 [M,P]; dq, dk fp32 [M,K]; df fp32 [M,N];
//   the scan's workspace (2·M·N·K + …), the rmsnorm and conv workspaces. x is the model's saved pre-norm output.
// State-gradient clipping follows model.m2rnn.grad_clip (off | kernel | total, clip value 1 as the CPU twin).
// Tensor parallelism (the CPU twin's tp_forward/tp_backward): this rank holds heads/tp heads (w_in's v, φ, g
// columns, conv_w's v rows, A_log, dt_bias, W, D, gamma and w_out's rows sharded; the shared q/k columns of
// w_in and rows of conv_w replicated, their gradients left PARTIAL for the trainer: tp_replicated ranges).
// The output RMSNorm runs over all N·V channels: its row statistics Σm² (forward) and Σ dr·γ·m (backward)
// are all-reduced over TP (kernels/train_ops/rmsnorm_tp); y is all-reduced after w_out, dx after w_in's
// backward. Saved in addition under TP: Σm² over all heads (fp32 [M]) so the backward's recompute of r is
// the forward's bit for bit.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/blocks.hpp"
#include "kernels/m2rnn/m2rnn_glue.hpp"
#include "kernels/m2rnn/m2rnn_scan.hpp"
#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/rmsnorm.hpp"
#include "kernels/train_ops/rmsnorm_tp.hpp"

namespace megacpp::cuda_backend {
namespace {

namespace to = megacpp::train_ops;
namespace gl = megacpp::m2rnn::glue;

class M2rnnCuda final : public DeviceBlock {
 public:
  explicit M2rnnCuda(const BlockBuild& b) : p_(*b.params), arena_(*b.arena) {
    const auto& m = b.recipe->model;
    const auto& mr = m.m2rnn;
    hidden_ = m.hidden;
    N_ = mr.heads, K_ = mr.key_dim, V_ = mr.value_dim, w_ = mr.conv_width;
    eps_ = static_cast<float>(m.norm_eps);
    if (V_ != 16)
      throw std::runtime_error("model.m2rnn.value_dim: " + std::to_string(V_) +
                               " is not supported on the CUDA backend (supported there: 16)");
    if (K_ != 16 && K_ != 32 && K_ != 48 && K_ != 64)
      throw std::runtime_error("model.m2rnn.key_dim: " + std::to_string(K_) +
                               " is not supported on the CUDA backend (supported there: 16, 32, 48, 64)");
    if (w_ < 1 || w_ > gl::kMaxConvWidth)
      throw std::runtime_error("model.m2rnn.conv_width: " + std::to_string(w_) +
                               " is not supported on the CUDA backend (supported there: 1.." +
                               std::to_string(gl::kMaxConvWidth) + ")");
    if (N_ < 1)
      throw std::runtime_error("model.m2rnn.heads: " + std::to_string(N_) + " must be >= 1");
    NV_full_ = N_ * V_;
    if (const int64_t tp = tp_size(b.mp); tp > 1) {
      if (N_ % tp != 0 || b.tp == nullptr || b.tp->size() != tp)
        throw std::runtime_error("m2rnn on CUDA: parallel.tp=" + std::to_string(tp) + " does not divide model.m2rnn.heads=" +
                                 std::to_string(N_) + " (with a TP group)");
      N_ /= tp;  // this rank's heads (the layout's local shards)
      tp_ = b.tp;
    }
    if (b.seq_len % 32 != 0)
      throw std::runtime_error("train.seq_len: " + std::to_string(b.seq_len) +
                               " is not supported by the R block on the CUDA backend (supported there: multiples of 32)");
    try {
      clip_ = m2rnn::parse_clip(mr.grad_clip);
    } catch (const std::invalid_argument&) {
      throw std::runtime_error("model.m2rnn.grad_clip: '" + mr.grad_clip +
                               "' is not supported on the CUDA backend (supported there: off, kernel, total)");
    }
    NV_ = N_ * V_;
    C_ = 2 * K_ + NV_;
    P_ = C_ + N_ + NV_;
    ldu_ = (P_ + 7) / 8 * 8;  // u (fp32) / du (bf16) rows padded to 32 / 16 bytes (the padding is never read)
    max_tokens_ = b.max_tokens;

    const std::string pre = b.prefix + "m2rnn.";
    w_in_ = p_.index(pre + "w_in");
    conv_w_ = p_.index(pre + "conv_w");
    A_log_ = p_.index(pre + "A_log");
    dt_bias_ = p_.index(pre + "dt_bias");
    W_ = p_.index(pre + "W");
    D_ = p_.index(pre + "D");
    gamma_ = p_.index(pre + "gamma");
    w_out_ = p_.index(pre + "w_out");
    check_numel(w_in_, hidden_ * P_, "w_in");
    check_numel(conv_w_, C_ * w_, "conv_w");
    check_numel(A_log_, N_, "A_log");
    check_numel(dt_bias_, N_, "dt_bias");
    check_numel(W_, N_ * V_ * V_, "W");
    check_numel(D_, NV_, "D");
    check_numel(gamma_, NV_, "gamma");
    check_numel(w_out_, NV_ * hidden_, "w_out");

    const auto Mx = static_cast<std::size_t>(max_tokens_);
    u_ = arena_.persistent<float>(Mx * ldu_, pre + "u");
    c_ = arena_.persistent<bf16>(Mx * C_, pre + "conv_out");
    f_ = arena_.persistent<float>(Mx * N_, pre + "f");
    o_ = arena_.persistent<float>(Mx * NV_, pre + "o");
    m_ = arena_.persistent<bf16>(Mx * NV_, pre + "m");
    rstd_ = arena_.persistent<float>(Mx, pre + "rstd");
    ckpt_floats_ = ckpt_floats(max_tokens_);
    ckpt_ = arena_.persistent<float>(ckpt_floats_, pre + "scan_ckpt");
    if (tp_) ss_ = arena_.persistent<float>(Mx, pre + "norm_sumsq_all_heads");

    // The scan's backward workspace depends on B (dW / dD partials per b): bound B by max_tokens / 32.
    const int64_t b_max = std::max<int64_t>(1, max_tokens_ / 32);
    // gpu_bwd_workspace_floats = 2·M·N·K + B·N·(K/16)·V² + B·N·V: take the M and B bounds separately
    // (check_call verifies the bound against the scan's own formula on every call).
    scan_ws_floats_ = 2 * Mx * std::size_t(N_) * K_ + std::size_t(b_max) * N_ * (K_ / 16) * V_ * V_ +
                      std::size_t(b_max) * NV_;
    conv_ws_floats_ = gl::conv_bwd_workspace_floats(1, max_tokens_, C_, static_cast<int>(w_));
    rms_ws_floats_ = to::rmsnorm_bwd_workspace_floats(max_tokens_, NV_);
    arena_.want_scratch(bwd_scratch_bytes(max_tokens_));
  }
  const char* name() const override { return "m2rnn"; }

  void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t st) override {
    check_call(B, S);
    const int64_t M = B * S;
    x_ = x;
    float* u = u_.get();
    bf16* c = c_.get();
    float* f = f_.get();
    float* o = o_.get();
    bf16* m = m_.get();
    to::GemmDesc gin;  // u[M,P] = x[M,d] · W_in[d,P]
    gin.m = M, gin.n = P_, gin.k = hidden_, gin.lda = hidden_, gin.ldb = P_, gin.ldd = ldu_, gin.out = to::GemmOut::f32;
    to::gemm_rm(gin, x, p_.w(w_in_), u, 1.0f, 0.0f, st);
    gl::conv_silu_fwd(u, ldu_, p_.w32(conv_w_), c, B, S, C_, static_cast<int>(w_), st);
    gl::decay_fwd(u, ldu_, C_, p_.w32(A_log_), p_.w32(dt_bias_), f, M, N_, st);
    const m2rnn::GpuScanArgs a = scan_args(B, S);
    m2rnn::scan_forward_gpu(a, o, nullptr, ckpt_.get(), st);
    gl::out_gate_fwd(o, u, ldu_, C_ + N_, m, M, NV_, st);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16* r = sc.take<bf16>(static_cast<std::size_t>(M * NV_));
    if (!tp_) {
      to::rmsnorm_fwd(m, p_.w(gamma_), r, rstd_.get(), M, NV_, eps_, st);
    } else {  // the norm over all heads' channels: Σm² all-reduced over TP
      to::rmsnorm_tp_sumsq(m, ss_.get(), M, NV_, st);
      tp_->all_reduce(ss_.get(), static_cast<std::size_t>(M), st);
      to::rmsnorm_tp_apply(m, p_.w(gamma_), ss_.get(), r, rstd_.get(), M, NV_, NV_full_, eps_, st);
    }
    to::GemmDesc gout;  // y[M,d] = r[M,NV] · W_out[NV,d]
    gout.m = M, gout.n = hidden_, gout.k = NV_, gout.lda = NV_, gout.ldb = hidden_, gout.ldd = hidden_;
    gout.out = to::GemmOut::bf16;
    to::gemm_rm(gout, r, p_.w(w_out_), y, 1.0f, 0.0f, st);
    if (tp_) tp_->all_reduce(y, static_cast<std::size_t>(M * hidden_), st);  // row-parallel w_out
  }

  void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t st) override {
    check_call(B, S);
    const int64_t M = B * S;
    const auto Mz = static_cast<std::size_t>(M);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16* r = sc.take<bf16>(Mz * NV_);
    float* rstd2 = sc.take<float>(Mz);
    bf16* dr = sc.take<bf16>(Mz * NV_);
    bf16* dm = sc.take<bf16>(Mz * NV_);
    float* dout = sc.take<float>(Mz * NV_);
    bf16* du = sc.take<bf16>(Mz * ldu_);
    float* dq = sc.take<float>(Mz * K_);
    float* dk = sc.take<float>(Mz * K_);
    float* dv = sc.take<float>(Mz * NV_);
    float* df = sc.take<float>(Mz * N_);
    float* dW = sc.take<float>(std::size_t(N_) * V_ * V_);
    float* dD = sc.take<float>(std::size_t(NV_));
    float* scan_ws = sc.take<float>(scan_ws_floats_);
    float* rms_ws = sc.take<float>(rms_ws_floats_);
    float* conv_ws = sc.take<float>(conv_ws_floats_);
    const float* u = u_.get();

    // Out-projection: recompute r; dW_out[NV,d] += rᵀ·dy; dr[M,NV] = dy · W_outᵀ.
    if (!tp_) to::rmsnorm_fwd(m_.get(), p_.w(gamma_), r, rstd2, M, NV_, eps_, st);
    else to::rmsnorm_tp_apply(m_.get(), p_.w(gamma_), ss_.get(), r, rstd2, M, NV_, NV_full_, eps_, st);  // saved Σm²
    to::GemmDesc gw;
    gw.ta = true, gw.m = NV_, gw.n = hidden_, gw.k = M, gw.lda = NV_, gw.ldb = hidden_, gw.ldd = hidden_;
    gw.out = to::GemmOut::f32;
    to::gemm_rm(gw, r, dy, p_.g(w_out_), 1.0f, 1.0f, st);
    to::GemmDesc gd;
    gd.tb = true, gd.m = M, gd.n = NV_, gd.k = hidden_, gd.lda = hidden_, gd.ldb = hidden_, gd.ldd = NV_;
    gd.out = to::GemmOut::bf16;
    to::gemm_rm(gd, dy, p_.w(w_out_), dr, 1.0f, 0.0f, st);
    // Norm (dγ accumulated) and gate: do (fp32, the scan's dout) and dg → du[:, C+N:].
    if (!tp_) {
      to::rmsnorm_bwd(m_.get(), p_.w(gamma_), rstd_.get(), dr, nullptr, dm, p_.g(gamma_), rms_ws, M, NV_, st);
    } else {  // Σ dr·γ·m over all heads' channels, all-reduced over TP (rstd2's buffer is free again)
      float* dot = rstd2;
      to::rmsnorm_tp_bwd_dot(m_.get(), p_.w(gamma_), dr, dot, M, NV_, st);
      tp_->all_reduce(dot, static_cast<std::size_t>(M), st);
      to::rmsnorm_tp_bwd(m_.get(), p_.w(gamma_), rstd_.get(), dr, dot, dm, p_.g(gamma_), rms_ws, M, NV_, NV_full_, st);
    }
    gl::out_gate_bwd(dm, o_.get(), u, ldu_, C_ + N_, dout, du, M, NV_, st);
    // Scan BPTT: dq, dk, dv, df overwritten; dW, dD overwritten into scratch, then accumulated.
    const m2rnn::GpuScanArgs a = scan_args(B, S);
    m2rnn::GpuScanGrads sg;
    sg.dq = dq, sg.dk = dk, sg.dv = dv, sg.df = df, sg.dW = dW, sg.dD = dD, sg.dh0 = nullptr;
    m2rnn::scan_backward_gpu(a, ckpt_.get(), dout, nullptr, clip_, 1.0f, sg, scan_ws, st);
    gl::accumulate(p_.g(W_), dW, N_ * V_ * V_, st);
    gl::accumulate(p_.g(D_), dD, NV_, st);
    // Gate chain → du[:, C:C+N], dA_log, ddt_bias; conv + SiLU → du[:, :C], dconv_w.
    gl::decay_bwd(df, u, ldu_, C_, p_.w32(A_log_), p_.w32(dt_bias_), f_.get(), du, p_.g(A_log_), p_.g(dt_bias_), M, N_,
                  st);
    gl::conv_silu_bwd(u, ldu_, p_.w32(conv_w_), dq, dk, dv, K_, NV_, du, p_.g(conv_w_), conv_ws, B, S,
                      static_cast<int>(w_), st);
    // Input projection: dW_in[d,P] += xᵀ·du; dx[M,d] = du · W_inᵀ.
    to::GemmDesc gwi;
    gwi.ta = true, gwi.m = hidden_, gwi.n = P_, gwi.k = M, gwi.lda = hidden_, gwi.ldb = ldu_, gwi.ldd = P_;
    gwi.out = to::GemmOut::f32;
    to::gemm_rm(gwi, x_, du, p_.g(w_in_), 1.0f, 1.0f, st);
    to::GemmDesc gdx;
    gdx.tb = true, gdx.m = M, gdx.n = hidden_, gdx.k = P_, gdx.lda = ldu_, gdx.ldb = P_, gdx.ldd = hidden_;
    gdx.out = to::GemmOut::bf16;
    to::gemm_rm(gdx, du, p_.w(w_in_), dx, 1.0f, 0.0f, st);
    // This rank's heads' part of dx (and the partial q/k part); w_in's q/k columns and conv_w's q/k rows
    // keep partial gradients (tp_replicated) for the trainer.
    if (tp_) tp_->all_reduce(dx, static_cast<std::size_t>(M * hidden_), st);
  }

  nlohmann::json record() const override {
    return {{"block", "m2rnn"},
            {"heads", N_},
            {"tp", tp_ ? tp_->size() : 1},
            {"key_dim", K_},
            {"value_dim", V_},
            {"conv_width", w_},
            {"grad_clip", m2rnn::clip_name(clip_)},
            {"scan", "m2rnn_fwd/m2rnn_bwd variant 0 (3xFP16 MMA, fp32 state, H checkpoint every 16 steps)"}};
  }

 private:
  m2rnn::ScanShape shape(int64_t B, int64_t S) const {
    m2rnn::ScanShape s;
    s.B = static_cast<int>(B), s.S = static_cast<int>(S), s.N = static_cast<int>(N_), s.K = static_cast<int>(K_);
    s.V = static_cast<int>(V_), s.Nq = 1, s.Nk = 1;
    return s;
  }
  std::size_t ckpt_floats(int64_t M) const {
    return static_cast<std::size_t>(M / m2rnn::kGpuCheckpointEvery) * N_ * K_ * V_;
  }
  m2rnn::GpuScanArgs scan_args(int64_t B, int64_t S) const {
    m2rnn::GpuScanArgs a;
    a.shape = shape(B, S);
    a.ld_q = a.ld_k = a.ld_v = C_;
    const auto* c = reinterpret_cast<const uint16_t*>(c_.get());
    a.q = c;
    a.k = c + K_;
    a.v = c + 2 * K_;
    a.f = f_.get();
    a.W = p_.w32(W_);
    a.D = p_.w32(D_);
    a.h0 = nullptr;
    a.variant = 0;
    return a;
  }
  std::size_t bwd_scratch_bytes(int64_t M) const {
    const auto Mz = static_cast<std::size_t>(M);
    return 3 * ScratchCarver::bytes_for<bf16>(Mz * NV_) + ScratchCarver::bytes_for<float>(Mz) +
           2 * ScratchCarver::bytes_for<float>(Mz * NV_) + ScratchCarver::bytes_for<bf16>(Mz * ldu_) +
           2 * ScratchCarver::bytes_for<float>(Mz * K_) + ScratchCarver::bytes_for<float>(Mz * N_) +
           ScratchCarver::bytes_for<float>(std::size_t(N_) * V_ * V_) + ScratchCarver::bytes_for<float>(NV_) +
           ScratchCarver::bytes_for<float>(scan_ws_floats_) + ScratchCarver::bytes_for<float>(rms_ws_floats_) +
           ScratchCarver::bytes_for<float>(conv_ws_floats_);
  }
  void check_numel(int i, int64_t want, const char* what) const {
    if (p_.numel(i) != want)
      throw std::runtime_error(std::string("m2rnn on CUDA: parameter ") + what + " has " + std::to_string(p_.numel(i)) +
                               " elements, expected " + std::to_string(want));
  }
  void check_call(int64_t B, int64_t S) const {
    if (B < 1 || S < 1 || B * S > max_tokens_)
      throw std::runtime_error("m2rnn on CUDA: B·S = " + std::to_string(B * S) + " outside 1.." +
                               std::to_string(max_tokens_) + " (max_tokens the arena was sized for)");
    if (S % 32 != 0)
      throw std::runtime_error("train.seq_len: " + std::to_string(S) +
                               " is not supported by the R block on the CUDA backend (supported there: multiples of 32)");
    // Scratch sized for max_tokens with B ≤ max_tokens/32: the workspace bound holds for every valid (B, S).
    if (m2rnn::gpu_bwd_workspace_floats(shape(B, S)) > scan_ws_floats_ ||
        ckpt_floats(B * S) != m2rnn::gpu_checkpoint_floats(shape(B, S)) || ckpt_floats(B * S) > ckpt_floats_)
      throw std::logic_error("m2rnn on CUDA: scan workspace/checkpoint sizing mismatch");
  }

  const DeviceParams& p_;
  DeviceArena& arena_;
  int64_t hidden_ = 0, N_ = 0, K_ = 0, V_ = 0, w_ = 0, NV_ = 0, C_ = 0, P_ = 0, ldu_ = 0, max_tokens_ = 0;
  int64_t NV_full_ = 0;               // N·V over all TP ranks (the output norm's channel count)
  DeviceCollectives* tp_ = nullptr;   // TP group (null: no TP)
  DevPtr<float> ss_;                  // TP: Σm² over all heads per token (saved)
  float eps_ = 1e-5f;
  m2rnn::Clip clip_ = m2rnn::Clip::Off;
  int w_in_ = -1, conv_w_ = -1, A_log_ = -1, dt_bias_ = -1, W_ = -1, D_ = -1, gamma_ = -1, w_out_ = -1;
  const bf16* x_ = nullptr;
  DevPtr<bf16> c_, m_;
  DevPtr<float> u_, f_, o_, rstd_, ckpt_;
  std::size_t ckpt_floats_ = 0, scan_ws_floats_ = 0, conv_ws_floats_ = 0, rms_ws_floats_ = 0;
};

}  // namespace

std::unique_ptr<DeviceBlock> make_m2rnn_cuda(const BlockBuild& b) {
  // TP per the CPU twin; EP does not concern this block.
  return std::make_unique<M2rnnCuda>(b);
}

}  // namespace megacpp::cuda_backend
