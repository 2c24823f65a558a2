#include "engine/dist/bootstrap.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "engine/dist/nccl_comm.hpp"

namespace megacpp {

// ---- launch environment ------------------------------------------------------------------------

namespace {
int env_int(const std::function<const char*(const char*)>& g, const char* name, int dflt, bool required) {
  const char* v = g(name);
  if (!v || !*v) {
    if (required) throw std::runtime_error(std::string("launch environment: ") + name + " is not set");
    return dflt;
  }
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 24)
    throw std::runtime_error(std::string("launch environment: ") + name + "='" + v + "' is not a non-negative integer");
  return static_cast<int>(x);
}
}  // namespace

LaunchEnv launch_env_from(const std::function<const char*(const char*)>& g) {
  LaunchEnv e;
  auto has = [&](const char* n) { return g(n) && *g(n); };
  if (has("RANK") && has("WORLD_SIZE")) {
    e.launcher = "torchrun";
    e.rank = env_int(g, "RANK", 0, true);
    e.world = env_int(g, "WORLD_SIZE", 1, true);
    e.local_rank = env_int(g, "LOCAL_RANK", 0, false);
    e.local_world = env_int(g, "LOCAL_WORLD_SIZE", e.world, false);
  } else if (has("SLURM_PROCID") && has("SLURM_NTASKS")) {
    e.launcher = "slurm";
    e.rank = env_int(g, "SLURM_PROCID", 0, true);
    e.world = env_int(g, "SLURM_NTASKS", 1, true);
    e.local_rank = env_int(g, "SLURM_LOCALID", 0, false);
    e.nodes = env_int(g, "SLURM_NNODES", 1, false);
    e.local_world = e.nodes > 0 ? (e.world + e.nodes - 1) / e.nodes : e.world;
  } else if (has("OMPI_COMM_WORLD_RANK") && has("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "openmpi";
    e.rank = env_int(g, "OMPI_COMM_WORLD_RANK", 0, true);
    e.world = env_int(g, "OMPI_COMM_WORLD_SIZE", 1, true);
    e.local_rank = env_int(g, "OMPI_COMM_WORLD_LOCAL_RANK", 0, false);
    e.local_world = env_int(g, "OMPI_COMM_WORLD_LOCAL_SIZE", e.world, false);
  } else {
    return e;
  }
  if (e.world < 1 || e.rank >= e.world)
    throw std::runtime_error("launch environment (" + e.launcher + "): rank " + std::to_string(e.rank) + " outside a world of " +
                             std::to_string(e.world));
  if (e.launcher != "slurm") e.nodes = e.local_world > 0 ? (e.world + e.local_world - 1) / e.local_world : 1;
  if (has("MASTER_ADDR")) e.master_addr = g("MASTER_ADDR");
  else if (e.nodes > 1)
    throw std::runtime_error("launch environment (" + e.launcher + "): " + std::to_string(e.nodes) +
                             " nodes but MASTER_ADDR is not set (export MASTER_ADDR=<host of rank 0> on every node)");
  e.master_port = env_int(g, "MASTER_PORT", 29500, false);
  return e;
}

LaunchEnv detect_launch_env() {
  return launch_env_from([](const char* n) { return std::getenv(n); });
}

// ---- TCP key-value store -----------------------------------------------------------------------
// Frame: op (1 byte) | key length (u32) | key | value length (u32) | value.
// Requests: 'S' set (reply 'K'), 'G' get (reply 'V' + value once set, 'E' + message on timeout).

namespace {
void send_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k <= 0) throw std::runtime_error(std::string("tcp store: send failed: ") + std::strerror(errno));
    c += k, n -= static_cast<std::size_t>(k);
  }
}
// Returns false on orderly close before the first byte.
bool recv_all(int fd, void* p, std::size_t n, double timeout_s) {
  char* c = static_cast<char*>(p);
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t got = 0;
  while (got < n) {
    pollfd pf{fd, POLLIN, 0};
    const double left = timeout_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (left <= 0) throw std::runtime_error("tcp store: no reply within " + std::to_string(timeout_s) + " s (parallel.timeout_s)");
    const int pr = ::poll(&pf, 1, static_cast<int>(std::min(left, 0.2) * 1000) + 1);
    if (pr < 0 && errno != EINTR) throw std::runtime_error(std::string("tcp store: poll failed: ") + std::strerror(errno));
    if (pr <= 0) continue;
    const ssize_t k = ::recv(fd, c + got, n - got, 0);
    if (k == 0) {
      if (got == 0) return false;
      throw std::runtime_error("tcp store: connection closed mid-message");
    }
    if (k < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("tcp store: recv failed: ") + std::strerror(errno));
    }
    got += static_cast<std::size_t>(k);
  }
  return true;
}
void send_frame(int fd, char op, const std::string& a, const std::string& b) {
  std::string f(1, op);
  const uint32_t la = htonl(static_cast<uint32_t>(a.size())), lb = htonl(static_cast<uint32_t>(b.size()));
  f.append(reinterpret_cast<const char*>(&la), 4).append(a).append(reinterpret_cast<const char*>(&lb), 4).append(b);
  send_all(fd, f.data(), f.size());
}
bool recv_frame(int fd, char& op, std::string& a, std::string& b, double timeout_s) {
  if (!recv_all(fd, &op, 1, timeout_s)) return false;
  for (std::string* s : {&a, &b}) {
    uint32_t l = 0;
    recv_all(fd, &l, 4, timeout_s);
    l = ntohl(l);
    if (l > (64u << 20)) throw std::runtime_error("tcp store: frame of " + std::to_string(l) + " bytes refused");
    s->assign(l, '\0');
    if (l) recv_all(fd, s->data(), l, timeout_s);
  }
  return true;
}
}  // namespace

struct TcpStore::Server {
  int listen_fd = -1;
  double timeout_s = 600;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::string> kv;
  std::thread acceptor;
  std::vector<std::thread> handlers;
  std::vector<int> fds;

  void serve(int fd) {
    try {
      char op;
      std::string k, v;
      while (!stop && recv_frame(fd, op, k, v, 1e9)) {
        if (op == 'S') {
          {
            std::lock_guard<std::mutex> lk(mu);
            kv[k] = v;
          }
          cv.notify_all();
          send_frame(fd, 'K', "", "");
        } else if (op == 'G') {
          std::unique_lock<std::mutex> lk(mu);
          const bool ok = cv.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return stop || kv.count(k) > 0; });
          if (ok && kv.count(k)) {
            const std::string val = kv[k];
            lk.unlock();
            send_frame(fd, 'V', "", val);
          } else {
            lk.unlock();
            send_frame(fd, 'E', "", "key '" + k + "' was not set within " + std::to_string(timeout_s) + " s (a rank did not arrive)");
          }
        } else if (op == 'T') {  // try-get: never blocks
          std::unique_lock<std::mutex> lk(mu);
          const auto it = kv.find(k);
          if (it != kv.end()) {
            const std::string val = it->second;
            lk.unlock();
            send_frame(fd, 'V', "", val);
          } else {
            lk.unlock();
            send_frame(fd, 'N', "", "");
          }
        } else {
          break;
        }
      }
    } catch (const std::exception&) {
      // connection dropped or shut down: nothing to do on the server side
    }
  }
  void accept_loop() {
    while (!stop) {
      pollfd pf{listen_fd, POLLIN, 0};
      if (::poll(&pf, 1, 100) <= 0) continue;
      const int fd = ::accept(listen_fd, nullptr, nullptr);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> lk(mu);
      fds.push_back(fd);
      handlers.emplace_back([this, fd] { serve(fd); });
    }
  }
};

TcpStore::TcpStore(const std::string& addr, int port, int rank, int world, double timeout_s)
    : rank_(rank), world_(world), port_(port), timeout_s_(timeout_s) {
  if (rank == 0) {
    server_ = std::make_unique<Server>();
    server_->timeout_s = timeout_s;
    const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) throw std::runtime_error("tcp store: socket() failed");
    int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 256) != 0) {
      const std::string err = std::strerror(errno);
      ::close(lfd);
      throw std::runtime_error("tcp store: rank 0 cannot listen on port " + std::to_string(port) + ": " + err +
                               " (set MASTER_PORT to a free port)");
    }
    socklen_t sl = sizeof sa;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &sl);
    port_ = ntohs(sa.sin_port);
    server_->listen_fd = lfd;
    server_->acceptor = std::thread([s = server_.get()] { s->accept_loop(); });
  }
  // Connect (rank 0 to itself as well), retrying while rank 0 is not up yet.
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const std::string host = rank == 0 ? "127.0.0.1" : addr;
  if (::getaddrinfo(host.c_str(), std::to_string(port_).c_str(), &hints, &res) != 0 || !res)
    throw std::runtime_error("tcp store: cannot resolve MASTER_ADDR '" + host + "'");
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ >= 0 && ::connect(fd_, res->ai_addr, res->ai_addrlen) == 0) break;
    if (fd_ >= 0) ::close(fd_), fd_ = -1;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) {
      ::freeaddrinfo(res);
      throw std::runtime_error("tcp store: rank " + std::to_string(rank) + " could not reach rank 0 at " + host + ":" +
                               std::to_string(port_) + " within " + std::to_string(timeout_s) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::freeaddrinfo(res);
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
  if (server_) {
    // Let the other ranks finish their last requests (they close their connections), then stop.
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      bool all_closed = true;
      {
        std::lock_guard<std::mutex> lk(server_->mu);
        for (int fd : server_->fds) {
          pollfd pf{fd, POLLIN, 0};
          char c;
          if (::poll(&pf, 1, 0) <= 0 || ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0) all_closed = false;
        }
      }
      if (all_closed || std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > std::min(timeout_s_, 10.0)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    server_->stop = true;
    server_->cv.notify_all();
    if (server_->acceptor.joinable()) server_->acceptor.join();
    {
      std::lock_guard<std::mutex> lk(server_->mu);
      for (int fd : server_->fds) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : server_->handlers) t.join();
    for (int fd : server_->fds) ::close(fd);
    ::close(server_->listen_fd);
  }
}

bool TcpStore::request(char op, const std::string& key, const std::string& value, std::string* reply) {
  std::lock_guard<std::mutex> lk(req_mu_);
  send_frame(fd_, op, key, value);
  char rop;
  std::string a, b;
  if (!recv_frame(fd_, rop, a, b, timeout_s_ + 5)) throw std::runtime_error("tcp store: rank 0 closed the connection");
  if (rop == 'E') throw std::runtime_error("tcp store (rank " + std::to_string(rank_) + "): " + b);
  if (rop == 'N') return false;
  if (reply) *reply = b;
  return true;
}

bool TcpStore::try_get(const std::string& key, std::string& value) { return request('T', key, "", &value); }

void TcpStore::set(const std::string& key, const std::string& value) { request('S', key, value, nullptr); }

std::string TcpStore::get(const std::string& key) {
  std::string v;
  request('G', key, "", &v);
  return v;
}

std::vector<std::string> TcpStore::exchange(const std::string& key, const std::string& mine) {
  set(key + "/" + std::to_string(rank_), mine);
  std::vector<std::string> all;
  for (int q = 0; q < world_; ++q) all.push_back(get(key + "/" + std::to_string(q)));
  return all;
}

void verify_same_config(TcpStore& store, int rank, int world, const std::string& sha) {
  (void)rank;
  const auto all = store.exchange("config_sha256", sha);
  std::string bad;
  for (int q = 1; q < world; ++q)
    if (all[static_cast<std::size_t>(q)] != all[0])
      bad += (bad.empty() ? "" : ", ") + std::to_string(q) + " (" + all[static_cast<std::size_t>(q)].substr(0, 12) + "…)";
  if (!bad.empty())
    throw std::runtime_error("ranks resolved different recipes: config_sha256 of rank 0 is " + all[0].substr(0, 12) + "…, ranks " +
                             bad + " differ; refusing to train (every rank must load the same recipe files with the same --set overrides)");
}

Heartbeat::Heartbeat(std::unique_ptr<TcpStore> store, int rank, int world, double period_s)
    : store_(std::move(store)), rank_(rank), world_(world), period_s_(period_s) {
  const std::string key = "hb/" + std::to_string(rank_);
  store_->set(key, "0");
  beat_ = std::thread([this, key] {
    uint64_t n = 0;
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::duration<double>(period_s_));
      try {
        if (!stop_) store_->set(key, std::to_string(++n));
      } catch (const std::exception&) {
        return;  // the store (rank 0) is gone: dead_ranks() says so
      }
    }
  });
  set_fault_probe([this] { return dead_ranks(); });
}

Heartbeat::~Heartbeat() {
  set_fault_probe({});
  stop_ = true;
  if (beat_.joinable()) beat_.join();
  try {
    store_->set("hb/" + std::to_string(rank_), "exited");
  } catch (const std::exception&) {
  }
}

void Heartbeat::report_failure(const std::string& why) {
  try {
    store_->set("fail/" + std::to_string(rank_), why);
  } catch (const std::exception&) {
  }
}

std::string Heartbeat::dead_ranks() {
  auto read = [&](std::vector<std::string>& hb) {
    hb.assign(static_cast<std::size_t>(world_), "");
    for (int q = 0; q < world_; ++q) store_->try_get("hb/" + std::to_string(q), hb[static_cast<std::size_t>(q)]);
  };
  std::vector<std::string> a, b;
  try {
    read(a);
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * period_s_));
    read(b);
  } catch (const std::exception& e) {
    return "the rendezvous store served by rank 0 is unreachable (" + std::string(e.what()) + "): rank 0 died or its host is down";
  }
  std::string out;
  for (int q = 0; q < world_; ++q) {
    if (q == rank_) continue;
    const auto u = static_cast<std::size_t>(q);
    std::string why;
    try {
      if (store_->try_get("fail/" + std::to_string(q), why)) {
        out += (out.empty() ? "" : "; ") + ("rank " + std::to_string(q) + " failed: " + why);
        continue;
      }
    } catch (const std::exception&) {
    }
    if (b[u] == "exited") out += (out.empty() ? "" : "; ") + ("rank " + std::to_string(q) + " exited");
    else if (a[u] == b[u])
      out += (out.empty() ? "" : "; ") + ("rank " + std::to_string(q) + " is dead (its heartbeat stopped at " +
                                          (b[u].empty() ? std::string("none") : b[u]) + ")");
  }
  return out.empty() ? std::string("every other rank is alive (heartbeats advance): a peer hangs rather than died") : out;
}

std::unique_ptr<Communicator> bootstrap_nccl(const LaunchEnv& env, const std::string& sha, double timeout_s,
                                             std::unique_ptr<Heartbeat>* heartbeat) {
  if (!nccl_available())
    throw std::runtime_error("multi-process launch (" + env.launcher + ", world " + std::to_string(env.world) +
                             ") needs a CUDA build with NCCL; this megacpp was built without CUDA");
  auto store = std::make_unique<TcpStore>(env.master_addr, env.master_port, env.rank, env.world, timeout_s);
  verify_same_config(*store, env.rank, env.world, sha);
  if (env.rank == 0) store->set("nccl_unique_id", nccl_unique_id());
  const std::string id = store->get("nccl_unique_id");
  auto comm = make_nccl_comm(env.rank, env.world, env.local_rank, id, timeout_s);
  store->exchange("nccl_ready", "1");  // everyone holds the id before rank 0's store goes away
  if (heartbeat) *heartbeat = std::make_unique<Heartbeat>(std::move(store), env.rank, env.world);
  return comm;
}

}  // namespace megacpp
