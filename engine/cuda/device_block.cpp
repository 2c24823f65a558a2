#include "engine/cuda/device_block.hpp"

#include <stdexcept>
#include <string>

#include "engine/config/pattern.hpp"
#include "engine/cuda/blocks.hpp"

namespace megacpp::cuda_backend {

int DeviceParams::index(const std::string& name) const {
  const int i = layout->find(name);
  if (i < 0) throw std::runtime_error("CUDA backend: parameter '" + name + "' is not in the model's layout");
  return i;
}

void refuse_model_parallel(const BlockBuild& b, const char* block) {
  if (b.mp && b.mp->active())
    throw std::runtime_error(std::string("block ") + block + " on the CUDA backend does not support tp=" +
                             std::to_string(b.mp->tp_size) + ", ep=" + std::to_string(b.mp->ep_size) +
                             " yet (run this layout on train.device=cpu)");
}

std::unique_ptr<DeviceBlock> make_device_block(BlockKind kind, const BlockBuild& b) {
  switch (kind) {
    case BlockKind::Dense: return make_dense_mlp_cuda(b);
    case BlockKind::Mamba: return make_mamba_mixer_cuda(b);
    case BlockKind::Attention: return make_attention_cuda(b);
    case BlockKind::Moe: return make_moe_cuda(b);
    case BlockKind::M2rnn: return make_m2rnn_cuda(b);
  }
  throw std::runtime_error("CUDA backend: unknown block kind");
}

}  // namespace megacpp::cuda_backend
