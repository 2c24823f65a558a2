// communicator.hpp — the collectives distributed training needs, behind one interface with two
// implementations:
//
//   InProcessComm  ranks are threads of one process that meet at a shared rendezvous (mutex +
//                  condition variable + per-collective slots). Host memory. Reductions are
//                  deterministic: element i of a sum is x_0[i] + x_1[i] + … + x_{W-1}[i] accumulated in
//                  rank order in the element type, so every rank gets the same bits, equal to a serial
//                  sum in rank order. This is how every parallel layout is tested in CI without GPUs.
//   NcclComm       one process per GPU (engine/dist/nccl_comm.hpp), device memory, CUDA builds only.
//
// Every collective is called by all ranks of the communicator in the same order (as with NCCL).
// Grouped point-to-point (group_start; send/recv…; group_end) is the building block of all-to-all;
// with InProcessComm group_end is collective: every rank calls it, possibly with no operations.
// The public calls time themselves and count bytes per collective type (stats()) for the receipt.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

enum class DType { f32, f64, u8 };
std::size_t dtype_size(DType t);

enum class CollKind { all_reduce, reduce_scatter, all_gather, broadcast, barrier, send_recv, kCount };
const char* coll_name(CollKind k);

struct CollStats {
  int64_t calls = 0;
  double seconds = 0;  // wall time inside the call (on the CPU backend all of it is exposed: no overlap)
  int64_t bytes = 0;   // payload bytes this rank contributed
};

// Thrown on the ranks that did not fail themselves when a collective is abandoned (another rank threw,
// or a timeout). what() says who failed and why.
struct CommAborted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string kind() const = 0;  // "in-process" | "nccl"

  // The collectives are defined out of line (communicator.cpp), never in this header: each wraps a lambda
  // for timed(), and an inline instance built by nvcc in a .cu file shares its mangled name with the host
  // compiler's but not its closure layout — the linker keeps one, and the other side crashed (2026-11-24).
  // In place: buf ← Σ_ranks buf.
  void all_reduce_sum(float* buf, std::size_t n);
  void all_reduce_sum(double* buf, std::size_t n);
  // send: world·n elements; recv (n elements) ← Σ_ranks send[rank·n, rank·n + n).
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n);
  void reduce_scatter_sum(const double* send, double* recv, std::size_t n);
  // recv[q·n, q·n + n) ← send of rank q. recv may hold send at recv + rank·n (in place).
  void all_gather(const float* send, float* recv, std::size_t n);
  void all_gather(const double* send, double* recv, std::size_t n);
  void all_gather_bytes(const void* send, void* recv, std::size_t bytes);
  void broadcast(void* buf, std::size_t bytes, int root);
  void barrier();

  // Grouped point-to-point. Sends and receives between a pair of ranks match in posting order.
  void group_start();
  void send(const void* buf, std::size_t bytes, int peer);
  void recv(void* buf, std::size_t bytes, int peer);
  void group_end();
  // recv[q·bytes, …) ← the block send[rank·bytes, …) of rank q (built on grouped send/recv).
  void all_to_all_bytes(const void* send, void* recv, std::size_t bytes_per_peer);
  // Variable-size all-to-all (built on grouped send/recv): send_bytes[q] bytes from send + send_off[q]
  // go to rank q; recv_bytes[q] bytes from rank q land at recv + recv_off[q]. Each pair's sizes must
  // agree (exchange the counts first, e.g. with all_to_all_bytes).
  void all_to_all_v(const void* send, const std::vector<std::size_t>& send_bytes, const std::vector<std::size_t>& send_off,
                    void* recv, const std::vector<std::size_t>& recv_bytes, const std::vector<std::size_t>& recv_off);

  // Sub-communicators (MPI_Comm_split / ncclCommSplit semantics). Collective over this communicator:
  // ranks passing the same `color` form one new communicator, ranked by (key, old rank). The result is
  // independent of this one (its own stats); it must not outlive it.
  std::unique_ptr<Communicator> split(int color, int key) { return do_split(color, key); }

  const std::array<CollStats, static_cast<std::size_t>(CollKind::kCount)>& stats() const { return stats_; }
  nlohmann::json stats_json() const;
  void reset_stats() { stats_ = {}; }

  struct P2P {
    bool is_send;
    void* buf;  // const for sends
    std::size_t bytes;
    int peer;
  };

 protected:
  virtual void do_all_reduce(void* buf, std::size_t n, DType t) = 0;
  virtual void do_reduce_scatter(const void* send, void* recv, std::size_t n, DType t) = 0;
  virtual void do_all_gather(const void* send, void* recv, std::size_t n, DType t) = 0;
  virtual void do_broadcast(void* buf, std::size_t bytes, int root) = 0;
  virtual void do_barrier() = 0;
  virtual void do_group(const std::vector<P2P>& ops) = 0;
  virtual std::unique_ptr<Communicator> do_split(int color, int key) = 0;

 private:
  void timed(CollKind k, std::size_t bytes, const std::function<void()>& f);
  std::array<CollStats, static_cast<std::size_t>(CollKind::kCount)> stats_{};
  bool in_group_ = false;
  std::vector<P2P> pending_;
};

// Fault attribution (process-wide): when a collective fails or times out, the NCCL communicator appends
// what the probe returns to its error — e.g. which ranks stopped heartbeating (Heartbeat in
// bootstrap.hpp). probe_faults() returns "" when no probe is set, it finds nothing, or it throws.
void set_fault_probe(std::function<std::string()> probe);
std::string probe_faults();

// Helpers on any communicator.
std::string broadcast_string(Communicator& c, const std::string& s, int root);
// Every rank passes its resolved recipe's config_sha256; throws (on every rank) naming the ranks whose
// hash differs from rank 0's when they are not all identical.
void verify_same_config(Communicator& c, const std::string& config_sha256);

// ---- the in-process backend ------------------------------------------------------------------
struct Rendezvous;  // shared by the ranks of one in-process world

class InProcessComm final : public Communicator {
 public:
  InProcessComm(std::shared_ptr<Rendezvous> rv, int rank);
  int rank() const override { return rank_; }
  int world() const override;
  std::string kind() const override { return "in-process"; }
  // Abandons every collective in progress or to come on every rank of the world (they throw CommAborted).
  void abort(const std::string& why);

 protected:
  void do_all_reduce(void* buf, std::size_t n, DType t) override;
  void do_reduce_scatter(const void* send, void* recv, std::size_t n, DType t) override;
  void do_all_gather(const void* send, void* recv, std::size_t n, DType t) override;
  void do_broadcast(void* buf, std::size_t bytes, int root) override;
  void do_barrier() override;
  void do_group(const std::vector<P2P>& ops) override;
  // A new rendezvous per (split call, color), registered with the world's root rendezvous so that an
  // abort of the world (a failing rank) also aborts every sub-communicator.
  std::unique_ptr<Communicator> do_split(int color, int key) override;

 private:
  std::shared_ptr<Rendezvous> rv_;
  uint64_t splits_ = 0;  // split calls so far (every rank calls split in the same order)
  int rank_;
};

// A world of `world` in-process ranks; a collective waiting longer than timeout_s aborts the world with
// an error naming the ranks that never arrived.
std::shared_ptr<Rendezvous> make_rendezvous(int world, double timeout_s = 600);

// Runs fn(comm) on `world` threads (rank = thread index), joins them all, and rethrows the first
// failure as "rank k of W: <what>". When a rank throws, the others are aborted at once (their pending
// or next collective throws CommAborted), so nothing hangs.
void run_ranks(int world, const std::function<void(Communicator&)>& fn, double timeout_s = 600);

}  // namespace megacpp
