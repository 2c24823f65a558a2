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
// Data parallelism (set_data_parallel): per-layer gradient buckets all-reduced by a communication thread
// during the last micro-batch's backward (a CUDA event per layer), or after it; ZeRO-1 keeps AdamW m, v
// shard-sized (10 + 8/W bytes per parameter) and all-gathers the updated master and bf16 shards.
// Determinism: every kernel underneath is atomics-free; the cuBLASLt algorithm per shape is fixed after
// the first call, so identical runs are bitwise identical (train.deterministic holds).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

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
#include "kernels/train_ops/lm_head_ce_vp.hpp"
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
    // master, shadow and grad carry kZeroSlack zero elements past N: ZeRO-1 pads the flat buffer to W
    // equal shards (at most W-1 extra elements) for its reduce-scatter and all-gather.
    master_ = dmalloc<float>(n + kZeroSlack, "fp32 master weights", param_bytes_);
    shadow_ = dmalloc<bf16>(n + kZeroSlack, "bf16 weights", param_bytes_);
    grad_ = dmalloc<float>(n + kZeroSlack, "fp32 gradients", param_bytes_);
    MEGACPP_CUDA_CHECK(cudaMemset(master_ + n, 0, kZeroSlack * 4));
    MEGACPP_CUDA_CHECK(cudaMemset(shadow_ + n, 0, kZeroSlack * 2));
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
    MEGACPP_CUDA_CHECK(cudaMemset(grad_, 0, (n + kZeroSlack) * 4));
    dp_.layout = &ps, dp_.master = master_, dp_.shadow = shadow_, dp_.grad = grad_;

    if (mp_.tp_size > 1) {  // vocabulary-parallel embedding and LM head / cross-entropy (the CPU model's contract)
      const int64_t tp = mp_.tp_size;
      if (!mp_.tp || tp_coll_.size() != tp)
        throw std::runtime_error("CUDA model: parallel.tp=" + std::to_string(tp) + " without its TP communicator");
      if (V_ % tp != 0)  // (the CPU layout refuses it first; kept for the message)
        throw std::runtime_error("parallel.tp=" + std::to_string(tp) + " does not divide model.vocab=" + std::to_string(V_) +
                                 " (the embedding and the LM head are vocabulary-parallel)");
      // The CE chunk must be a multiple of 8; the kernel clamps it to the slice (vl_ may be e.g. 264/2 = 132).
      vl_ = V_ / tp, v0_ = mp_.tp_rank * vl_, vchunk_ = (std::min<int64_t>(vl_, 8192) + 7) / 8 * 8;
      const int64_t Mv = maxB_ * S_;
      using SC = ScratchCarver;
      const std::size_t ws = SC::bytes_for<char>(to::lm_head_ce_vp_workspace_bytes(Mv, C_, vl_, vchunk_));
      arena_.want_scratch(SC::bytes_for<float>(static_cast<std::size_t>(2 * Mv)) +
                          SC::bytes_for<float>(static_cast<std::size_t>(2 * Mv * tp)) + ws);  // forward: stats
      arena_.want_scratch(SC::bytes_for<float>(static_cast<std::size_t>(Mv * C_)) + ws);     // backward: fp32 dx
      ltok_ = arena_.persistent<int32_t>(static_cast<std::size_t>(Mv), "tokens, this rank's vocabulary slice");
      host_ltok_.resize(static_cast<std::size_t>(Mv));
    }
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
    plan_buckets();
  }

  // Data-parallel buckets: every layer's parameters ("layers.<l>.*") must be one contiguous range of the
  // flat buffer, disjoint from the other layers' and from the rest (checked here: the overlap relies on
  // it). Order: layer L-1 … layer 0 (the order their gradients become final), then the rest.
  void plan_buckets() {
    const auto& ps = host_->params();
    std::vector<int64_t> lo(static_cast<std::size_t>(L_), N_), hi(static_cast<std::size_t>(L_), 0);
    std::vector<int> owner(ps.specs.size(), -1);
    for (std::size_t i = 0; i < ps.specs.size(); ++i) {
      const auto& sp = ps.specs[i];
      if (sp.name.rfind("layers.", 0) != 0) continue;
      const int l = std::stoi(sp.name.substr(7));
      owner[i] = l;
      lo[static_cast<std::size_t>(l)] = std::min(lo[static_cast<std::size_t>(l)], sp.offset);
      hi[static_cast<std::size_t>(l)] = std::max(hi[static_cast<std::size_t>(l)], sp.offset + sp.numel);
    }
    for (std::size_t i = 0; i < ps.specs.size(); ++i)
      for (int64_t l = 0; l < L_; ++l) {
        const auto& sp = ps.specs[i];
        const auto u = static_cast<std::size_t>(l);
        if (owner[i] != l && sp.offset < hi[u] && sp.offset + sp.numel > lo[u])
          throw std::runtime_error("CUDA model: parameter " + sp.name + " lies inside layer " + std::to_string(l) +
                                   "'s range of the flat buffer: the layer-wise gradient buckets need each layer contiguous");
      }
    layer_bk_.assign(static_cast<std::size_t>(L_), {0, 0});
    auto cut = [&](int64_t a, int64_t b) {
      const int64_t step = std::max<int64_t>(1, static_cast<int64_t>(bucket_elems_));
      for (int64_t o = a; o < b; o += step) buckets_.push_back({o, std::min(step, b - o)});
    };
    buckets_.clear();
    for (int64_t l = L_ - 1; l >= 0; --l) {
      const auto u = static_cast<std::size_t>(l);
      const int b0 = static_cast<int>(buckets_.size());
      if (hi[u] > lo[u]) cut(lo[u], hi[u]);
      layer_bk_[u] = {b0, static_cast<int>(buckets_.size())};
    }
    // The rest: the complement of the layer ranges in [0, N) (embedding, final norm, LM head, padding).
    std::vector<std::pair<int64_t, int64_t>> used;
    for (int64_t l = 0; l < L_; ++l)
      if (hi[static_cast<std::size_t>(l)] > lo[static_cast<std::size_t>(l)])
        used.push_back({lo[static_cast<std::size_t>(l)], hi[static_cast<std::size_t>(l)]});
    std::sort(used.begin(), used.end());
    const int r0 = static_cast<int>(buckets_.size());
    int64_t at = 0;
    for (const auto& [a, b] : used) {
      if (a > at) cut(at, a);
      at = std::max(at, b);
    }
    if (N_ > at) cut(at, N_);
    rest_bk_ = {r0, static_cast<int>(buckets_.size())};
  }

  void stop_comm_thread() {
    if (!cth_.joinable()) return;
    {
      std::lock_guard<std::mutex> lk(cm_);
      stop_ = true;
      q_.clear();
    }
    ccv_.notify_all();
    cth_.join();
  }

  void release() {
    stop_comm_thread();
    if (cs_) cudaStreamSynchronize(cs_), cudaStreamDestroy(cs_), cs_ = nullptr;
    for (auto& e : ev_red_)
      if (e) cudaEventDestroy(e), e = nullptr;
    if (hstage_) cudaFreeHost(hstage_), hstage_ = nullptr;
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
    if (zero_) {  // the norm over every rank's shard: Σ of the shards' squared norms
      double ss = 0;
      if (zhi_ > zlo_) {
        to::grad_norm(grad_ + zlo_, zhi_ - zlo_, gn_ws_, gn_out_, nullptr, 0.f, st_);
        MEGACPP_CUDA_CHECK(cudaMemcpyAsync(host_loss_ + 1, gn_out_, sizeof(double), cudaMemcpyDeviceToHost, st_));
        MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
        ss = host_loss_[1] * host_loss_[1];
      }
      dpc_.comm->all_reduce_sum(&ss, 1);
      const double norm = std::sqrt(ss);
      set_grad_norm(norm);
      return norm;
    }
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
    if (!zero_) {
      to::adamw_step(master_, grad_, m_, v_, shadow_, mask_, N_, h, clip_scale_, st_);
      rec(ev_opt_[1]);
      MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
      times_["optimizer"] += elapsed(ev_opt_[0], ev_opt_[1]);
      return;
    }
    // ZeRO-1: AdamW on this rank's shard (m, v are shard-sized), then every rank's updated fp32 master
    // shard and its bf16 copy (written by the same kernel) to every rank, in place.
    if (zhi_ > zlo_) to::adamw_step(master_ + zlo_, grad_ + zlo_, m_, v_, shadow_ + zlo_, mask_ + zlo_, zhi_ - zlo_, h, clip_scale_, st_);
    rec(ev_opt_[1]);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    times_["optimizer"] += elapsed(ev_opt_[0], ev_opt_[1]);
    gather_shard(master_, 4);
    gather_shard(shadow_, 2);
  }

  // In place: [q·Sh, q·Sh + Sh) of buf ← rank q's (elements of `esize` bytes; buf has W·Sh elements).
  void gather_shard(void* buf, std::size_t esize) {
    const std::size_t bytes = static_cast<std::size_t>(zS_) * esize;
    char* b = static_cast<char*>(buf);
    Communicator& c = *dpc_.comm;
    if (c.kind() == "nccl") return c.all_gather_bytes(b + static_cast<std::size_t>(zr_) * bytes, b, bytes);
    char* h = reinterpret_cast<char*>(host_stage());
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(h + static_cast<std::size_t>(zr_) * bytes, b + static_cast<std::size_t>(zr_) * bytes, bytes,
                                       cudaMemcpyDeviceToHost, cs_));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
    c.all_gather_bytes(h + static_cast<std::size_t>(zr_) * bytes, h, bytes);
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(b, h, bytes * static_cast<std::size_t>(zW_), cudaMemcpyHostToDevice, cs_));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
  }

  float* host_stage() {  // pinned: the padded flat buffer plus one shard (host communicators)
    if (!hstage_) MEGACPP_CUDA_CHECK(cudaMallocHost(&hstage_, static_cast<std::size_t>(N_ + kZeroSlack + zS_) * 4));
    return hstage_;
  }

  void set_data_parallel(const DataParallel& d) override {
    if (!d.comm || d.comm->world() <= 1) return;
    if (dp_on_) throw std::logic_error("CUDA model: set_data_parallel called twice");
    if (mp_.active())
      throw std::runtime_error("CUDA model: the device data-parallel path is for tp = ep = 1 (TP/EP reduce host-staged)");
    dpc_ = d, dp_on_ = true;
    bucket_elems_ = d.bucket_elems;
    plan_buckets();
    MEGACPP_CUDA_CHECK(cudaGetDevice(&dev_));
    MEGACPP_CUDA_CHECK(cudaStreamCreateWithFlags(&cs_, cudaStreamNonBlocking));
    ev_red_.assign(static_cast<std::size_t>(L_ + 1), nullptr);
    for (auto& e : ev_red_) MEGACPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (d.zero) {
      zW_ = d.comm->world(), zr_ = d.comm->rank();
      zS_ = (N_ + zW_ - 1) / zW_;
      if (zS_ * zW_ - N_ > kZeroSlack)
        throw std::runtime_error("CUDA model: ZeRO-1 over " + std::to_string(zW_) + " ranks pads more than " +
                                 std::to_string(kZeroSlack) + " elements");
      zlo_ = std::min<int64_t>(N_, zr_ * zS_), zhi_ = std::min<int64_t>(N_, zlo_ + zS_);
      // m and v: this rank's shard only (the memory ZeRO-1 saves).
      cudaFree(m_), cudaFree(v_), m_ = v_ = nullptr;
      param_bytes_ -= static_cast<std::size_t>(N_) * 8;
      m_ = dmalloc<float>(static_cast<std::size_t>(zS_), "AdamW m (ZeRO-1 shard)", param_bytes_);
      v_ = dmalloc<float>(static_cast<std::size_t>(zS_), "AdamW v (ZeRO-1 shard)", param_bytes_);
      MEGACPP_CUDA_CHECK(cudaMemset(m_, 0, static_cast<std::size_t>(zS_) * 4));
      MEGACPP_CUDA_CHECK(cudaMemset(v_, 0, static_cast<std::size_t>(zS_) * 4));
      zero_ = true;
    }
    if (d.comm->kind() != "nccl") host_stage();  // before the communication thread can use it
    if (d.overlap && !d.zero) {
      stop_ = false;
      cth_ = std::thread([this] { comm_loop(); });
    }
  }

  void mark_last_micro() override { last_micro_ = dp_on_ && dpc_.overlap && !zero_; }

  void finish_grad_reduction() override {
    if (!dp_on_) throw std::logic_error("CUDA model: finish_grad_reduction without set_data_parallel");
    if (launched_) {  // the overlapped buckets: wait for what is left
      launched_ = false;
      const auto t0 = std::chrono::steady_clock::now();
      std::exception_ptr err;
      {
        std::unique_lock<std::mutex> lk(cm_);
        ccv_.wait(lk, [&] { return pending_ == 0; });
        err = cerr_;
        cerr_ = nullptr;
      }
      wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (err) std::rethrow_exception(err);
      return;
    }
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));  // the backward's gradients are complete
    if (zero_) {  // reduce-scatter the padded flat buffer into this rank's shard (in place at grad + lo)
      Communicator& c = *dpc_.comm;
      const auto sh = static_cast<std::size_t>(zS_);
      if (c.kind() == "nccl") {
        c.reduce_scatter_sum(grad_, grad_ + static_cast<std::size_t>(zr_) * sh, sh);
      } else {
        float* h = host_stage();
        const std::size_t all = sh * static_cast<std::size_t>(zW_);
        MEGACPP_CUDA_CHECK(cudaMemcpyAsync(h, grad_, all * 4, cudaMemcpyDeviceToHost, cs_));
        MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
        c.reduce_scatter_sum(h, h + all, sh);
        MEGACPP_CUDA_CHECK(cudaMemcpyAsync(grad_ + static_cast<std::size_t>(zr_) * sh, h + all, sh * 4, cudaMemcpyHostToDevice, cs_));
        MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
      }
      return;
    }
    for (const auto& b : buckets_) reduce_bucket(b);  // the same buckets in the same order as the overlap
  }

  DpTimes take_dp_times() override {
    DpTimes t;
    std::lock_guard<std::mutex> lk(cm_);
    t.async_comm_s = async_s_, t.wait_s = wait_s_;
    async_s_ = wait_s_ = 0;
    return t;
  }

  void upload_grads(const std::vector<float>& g) override {
    if (g.size() != static_cast<std::size_t>(N_))
      throw std::runtime_error("CUDA model: " + std::to_string(g.size()) + " gradients for " + std::to_string(N_) + " parameters");
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(grad_, g.data(), g.size() * 4, cudaMemcpyHostToDevice));
  }

  void set_grad_norm(double norm) override {  // the CPU optimizer's (and the grad_norm kernel's) clip rule
    const double clip = static_cast<double>(static_cast<float>(r_.train.clip));
    const float cs = (clip > 0 && norm > clip) ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(clip_scale_, &cs, sizeof(float), cudaMemcpyHostToDevice));
  }

  void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
    const auto n = static_cast<std::size_t>(N_);
    const std::size_t nm = zero_ ? static_cast<std::size_t>(zS_) : n;  // ZeRO-1: this rank's shard of m and v
    params.resize(n), m.resize(nm), v.resize(nm);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(params.data(), master_, n * 4, cudaMemcpyDeviceToHost));
    MEGACPP_CUDA_CHECK(cudaMemcpy(m.data(), m_, nm * 4, cudaMemcpyDeviceToHost));
    MEGACPP_CUDA_CHECK(cudaMemcpy(v.data(), v_, nm * 4, cudaMemcpyDeviceToHost));
    host_->params().data = params;
  }

  void upload(const std::vector<float>& params, const std::vector<float>* m, const std::vector<float>* v) override {
    const auto n = static_cast<std::size_t>(N_);
    const std::size_t nm = zero_ ? static_cast<std::size_t>(zS_) : n;  // ZeRO-1: this rank's shard of m and v
    if (params.size() != n || (m && m->size() != nm) || (v && v->size() != nm))
      throw std::runtime_error("CUDA model: state of " + std::to_string(params.size()) + " parameters and " +
                               std::to_string(m ? m->size() : 0) + " optimizer elements for " + std::to_string(n) +
                               " parameters (" + std::to_string(nm) + " optimizer elements on this rank)");
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st_));
    MEGACPP_CUDA_CHECK(cudaMemcpy(master_, params.data(), n * 4, cudaMemcpyHostToDevice));
    std::vector<uint16_t> sh(n);
    host_to_bf16(params.data(), sh.data(), n);
    MEGACPP_CUDA_CHECK(cudaMemcpy(shadow_, sh.data(), n * 2, cudaMemcpyHostToDevice));
    if (m) MEGACPP_CUDA_CHECK(cudaMemcpy(m_, m->data(), nm * 4, cudaMemcpyHostToDevice));
    if (v) MEGACPP_CUDA_CHECK(cudaMemcpy(v_, v->data(), nm * 4, cudaMemcpyHostToDevice));
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
            {"adamw_state_mib", static_cast<double>(zero_ ? 8 * zS_ : 8 * N_) * mib},
            {"zero1", zero_ ? nlohmann::json{{"world", zW_}, {"shard_elems", zS_}, {"numel", N_},
                                            {"adamw_state_saved_mib", static_cast<double>(8 * (N_ - zS_)) * mib}}
                            : nlohmann::json(nullptr)},
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
        if (vl_) host_ltok_[static_cast<std::size_t>(b * S + t)] = tok >= v0_ && tok < v0_ + vl_ ? tok - v0_ : -1;  // TP
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
    if (!vl_) {
      to::embedding_fwd(dtok, dp_.w(wte_), H(0), M, V_, h, nullptr, st_);
    } else {  // vocabulary-parallel: rows of other ranks' tokens are zero here; exactly one rank holds each row
      MEGACPP_CUDA_CHECK(cudaMemcpyAsync(ltok_.get(), host_ltok_.data(), static_cast<std::size_t>(M) * 4,
                                         cudaMemcpyHostToDevice, st_));
      to::embedding_fwd(ltok_.get(), dp_.w(wte_), H(0), M, vl_, h, nullptr, st_);
      tp_coll_.all_reduce(H(0), Mh, st_);
    }
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
    if (!vl_) {
      to::lm_head_ce_fwd(fnormed_.get(), dp_.w(head_), tgt, M, h, V_, chunk_, lse_.get(), loss_.get(), scratch, scratch_bytes, st_);
    } else {  // vocabulary-parallel CE: per-row (lse, target logit) of this rank's slice, all-gathered, combined
      const int P = mp_.tp_size;
      ScratchCarver sc(scratch, scratch_bytes);
      float* stats = sc.take<float>(static_cast<std::size_t>(2 * M));
      float* all = sc.take<float>(static_cast<std::size_t>(2 * M * P));
      const std::size_t wsb = to::lm_head_ce_vp_workspace_bytes(M, h, vl_, vchunk_);
      void* ws = sc.take<char>(wsb);
      to::lm_head_ce_vp_partial(fnormed_.get(), dp_.w(head_), tgt, M, h, vl_, v0_, vchunk_, stats, ws, wsb, st_);
      tp_coll_.all_gather_bytes(stats, all, static_cast<std::size_t>(2 * M) * sizeof(float), st_);
      to::lm_head_ce_vp_combine(all, P, tgt, M, lse_.get(), loss_.get(), ws, wsb, st_);
    }
    rec(ev_head_[1]);
    MEGACPP_CUDA_CHECK(cudaMemcpyAsync(host_loss_, loss_.get(), sizeof(double), cudaMemcpyDeviceToHost, st_));
    // The step's last micro-batch with overlap on: each layer's buckets go to the communication thread as
    // soon as that layer's gradients are final (a CUDA event after its norm's backward).
    const bool overlap_now = backward && last_micro_;
    last_micro_ = false;
    if (backward) {
      for (auto& b : blocks_) b->set_aux_scale(grad_scale * static_cast<double>(B * S));
      rec(ev_head_[2]);
      if (!vl_) {
        to::lm_head_ce_bwd(fnormed_.get(), dp_.w(head_), tgt, lse_.get(), M, h, V_, chunk_, static_cast<float>(grad_scale),
                           dnormed_.get(), dp_.g(head_), scratch, scratch_bytes, st_);
      } else {  // this rank's vocabulary's part of dx (fp32), summed over TP, then rounded once to bf16
        ScratchCarver sc(scratch, scratch_bytes);
        float* dxf = sc.take<float>(Mh);
        const std::size_t wsb = to::lm_head_ce_vp_workspace_bytes(M, h, vl_, vchunk_);
        void* ws = sc.take<char>(wsb);
        to::lm_head_ce_vp_bwd(fnormed_.get(), dp_.w(head_), tgt, lse_.get(), M, h, vl_, v0_, vchunk_,
                              static_cast<float>(grad_scale), dxf, dp_.g(head_), ws, wsb, st_);
        tp_coll_.all_reduce(dxf, Mh, st_);
        to::cast_f32_to_bf16(dxf, dnormed_.get(), static_cast<int64_t>(Mh), st_);
      }
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
        if (overlap_now) enqueue(ev_red_[u], layer_bk_[u]);  // layer l's gradients are final
      }
      rec(ev_embed_[2]);
      if (!vl_) to::embedding_bwd(dtok, dresid_.get(), dp_.g(wte_), M, V_, h, scratch, scratch_bytes, st_);
      else to::embedding_bwd(ltok_.get(), dresid_.get(), dp_.g(wte_), M, vl_, h, scratch, scratch_bytes, st_);  // own rows
      rec(ev_embed_[3]);
      if (overlap_now) enqueue(ev_red_[static_cast<std::size_t>(L_)], rest_bk_), launched_ = true;
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

  // ---- data-parallel reduction (pure DP) ----
  struct Bucket {
    int64_t off, n;
  };
  struct Job {
    cudaEvent_t ev;
    std::pair<int, int> bk;  // buckets [first, second)
  };
  void enqueue(cudaEvent_t ev, std::pair<int, int> bk) {
    MEGACPP_CUDA_CHECK(cudaEventRecord(ev, st_));
    {
      std::lock_guard<std::mutex> lk(cm_);
      q_.push_back({ev, bk});
      ++pending_;
    }
    ccv_.notify_all();
  }
  // One bucket ← Σ over the DP ranks, in place. NCCL: the device range as is; a host communicator
  // (in-process ranks sharing the GPU): through pinned host memory on the comm stream. Returns the
  // seconds spent inside the collective.
  double reduce_bucket(const Bucket& b) {
    Communicator& c = *dpc_.comm;
    float* g = grad_ + b.off;
    const auto n = static_cast<std::size_t>(b.n);
    std::chrono::steady_clock::time_point t0;
    if (c.kind() == "nccl") {
      t0 = std::chrono::steady_clock::now();
      c.all_reduce_sum(g, n);
    } else {
      float* h = host_stage() + b.off;
      MEGACPP_CUDA_CHECK(cudaMemcpyAsync(h, g, n * 4, cudaMemcpyDeviceToHost, cs_));
      MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
      t0 = std::chrono::steady_clock::now();
      c.all_reduce_sum(h, n);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      MEGACPP_CUDA_CHECK(cudaMemcpyAsync(g, h, n * 4, cudaMemcpyHostToDevice, cs_));
      MEGACPP_CUDA_CHECK(cudaStreamSynchronize(cs_));
      return s;
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // The communication thread: waits on each job's event (the layer's backward is done), then reduces its
  // buckets. After a failure it skips the rest; finish_grad_reduction rethrows.
  void comm_loop() {
    cudaSetDevice(dev_);
    for (;;) {
      Job j{};
      bool failed = false;
      {
        std::unique_lock<std::mutex> lk(cm_);
        ccv_.wait(lk, [&] { return stop_ || !q_.empty(); });
        if (stop_) return;
        j = q_.front();
        q_.pop_front();
        failed = cerr_ != nullptr;
      }
      double s = 0;
      std::exception_ptr err;
      if (!failed) try {
          MEGACPP_CUDA_CHECK(cudaEventSynchronize(j.ev));
          for (int k = j.bk.first; k < j.bk.second; ++k) s += reduce_bucket(buckets_[static_cast<std::size_t>(k)]);
        } catch (...) {
          err = std::current_exception();
        }
      {
        std::lock_guard<std::mutex> lk(cm_);
        async_s_ += s;
        if (err && !cerr_) cerr_ = err;
        --pending_;
      }
      ccv_.notify_all();
    }
  }
  static double elapsed(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    MEGACPP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms;
  }

  Recipe r_;
  int64_t maxB_, S_, C_, V_, N_ = 0, L_ = 0, chunk_ = 0;
  ModelParallel mp_;                             // this rank's TP/EP groups (default: none)
  // Vocabulary-parallel embedding / LM head under TP: this rank's ids [v0_, v0_ + vl_) (vl_ = 0: no TP).
  int64_t vl_ = 0, v0_ = 0, vchunk_ = 0;
  DevPtr<int32_t> ltok_;                         // input tokens as this slice's rows (−1: another rank's)
  std::vector<int32_t> host_ltok_;
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
  // Data parallelism (set_data_parallel).
  static constexpr int64_t kZeroSlack = 4096;  // zero elements past N in master/shadow/grad (ZeRO-1 padding)
  DataParallel dpc_;
  bool dp_on_ = false, zero_ = false, last_micro_ = false, launched_ = false;
  std::size_t bucket_elems_ = std::size_t{1} << 20;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<int, int>> layer_bk_;
  std::pair<int, int> rest_bk_{0, 0};
  int64_t zW_ = 1, zr_ = 0, zS_ = 0, zlo_ = 0, zhi_ = 0;  // ZeRO-1 geometry
  int dev_ = 0;
  cudaStream_t cs_ = nullptr;        // staging copies (host communicators)
  float* hstage_ = nullptr;          // pinned staging buffer
  std::vector<cudaEvent_t> ev_red_;  // per layer (+ the rest): its gradients are final
  std::thread cth_;
  std::mutex cm_;
  std::condition_variable ccv_;
  std::deque<Job> q_;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr cerr_;
  double async_s_ = 0, wait_s_ = 0;
};

}  // namespace
}  // namespace megacpp::cuda_backend

namespace megacpp {
std::unique_ptr<DeviceModel> make_cuda_model(const Recipe& r, int64_t mbs, int64_t seq_len, uint64_t seed,
                                             const ModelParallel& mp) {
  return std::make_unique<cuda_backend::CudaModel>(r, mbs, seq_len, seed, mp);
}
}  // namespace megacpp
