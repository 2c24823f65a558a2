// moe_grad_add.cu — dst += src over up to 8 fp32 segments (see moe_grad_add.hpp).
// Math: dst_i[j] = dst_i[j] + src_i[j] in fp32 (one rounding per element, like the CPU twin's fp32 grads).
// Shapes: any n per segment; 16-byte float4 accesses when both pointers are 16-byte aligned, a scalar
// tail/fallback otherwise. Saved for backward: nothing. Resources: 256 threads, grid (blocks, nseg),
// grid-stride loop (≤ 1024 blocks per segment), no shared memory, 32 registers, no spills (ptxas -v, sm_90a).
// Determinism: one thread owns each element; no atomics.
#include "kernels/moe/moe_grad_add.hpp"

#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"

namespace megacpp::moe {
namespace {

struct SegArgs {
  GradAddSeg s[kGradAddMaxSegs];
};

__global__ void k_grad_add(SegArgs a) {
  const GradAddSeg g = a.s[blockIdx.y];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool vec = ((reinterpret_cast<uintptr_t>(g.dst) | reinterpret_cast<uintptr_t>(g.src)) & 15u) == 0;
  if (vec) {
    const int64_t nv = g.n / 4;
    float4* d4 = reinterpret_cast<float4*>(g.dst);
    const float4* s4 = reinterpret_cast<const float4*>(g.src);
    for (int64_t i = i0; i < nv; i += stride) {
      float4 d = d4[i];
      const float4 s = s4[i];
      d.x += s.x, d.y += s.y, d.z += s.z, d.w += s.w;
      d4[i] = d;
    }
    for (int64_t i = nv * 4 + i0; i < g.n; i += stride) g.dst[i] += g.src[i];
  } else {
    for (int64_t i = i0; i < g.n; i += stride) g.dst[i] += g.src[i];
  }
}

}  // namespace

void grad_add_segments(const GradAddSeg* segs, int nseg, cudaStream_t stream) {
  if (nseg < 0 || nseg > kGradAddMaxSegs)
    throw std::invalid_argument("moe grad_add: nseg=" + std::to_string(nseg) + " not supported (supported: 0.." +
                                std::to_string(kGradAddMaxSegs) + ")");
  SegArgs a{};
  int64_t nmax = 0;
  for (int i = 0; i < nseg; ++i) {
    if (segs[i].n < 0) throw std::invalid_argument("moe grad_add: negative segment length");
    a.s[i] = segs[i];
    nmax = segs[i].n > nmax ? segs[i].n : nmax;
  }
  if (nseg == 0 || nmax == 0) return;
  constexpr int kThreads = 256;
  const int64_t want = (nmax / 4 + kThreads - 1) / kThreads;
  const unsigned bx = static_cast<unsigned>(want < 1 ? 1 : (want > 1024 ? 1024 : want));
  k_grad_add<<<dim3(bx, static_cast<unsigned>(nseg)), kThreads, 0, stream>>>(a);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

}  // namespace megacpp::moe
