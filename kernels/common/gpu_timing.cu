#include "kernels/common/gpu_timing.hpp"

#include <algorithm>

#include "kernels/common/cuda_check.hpp"

namespace megacpp {

TimingStats time_gpu(const std::function<void()>& launch, int warmup, int iters, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  for (int i = 0; i < warmup; ++i) launch();
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  MEGACPP_CUDA_CHECK(cudaEventCreate(&a));
  MEGACPP_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    MEGACPP_CUDA_CHECK(cudaEventRecord(a, stream));
    launch();
    MEGACPP_CUDA_CHECK(cudaEventRecord(b, stream));
    MEGACPP_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    MEGACPP_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  MEGACPP_CUDA_CHECK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  TimingStats s;
  s.runs = iters;
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  s.min_ms = ms.front();
  s.max_ms = ms.back();
  s.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  double sum = 0;
  for (double x : ms) sum += x;
  s.mean_ms = sum / static_cast<double>(ms.size());
  return s;
}

KernelResources kernel_resources(const std::string& name, const void* func, int block_threads,
                                 std::size_t dynamic_smem) {
  KernelResources k;
  k.name = name;
  k.block_threads = block_threads;
  k.dynamic_smem = dynamic_smem;
  cudaFuncAttributes attr{};
  MEGACPP_CUDA_CHECK(cudaFuncGetAttributes(&attr, func));
  k.registers = attr.numRegs;
  k.static_smem = attr.sharedSizeBytes;
  k.local_bytes = attr.localSizeBytes;
  int blocks = 0;
  MEGACPP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, func, block_threads, dynamic_smem));
  k.max_blocks_per_sm = blocks;
  int dev = 0;
  MEGACPP_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  MEGACPP_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  const int warps_per_block = (block_threads + 31) / 32;
  k.occupancy = static_cast<double>(blocks * warps_per_block) / static_cast<double>(p.maxThreadsPerMultiProcessor / 32);
  return k;
}

nlohmann::json to_json(const KernelResources& k) {
  return {{"name", k.name},           {"block_threads", k.block_threads}, {"registers", k.registers},
          {"static_smem", k.static_smem}, {"dynamic_smem", k.dynamic_smem}, {"local_bytes", k.local_bytes},
          {"max_blocks_per_sm", k.max_blocks_per_sm}, {"occupancy", k.occupancy}};
}

}  // namespace megacpp
