// device_model.hpp — what the training loop needs from a model that lives on an accelerator.
//
// The CPU reference backend is driven directly (Model<float> + AdamW<float>, host buffers that the
// data-parallel code reduces in place). A device backend keeps parameters, gradients and optimizer
// state in device memory, so the loop talks to it through this interface. Parameter layout, names and
// initial values are the CPU model's (host_layout()), so checkpoints move freely between backends.
// The implementation is engine/cuda/cuda_model.cpp; builds without CUDA get a factory that refuses.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config/recipe.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/model/block.hpp"
#include "engine/model/params.hpp"
#include "engine/model/parallel.hpp"

namespace megacpp {

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  virtual int64_t numel() const = 0;
  virtual std::vector<std::string> layer_names() const = 0;
  // Names, shapes and offsets of the parameters (host copy of the layout; its values are the init or
  // whatever download() last wrote into it).
  virtual ParamStore<float>& host_layout() = 0;

  virtual void zero_grad() = 0;
  // tokens: [B, S+1] int32 (host). Sum of token losses; gradients of grad_scale·(Σ CE + B·S·Σ aux)
  // accumulated on the device.
  virtual double forward_backward(const int32_t* tokens, int64_t B, double grad_scale) = 0;
  virtual double forward_loss(const int32_t* tokens, int64_t B) = 0;
  virtual AuxLosses aux_losses() = 0;
  // Global L2 norm of the accumulated gradients (also prepares the clip scale for optimizer_step).
  virtual double grad_norm() = 0;
  // AdamW (train.* hyper-parameters) with the clip scale of the last grad_norm(); 0-based step.
  virtual void optimizer_step(double lr, int64_t step) = 0;

  // Checkpoints: fp32 master weights and AdamW moments, in the host layout (under ZeRO-1, m and v are
  // this rank's shard: see set_data_parallel).
  virtual void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;
  virtual void upload(const std::vector<float>& params, const std::vector<float>* m, const std::vector<float>* v) = 0;
  // The accumulated fp32 gradients in the host layout (tests).
  virtual void download_grads(std::vector<float>& g) = 0;
  // Data parallelism: gradients ← Σ over the communicator's ranks, in buckets of `bucket_elems`. NCCL
  // reduces the device buffer in place; a host communicator (in-process) goes through a host copy.
  virtual void all_reduce_grads(Communicator& c, std::size_t bucket_elems) = 0;

  // ---- data parallelism on the device (pure DP: tp = ep = 1; TP/EP use the host-staged calls below) ----
  struct DataParallel {
    Communicator* comm = nullptr;    // the data-parallel group (world > 1); NCCL or a host communicator
    bool zero = false;               // ZeRO-1: AdamW m and v hold this rank's shard only (see below)
    std::size_t bucket_elems = 1 << 20;
    bool overlap = true;             // reduce each layer's buckets during the last micro-batch's backward
  };
  // Call once, right after construction and before upload(). Buckets: every layer's parameters are one
  // contiguous range of the flat buffer (checked; cut into bucket_elems pieces), reduced last layer
  // first, then the rest (embedding, final norm, LM head). The buckets and their order are the same
  // with overlap on and off, so the result is bit-identical.
  // ZeRO-1: the flat buffer of N elements is cut into W shards of Sh = ceil(N/W) (the last padded); this
  // rank owns [rank·Sh, min(N, rank·Sh + Sh)). Gradients are reduce-scattered into the shard, the grad
  // norm is summed over the shards, AdamW updates the shard (m, v allocated Sh elements: the memory
  // saving), and the updated fp32 master shard and its bf16 copy are all-gathered. download()/upload()
  // then move m and v as this rank's shard (Sh elements, zero-padded), params in full.
  virtual void set_data_parallel(const DataParallel& dp) = 0;
  // The next forward_backward is the step's last micro-batch: with overlap on (and no ZeRO), its backward
  // hands each layer's buckets to the communication thread as soon as that layer's gradients are final.
  virtual void mark_last_micro() = 0;
  // Completes the data-parallel reduction (waits for the overlapped buckets, or reduces them all now;
  // ZeRO: the reduce-scatter). Returns when the reduced gradients are in place.
  virtual void finish_grad_reduction() = 0;
  struct DpTimes {
    double async_comm_s = 0;  // seconds inside collectives run on the communication thread
    double wait_s = 0;        // seconds the training thread waited in finish_grad_reduction
  };
  virtual DpTimes take_dp_times() = 0;  // since the last call

  // ---- host-staged gradient handling (TP/EP on the CUDA backend: the trainer reduces per group on the
  // host, in the host layout, and computes the grad norm there) ----
  virtual void upload_grads(const std::vector<float>& g) = 0;
  // Sets the clip scale of the next optimizer_step from a norm computed elsewhere (the CPU rule).
  virtual void set_grad_norm(double norm) = 0;

  // Memory (MiB): peak device memory in use (cudaMemGetInfo) and what the model allocated itself.
  virtual nlohmann::json memory() = 0;
  // Per-letter forward/backward milliseconds summed since the last call (CUDA events), and what ran
  // (every block's record: backends requested vs observed, plans).
  virtual nlohmann::json take_block_times() = 0;
  virtual nlohmann::json record() = 0;
};

// Builds the CUDA model for mbs × seq_len tokens with the CPU model's initialisation from `seed`.
// Throws std::runtime_error naming what is not supported on the CUDA backend (a letter, a shape, a
// build without CUDA, no GPU).
// `mp`: this rank's tensor/expert-parallel groups (engine/model/parallel.hpp); the model then holds this
// rank's shard of every parameter, exactly as the CPU Model built with the same `mp` does.
std::unique_ptr<DeviceModel> make_cuda_model(const Recipe& r, int64_t mbs, int64_t seq_len, uint64_t seed,
                                             const ModelParallel& mp = {});

}  // namespace megacpp
