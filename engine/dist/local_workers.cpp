// local_workers.cpp — see local_workers.hpp. POSIX fork + execve; no threads are created in the child
// before exec (only async-signal-safe calls between fork and exec).
#include "engine/dist/local_workers.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace megacpp {
namespace {

volatile std::sig_atomic_t g_forward_signal = 0;
void on_parent_signal(int s) { g_forward_signal = s; }

// The parent's environment minus the launcher variables we set, plus ours.
std::vector<std::string> worker_env(int rank, int n, int port, const std::vector<std::string>& extra) {
  static const char* ours[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT="};
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    bool skip = false;
    for (const char* k : ours) skip = skip || std::strncmp(*e, k, std::strlen(k)) == 0;
    if (!skip) env.emplace_back(*e);
  }
  env.push_back("RANK=" + std::to_string(rank));
  env.push_back("LOCAL_RANK=" + std::to_string(rank));
  env.push_back("WORLD_SIZE=" + std::to_string(n));
  env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(n));
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back("MASTER_PORT=" + std::to_string(port));
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (auto& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

}  // namespace

int LocalLaunch::exit_code() const {
  if (failed_rank < 0) return forwarded_signal ? 128 + forwarded_signal : 0;
  for (const auto& w : workers)
    if (w.rank == failed_rank) return w.exit_code != 0 ? w.exit_code : 1;
  return 1;
}

int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("--nproc-per-node: socket() failed");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  socklen_t sl = sizeof sa;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &sl) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("--nproc-per-node: cannot find a free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}

LocalLaunch launch_local_workers(int nproc, const std::vector<std::string>& argv_in, double grace_s,
                                 const std::vector<std::string>& extra_env, const std::string& exe) {
  if (nproc < 1) throw std::invalid_argument("--nproc-per-node must be ≥ 1");
  if (argv_in.empty()) throw std::invalid_argument("launch_local_workers: empty command line");
  const int port = pick_free_port();
  LocalLaunch out;
  out.workers.resize(static_cast<std::size_t>(nproc));
  auto old_int = std::signal(SIGINT, on_parent_signal);
  auto old_term = std::signal(SIGTERM, on_parent_signal);
  for (int k = 0; k < nproc; ++k) {
    // Everything the child needs is built before fork (no allocation between fork and exec).
    std::vector<std::string> args = argv_in, env = worker_env(k, nproc, port, extra_env);
    std::vector<char*> a = c_strings(args), e = c_strings(env);
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (int q = 0; q < k; ++q) ::kill(out.workers[static_cast<std::size_t>(q)].pid, SIGKILL);
      throw std::runtime_error(std::string("--nproc-per-node: fork failed: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::execve(exe.c_str(), a.data(), e.data());
      const char msg[] = "megacpp --nproc-per-node: execve of the worker failed\n";
      (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
      ::_exit(127);
    }
    out.workers[static_cast<std::size_t>(k)] = WorkerExit{k, pid, 0, false, false};
  }
  // Supervise: reap workers; on the first failure give the others grace_s, then SIGTERM, then SIGKILL.
  int alive = nproc;
  std::vector<bool> reaped(static_cast<std::size_t>(nproc), false);  // never signal a reaped (maybe reused) pid
  auto signal_live = [&](int sig) {
    for (const auto& w : out.workers)
      if (!reaped[static_cast<std::size_t>(w.rank)]) ::kill(w.pid, sig);
  };
  bool stopping = false;
  auto fail_time = std::chrono::steady_clock::time_point{};
  int stage = 0;  // 0 running, 1 SIGTERM sent, 2 SIGKILL sent
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (auto& w : out.workers)
        if (w.pid == pid) {
          --alive;
          reaped[static_cast<std::size_t>(w.rank)] = true;
          w.signaled = WIFSIGNALED(status);
          w.exit_code = w.signaled ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
          w.terminated_by_launcher = stopping && stage > 0;
          if (w.exit_code != 0 && out.failed_rank < 0 && !w.terminated_by_launcher) {
            out.failed_rank = w.rank;
            stopping = true;
            fail_time = std::chrono::steady_clock::now();
          }
        }
      continue;
    }
    if (g_forward_signal && !stopping) {  // the user stopped the launch: pass it on
      out.forwarded_signal = g_forward_signal;
      signal_live(g_forward_signal);
      stopping = true, stage = 1, fail_time = std::chrono::steady_clock::now();
    }
    if (stopping) {
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - fail_time).count();
      if (stage == 0 && dt > grace_s) {
        signal_live(SIGTERM);
        stage = 1;
      } else if (stage == 1 && dt > 2 * grace_s) {
        signal_live(SIGKILL);
        stage = 2;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  g_forward_signal = 0;
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  for (const auto& w : out.workers) {
    out.summary += "rank " + std::to_string(w.rank) + " (pid " + std::to_string(w.pid) + "): ";
    if (w.exit_code == 0) out.summary += "ok";
    else if (w.signaled) out.summary += "killed by signal " + std::to_string(w.exit_code - 128);
    else out.summary += "exit " + std::to_string(w.exit_code);
    if (w.terminated_by_launcher) out.summary += " (stopped by the launcher after rank " + std::to_string(out.failed_rank) + " failed)";
    if (w.rank == out.failed_rank) out.summary += "  ← first failure";
    out.summary += "\n";
  }
  return out;
}

}  // namespace megacpp
