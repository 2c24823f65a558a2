// bootstrap.hpp — how a multi-process run finds its rank and its peers.
//
// The launch environment is read from the variables the common launchers set (no MPI is linked):
//   torchrun-style   RANK, WORLD_SIZE, LOCAL_RANK [, LOCAL_WORLD_SIZE], MASTER_ADDR, MASTER_PORT
//   Slurm (srun)     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID [, SLURM_NTASKS_PER_NODE, SLURM_NNODES]
//   OpenMPI (mpirun) OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK [, …_LOCAL_SIZE]
// (first match wins in that order). MASTER_ADDR / MASTER_PORT are read in every case; on one node
// they default to 127.0.0.1:29500, on several nodes MASTER_ADDR is required.
//
// TcpStore is a tiny key-value exchange over TCP: rank 0 serves it on MASTER_PORT, every rank
// (rank 0 included) connects as a client. It carries the NCCL unique id (rank 0 → all) and the
// recipe hash (all → all, checked before anything else happens). Values are opaque bytes.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/dist/communicator.hpp"

namespace megacpp {

struct LaunchEnv {
  std::string launcher = "none";  // none | torchrun | slurm | openmpi
  int rank = 0, world = 1, local_rank = 0, local_world = 1, nodes = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// From an environment lookup (tests pass their own); throws a clear error on inconsistent values
// (rank outside the world, non-numeric values, several nodes without MASTER_ADDR).
LaunchEnv launch_env_from(const std::function<const char*(const char*)>& getenv_fn);
LaunchEnv detect_launch_env();  // from the process environment

class TcpStore {
 public:
  // Rank 0 listens on `port` (0 = any free port; see port()) and also connects to itself. Others
  // connect to addr:port, retrying until timeout_s.
  TcpStore(const std::string& addr, int port, int rank, int world, double timeout_s);
  ~TcpStore();
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  int port() const { return port_; }
  void set(const std::string& key, const std::string& value);
  std::string get(const std::string& key);  // blocks until the key is set (or timeout_s → throws)
  bool try_get(const std::string& key, std::string& value);  // does not block: false when the key is not set
  // Every rank contributes `mine` under key; returns all values in rank order.
  std::vector<std::string> exchange(const std::string& key, const std::string& mine);

 private:
  struct Server;
  bool request(char op, const std::string& key, const std::string& value, std::string* reply);
  std::mutex req_mu_;  // one request at a time on the connection (the heartbeat thread shares it)
  int rank_, world_, port_ = 0, fd_ = -1;
  double timeout_s_;
  std::unique_ptr<Server> server_;  // rank 0 only
};

// Refuses (throws on every rank, naming the differing ranks) unless all ranks resolved the same recipe.
void verify_same_config(TcpStore& store, int rank, int world, const std::string& config_sha256);

// Liveness of the ranks of a multi-process run, through the TCP store of the bootstrap (kept for the
// whole run): a thread sets hb/<rank> to an increasing counter every period_s. dead_ranks() reads every
// rank's counter twice, 3 periods apart, and names the ranks whose counter did not move (their process
// died or is frozen) and those that reported a failure (report_failure: fail/<rank> = why); if the store
// itself (served by rank 0) is unreachable, it says so (rank 0 died). Installed as the process's fault
// probe (set_fault_probe): a failing or timed-out NCCL collective then names the dead rank, and rank 0's
// receipt records that error. The destructor marks this rank "exited" (a clean exit is not a death).
class Heartbeat {
 public:
  Heartbeat(std::unique_ptr<TcpStore> store, int rank, int world, double period_s = 0.5);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  std::string dead_ranks();
  void report_failure(const std::string& why);

 private:
  std::unique_ptr<TcpStore> store_;
  int rank_, world_;
  double period_s_;
  std::atomic<bool> stop_{false};
  std::thread beat_;
};

// Multi-process bootstrap: verify the recipe hash through the store, distribute the NCCL unique id,
// create the NCCL communicator on GPU local_rank. Needs a CUDA build with NCCL (throws otherwise).
// With `heartbeat` non-null the store stays up for the run as a Heartbeat (installed as fault probe).
std::unique_ptr<Communicator> bootstrap_nccl(const LaunchEnv& env, const std::string& config_sha256, double timeout_s,
                                             std::unique_ptr<Heartbeat>* heartbeat = nullptr);

}  // namespace megacpp
