#include "engine/dist/nccl_comm.hpp"

#include <stdexcept>

#if MEGACPP_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>
#endif

namespace megacpp {

#if MEGACPP_WITH_CUDA
namespace {

void cuda_ok(cudaError_t e, int rank, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error("rank " + std::to_string(rank) + ": " + what + ": " + cudaGetErrorString(e));
}

class NcclComm final : public Communicator {
 public:
  NcclComm(int rank, int world, int device, const std::string& id, double timeout_s)
      : rank_(rank), world_(world), timeout_s_(timeout_s) {
    if (id.size() != sizeof(ncclUniqueId))
      throw std::runtime_error("rank " + std::to_string(rank) + ": NCCL unique id of " + std::to_string(id.size()) +
                               " bytes (expected " + std::to_string(sizeof(ncclUniqueId)) + ")");
    cuda_ok(cudaSetDevice(device), rank, "cudaSetDevice");
    cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), rank, "cudaStreamCreate");
    ncclUniqueId uid;
    std::copy(id.begin(), id.end(), uid.internal);
    // Non-blocking init so that a peer that never shows up hits our timeout instead of hanging.
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    check(ncclCommInitRankConfig(&comm_, world, uid, rank, &cfg), "ncclCommInitRank");
    wait_comm("ncclCommInitRank");
  }
  // A communicator made by ncclCommSplit on the current device (non-blocking: waited for here).
  struct FromSplit {};
  NcclComm(FromSplit, ncclComm_t c, int parent_rank, int parent_world, double timeout_s)
      : rank_(parent_rank), world_(parent_world), timeout_s_(timeout_s) {
    comm_ = c;
    cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), parent_rank, "cudaStreamCreate");
    wait_comm("ncclCommSplit");
    int r = 0, n = 0;
    check(ncclCommUserRank(comm_, &r), "ncclCommUserRank");
    check(ncclCommCount(comm_, &n), "ncclCommCount");
    rank_ = r, world_ = n;
  }
  ~NcclComm() override {
    if (comm_) {
      if (broken_) ncclCommAbort(comm_);
      else ncclCommDestroy(comm_);
    }
    if (stream_) cudaStreamDestroy(stream_);
    if (stage_) cudaFree(stage_);
    if (scratch_) cudaFree(scratch_);
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string kind() const override { return "nccl"; }

 protected:
  static ncclDataType_t nt(DType t) { return t == DType::f32 ? ncclFloat32 : t == DType::f64 ? ncclFloat64 : ncclUint8; }
  // Host buffers (the training loop's scalars: losses, flags, the recipe hash, run-directory names)
  // are staged through a device buffer: NCCL reads and writes device memory only. Device buffers
  // (gradients of the CUDA backend) go straight to NCCL.
  void do_all_reduce(void* buf, std::size_t n, DType t) override {
    const std::size_t bytes = n * dtype_size(t);
    if (!on_device(buf)) {
      void* d = stage(bytes);
      to_device(d, buf, bytes);
      do_all_reduce(d, n, t);
      return to_host(buf, d, bytes);
    }
    check(ncclAllReduce(buf, buf, n, nt(t), ncclSum, comm_, stream_), "ncclAllReduce");
    wait_stream("all_reduce");
  }
  void do_reduce_scatter(const void* send, void* recv, std::size_t n, DType t) override {
    const std::size_t bytes = n * dtype_size(t), all = bytes * static_cast<std::size_t>(world_);
    if (!on_device(send) || !on_device(recv)) {
      char* d = static_cast<char*>(stage(all + bytes));
      to_device(d, send, all);
      do_reduce_scatter(d, d + all, n, t);
      return to_host(recv, d + all, bytes);
    }
    check(ncclReduceScatter(send, recv, n, nt(t), ncclSum, comm_, stream_), "ncclReduceScatter");
    wait_stream("reduce_scatter");
  }
  void do_all_gather(const void* send, void* recv, std::size_t n, DType t) override {
    const std::size_t bytes = n * dtype_size(t), all = bytes * static_cast<std::size_t>(world_);
    if (!on_device(send) || !on_device(recv)) {
      char* d = static_cast<char*>(stage(all + bytes));
      to_device(d + all, send, bytes);
      do_all_gather(d + all, d, n, t);
      return to_host(recv, d, all);
    }
    check(ncclAllGather(send, recv, n, nt(t), comm_, stream_), "ncclAllGather");
    wait_stream("all_gather");
  }
  void do_broadcast(void* buf, std::size_t bytes, int root) override {
    if (!on_device(buf)) {
      void* d = stage(bytes);
      to_device(d, buf, bytes);
      do_broadcast(d, bytes, root);
      return to_host(buf, d, bytes);
    }
    check(ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    wait_stream("broadcast");
  }
  void do_barrier() override {
    // NCCL has no barrier: a one-element all-reduce on a scratch device word.
    if (!scratch_) cuda_ok(cudaMalloc(&scratch_, sizeof(float)), rank_, "cudaMalloc");
    check(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce(barrier)");
    wait_stream("barrier");
  }
  void do_group(const std::vector<P2P>& ops) override {
    for (const auto& o : ops)
      if (o.bytes > 0 && !on_device(o.buf))
        throw std::runtime_error("rank " + std::to_string(rank_) +
                                 ": NCCL send/recv needs device memory (the CPU backend's expert-parallel all-to-all "
                                 "runs on the in-process communicator)");
    check(ncclGroupStart(), "ncclGroupStart");
    for (const auto& o : ops) {
      if (o.is_send) check(ncclSend(o.buf, o.bytes, ncclUint8, o.peer, comm_, stream_), "ncclSend");
      else check(ncclRecv(o.buf, o.bytes, ncclUint8, o.peer, comm_, stream_), "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
    wait_stream("send/recv");
  }
  std::unique_ptr<Communicator> do_split(int color, int key) override {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t sub = nullptr;
    check(ncclCommSplit(comm_, color, key, &sub, &cfg), "ncclCommSplit");
    wait_comm("ncclCommSplit");
    return std::unique_ptr<Communicator>(new NcclComm(FromSplit{}, sub, rank_, world_, timeout_s_));
  }

 private:
  static bool on_device(const void* p) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  }
  // A device staging buffer that only grows (host-buffer collectives are small: scalars and names).
  void* stage(std::size_t bytes) {
    if (bytes > stage_bytes_) {
      if (stage_) cudaFree(stage_);
      stage_ = nullptr;
      cuda_ok(cudaMalloc(&stage_, bytes), rank_, "cudaMalloc(staging)");
      stage_bytes_ = bytes;
    }
    return stage_;
  }
  void to_device(void* d, const void* h, std::size_t bytes) {
    cuda_ok(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_), rank_, "cudaMemcpy(staging)");
  }
  void to_host(void* h, const void* d, std::size_t bytes) {
    cuda_ok(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, stream_), rank_, "cudaMemcpy(staging)");
    cuda_ok(cudaStreamSynchronize(stream_), rank_, "cudaStreamSynchronize(staging)");
  }
  void fail(const std::string& msg) {
    broken_ = true;
    if (comm_) ncclCommAbort(comm_), comm_ = nullptr;
    const std::string who = probe_faults();  // e.g. "rank 2 stopped heartbeating …" (bootstrap.hpp Heartbeat)
    throw std::runtime_error("rank " + std::to_string(rank_) + " of " + std::to_string(world_) + ": " + msg +
                             " — communicator aborted" + (who.empty() ? std::string() : "; " + who));
  }
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress) fail(std::string(what) + " failed: " + ncclGetErrorString(r));
  }
  double elapsed(std::chrono::steady_clock::time_point t0) const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  void poll_async(const char* what) {
    ncclResult_t a = ncclSuccess;
    ncclCommGetAsyncError(comm_, &a);
    if (a != ncclSuccess && a != ncclInProgress)
      fail(std::string("NCCL ") + what + ": asynchronous error " + ncclGetErrorString(a) + " (" + ncclGetLastError(comm_) + ")");
  }
  void wait_comm(const char* what) {  // non-blocking communicator: wait until it leaves ncclInProgress
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      ncclResult_t a = ncclInProgress;
      ncclCommGetAsyncError(comm_, &a);
      if (a == ncclSuccess) return;
      if (a != ncclInProgress) fail(std::string(what) + ": " + ncclGetErrorString(a));
      if (elapsed(t0) > timeout_s_) fail(std::string(what) + " did not complete within parallel.timeout_s=" + std::to_string(timeout_s_) + " s");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  void wait_stream(const char* what) {
    wait_comm(what);  // non-blocking communicator: the operation is enqueued once it leaves ncclInProgress
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return poll_async(what);
      if (e != cudaErrorNotReady) fail(std::string("NCCL ") + what + ": CUDA error " + cudaGetErrorString(e));
      poll_async(what);
      if (elapsed(t0) > timeout_s_)
        fail(std::string("NCCL ") + what + " did not complete within parallel.timeout_s=" + std::to_string(timeout_s_) +
             " s (a peer died or hangs)");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  int rank_, world_;
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;
  void* stage_ = nullptr;
  std::size_t stage_bytes_ = 0;
  bool broken_ = false;
};
}  // namespace

bool nccl_available() { return true; }

std::string nccl_unique_id() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) throw std::runtime_error(std::string("ncclGetUniqueId failed: ") + ncclGetErrorString(r));
  return std::string(id.internal, sizeof id.internal);
}

std::unique_ptr<Communicator> make_nccl_comm(int rank, int world, int device, const std::string& unique_id, double timeout_s) {
  return std::make_unique<NcclComm>(rank, world, device, unique_id, timeout_s);
}

#else

bool nccl_available() { return false; }
std::string nccl_unique_id() { throw std::runtime_error("this megacpp was built without CUDA/NCCL (MEGACPP_WITH_CUDA=OFF)"); }
std::unique_ptr<Communicator> make_nccl_comm(int, int, int, const std::string&, double) {
  throw std::runtime_error("the NCCL communicator needs a build with CUDA and NCCL (this one has MEGACPP_WITH_CUDA=OFF)");
}

#endif

}  // namespace megacpp
