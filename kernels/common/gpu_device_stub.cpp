// CPU-only build: there is never a GPU.
#include "kernels/common/gpu_device.hpp"

namespace megacpp {
const GpuRuntime& gpu_runtime() {
  static const GpuRuntime rt = [] {
    GpuRuntime r;
    r.why_not = "CPU-only build (MEGACPP_WITH_CUDA=OFF)";
    return r;
  }();
  return rt;
}
}  // namespace megacpp
#include "kernels/common/gpu_device_common.inc"
