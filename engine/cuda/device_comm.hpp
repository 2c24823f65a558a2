// device_comm.hpp — collectives on DEVICE buffers for the CUDA backend's tensor/expert parallelism and
// its data-parallel gradient reduction, over either communicator:
//   NcclComm       the device pointer goes to NCCL as is (one process per GPU);
//   InProcessComm  ranks are threads of one process (tests: several ranks sharing one GPU); the buffer
//                  is staged through pinned host memory, reduced there, and copied back.
// Every call first waits for `stream` (the work that produced the buffer), runs the collective to
// completion (the communicator's calls are blocking), and returns with the result in place. Simple and
// attributable; the overlap of the data-parallel reduction with the backward is done by the model on
// its own comm stream, not here.
// bf16 buffers are reduced in fp32 (converted into a staging buffer and back): a sum of bf16 values
// rounded once, not at every hop.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "engine/dist/communicator.hpp"

namespace megacpp::cuda_backend {

class DeviceCollectives {
 public:
  // `c` may be null (no-op collectives: one rank).
  explicit DeviceCollectives(Communicator* c) : c_(c) {}
  ~DeviceCollectives();
  DeviceCollectives(const DeviceCollectives&) = delete;
  DeviceCollectives& operator=(const DeviceCollectives&) = delete;

  Communicator* comm() const { return c_; }
  int size() const { return c_ ? c_->world() : 1; }
  int rank() const { return c_ ? c_->rank() : 0; }
  bool on_nccl() const;

  // buf ← Σ over the ranks (in place).
  void all_reduce(float* buf, std::size_t n, cudaStream_t stream);
  void all_reduce(__nv_bfloat16* buf, std::size_t n, cudaStream_t stream);
  // recv[q·n, (q+1)·n) ← send of rank q (bytes; device buffers).
  void all_gather_bytes(const void* send, void* recv, std::size_t bytes, cudaStream_t stream);
  // Variable all-to-all of device bytes (see Communicator::all_to_all_v).
  void all_to_all_v(const void* send, const std::vector<std::size_t>& send_bytes, const std::vector<std::size_t>& send_off,
                    void* recv, const std::vector<std::size_t>& recv_bytes, const std::vector<std::size_t>& recv_off,
                    cudaStream_t stream);

 private:
  float* fp32_stage(std::size_t n);          // device (NCCL path)
  void* host_stage(std::size_t bytes);       // pinned host (in-process path)
  Communicator* c_;
  float* dev_f32_ = nullptr;
  std::size_t dev_f32_n_ = 0;
  void* host_ = nullptr;
  std::size_t host_bytes_ = 0;
};

}  // namespace megacpp::cuda_backend
