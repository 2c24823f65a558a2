// blocks.hpp — constructors of the CUDA blocks, one file each (engine/cuda/<block>_cuda.cpp).
#pragma once
#include <memory>

#include "engine/cuda/device_block.hpp"

namespace megacpp::cuda_backend {

std::unique_ptr<DeviceBlock> make_dense_mlp_cuda(const BlockBuild& b);    // D
std::unique_ptr<DeviceBlock> make_mamba_mixer_cuda(const BlockBuild& b);  // M
std::unique_ptr<DeviceBlock> make_attention_cuda(const BlockBuild& b);    // A
std::unique_ptr<DeviceBlock> make_moe_cuda(const BlockBuild& b);          // E
std::unique_ptr<DeviceBlock> make_m2rnn_cuda(const BlockBuild& b);        // R

}  // namespace megacpp::cuda_backend
