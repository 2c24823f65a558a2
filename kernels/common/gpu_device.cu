// gpu_device.cu — device discovery and library versions for `--version`, receipts and test skips.
#include "kernels/common/gpu_device.hpp"

#include <cublasLt.h>
#include <cublas_api.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

namespace megacpp {

namespace {
std::string ver3(long v, long a, long b) {  // v = major*a + minor*b + patch
  return std::to_string(v / a) + "." + std::to_string((v % a) / b) + "." + std::to_string(v % b);
}
}  // namespace

const GpuRuntime& gpu_runtime() {
  static const GpuRuntime rt = [] {
    GpuRuntime r;
    r.built_with_cuda = true;
    r.built_cuda = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    r.built_cublas = std::to_string(CUBLAS_VER_MAJOR) + "." + std::to_string(CUBLAS_VER_MINOR) + "." +
                     std::to_string(CUBLAS_VER_PATCH);
    r.built_cudnn = std::to_string(CUDNN_MAJOR) + "." + std::to_string(CUDNN_MINOR) + "." + std::to_string(CUDNN_PATCHLEVEL);
    r.built_nccl = std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." + std::to_string(NCCL_PATCH);
    // Library versions as loaded now (these calls need no device).
    r.runtime_cublas = ver3(static_cast<long>(cublasLtGetVersion()), 10000, 100);
    r.runtime_cudnn = ver3(static_cast<long>(cudnnGetVersion()), 10000, 100);
    int nv = 0;
    if (ncclGetVersion(&nv) == ncclSuccess) r.runtime_nccl = ver3(nv, 10000, 100);
    cudaDriverGetVersion(&r.driver_version);
    cudaRuntimeGetVersion(&r.runtime_version);
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      r.why_not = e != cudaSuccess ? std::string("no GPU (") + cudaGetErrorString(e) + ")" : "no GPU (no CUDA device)";
      cudaGetLastError();  // clear the sticky-free error so later checks start clean
      return r;
    }
    for (int i = 0; i < n; ++i) {
      cudaDeviceProp p{};
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
      GpuInfo g;
      g.index = i;
      g.name = p.name;
      g.sm_major = p.major;
      g.sm_minor = p.minor;
      g.multiprocessors = p.multiProcessorCount;
      g.memory_gib = static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
      g.smem_per_block_optin = p.sharedMemPerBlockOptin;
      g.l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
      r.gpus.push_back(g);
    }
    r.available = !r.gpus.empty();
    if (!r.available) r.why_not = "no GPU (device properties unreadable)";
    return r;
  }();
  return rt;
}

}  // namespace megacpp
#include "kernels/common/gpu_device_common.inc"
