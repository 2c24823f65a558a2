// gpu_timing.hpp — honest kernel timing: CUDA events around each run, after warm-up, median of
// many runs; plus the resource report of a kernel (registers, smem, theoretical occupancy).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

struct TimingStats {
  double median_ms = 0, min_ms = 0, max_ms = 0, mean_ms = 0;
  int runs = 0;
};

// Runs `launch` `warmup` times, then times `iters` runs one by one with CUDA events on the
// current stream (stream 0 unless `stream` is given). Throws on any CUDA error.
TimingStats time_gpu(const std::function<void()>& launch, int warmup = 5, int iters = 20, void* stream = nullptr);

struct KernelResources {
  std::string name;
  int block_threads = 0;
  int registers = 0;            // per thread
  std::size_t static_smem = 0;  // bytes
  std::size_t dynamic_smem = 0; // bytes
  std::size_t local_bytes = 0;  // per thread (spills / stack)
  int max_blocks_per_sm = 0;
  double occupancy = 0;         // active warps / max warps per SM (theoretical)
};

// `func` is the kernel's address (e.g. (const void*)my_kernel<...>).
KernelResources kernel_resources(const std::string& name, const void* func, int block_threads,
                                 std::size_t dynamic_smem);
nlohmann::json to_json(const KernelResources& k);

}  // namespace megacpp
