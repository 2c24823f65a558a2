#include "engine/cuda/device_arena.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>

namespace megacpp::cuda_backend {

DeviceArena::~DeviceArena() {
  if (base_) cudaFree(base_);
}

std::size_t DeviceArena::reserve(std::size_t bytes, const std::string& what) {
  if (base_) throw std::logic_error("DeviceArena: persistent(" + what + ") after commit()");
  items_.emplace_back(in_overlay_ ? what + " (recomputed: shared)" : what, bytes);
  if (in_overlay_) {
    const std::size_t off = overlay_used_;
    overlay_used_ += align(bytes);
    overlay_max_ = overlay_used_ > overlay_max_ ? overlay_used_ : overlay_max_;
    return off;
  }
  const std::size_t off = used_;
  used_ += align(bytes);
  return off;
}

void DeviceArena::commit() {
  if (base_) return;
  const std::size_t total = total_bytes();
  if (total == 0) return;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, total);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("out of GPU memory allocating the activation arena: " + std::to_string(total >> 20) +
                             " MiB (" + std::to_string(used_ >> 20) + " MiB saved activations + " +
                             std::to_string(overlay_max_ >> 20) + " MiB recomputed-layer region + " +
                             std::to_string(scratch_bytes_ >> 20) + " MiB scratch): " + cudaGetErrorString(e));
  }
  base_ = static_cast<char*>(p);
}

void* DeviceArena::scratch() const {
  if (!base_) throw std::logic_error("DeviceArena: scratch() before commit()");
  return base_ + used_ + overlay_max_;
}

std::vector<std::pair<std::string, std::size_t>> DeviceArena::largest(std::size_t n) const {
  auto v = items_;
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (v.size() > n) v.resize(n);
  return v;
}

void ScratchCarver::overflow(std::size_t need) const {
  throw std::logic_error("scratch overflow: " + std::to_string(need) + " bytes needed, " + std::to_string(cap_) +
                         " reserved (a block's want_scratch() is too small)");
}

}  // namespace megacpp::cuda_backend
