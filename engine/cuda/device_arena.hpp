// device_arena.hpp — the CUDA training backend's one allocator for activations.
//
// Two phases, so that nothing is cudaMalloc'ed inside the step loop:
//   1. construction of the model: every block calls persistent(bytes) for what it keeps between its
//      forward and its backward (saved activations, sized for the largest micro-batch), and
//      want_scratch(bytes) for temporaries that live only inside one forward or backward call;
//   2. commit(): one cudaMalloc of Σ persistent + max overlay + max scratch; the pointers handed out in
//      phase 1 become valid (they are offsets until then, resolved by DevPtr::get()).
// Overlay (activation recomputation, train.recompute): between begin_overlay() and end_overlay() a
// block's persistent buffers come from one region shared by every recomputed layer (its size is the
// largest layer's, not the sum): the model re-runs that layer's forward right before its backward.
// Scratch is shared by all blocks (one block runs at a time on the model's stream); its content is
// undefined at the start of every call. 256-byte alignment everywhere (cuBLASLt, cuDNN, 16-byte vectors).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::cuda_backend {

class DeviceArena;

// A pointer into the arena, valid after commit().
template <typename T>
class DevPtr {
 public:
  DevPtr() = default;
  T* get() const;
  explicit operator bool() const { return arena_ != nullptr; }

 private:
  friend class DeviceArena;
  DevPtr(const DeviceArena* a, std::size_t off, bool overlay) : arena_(a), off_(off), overlay_(overlay) {}
  const DeviceArena* arena_ = nullptr;
  std::size_t off_ = 0;
  bool overlay_ = false;
};

class DeviceArena {
 public:
  DeviceArena() = default;
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  // Phase 1. `what` names the buffer in the memory report ("layers.3.mamba.proj").
  template <typename T>
  DevPtr<T> persistent(std::size_t count, const std::string& what) {
    const std::size_t off = reserve(count * sizeof(T), what);
    return DevPtr<T>(this, off, in_overlay_);
  }
  void begin_overlay() { in_overlay_ = true, overlay_used_ = 0; }
  void end_overlay() { in_overlay_ = false; }
  void want_scratch(std::size_t bytes) { scratch_bytes_ = bytes > scratch_bytes_ ? bytes : scratch_bytes_; }
  // Phase 2: allocates (throws std::runtime_error with the byte counts when cudaMalloc fails).
  void commit();
  bool committed() const { return base_ != nullptr; }

  // Valid after commit(): the shared scratch region (want_scratch's maximum).
  void* scratch() const;
  std::size_t scratch_bytes() const { return scratch_bytes_; }
  std::size_t persistent_bytes() const { return used_; }
  std::size_t overlay_bytes() const { return overlay_max_; }
  std::size_t total_bytes() const { return used_ + overlay_max_ + align(scratch_bytes_); }
  // The largest persistent buffers, for the receipt's memory split.
  std::vector<std::pair<std::string, std::size_t>> largest(std::size_t n) const;

  char* base() const { return base_; }
  std::size_t overlay_offset() const { return used_; }
  static std::size_t align(std::size_t b) { return (b + 255) / 256 * 256; }

 private:
  std::size_t reserve(std::size_t bytes, const std::string& what);
  char* base_ = nullptr;
  std::size_t used_ = 0, scratch_bytes_ = 0;
  bool in_overlay_ = false;
  std::size_t overlay_used_ = 0, overlay_max_ = 0;
  std::vector<std::pair<std::string, std::size_t>> items_;
};

template <typename T>
T* DevPtr<T>::get() const {
  if (!arena_ || !arena_->base()) return nullptr;
  return reinterpret_cast<T*>(arena_->base() + (overlay_ ? arena_->overlay_offset() : 0) + off_);
}

// Carves typed pieces out of a scratch region inside one call (256-byte aligned).
class ScratchCarver {
 public:
  ScratchCarver(void* base, std::size_t bytes) : base_(static_cast<char*>(base)), cap_(bytes) {}
  template <typename T>
  T* take(std::size_t count) {
    const std::size_t b = DeviceArena::align(count * sizeof(T));
    if (off_ + b > cap_) overflow(off_ + b);
    T* p = reinterpret_cast<T*>(base_ + off_);
    off_ += b;
    return p;
  }
  // Bytes a sequence of take() calls needs (for want_scratch at construction).
  template <typename T>
  static std::size_t bytes_for(std::size_t count) { return DeviceArena::align(count * sizeof(T)); }

 private:
  [[noreturn]] void overflow(std::size_t need) const;
  char* base_;
  std::size_t cap_, off_ = 0;
};

}  // namespace megacpp::cuda_backend
