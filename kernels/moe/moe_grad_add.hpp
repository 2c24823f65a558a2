// moe_grad_add.hpp — dst += src over up to 8 fp32 segments in one launch (the MoE block's parameter
// gradients: MoeBlockGpu OVERWRITES its gradient outputs, the CUDA backend ACCUMULATES into the fp32 grad
// views, so the block writes into scratch and adds here). Elementwise, no atomics: deterministic.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace megacpp::moe {

struct GradAddSeg {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t n = 0;
};
constexpr int kGradAddMaxSegs = 8;

// dst_i[j] += src_i[j] for every segment i (nseg ≤ kGradAddMaxSegs, n ≥ 0). Throws std::invalid_argument
// naming the limit when nseg is out of range.
void grad_add_segments(const GradAddSeg* segs, int nseg, cudaStream_t stream);

}  // namespace megacpp::moe
