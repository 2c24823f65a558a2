// local_workers.hpp — `megacpp train --nproc-per-node N` on a GPU node: start N worker processes of this
// same executable, one per GPU, each with the torchrun-style environment (RANK = LOCAL_RANK = k,
// WORLD_SIZE = LOCAL_WORLD_SIZE = N, MASTER_ADDR = 127.0.0.1, MASTER_PORT = a free port), exactly as
// `torchrun --nproc-per-node N --no-python megacpp train …` would; the workers then bootstrap NCCL
// themselves (bootstrap.hpp). The parent only supervises, like torchrun's elastic agent without restarts:
//   * a worker that exits non-zero (or dies on a signal) is reported by rank, and after a grace period
//     the remaining workers get SIGTERM, then SIGKILL — no orphaned GPU processes;
//   * SIGINT/SIGTERM to the parent are forwarded to every worker.
// CUDA_VISIBLE_DEVICES is left alone: LOCAL_RANK picks the device, as with torchrun.
#pragma once
#include <string>
#include <vector>

namespace megacpp {

struct WorkerExit {
  int rank = 0;
  int pid = 0;
  int exit_code = 0;  // 0 ok; 128+signal when killed by a signal
  bool signaled = false;
  bool terminated_by_launcher = false;  // stopped by us after another worker failed
};

struct LocalLaunch {
  std::vector<WorkerExit> workers;
  int failed_rank = -1;           // the first worker that failed (−1: none)
  int forwarded_signal = 0;       // SIGINT/SIGTERM the parent received and passed on (0: none)
  std::string summary;            // one line per worker
  int exit_code() const;          // 0 when every worker succeeded, else the first failure's code
};

// argv: the worker command line (argv[0] is passed as is; the program run is `exe`, by default this
// executable). extra_env: more KEY=VALUE pairs for every worker. grace_s: how long the others may run
// after a failure before SIGTERM (and as long again before SIGKILL). Throws std::runtime_error when a
// worker cannot be started.
LocalLaunch launch_local_workers(int nproc, const std::vector<std::string>& argv, double grace_s = 30.0,
                                 const std::vector<std::string>& extra_env = {}, const std::string& exe = "/proc/self/exe");

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and released).
int pick_free_port();

}  // namespace megacpp
