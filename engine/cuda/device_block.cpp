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
