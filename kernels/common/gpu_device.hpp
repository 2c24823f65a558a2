// gpu_device.hpp — what GPU (if any) this process sees, and the versions of the CUDA libraries it
// was built with and finds at run time. Compiled as a stub in CPU-only builds (no GPU, ever).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

struct GpuInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  double memory_gib = 0;
  std::size_t smem_per_block_optin = 0;
  std::size_t l2_bytes = 0;
};

struct GpuRuntime {
  bool built_with_cuda = false;
  bool available = false;   // at least one usable device
  std::string why_not;      // when !available: "CPU-only build", "no CUDA device", driver error ...
  std::vector<GpuInfo> gpus;
  int driver_version = 0;   // cudaDriverGetVersion, e.g. 13000
  int runtime_version = 0;  // cudaRuntimeGetVersion
  std::string built_cuda, built_cublas, built_cudnn, built_nccl;        // from headers
  std::string runtime_cublas, runtime_cudnn, runtime_nccl;              // from the loaded libraries
};

// Queried once per process (cached).
const GpuRuntime& gpu_runtime();
inline bool gpu_available() { return gpu_runtime().available; }
nlohmann::json to_json(const GpuRuntime& rt);

// Dense bf16 peak of a known GPU in TFLOP/s (datasheet, for MFU); 0 when unknown → print "n/a".
double dense_bf16_peak_tflops(const std::string& gpu_name);

}  // namespace megacpp
