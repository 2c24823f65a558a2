// dense_mlp_cuda.cpp — the D letter on the CUDA backend (CPU twin: engine/model/dense_mlp.cpp).
//   swiglu: g = x·W_gateᵀ, u = x·W_upᵀ, a = silu(g)·u ;  relu2: g = x·W_upᵀ, a = max(g,0)²
//   y = a·W_downᵀ                                          (cuBLASLt, bf16 in/out, fp32 accumulation)
// Saved for backward: g and u (bf16 [M, ffn]); a is recomputed in the backward (one elementwise pass
// instead of a third saved [M, ffn] buffer). x is the model's saved pre-norm output.
// Scratch (backward): a, da, dg, du — 4·M·ffn bf16.
// Tensor parallelism (the CPU twin's contract, engine/model/parallel.hpp): gate/up column-parallel (this
// rank's ffn/tp rows), down row-parallel (its ffn/tp columns): y is all-reduced over TP after the down
// projection (forward), dx after the input projections (backward). Weight gradients are complete per shard.
#include <stdexcept>

#include "engine/cuda/blocks.hpp"
#include "kernels/train_ops/act.hpp"
#include "kernels/train_ops/linear.hpp"

namespace megacpp::cuda_backend {
namespace {

namespace to = megacpp::train_ops;

class DenseMlpCuda final : public DeviceBlock {
 public:
  explicit DenseMlpCuda(const BlockBuild& b) : p_(*b.params), arena_(*b.arena) {
    const auto& m = b.recipe->model;
    hidden_ = m.hidden, ffn_ = m.mlp.ffn_hidden;
    const int64_t tp = tp_size(b.mp);
    if (tp > 1) {
      if (ffn_ % tp != 0 || b.tp == nullptr || b.tp->size() != tp)
        throw std::runtime_error("dense MLP on CUDA: parallel.tp=" + std::to_string(tp) +
                                 " must divide model.mlp.ffn_hidden=" + std::to_string(ffn_) + " (with a TP group)");
      ffn_ /= tp;  // this rank's shard (the layout holds the local shapes)
      tp_ = b.tp;
    }
    const std::string& a = m.mlp.activation;
    if (a == "swiglu") act_ = to::Act::swiglu;
    else if (a == "relu2") act_ = to::Act::relu2;
    else
      throw std::runtime_error("model.mlp.activation: '" + a +
                               "' is not available on the CUDA backend (supported there: swiglu, relu2)");
    gated_ = act_ == to::Act::swiglu;
    if (hidden_ % 8 != 0 || ffn_ % 8 != 0)
      throw std::runtime_error("dense MLP on CUDA: hidden and mlp.ffn_hidden must be multiples of 8 (got " +
                               std::to_string(hidden_) + ", " + std::to_string(ffn_) + " per TP rank)");
    if (gated_) w_gate_ = p_.index(b.prefix + "mlp.gate");
    w_up_ = p_.index(b.prefix + "mlp.up");
    w_down_ = p_.index(b.prefix + "mlp.down");
    if (p_.numel(w_up_) != ffn_ * hidden_ || p_.numel(w_down_) != hidden_ * ffn_)
      throw std::runtime_error("dense MLP on CUDA: parameter shapes of " + b.prefix + "mlp.{up,down} do not match " +
                               "ffn_hidden/tp=" + std::to_string(ffn_) + " x hidden=" + std::to_string(hidden_));
    const auto n = static_cast<std::size_t>(b.max_tokens * ffn_);
    g_ = arena_.persistent<bf16>(n, b.prefix + "mlp.g");
    if (gated_) u_ = arena_.persistent<bf16>(n, b.prefix + "mlp.u");
    arena_.want_scratch(4 * ScratchCarver::bytes_for<bf16>(n));
  }
  const char* name() const override { return "dense_mlp"; }

  void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = B * S;
    x_ = x;
    // For relu² the "up" matrix produces the pre-activation g (the CPU twin's convention).
    to::linear_fwd(x, p_.w(gated_ ? w_gate_ : w_up_), g_.get(), M, hidden_, ffn_, st);
    if (gated_) to::linear_fwd(x, p_.w(w_up_), u_.get(), M, hidden_, ffn_, st);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16* a = sc.take<bf16>(static_cast<std::size_t>(M * ffn_));
    to::act_fwd(act_, g_.get(), gated_ ? u_.get() : nullptr, a, M, ffn_, ffn_, ffn_, st);
    to::linear_fwd(a, p_.w(w_down_), y, M, ffn_, hidden_, st);
    if (tp_) tp_->all_reduce(y, static_cast<std::size_t>(M * hidden_), st);  // row-parallel: partial sums
  }

  void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t st) override {
    const int64_t M = B * S;
    const auto n = static_cast<std::size_t>(M * ffn_);
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    bf16 *a = sc.take<bf16>(n), *da = sc.take<bf16>(n), *dg = sc.take<bf16>(n), *du = sc.take<bf16>(n);
    to::act_fwd(act_, g_.get(), gated_ ? u_.get() : nullptr, a, M, ffn_, ffn_, ffn_, st);
    to::linear_bwd_dw(dy, a, p_.g(w_down_), M, ffn_, hidden_, st);
    to::linear_bwd_dx(dy, p_.w(w_down_), da, M, ffn_, hidden_, false, st);
    to::act_bwd(act_, g_.get(), gated_ ? u_.get() : nullptr, da, dg, gated_ ? du : nullptr, M, ffn_, ffn_, ffn_, st);
    const int gi = gated_ ? w_gate_ : w_up_;
    to::linear_bwd_dw(dg, x_, p_.g(gi), M, hidden_, ffn_, st);
    to::linear_bwd_dx(dg, p_.w(gi), dx, M, hidden_, ffn_, false, st);
    if (gated_) {
      to::linear_bwd_dw(du, x_, p_.g(w_up_), M, hidden_, ffn_, st);
      to::linear_bwd_dx(du, p_.w(w_up_), dx, M, hidden_, ffn_, true, st);
    }
    if (tp_) tp_->all_reduce(dx, static_cast<std::size_t>(M * hidden_), st);  // column-parallel input: partial dx
  }

 private:
  const DeviceParams& p_;
  DeviceArena& arena_;
  int64_t hidden_ = 0, ffn_ = 0;
  to::Act act_ = to::Act::swiglu;
  bool gated_ = true;
  int w_gate_ = -1, w_up_ = -1, w_down_ = -1;
  DeviceCollectives* tp_ = nullptr;  // TP group (null: no TP)
  const bf16* x_ = nullptr;
  DevPtr<bf16> g_, u_;
};

}  // namespace

std::unique_ptr<DeviceBlock> make_dense_mlp_cuda(const BlockBuild& b) {
  // TP per the CPU twin; EP does not concern this block (its parameters are replicated over EP).
  return std::make_unique<DenseMlpCuda>(b);
}

}  // namespace megacpp::cuda_backend
