// attention_block_cuda.cpp — the A letter on the CUDA backend (CPU twin: engine/model/attention_block.cpp).
//   qkv = x·W_qkvᵀ                  (cuBLASLt, one GEMM, N = (H+2Hk)·D)   row = [q (H·D) | k (Hk·D) | v (Hk·D)]
//   q,k,v ← split of qkv into BSHD   (three strided cudaMemcpy2DAsync device copies: the attention kernels
//                                     take dense BSHD pointers only, no row stride)
//   q,k ← RoPE(q,k) in place         (kernels/attention rope_bf16; skipped when model.attention.rope=false)
//   o, lse = causal GQA SDPA(q,k,v)  (kernels/attention attention_fwd, backend auto|cudnn|native)
//   y = o·W_oᵀ
// Backward: do = dy·W_o, dW_o += dyᵀ·o; dq,dk,dv = SDPA backward (recomputes P from q,k,lse);
//   dq,dk ← RoPE⁻¹ (rotation by −θ) in place; dqkv ← [dq | dk | dv] (strided copies);
//   dW_qkv += dqkvᵀ·x; dx = dqkv·W_qkv.
// Saved for backward (persistent arena, sized for max_tokens M): q, o (M·H·D bf16), k, v (M·Hk·D bf16),
//   lse (M·H fp32); x is the model's saved pre-norm output (pointer kept from the forward).
// Scratch: forward  qkv (M·W bf16) + attention fwd workspace;
//          backward do, dq (M·H·D), dk, dv (M·Hk·D), dqkv (M·W) bf16 + attention bwd workspace.
// The attention backend is resolved at construction for the largest shape (B = max_tokens/seq_len,
// S = seq_len): cuDNN plans are built there (build time in record()), the workspace is reserved as
// scratch. A smaller shape at run time is resolved again (plan cache) and its workspace checked.
// Tensor parallelism (the CPU twin's contract): this rank holds heads/tp query heads and kv_heads/tp KV
// heads (qkv rows [q_r | k_r | v_r] column-parallel, out's columns row-parallel); y is all-reduced over TP
// after the output projection, dx after the QKV projection's backward. RoPE is per position: unchanged.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/blocks.hpp"
#include "kernels/attention/attention_dispatch.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/train_ops/linear.hpp"

namespace megacpp::cuda_backend {
namespace {

namespace to = megacpp::train_ops;

class AttentionCuda final : public DeviceBlock {
 public:
  explicit AttentionCuda(const BlockBuild& b) : p_(*b.params), arena_(*b.arena) {
    const auto& m = b.recipe->model;
    const auto& a = m.attention;
    hidden_ = m.hidden, H_ = a.heads, Hk_ = a.kv_heads, D_ = a.head_dim;
    const int64_t tp = tp_size(b.mp);
    if (tp > 1) {
      if (H_ % tp != 0 || Hk_ % tp != 0 || b.tp == nullptr || b.tp->size() != tp)
        throw std::runtime_error("attention on CUDA: parallel.tp=" + std::to_string(tp) +
                                 " must divide model.attention.heads=" + std::to_string(H_) + " and kv_heads=" +
                                 std::to_string(Hk_) + " (with a TP group)");
      H_ /= tp, Hk_ /= tp;  // this rank's heads (the layout holds the local shards)
      tp_ = b.tp;
    }
    theta_ = a.rope_theta, rope_ = a.rope;
    W_ = (H_ + 2 * Hk_) * D_;
    if (H_ <= 0 || Hk_ <= 0 || D_ <= 0 || H_ % Hk_ != 0)
      throw std::runtime_error("attention on CUDA: model.attention.heads=" + std::to_string(H_) +
                               " must be a positive multiple of model.attention.kv_heads=" + std::to_string(Hk_) +
                               " (head_dim=" + std::to_string(D_) + ")");
    if (D_ % 8 != 0)  // 16-byte aligned BSHD slices (every backend loads 8 bf16 at a time)
      throw std::runtime_error("attention on CUDA: model.attention.head_dim=" + std::to_string(D_) +
                               " must be a multiple of 8");
    if (rope_ && !(theta_ > 0))
      throw std::runtime_error("attention on CUDA: model.attention.rope_theta must be > 0 (got " +
                               std::to_string(theta_) + ")");
    const std::string& be = b.recipe->features.attention_backend;
    try {
      backend_ = attn::parse_backend(be);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("features.attention_backend: ") + e.what());
    }
    w_qkv_ = p_.index(b.prefix + "attention.qkv");
    w_o_ = p_.index(b.prefix + "attention.out");
    if (p_.numel(w_qkv_) != W_ * hidden_ || p_.numel(w_o_) != hidden_ * H_ * D_)
      throw std::runtime_error("attention on CUDA: parameter shapes of " + b.prefix + "attention.{qkv,out} (" +
                               std::to_string(p_.numel(w_qkv_)) + ", " + std::to_string(p_.numel(w_o_)) +
                               " elements) do not match heads=" + std::to_string(H_) + " kv_heads=" +
                               std::to_string(Hk_) + " head_dim=" + std::to_string(D_) + " hidden=" +
                               std::to_string(hidden_) + " (per TP rank)");

    // The largest shape this block will see: resolve both directions now (cuDNN plan build time here).
    const int64_t M = b.max_tokens;
    S_max_ = b.seq_len > 0 ? b.seq_len : M;
    B_max_ = (M + S_max_ - 1) / S_max_;
    max_tokens_ = M;
    const attn::AttnShape s_max{B_max_, S_max_, H_, Hk_, D_};
    plan_fwd_ = resolve_or_throw(s_max, false);
    plan_bwd_ = resolve_or_throw(s_max, true);
    ws_fwd_ = plan_fwd_.workspace_bytes, ws_bwd_ = plan_bwd_.workspace_bytes;

    const auto nq = static_cast<std::size_t>(M * H_ * D_), nk = static_cast<std::size_t>(M * Hk_ * D_);
    q_ = arena_.persistent<bf16>(nq, b.prefix + "attention.q");
    k_ = arena_.persistent<bf16>(nk, b.prefix + "attention.k");
    v_ = arena_.persistent<bf16>(nk, b.prefix + "attention.v");
    o_ = arena_.persistent<bf16>(nq, b.prefix + "attention.o");
    lse_ = arena_.persistent<float>(static_cast<std::size_t>(B_max_ * H_ * S_max_), b.prefix + "attention.lse");
    const std::size_t nqkv = static_cast<std::size_t>(M * W_);
    const std::size_t fwd_scratch = ScratchCarver::bytes_for<bf16>(nqkv) + ScratchCarver::bytes_for<char>(ws_fwd_);
    const std::size_t bwd_scratch = 2 * ScratchCarver::bytes_for<bf16>(nq) + 2 * ScratchCarver::bytes_for<bf16>(nk) +
                                    ScratchCarver::bytes_for<bf16>(nqkv) + ScratchCarver::bytes_for<char>(ws_bwd_);
    arena_.want_scratch(std::max(fwd_scratch, bwd_scratch));
  }
  const char* name() const override { return "attention"; }

  void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = B * S;
    check_shape(B, S);
    x_ = x;
    const attn::AttnShape s{B, S, H_, Hk_, D_};
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16* qkv = sc.take<bf16>(static_cast<std::size_t>(M * W_));
    to::linear_fwd(x, p_.w(w_qkv_), qkv, M, hidden_, W_, st);
    split(qkv, q_.get(), k_.get(), v_.get(), M, st);
    if (rope_) {
      attn::rope_bf16(q_.get(), q_.get(), B, S, H_, D_, theta_, true, false, 0, st);
      attn::rope_bf16(k_.get(), k_.get(), B, S, Hk_, D_, theta_, true, false, 0, st);
    }
    const std::size_t ws_bytes = workspace_for(s, false);
    void* ws = ws_bytes ? sc.take<char>(ws_bytes) : nullptr;
    attn::AttnFwdArgs fa;
    fa.q = q_.get(), fa.k = k_.get(), fa.v = v_.get(), fa.o = o_.get(), fa.lse = lse_.get(), fa.scale = 0.f;
    last_fwd_ = run_checked([&] { return attn::attention_fwd(backend_, s, fa, ws, ws_bytes, st); });
    has_fwd_ = true;
    to::linear_fwd(o_.get(), p_.w(w_o_), y, M, H_ * D_, hidden_, st);
    if (tp_) tp_->all_reduce(y, static_cast<std::size_t>(M * hidden_), st);  // row-parallel out: partial sums
  }

  void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = B * S;
    check_shape(B, S);
    if (x_ == nullptr) throw std::runtime_error("attention on CUDA: backward without a forward");
    const attn::AttnShape s{B, S, H_, Hk_, D_};
    const auto nq = static_cast<std::size_t>(M * H_ * D_), nk = static_cast<std::size_t>(M * Hk_ * D_);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16 *dout = sc.take<bf16>(nq), *dq = sc.take<bf16>(nq), *dk = sc.take<bf16>(nk), *dv = sc.take<bf16>(nk);
    bf16* dqkv = sc.take<bf16>(static_cast<std::size_t>(M * W_));
    // Output projection.
    to::linear_bwd_dw(dy, o_.get(), p_.g(w_o_), M, H_ * D_, hidden_, st);
    to::linear_bwd_dx(dy, p_.w(w_o_), dout, M, H_ * D_, hidden_, false, st);
    // Attention core.
    const std::size_t ws_bytes = workspace_for(s, true);
    void* ws = ws_bytes ? sc.take<char>(ws_bytes) : nullptr;
    attn::AttnBwdArgs ba;
    ba.q = q_.get(), ba.k = k_.get(), ba.v = v_.get(), ba.o = o_.get(), ba.dout = dout, ba.lse = lse_.get();
    ba.dq = dq, ba.dk = dk, ba.dv = dv, ba.scale = 0.f;
    last_bwd_ = run_checked([&] { return attn::attention_bwd(backend_, s, ba, ws, ws_bytes, st); });
    has_bwd_ = true;
    // RoPE backward: the rotation by −θ.
    if (rope_) {
      attn::rope_bf16(dq, dq, B, S, H_, D_, theta_, true, true, 0, st);
      attn::rope_bf16(dk, dk, B, S, Hk_, D_, theta_, true, true, 0, st);
    }
    merge(dq, dk, dv, dqkv, M, st);
    // QKV projection.
    to::linear_bwd_dw(dqkv, x_, p_.g(w_qkv_), M, hidden_, W_, st);
    to::linear_bwd_dx(dqkv, p_.w(w_qkv_), dx, M, hidden_, W_, false, st);
    if (tp_) tp_->all_reduce(dx, static_cast<std::size_t>(M * hidden_), st);  // column-parallel qkv: partial dx
  }

  nlohmann::json record() const override {
    nlohmann::json j;
    j["block"] = "attention";
    j["requested"] = attn::backend_name(backend_);
    j["shape_max"] = {{"B", B_max_}, {"S", S_max_}, {"heads", H_}, {"kv_heads", Hk_}, {"head_dim", D_}};
    j["tp"] = tp_ ? tp_->size() : 1;  // heads above are this rank's
    j["rope"] = rope_ ? nlohmann::json(theta_) : nlohmann::json("off");
    j["qkv_split"] = "cudaMemcpy2DAsync (3 strided device copies per direction)";
    j["resolved_fwd"] = plan_fwd_.to_json();  // at construction, for shape_max (cuDNN build_ms there)
    j["resolved_bwd"] = plan_bwd_.to_json();
    j["workspace_bytes"] = {{"fwd", ws_fwd_}, {"bwd", ws_bwd_}};
    j["last_fwd"] = has_fwd_ ? last_fwd_.to_json() : nlohmann::json(nullptr);
    j["last_bwd"] = has_bwd_ ? last_bwd_.to_json() : nlohmann::json(nullptr);
    return j;
  }

 private:
  attn::AttnRecord resolve_or_throw(const attn::AttnShape& s, bool bwd) const {
    try {
      return attn::attention_resolve(backend_, s, bwd);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("attention on CUDA (features.attention_backend=") +
                               attn::backend_name(backend_) + ", model.attention.head_dim=" + std::to_string(D_) +
                               ", seq_len=" + std::to_string(s.S) + ", " + (bwd ? "backward" : "forward") +
                               "): " + e.what());
    }
  }

  template <typename F>
  attn::AttnRecord run_checked(F&& f) const {
    try {
      return f();
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("attention on CUDA (features.attention_backend=") +
                               attn::backend_name(backend_) + "): " + e.what());
    }
  }

  void check_shape(int64_t B, int64_t S) const {
    if (B <= 0 || S <= 0 || B * S > max_tokens_)
      throw std::runtime_error("attention on CUDA: B·S=" + std::to_string(B) + "·" + std::to_string(S) +
                               " exceeds the reserved max_tokens=" + std::to_string(max_tokens_));
  }

  // Workspace for a (possibly smaller) run-time shape: the max shape's is reserved; others are checked.
  std::size_t workspace_for(const attn::AttnShape& s, bool bwd) const {
    const std::size_t have = bwd ? ws_bwd_ : ws_fwd_;
    if (s.B == B_max_ && s.S == S_max_) return have;
    const attn::AttnRecord r = resolve_or_throw(s, bwd);
    if (r.workspace_bytes > have)
      throw std::runtime_error("attention on CUDA: shape B=" + std::to_string(s.B) + " S=" + std::to_string(s.S) +
                               " needs " + std::to_string(r.workspace_bytes) + " workspace bytes (" + r.observed +
                               " " + r.direction + "), more than the " + std::to_string(have) +
                               " reserved for B=" + std::to_string(B_max_) + " S=" + std::to_string(S_max_));
    return have;
  }

  // qkv [M, W] → q [M, H·D], k, v [M, Hk·D].
  void split(const bf16* qkv, bf16* q, bf16* k, bf16* v, int64_t M, cudaStream_t st) const {
    const std::size_t pitch = static_cast<std::size_t>(W_) * sizeof(bf16);
    const std::size_t wq = static_cast<std::size_t>(H_ * D_) * sizeof(bf16), wk = static_cast<std::size_t>(Hk_ * D_) * sizeof(bf16);
    const auto rows = static_cast<std::size_t>(M);
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(q, wq, qkv, pitch, wq, rows, cudaMemcpyDeviceToDevice, st));
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(k, wk, qkv + H_ * D_, pitch, wk, rows, cudaMemcpyDeviceToDevice, st));
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(v, wk, qkv + (H_ + Hk_) * D_, pitch, wk, rows, cudaMemcpyDeviceToDevice, st));
  }
  // dq, dk, dv → dqkv [M, W] (every element written).
  void merge(const bf16* dq, const bf16* dk, const bf16* dv, bf16* dqkv, int64_t M, cudaStream_t st) const {
    const std::size_t pitch = static_cast<std::size_t>(W_) * sizeof(bf16);
    const std::size_t wq = static_cast<std::size_t>(H_ * D_) * sizeof(bf16), wk = static_cast<std::size_t>(Hk_ * D_) * sizeof(bf16);
    const auto rows = static_cast<std::size_t>(M);
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(dqkv, pitch, dq, wq, wq, rows, cudaMemcpyDeviceToDevice, st));
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(dqkv + H_ * D_, pitch, dk, wk, wk, rows, cudaMemcpyDeviceToDevice, st));
    MEGACPP_CUDA_CHECK(cudaMemcpy2DAsync(dqkv + (H_ + Hk_) * D_, pitch, dv, wk, wk, rows, cudaMemcpyDeviceToDevice, st));
  }

  const DeviceParams& p_;
  DeviceArena& arena_;
  int64_t hidden_ = 0, H_ = 0, Hk_ = 0, D_ = 0, W_ = 0;
  int64_t B_max_ = 0, S_max_ = 0, max_tokens_ = 0;
  double theta_ = 0;
  bool rope_ = true;
  attn::Backend backend_ = attn::Backend::Auto;
  int w_qkv_ = -1, w_o_ = -1;
  DeviceCollectives* tp_ = nullptr;  // TP group (null: no TP)
  attn::AttnRecord plan_fwd_, plan_bwd_, last_fwd_, last_bwd_;
  bool has_fwd_ = false, has_bwd_ = false;
  std::size_t ws_fwd_ = 0, ws_bwd_ = 0;
  const bf16* x_ = nullptr;
  DevPtr<bf16> q_, k_, v_, o_;
  DevPtr<float> lse_;
};

}  // namespace

std::unique_ptr<DeviceBlock> make_attention_cuda(const BlockBuild& b) {
  // TP per the CPU twin; EP does not concern this block.
  return std::make_unique<AttentionCuda>(b);
}

}  // namespace megacpp::cuda_backend
