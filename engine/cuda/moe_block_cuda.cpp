// moe_block_cuda.cpp — the E letter on the CUDA backend (CPU twin: engine/model/moe_block.cpp around the
// float64 reference kernels/moe/moe_ref.hpp). A DeviceBlock around the GPU MoE layer of kernels/moe/moe.hpp
// (MoeBlockGpu): router (softmax|sigmoid, top-k, renormalised weights), routed FFN experts (relu²|SwiGLU),
// SwiGLU shared expert, load-balancing and z auxiliary losses, capacity drops.
//
// Path: recipe features.fused_moe ("fused"/true → the fused jagged-GEMM path, "standard"/false → the padded
// strided-batched path); record() reports the requested and the observed path and the object's note().
//
// Parameter layouts: the CPU twin's router [E,H], w1 [E,F1,H] (swiglu: gate rows [0,F) first), w2 [E,H,F],
// shared_w1 [2S,H] (gate rows first), shared_w2 [H,S] are exactly moe.hpp's router, w1, w2, s1, s2: the
// bf16 shadow views are passed as they are (the element counts are checked at construction).
//
// Memory. MoeBlockGpu owns its device memory (saved routing/activations for the backward AND its workspace),
// allocated by cudaMalloc/cudaMallocHost in its constructor only, sized for T = max_tokens; its forward and
// backward allocate nothing (the default per-expert GEMM loop is used; the grouped-GEMM option is not).
// The constructor measures that footprint (cudaMemGetInfo before/after) for record(). The block reserves only
// arena scratch for the fp32 weight gradients: MoeBlockGpu OVERWRITES its gradient outputs, so backward
// writes them into scratch and adds them to the fp32 grad views (kernels/moe/moe_grad_add: one thread per
// element, no atomics → deterministic).
//
// Streams. MoeBlockGpu is bound to a stream at construction; the block owns one (non-blocking) and joins it
// to the caller's stream with events on entry and exit of forward/backward (no host synchronisation from
// the joins). Known contract deviation: MoeBlockGpu::forward synchronises the HOST once per call on the
// per-expert counts (its GEMM shapes are host-side); record() says so ("host_syncs_per_forward": 1).
//
// Auxiliary losses. The CPU twin's backward differentiates <dy,y> + s·(L_aux + L_z) with s from
// set_aux_scale (Model::run passes grad_scale·B·S); MoeBlockGpu::backward takes s (aux_grad_scale) and
// scales only the gradient, so stats()/aux_losses() keep reporting the unscaled losses like the twin.
// The test checks this scaling against the twin with s ≠ 1.
//
// Expert parallelism and expert TP (issue 8; the CPU twin's contract, engine/model/parallel.hpp):
//   EP (b.mp->ep_size = P > 1): this rank's layout holds experts [q·E/P, (q+1)·E/P) of w1/w2 (EP rank q);
//     the router and the shared expert are replicated. MoeBlockGpu runs with MoeGpuOptions::ep: routing over
//     all E on this rank's tokens (aux and z losses as on one rank, like the twin), the expert-sorted rows
//     of each owner's experts sent with one all-to-all over b.ep (DeviceCollectives: NCCL, or staged through
//     the in-process communicator), the owner's expert GEMMs, the outputs sent back; backward mirrored.
//     Fused path only (features.fused_moe=standard with ep > 1 is refused, naming the limit).
//   TP (b.mp->tp_size = t > 1): every FFN (routed and shared) holds its F/t (S/t) columns of w1 (gate and up
//     rows) and rows of w2: MoeBlockGpu runs with ffn_hidden = F/t, shared_hidden = S/t and produces a
//     partial y, all-reduced over b.tp (fp32 sum of the bf16 partials); backward: the auxiliary terms'
//     gradient scale is divided by t (every TP rank adds them; the TP sums of dx and of the router gradient,
//     which the layout marks tp_grad_partial, count them once — exactly the twin), and dx is all-reduced
//     over b.tp.
//     Tested on the H100 (tests/engine/cuda/test_cuda_ep.cpp): EP2, EP4, EP2 with a D layer (bitwise equal to
//     the ep = 1 model), TP2 and TP2×EP2.
//   Each exchange is blocking (host waits): record() counts the host synchronisations.
//
// Token count: MoeBlockGpu is sized for a fixed T (its slot count and sort chunks are fixed at construction):
// forward/backward accept only B·S = max_tokens and throw otherwise (a smaller micro-batch would need a
// second object, i.e. a second copy of its memory).
#include <cuda_runtime.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/blocks.hpp"
#include "engine/model/moe_block.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_grad_add.hpp"

namespace megacpp::cuda_backend {
namespace {

class MoeBlockCuda final : public DeviceBlock {
 public:
  explicit MoeBlockCuda(const BlockBuild& b) : p_(*b.params), arena_(*b.arena), prefix_(b.prefix) {
    const Recipe& r = *b.recipe;
    const auto& m = r.model.moe;
    if (m.shared_expert_hidden > 0 && m.shared_activation != "swiglu")
      throw std::runtime_error("model.moe.shared_activation: '" + m.shared_activation +
                               "' is not available on the CUDA backend (supported there: swiglu; the shared expert is "
                               "SwiGLU like the CPU twin)");
    if (m.activation != "swiglu" && m.activation != "relu2")
      throw std::runtime_error("model.moe.activation: '" + m.activation +
                               "' is not available on the CUDA backend (supported there: relu2, swiglu)");
    if (m.score != "softmax" && m.score != "sigmoid")
      throw std::runtime_error("model.moe.score: '" + m.score +
                               "' is not available on the CUDA backend (supported there: softmax, sigmoid)");
    // The layout (Model<float> built with b.mp) decides the shards; the recipe's parallel.* is not read here.
    ep_size_ = ep_size(b.mp), ep_rank_ = ep_rank(b.mp), tp_size_ = tp_size(b.mp);
    if (ep_size_ > 1 && (!b.ep || b.ep->size() != ep_size_))
      throw std::logic_error("MoE block on CUDA: ep=" + std::to_string(ep_size_) + " without a matching EP collective group");
    if (tp_size_ > 1 && (!b.tp || b.tp->size() != tp_size_))
      throw std::logic_error("MoE block on CUDA: tp=" + std::to_string(tp_size_) + " without a matching TP collective group");
    tpc_ = tp_size_ > 1 ? b.tp : nullptr;
    requested_ = r.features.fused_moe;
    if (requested_ == "fused" || requested_ == "true") path_ = moe::Path::Fused;
    else if (requested_ == "standard" || requested_ == "false") path_ = moe::Path::Standard;
    else
      throw std::runtime_error("features.fused_moe: '" + requested_ +
                               "' not supported (supported: fused, standard, true, false)");
    if (b.max_tokens < 1) throw std::runtime_error("MoE block on CUDA: max_tokens must be >= 1");
    // The same configuration as the CPU twin's constructor (renorm: the reference default, like the twin).
    cfg_ = moe_config_from_recipe(r, b.max_tokens);
    try {
      cfg_.validate();  // GPU limits included: experts ≤ 64, top_k ≤ 8, multiples of 8, T·K < 2^30
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("model.moe on the CUDA backend: ") + e.what());
    }
    if (cfg_.experts % ep_size_ != 0)
      throw std::runtime_error("parallel.ep=" + std::to_string(ep_size_) + " does not divide model.moe.experts=" +
                               std::to_string(cfg_.experts));
    if (cfg_.ffn_hidden % tp_size_ != 0 || cfg_.shared_hidden % tp_size_ != 0)
      throw std::runtime_error("parallel.tp=" + std::to_string(tp_size_) + " must divide model.moe.ffn_hidden=" +
                               std::to_string(cfg_.ffn_hidden) + " and shared_expert_hidden=" +
                               std::to_string(cfg_.shared_hidden));
    if (tp_size_ > 1) {  // this rank's columns of every FFN (the twin's local widths)
      cfg_.ffn_hidden /= tp_size_, cfg_.shared_hidden /= tp_size_;
      try {
        cfg_.validate();
      } catch (const std::exception& e) {
        throw std::runtime_error("model.moe on the CUDA backend with parallel.tp=" + std::to_string(tp_size_) +
                                 " (per-rank widths ffn_hidden/tp, shared_expert_hidden/tp): " + e.what());
      }
    }
    if (ep_size_ > 1 && path_ != moe::Path::Fused)
      throw std::runtime_error("features.fused_moe: '" + requested_ + "' with parallel.ep=" + std::to_string(ep_size_) +
                               " is not available on the CUDA backend (expert parallelism runs on the fused path "
                               "only; supported: fused, true)");

    // Parameters by the twin's names; element counts = moe.hpp's layouts.
    moe::MoeParamSizes sz = moe::param_sizes(cfg_);
    sz.w1 = sz.w1 / cfg_.experts * (cfg_.experts / ep_size_);  // EP: this rank's experts only
    sz.w2 = sz.w2 / cfg_.experts * (cfg_.experts / ep_size_);
    auto find = [&](const char* n, int64_t want) {
      const int i = p_.index(prefix_ + n);
      if (p_.numel(i) != want)
        throw std::runtime_error("MoE block on CUDA: parameter '" + prefix_ + n + "' has " +
                                 std::to_string(p_.numel(i)) + " elements, the GPU layout needs " +
                                 std::to_string(want));
      return i;
    };
    router_ = find("moe.router", sz.router);
    w1_ = find("moe.w1", sz.w1);
    w2_ = find("moe.w2", sz.w2);
    if (cfg_.shared_hidden > 0) {
      s1_ = find("moe.shared_w1", sz.s1);
      s2_ = find("moe.shared_w2", sz.s2);
    }
    for (int i : {router_, w1_, w2_, s1_, s2_})
      if (i >= 0) grad_scratch_bytes_ += ScratchCarver::bytes_for<float>(static_cast<std::size_t>(p_.numel(i)));
    arena_.want_scratch(grad_scratch_bytes_);

    MEGACPP_CUDA_CHECK(cudaStreamCreateWithFlags(&own_, cudaStreamNonBlocking));
    MEGACPP_CUDA_CHECK(cudaEventCreateWithFlags(&ev_in_, cudaEventDisableTiming));
    MEGACPP_CUDA_CHECK(cudaEventCreateWithFlags(&ev_out_, cudaEventDisableTiming));
    std::size_t free0 = 0, free1 = 0, total = 0;
    MEGACPP_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    try {
      moe::MoeGpuOptions opt{};
      if (ep_size_ > 1) {
        opt.ep.size = ep_size_, opt.ep.rank = ep_rank_;
        DeviceCollectives* epc = b.ep;
        opt.ep.all_to_all_v = [epc](const void* s, const std::vector<std::size_t>& sb, const std::vector<std::size_t>& so,
                                    void* rv, const std::vector<std::size_t>& rb, const std::vector<std::size_t>& ro,
                                    cudaStream_t st) { epc->all_to_all_v(s, sb, so, rv, rb, ro, st); };
      }
      moe_ = std::make_unique<moe::MoeBlockGpu>(cfg_, path_, own_, opt);
    } catch (...) {
      release();
      throw;
    }
    MEGACPP_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    object_bytes_ = free0 > free1 ? static_cast<int64_t>(free0 - free1) : 0;
  }

  ~MoeBlockCuda() override { release(); }

  const char* name() const override { return "moe"; }

  void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t st) override {
    check_tokens(B, S, "forward");
    x_ = x;
    enter(st);
    moe_->forward(x, params(), y);  // synchronises the host once on the per-expert counts (+3 exchanges with EP)
    leave(st);
    if (tpc_) tpc_->all_reduce(y, static_cast<std::size_t>(B * S * cfg_.hidden), st);  // partial FFN outputs
    const moe::MoeStepStats& s = moe_->stats();
    aux_.aux = s.aux_loss;
    aux_.z = s.z_loss;
    aux_.tokens_per_expert = s.router.tokens_per_expert;
    aux_.dropped_frac = s.router.dropped_frac;
    have_forward_ = true;
  }

  void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t st) override {
    check_tokens(B, S, "backward");
    if (!have_forward_) throw std::logic_error("MoE block on CUDA: backward before forward");
    ScratchCarver sc(arena_.scratch(), arena_.scratch_bytes());
    moe::MoeGradsDev g;
    moe::GradAddSeg seg[5];
    int nseg = 0;
    auto take = [&](int i, float*& dst) {
      if (i < 0) return;
      dst = sc.take<float>(static_cast<std::size_t>(p_.numel(i)));
      seg[nseg++] = moe::GradAddSeg{p_.g(i), dst, p_.numel(i)};
    };
    take(router_, g.router), take(w1_, g.w1), take(w2_, g.w2), take(s1_, g.s1), take(s2_, g.s2);
    enter(st);
    // The auxiliary terms' gradient scaled like the twin's; dx and the scratch gradients are overwritten.
    // TP: every rank adds the (replicated) auxiliary terms; the TP sums must count them once.
    moe_->backward(x_, params(), dy, dx, g, aux_scale_ / static_cast<double>(tp_size_));
    leave(st);
    if (tpc_) tpc_->all_reduce(dx, static_cast<std::size_t>(B * S * cfg_.hidden), st);
    moe::grad_add_segments(seg, nseg, st);  // grad views += scratch (deterministic, on the caller's stream)
  }

  void set_aux_scale(double s) override { aux_scale_ = s; }
  AuxLosses aux_losses() override { return aux_; }

  nlohmann::json record() const override {
    nlohmann::json j;
    j["path"] = moe::path_name(moe_->path());
    j["requested"] = requested_;
    j["note"] = moe_->note();
    j["config"] = cfg_.to_string();
    // MoeBlockGpu reads the per-expert counts on the host; EP adds 3 blocking exchanges per forward (counts,
    // rows out, rows back) and 2 per backward; TP one blocking all-reduce each way.
    j["host_syncs_per_forward"] = 1 + (ep_size_ > 1 ? 3 : 0) + (tp_size_ > 1 ? 1 : 0);
    j["host_syncs_per_backward"] = (ep_size_ > 1 ? 2 : 0) + (tp_size_ > 1 ? 1 : 0);
    j["ep"] = ep_size_;
    j["ep_rank"] = ep_rank_;
    j["tp"] = tp_size_;
    j["local_experts"] = cfg_.experts / ep_size_;
    j["local_ffn_hidden"] = cfg_.ffn_hidden;
    j["local_shared_hidden"] = cfg_.shared_hidden;
    j["moe_object_device_bytes"] = object_bytes_;  // measured around its constructor (cudaMemGetInfo)
    j["grad_scratch_bytes"] = grad_scratch_bytes_;
    if (have_forward_) {
      const moe::MoeStepStats& s = moe_->stats();
      j["kept_rows"] = s.kept_rows;
      j["padded_rows"] = s.padded_rows;
      j["dropped_frac"] = s.router.dropped_frac;
      if (ep_size_ > 1) j["ep_recv_rows"] = s.ep_recv_rows, j["ep_sent_rows"] = s.ep_sent_rows;
    }
    return j;
  }

 private:
  void release() {
    moe_.reset();
    if (ev_in_) cudaEventDestroy(ev_in_);
    if (ev_out_) cudaEventDestroy(ev_out_);
    if (own_) cudaStreamDestroy(own_);
    ev_in_ = ev_out_ = nullptr, own_ = nullptr;
  }
  moe::MoeParamsDev params() const {
    moe::MoeParamsDev d;
    d.router = p_.w(router_);
    d.w1 = p_.w(w1_);
    d.w2 = p_.w(w2_);
    if (s1_ >= 0) d.s1 = p_.w(s1_), d.s2 = p_.w(s2_);
    return d;
  }
  void check_tokens(int64_t B, int64_t S, const char* what) const {
    if (B * S != cfg_.tokens)
      throw std::runtime_error("MoE block on CUDA (" + prefix_ + "moe): " + what + " with B·S = " +
                               std::to_string(B * S) + " tokens, but the GPU MoE layer is sized for exactly " +
                               std::to_string(cfg_.tokens) +
                               " (max_tokens = micro-batch · seq_len); other token counts are not supported");
  }
  // Order the block's stream after the caller's work, and the caller's stream after the block's work.
  void enter(cudaStream_t st) {
    MEGACPP_CUDA_CHECK(cudaEventRecord(ev_in_, st));
    MEGACPP_CUDA_CHECK(cudaStreamWaitEvent(own_, ev_in_, 0));
  }
  void leave(cudaStream_t st) {
    MEGACPP_CUDA_CHECK(cudaEventRecord(ev_out_, own_));
    MEGACPP_CUDA_CHECK(cudaStreamWaitEvent(st, ev_out_, 0));
  }

  const DeviceParams& p_;
  DeviceArena& arena_;
  std::string prefix_, requested_;
  moe::Path path_ = moe::Path::Fused;
  moe::MoeConfig cfg_;
  double aux_scale_ = 1.0;
  int ep_size_ = 1, ep_rank_ = 0, tp_size_ = 1;
  DeviceCollectives* tpc_ = nullptr;  // TP group (tp > 1 only)
  int router_ = -1, w1_ = -1, w2_ = -1, s1_ = -1, s2_ = -1;
  std::size_t grad_scratch_bytes_ = 0;
  int64_t object_bytes_ = 0;
  cudaStream_t own_ = nullptr;
  cudaEvent_t ev_in_ = nullptr, ev_out_ = nullptr;
  std::unique_ptr<moe::MoeBlockGpu> moe_;
  const bf16* x_ = nullptr;
  bool have_forward_ = false;
  AuxLosses aux_;
};

}  // namespace

std::unique_ptr<DeviceBlock> make_moe_cuda(const BlockBuild& b) {
  return std::make_unique<MoeBlockCuda>(b);
}

}  // namespace megacpp::cuda_backend
