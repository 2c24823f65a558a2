// comm_bench.hpp — one process drives G GPUs through NCCL (CUDA builds only; include under
// #if MEGACPP_WITH_CUDA). ncclCommInitAll makes one communicator per GPU; every collective is issued for
// all G GPUs between ncclGroupStart/ncclGroupEnd (one stream per GPU), which is how a single thread may
// drive several ranks without deadlock. all-to-all is G×G grouped ncclSend/ncclRecv (self included).
// Buffers: send and recv per GPU, out of place. Timing: a CUDA event pair on every GPU's stream around each
// launch; an iteration's time is the slowest GPU's; after warm-up, the median over the timed iterations.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/comm/comm_ref.hpp"

namespace megacpp::comm {

struct CommTiming {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int runs = 0;
  std::vector<double> per_gpu_median_ms;  // each GPU's own event time, median over the runs
};

class CommGroup {
 public:
  // gpus = 0: every visible GPU. Throws naming the limit when more are asked for than are visible.
  explicit CommGroup(int gpus);
  ~CommGroup();
  CommGroup(const CommGroup&) = delete;
  CommGroup& operator=(const CommGroup&) = delete;

  int size() const { return static_cast<int>(devs_.size()); }
  std::string device_names() const;  // "0:NVIDIA H100 80GB HBM3, 1:…"
  std::string nccl_version() const;

  // (Re)allocate the send/recv buffers of every GPU for collective c with `bytes` (comm_ref.hpp geometry).
  void prepare(Coll c, int64_t bytes, DType t);
  const Geometry& geometry() const { return geo_; }
  // Raw element bytes of one GPU's buffers (send_elems·dtype_size, recv_elems·dtype_size).
  void upload_send(int g, const std::vector<unsigned char>& host);
  // Fill GPU g's send buffer by repeating `tile` (a whole number of elements; for benches of large messages).
  void fill_send_tiled(int g, const std::vector<unsigned char>& tile);
  std::vector<unsigned char> download_recv(int g) const;
  std::vector<unsigned char> download_send(int g) const;
  void poison_recv();  // 0xFF bytes: NaN in f32 and bf16
  // One collective on every GPU (grouped), then wait for all streams.
  void run_once();
  CommTiming time(int warmup, int iters);

 private:
  void launch();  // enqueue one collective on every GPU (no sync)
  void free_buffers();
  std::vector<int> devs_;
  std::vector<void*> comms_;    // ncclComm_t
  std::vector<void*> streams_;  // cudaStream_t
  std::vector<void*> send_, recv_;
  Coll coll_ = Coll::AllReduce;
  DType dt_ = DType::BF16;
  Geometry geo_;
};

}  // namespace megacpp::comm
