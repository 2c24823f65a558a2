// train_ops_common.hpp — types shared by the train_ops launcher headers (host side, CUDA builds only).
// Conventions of every launcher in kernels/train_ops/:
//   * row-major tensors, bf16 activations/weights (`bf16` = __nv_bfloat16), fp32 math and accumulation,
//     fp32 parameter-gradient accumulation buffers (ACCUMULATED: +=), input gradients OVERWRITTEN;
//   * every launcher validates its arguments (std::invalid_argument naming the limit), enqueues on the
//     given stream, checks every launch (MEGACPP_CUDA_CHECK_LAUNCH) and never synchronises;
//   * no float atomics anywhere: every reduction is a fixed-order tree or loop → bitwise deterministic.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::train_ops {

using bf16 = __nv_bfloat16;

// One launched kernel, for the bench's resource report (kernel_resources in gpu_timing.hpp).
struct KernelInfo {
  std::string name;
  const void* func = nullptr;
  int threads = 0;
  std::size_t dynamic_smem = 0;
};

}  // namespace megacpp::train_ops
