// nccl_comm.hpp — the NCCL implementation of Communicator (CUDA builds; one process per GPU).
//
// Buffers are DEVICE pointers. Each collective is enqueued on the communicator's own stream and
// then waited for by polling cudaStreamQuery and ncclCommGetAsyncError: an NCCL error, or no
// completion within parallel.timeout_s, aborts the communicator (ncclCommAbort) and throws an error
// that names this rank and the collective. (Waiting after each call keeps failures attributable; the
// overlapped bucket all-reduce of the CUDA backend will wait on events instead.)
// In builds without CUDA/NCCL make_nccl_comm throws "built without NCCL".
#pragma once
#include <memory>
#include <string>

#include "engine/dist/communicator.hpp"

namespace megacpp {

bool nccl_available();       // compiled with NCCL
std::string nccl_unique_id();  // ncclGetUniqueId as bytes (rank 0 calls it; 128 bytes)
// cudaSetDevice(device), then ncclCommInitRank(world, id, rank).
std::unique_ptr<Communicator> make_nccl_comm(int rank, int world, int device, const std::string& unique_id, double timeout_s);

}  // namespace megacpp
