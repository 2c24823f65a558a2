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

  // Checkpoints: fp32 master weights and AdamW moments, in the host layout.
  virtual void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;
  virtual void upload(const std::vector<float>& params, const std::vector<float>* m, const std::vector<float>* v) = 0;
  // The accumulated fp32 gradients in the host layout (tests).
  virtual void download_grads(std::vector<float>& g) = 0;
  // Data parallelism: gradients ← Σ over the communicator's ranks, in buckets of `bucket_elems`. NCCL
  // reduces the device buffer in place; a host communicator (in-process) goes through a host copy.
  virtual void all_reduce_grads(Communicator& c, std::size_t bucket_elems) = 0;

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
