// device_block.hpp — one pattern letter on the CUDA training backend.
//
// The CUDA backend keeps the CPU reference backend's parameter layout: the host ParamStore<float> that the
// CPU blocks declare (same names, shapes, offsets, init) is the layout of three device buffers:
//   master  fp32   what AdamW updates and checkpoints hold
//   shadow  bf16   the weights forward and backward read (= bf16(master), refreshed by the optimizer)
//   grad    fp32   parameter gradients, ACCUMULATED over micro-batches (zeroed by the model per step)
// A block finds its parameters by name (layout.find(prefix + "mlp.gate")), exactly the names its CPU
// twin declared, so checkpoints are interchangeable between the backends.
//
// Activations are bf16 row-major [B·S, hidden] on the model's stream. A block computes y = f(x) (the
// model adds the residual and applies the pre-norm), keeps what its backward needs in arena buffers it
// reserved at construction (sized for max_tokens), and its backward OVERWRITES dx and ACCUMULATES the
// fp32 parameter gradients. No cudaMalloc, no synchronisation and no float atomics in forward/backward.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/config/recipe.hpp"
#include "engine/cuda/device_arena.hpp"
#include "engine/cuda/device_comm.hpp"
#include "engine/model/block.hpp"
#include "engine/model/params.hpp"
#include "engine/model/parallel.hpp"

namespace megacpp::cuda_backend {

using bf16 = __nv_bfloat16;

struct DeviceParams {
  const ParamStore<float>* layout = nullptr;
  float* master = nullptr;
  bf16* shadow = nullptr;
  float* grad = nullptr;

  // Index of `name` in the layout; throws std::runtime_error naming it when absent.
  int index(const std::string& name) const;
  int64_t numel(int i) const { return layout->spec(i).numel; }
  const bf16* w(int i) const { return shadow + layout->spec(i).offset; }       // bf16 weights
  const float* w32(int i) const { return master + layout->spec(i).offset; }   // fp32 (small parameters)
  float* g(int i) const { return grad + layout->spec(i).offset; }             // fp32 gradient (+=)
};

// Everything a block's constructor needs.
struct BlockBuild {
  const Recipe* recipe = nullptr;
  const DeviceParams* params = nullptr;
  DeviceArena* arena = nullptr;
  std::string prefix;      // "layers.3."
  int64_t max_tokens = 0;  // mbs · seq_len
  int64_t seq_len = 0;
  // Tensor/expert parallelism (engine/model/parallel.hpp): the layout above already holds this rank's
  // shards (the CPU model was built with the same ModelParallel). tp/ep: collectives on device buffers
  // over the TP and EP groups (null or size 1: none).
  const ModelParallel* mp = nullptr;
  DeviceCollectives* tp = nullptr;
  DeviceCollectives* ep = nullptr;
};

class DeviceBlock {
 public:
  virtual ~DeviceBlock() = default;
  virtual const char* name() const = 0;
  // x, y: bf16 [B·S, hidden] (device). y is overwritten.
  virtual void forward(const bf16* x, bf16* y, int64_t B, int64_t S, cudaStream_t stream) = 0;
  // dy → dx (overwritten); parameter gradients accumulated (fp32). Uses what the last forward saved.
  virtual void backward(const bf16* dy, bf16* dx, int64_t B, int64_t S, cudaStream_t stream) = 0;
  // Blocks with auxiliary losses (MoE): the gradient of the aux terms is scaled by `s`.
  virtual void set_aux_scale(double /*s*/) {}
  // Auxiliary losses of the last forward (may synchronise the stream: called once per step, for logs).
  virtual AuxLosses aux_losses() { return {}; }
  // What really ran (backend requested vs observed, fallbacks with reasons, plans), for the receipt.
  virtual nlohmann::json record() const { return nlohmann::json::object(); }
};

// The CUDA twin of make_block(): throws std::runtime_error("block X not available on the CUDA backend
// yet") for letters without one.
std::unique_ptr<DeviceBlock> make_device_block(BlockKind kind, const BlockBuild& b);

}  // namespace megacpp::cuda_backend
