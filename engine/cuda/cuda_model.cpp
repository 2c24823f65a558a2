// cuda_model.cpp — the hybrid stack on the CUDA training backend (CPU twin: engine/model/model.cpp).
//
//   h_0 = wte[tokens]                                   embedding_fwd (bf16)
//   n_0 = RMSNorm(h_0)·w_0                              rmsnorm_fwd
//   y_l = block_l(n_l)                                  one DeviceBlock per pattern letter
//   h_{l+1} = h_l + y_l ; n_{l+1} = RMSNorm(h_{l+1})    residual_rmsnorm_fwd (the fused residual; the last
//                                                       one uses the final norm's weight)
//   loss = Σ CE(n_L · W_headᵀ, targets)                 lm_head_ce (vocabulary-chunked, no [M,V] logits)
// Backward in reverse; the residual gradient flows in one bf16 buffer that every layer's norm backward
// adds into (rmsnorm_bwd's dres). Saved: h_l (L+1 buffers), n_l and rstd_l per layer, the final norm,
// the LSE, plus what each block saves in the arena.
// train.recompute [letters]: those layers keep their saved activations in one shared arena region and
// re-run their forward right before their backward (one extra forward each, memory of one layer).
// Memory: parameters fp32 master + bf16 shadow + fp32 grad + AdamW m, v (18 bytes per parameter), the
// activation arena (sized once for mbs × seq_len), the shared scratch; nothing is allocated per step.
// Determinism: every kernel underneath is atomics-free; the cuBLASLt algorithm per shape is fixed after
// the first call, so identical runs are bitwise identical (train.deterministic holds).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>

#include "engine/config/pattern.hpp"
#include "engine/cuda/device_block.hpp"
#include "engine/model/model.hpp"
#include "engine/train/device_model.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/train_ops/adamw.hpp"
#include "kernels/train_ops/embedding.hpp"
#include "kernels/train_ops/lm_head_ce.hpp"
#include "kernels/train_ops/rmsnorm.hpp"

namespace megacpp::cuda_backend {
namespace {

namespace to = megacpp::train_ops;

template <typename T>
T* dmalloc(std::size_t n, const char* what, std::size_t& total) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<std::size_t>(1, n * sizeof(T)));
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("out of GPU memory allocating ") + what + " (" +
                             std::to_string((n * sizeof(T)) >> 20) + " MiB): " + cudaGetErrorString(e));
  }
  total += n * sizeof(T);
  return static_cast<T*>(p);
}

void host_to_bf16(const float* src, uint16_t* dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = float_to_bf16_bits(src[i]);
}

class CudaModel final : public DeviceModel {
 public:
  CudaModel(const Recipe& r, int64_t mbs, int64_t seq_len, uint64_t seed, const ModelParallel& mp)
      : r_(r), maxB_(mbs), S_(seq_len), C_(r.model.hidden), V_(r.model.vocab), mp_(mp), tp_coll_(mp.tp), ep_coll_(mp.ep) {
    try {
      build(r, seed);
    } catch (...) {
      release();  // a refused letter or shape (train.device=auto falls back to the CPU): free what was taken
      throw;
    }
  }

  ~CudaModel() override { release(); }

 private:
  void build(const Recipe& r, uint64_t seed) {
    if (!gpu_available()) throw std::runtime_error("train.device=cuda: no usable GPU (" + gpu_runtime().why_not + ")");
    if (C_ % 8 != 0)
      throw std::runtime_error("model.hidden=" + std::to_string(C_) + ": the CUDA backend needs a multiple of 8");
    if (V_ % 8 != 0)
      throw std::runtime_error("model.vocab=" + std::to_string(V_) +
                               ": the CUDA backend needs a multiple of 8 (pad the vocabulary, e.g. " +
                               std::to_string((V_ + 7) / 8 * 8) + "; the tokenizer's ids stay below it)");
    // The CPU model declares and initialises the parameters: identical names, layout and values.
    // (Sized for one chunk of tokens: its activation buffers are not used.)
    // With tensor/expert parallelism it is this rank's shard (mp_): the same names, local shapes.
    host_ = std::make_unique<Model<float>>(r, 1, std::max<int64_t>(1, r.model.mamba.chunk_size), mp_);
    host_->init_params(seed);
    auto& ps = host_->params();
    N_ = ps.numel();
    MEGACPP_CUDA_CHECK(cudaStreamCreateWithFlags(&st_, cudaStreamNonBlocking));
    const auto n = static_cast<std::size_t>(N_);
    master_ = dmalloc<float>(n, "fp32 master weights", param_bytes_);
    shadow_ = dmalloc<bf16>(n, "bf16 weights", param_bytes_);
    grad_ = dmalloc<float>(n, "fp32 gradients", param_bytes_);
    m_ = dmalloc<float>(n, "AdamW m", param_bytes_);
    v_ = dmalloc<float>(n, "AdamW v", param_bytes_);
    mask_ = dmalloc<uint8_t>(n, "weight-decay mask", param_bytes_);
    gn_ws_ = dmalloc<double>(to::grad_norm_workspace_doubles(N_), "grad-norm workspace", param_bytes_);
    gn_out_ = dmalloc<double>(2, "grad norm", param_bytes_);
    clip_scale_ = dmalloc<float>(1, "clip scale", param_bytes_);
    {
      std::vector<uint8_t> mask(n, 0);
      for (const auto& s : ps.specs)
        if (s.decay) std::fill(mask.begin() + s.offset, mask.begin() + s.offset + s.numel, uint8_t{1});
      MEGACPP_CUDA_CHECK(cudaMemcpy(mask_, mask.data(), n, cudaMemcpyHostToDevice));
    }
    upload(ps.data, nullptr, nullptr);
    MEGACPP_CUDA_CHECK(cudaMemset(m_, 0, n * 4));
    MEGACPP_CUDA_CHECK(cudaMemset(v_, 0, n * 4));
    MEGACPP_CUDA_CHECK(cudaMemset(grad_, 0, n * 4));
    dp_.layout = &ps, dp_.master = master_, dp_.shadow = shadow_, dp_.grad = grad_;

    if (mp_.tp_size > 1)  // vocabulary-parallel embedding and LM head / cross-entropy
      throw std::runtime_error("the CUDA backend does not support parallel.tp=" + std::to_string(mp_.tp_size) +
                               " yet (vocabulary-parallel embedding and cross-entropy); run it on train.device=cpu");
    // Blocks and activations.
    const int64_t M = maxB_ * S_;
    const auto& layers = r.layers.layers;
    L_ = static_cast<int64_t>(layers.size());
    wte_ = ps.find("embedding");
    final_norm_ = ps.find("final_norm");
    head_ = r.model.tie_embeddings ? wte_ : ps.find("lm_head");
    for (int64_t l = 0; l < L_; ++l) {
      const std::string prefix = "layers." + std::to_string(l) + ".";
      norm_.push_back(dp_.index(prefix + "norm"));
      BlockBuild bb;
      bb.recipe = &r_, bb.params = &dp_, bb.arena = &arena_, bb.prefix = prefix, bb.max_tokens = M, bb.seq_len = S_;
      bb.mp = &mp_, bb.tp = &tp_coll_, bb.ep = &ep_coll_;
      const char letter = block_letter(layers[static_cast<std::size_t>(l)]);
      // train.recompute: this layer's saved activations live in the region all recomputed layers share.
      const bool rc = std::find(r.train.recompute.begin(), r.train.recompute.end(), std::string(1, letter)) !=
                      r.train.recompute.end();
      if (rc) arena_.begin_overlay();
      blocks_.push_back(make_device_block(layers[static_cast<std::size_t>(l)], bb));
      if (rc) arena_.end_overlay();
      recompute_.push_back(rc);
      letters_.push_back(letter);
      names_.push_back(std::string(1, letters_.back()) + ":" + blocks_.back()->name());
    }
    const auto Mh = static_cast<std::size_t>(M * C_);
    resid_ = arena_.persistent<bf16>(static_cast<std::size_t>(L_ + 1) * Mh, "residual stream h_0..h_L");
    normed_ = arena_.persistent<bf16>(static_cast<std::size_t>(L_) * Mh, "pre-norm outputs n_l");
    rstd_ = arena_.persistent<float>(static_cast<std::size_t>(L_ + 1) * M, "rstd per layer + final");
    fnormed_ = arena_.persistent<bf16>(Mh, "final norm output");
    ybuf_ = arena_.persistent<bf16>(Mh, "block output");
    dresid_ = arena_.persistent<bf16>(Mh, "residual gradient");
    dnormed_ = arena_.persistent<bf16>(Mh, "block input gradient");
    lse_ = arena_.persistent<float>(static_cast<std::size_t>(M), "LM-head log-sum-exp");
    tok_ = arena_.persistent<int32_t>(static_cast<std::size_t>(2 * M), "tokens and targets");
    loss_ = arena_.persistent<double>(1, "loss sum");
    chunk_ = std::min<int64_t>(V_, 8192);
    arena_.want_scratch(to::lm_head_ce_workspace_bytes(M, C_, V_, chunk_));
    arena_.want_scratch(to::embedding_bwd_workspace_bytes(M));
    arena_.want_scratch(to::rmsnorm_bwd_workspace_floats(M, C_) * sizeof(float));
    arena_.commit();
    MEGACPP_CUDA_CHECK(cudaMallocHost(&host_tok_, static_cast<std::size_t>(2 * M) * sizeof(int32_t)));
    MEGACPP_CUDA_CHECK(cudaMallocHost(&host_loss_, 2 * sizeof(double)));
    ev_fwd_.resize(static_cast<std::size_t>(2 * L_)), ev_bwd_.resize(static_cast<std::size_t>(2 * L_));
    for (auto* v : {&ev_fwd_, &ev_bwd_, &ev_embed_, &ev_head_, &ev_opt_})
      for (auto& e : *v) MEGACPP_CUDA_CHECK(cudaEventCreate(&e));
  }

  void release() {
    if (st_) cudaStreamSynchronize(st_);
    for (auto* v : {&ev_fwd_, &ev_bwd_, &ev_embed_, &ev_head_, &ev_opt_})
      for (auto& e : *v)
        if (e) cudaEventDestroy(e), e = nullptr;
    for (void** p : {reinterpret_cast<void**>(&master_), reinterpret_cast<void**>(&shadow_), reinterpret_cast<void**>(&grad_),
                     reinterpret_cast<void**>(&m_), reinterpret_cast<void**>(&v_), reinterpret_cast<void**>(&mask_),
                     reinterpret_cast<void**>(&gn_ws_), reinterpret_cast<void**>(&gn_out_),
                     reinterpret_cast<void**>(&clip_scale_)})
      if (*p) cudaFree(*p), *p = nullptr;
    if (host_tok_) cudaFreeHost(host_tok_), host_tok_ = nullptr;
    if (host_loss_) cudaFreeHost(host_loss_), host_loss_ = nullptr;
    if (st_) cudaStreamDestroy(st_), st_ = nullptr;
  }

 public:

  int64_t numel() const override { return N_; }
  std::vector<std::string> layer_names() const override { return names_; }
  ParamStore<float>& host_layout() override { return host_->params(); }

  void zero_grad() override { MEGACPP_CUDA_CHECK(cudaMemsetAsync(grad_, 0, static_cast<std::size_t>(N_) * 4, st_)); }

  double forward_backward(const int32_t* tokens, int64_t B, double grad_scale) override {
    return run(tokens, B, true, grad_scale);
  }
  double forward_loss(const int32_t* tokens, int64_t B) override { return run(tokens, B, false, 0.0); }

  AuxLosses aux_losses() override {
    AuxLosses sum;
    for (auto& b : blocks_) add_aux_losses(sum, b->aux_losses());
    return sum;
  }

  double grad_norm() override {
    to::grad_norm(grad_, N_, gn_ws_, gn_out_, clip_scale_, static_cast<float>(r_.train.clip), st_);
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(host_loss_ + 1, gn_out_, sizeof(double), cudaMemcpyDeviceToHost, st_));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    return host_loss_[1];
  }

  void optimizer_step(double lr, int64_t step) override {
    rec(ev_opt_[0]);
    to::AdamWHyper h;
    h.lr = lr, h.beta1 = r_.train.beta1, h.beta2 = r_.train.beta2, h.eps = r_.train.eps;
    h.weight_decay = r_.train.weight_decay, h.step = step;
    to::adamw_step(master_, grad_, m_, v_, shadow_, mask_, N_, h, clip_scale_, st_);
    rec(ev_opt_[1]);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    times_["optimizer"] += elapsed(ev_opt_[0], ev_opt_[1]);
  }

  void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
    const auto n = static_cast<std::size_t>(N_);
    params.resize(n), m.resize(n), v.resize(n);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(params.data(), master_, n * 4, cudaMemcpyDeviceToHost));
    MEGACPP_CUDA_CHECK(cudaMemcpy(m.data(), m_, n * 4, cudaMemcpyDeviceToHost));
    MEGACPP_CUDA_CHECK(cudaMemcpy(v.data(), v_, n * 4, cudaMemcpyDeviceToHost));
    host_->params().data = params;
  }

  void upload(const std::vector<float>& params, const std::vector<float>* m, const std::vector<float>* v) override {
    const auto n = static_cast<std::size_t>(N_);
    if (params.size() != n || (m && m->size() != n) || (v && v->size() != n))
      throw std::runtime_error("CUDA model: state of " + std::to_string(params.size()) + " elements for " +
                               std::to_string(n) + " parameters");
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(master_, params.data(), n * 4, cudaMemcpyHostToDevice));
    std::vector<uint16_t> sh(n);
    host_to_bf16(params.data(), sh.data(), n);
    MEGACPP_CUDA_CHECK(cudaMemcpy(shadow_, sh.data(), n * 2, cudaMemcpyHostToDevice));
    if (m) MEGACPP_CUDA_CHECK(cudaMemcpy(m_, m->data(), n * 4, cudaMemcpyHostToDevice));
    if (v) MEGACPP_CUDA_CHECK(cudaMemcpy(v_, v->data(), n * 4, cudaMemcpyHostToDevice));
  }

  void download_grads(std::vector<float>& g) override {
    g.resize(static_cast<std::size_t>(N_));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(g.data(), grad_, g.size() * 4, cudaMemcpyDeviceToHost));
  }

  void all_reduce_grads(Communicator& c, std::size_t bucket) override {
    const auto n = static_cast<std::size_t>(N_);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));  // the backward's gradients are complete
    float* g = grad_;
    if (c.kind() != "nccl") {  // a host communicator: reduce a host copy
      host_grad_.resize(n);
      MEGACPP_CUDA_CHECK(cudaMemcpy(host_grad_.data(), grad_, n * 4, cudaMemcpyDeviceToHost));
      g = host_grad_.data();
    }
    for (std::size_t off = 0; off < n; off += bucket) c.all_reduce_sum(g + off, std::min(bucket, n - off));
    if (g != grad_) MEGACPP_CUDA_CHECK(cudaMemcpy(grad_, host_grad_.data(), n * 4, cudaMemcpyHostToDevice));
  }

  nlohmann::json memory() override {
    std::size_t free_b = 0, total_b = 0;
    MEGACPP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const double mib = 1.0 / 1048576.0;
    nlohmann::json big = nlohmann::json::array();
    for (const auto& [name, bytes] : arena_.largest(6)) big.push_back({{"buffer", name}, {"mib", static_cast<double>(bytes) * mib}});
    return {{"device_used_mib", static_cast<double>(total_b - free_b) * mib},
            {"device_total_mib", static_cast<double>(total_b) * mib},
            {"parameters_and_optimizer_mib", static_cast<double>(param_bytes_) * mib},
            {"activations_mib", static_cast<double>(arena_.persistent_bytes()) * mib},
            {"recomputed_layers_region_mib", static_cast<double>(arena_.overlay_bytes()) * mib},
            {"scratch_mib", static_cast<double>(arena_.scratch_bytes()) * mib},
            {"largest_activation_buffers", big}};
  }

  nlohmann::json take_block_times() override {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, ms] : times_) j[k] = ms;
    times_.clear();
    return j;
  }

  nlohmann::json record() override {
    nlohmann::json layers = nlohmann::json::array();
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      nlohmann::json rec = blocks_[l]->record();
      if (!rec.empty()) layers.push_back({{"layer", l}, {"block", names_[l]}, {"record", rec}});
    }
    return {{"backend", "cuda"}, {"gpu", gpu_runtime().gpus.empty() ? "" : gpu_runtime().gpus.front().name},
            {"dtype", "bf16 activations and weights, fp32 master weights, gradients and AdamW state"},
            {"lm_head_chunk", chunk_}, {"recompute", r_.train.recompute}, {"blocks", layers}};
  }

 private:
  double run(const int32_t* tokens, int64_t B, bool backward, double grad_scale) {
    if (B > maxB_) throw std::invalid_argument("CUDA model: batch larger than the batch the model was sized for");
    const int64_t S = S_, M = B * S, h = C_;
    const auto Mh = static_cast<std::size_t>(M * h);
    // tokens [B, S+1] → inputs and targets (host, pinned), one copy.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < S; ++t) {
        const int32_t tok = tokens[b * (S + 1) + t];
        if (tok < 0 || tok >= V_)
          throw std::out_of_range("token id " + std::to_string(tok) + " outside the vocabulary (" + std::to_string(V_) + ")");
        host_tok_[b * S + t] = tok;
        host_tok_[M + b * S + t] = tokens[b * (S + 1) + t + 1];
      }
    int32_t* dtok = tok_.get();
    const int32_t* tgt = dtok + M;
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(dtok, host_tok_, static_cast<std::size_t>(2 * M) * 4, cudaMemcpyHostToDevice, st_));
    bf16* resid = resid_.get();
    bf16* normed = normed_.get();
    float* rstd = rstd_.get();
    const float eps = static_cast<float>(r_.model.norm_eps);
    void* scratch = arena_.scratch();
    const std::size_t scratch_bytes = arena_.scratch_bytes();
    auto H = [&](int64_t l) { return resid + static_cast<std::size_t>(l) * Mh; };
    auto Nn = [&](int64_t l) { return normed + static_cast<std::size_t>(l) * Mh; };
    // ---- forward ---- (events around every block and the LM head: the per-letter time split)
    rec(ev_embed_[0]);
    to::embedding_fwd(dtok, dp_.w(wte_), H(0), M, V_, h, nullptr, st_);
    to::rmsnorm_fwd(H(0), dp_.w(norm_[0]), Nn(0), rstd, M, h, eps, st_);
    rec(ev_embed_[1]);
    for (int64_t l = 0; l < L_; ++l) {
      const auto u = static_cast<std::size_t>(l);
      rec(ev_fwd_[2 * u]);
      blocks_[u]->forward(Nn(l), ybuf_.get(), B, S, st_);
      rec(ev_fwd_[2 * u + 1]);
      const bool last = l + 1 == L_;
      to::residual_rmsnorm_fwd(H(l), ybuf_.get(), dp_.w(last ? final_norm_ : norm_[u + 1]), H(l + 1),
                               last ? fnormed_.get() : Nn(l + 1), rstd + (l + 1) * M, M, h, eps, st_);
    }
    rec(ev_head_[0]);
    to::lm_head_ce_fwd(fnormed_.get(), dp_.w(head_), tgt, M, h, V_, chunk_, lse_.get(), loss_.get(), scratch, scratch_bytes, st_);
    rec(ev_head_[1]);
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(host_loss_, loss_.get(), sizeof(double), cudaMemcpyDeviceToHost, st_));
    if (backward) {
      for (auto& b : blocks_) b->set_aux_scale(grad_scale * static_cast<double>(B * S));
      rec(ev_head_[2]);
      to::lm_head_ce_bwd(fnormed_.get(), dp_.w(head_), tgt, lse_.get(), M, h, V_, chunk_, static_cast<float>(grad_scale),
                         dnormed_.get(), dp_.g(head_), scratch, scratch_bytes, st_);
      to::rmsnorm_bwd(H(L_), dp_.w(final_norm_), rstd + L_ * M, dnormed_.get(), nullptr, dresid_.get(), dp_.g(final_norm_),
                      static_cast<float*>(scratch), M, h, st_);
      rec(ev_head_[3]);
      for (int64_t l = L_ - 1; l >= 0; --l) {
        const auto u = static_cast<std::size_t>(l);
        rec(ev_bwd_[2 * u]);
        if (recompute_[u]) blocks_[u]->forward(Nn(l), ybuf_.get(), B, S, st_);  // refill the shared region
        blocks_[u]->backward(dresid_.get(), dnormed_.get(), B, S, st_);
        rec(ev_bwd_[2 * u + 1]);
        // The block's gradient through its pre-norm, plus the residual path (dres aliases dx).
        to::rmsnorm_bwd(H(l), dp_.w(norm_[u]), rstd + l * M, dnormed_.get(), dresid_.get(), dresid_.get(), dp_.g(norm_[u]),
                        static_cast<float*>(scratch), M, h, st_);
      }
      rec(ev_embed_[2]);
      to::embedding_bwd(dtok, dresid_.get(), dp_.g(wte_), M, V_, h, scratch, scratch_bytes, st_);
      rec(ev_embed_[3]);
    }
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    const std::string dir = backward ? "train " : "eval ";
    for (int64_t l = 0; l < L_; ++l) {
      const auto u = static_cast<std::size_t>(l);
      const std::string k(1, letters_[u]);
      times_[dir + "fwd " + k] += elapsed(ev_fwd_[2 * u], ev_fwd_[2 * u + 1]);
      if (backward) times_["train bwd " + k] += elapsed(ev_bwd_[2 * u], ev_bwd_[2 * u + 1]);
    }
    times_[dir + "fwd embedding+norms"] += elapsed(ev_embed_[0], ev_embed_[1]);
    times_[dir + "fwd lm_head_ce"] += elapsed(ev_head_[0], ev_head_[1]);
    if (backward) {
      times_["train bwd lm_head_ce+final_norm"] += elapsed(ev_head_[2], ev_head_[3]);
      times_["train bwd embedding"] += elapsed(ev_embed_[2], ev_embed_[3]);
    }
    return host_loss_[0];
  }

  void rec(cudaEvent_t e) { MEGACPP_CUDA_CHECK(cudaEventRecord(e, st_)); }
  static double elapsed(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    MEGACPP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms;
  }

  Recipe r_;
  int64_t maxB_, S_, C_, V_, N_ = 0, L_ = 0, chunk_ = 0;
  ModelParallel mp_;                             // this rank's TP/EP groups (default: none)
  DeviceCollectives tp_coll_, ep_coll_;          // device-buffer collectives over them
  std::unique_ptr<Model<float>> host_;
  cudaStream_t st_ = nullptr;
  std::size_t param_bytes_ = 0;
  float *master_ = nullptr, *grad_ = nullptr, *m_ = nullptr, *v_ = nullptr, *clip_scale_ = nullptr;
  bf16* shadow_ = nullptr;
  uint8_t* mask_ = nullptr;
  double *gn_ws_ = nullptr, *gn_out_ = nullptr;
  DeviceParams dp_;
  DeviceArena arena_;
  std::vector<std::unique_ptr<DeviceBlock>> blocks_;
  std::vector<char> letters_;
  std::vector<bool> recompute_;
  std::vector<std::string> names_;
  std::vector<int> norm_;
  int wte_ = -1, head_ = -1, final_norm_ = -1;
  DevPtr<bf16> resid_, normed_, fnormed_, ybuf_, dresid_, dnormed_;
  DevPtr<float> rstd_, lse_;
  DevPtr<int32_t> tok_;
  DevPtr<double> loss_;
  int32_t* host_tok_ = nullptr;
  double* host_loss_ = nullptr;
  std::vector<float> host_grad_;  // all_reduce_grads through a host communicator
  std::vector<cudaEvent_t> ev_fwd_, ev_bwd_;  // start/end per layer
  std::vector<cudaEvent_t> ev_embed_ = std::vector<cudaEvent_t>(4), ev_head_ = std::vector<cudaEvent_t>(4),
                           ev_opt_ = std::vector<cudaEvent_t>(2);
  std::map<std::string, double> times_;
};

}  // namespace
}  // namespace megacpp::cuda_backend

namespace megacpp {
std::unique_ptr<DeviceModel> make_cuda_model(const Recipe& r, int64_t mbs, int64_t seq_len, uint64_t seed,
                                             const ModelParallel& mp) {
  return std::make_unique<cuda_backend::CudaModel>(r, mbs, seq_len, seed, mp);
}
}  // namespace megacpp
