// The in-process communicator against serial computations (bit-exact: sums in rank order), abort on
// failure (no hang), the launch-environment parser, and the TCP rendezvous on 127.0.0.1.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "engine/dist/bootstrap.hpp"
#include "engine/dist/communicator.hpp"

namespace megacpp {
namespace {

// Rank q's input: fresh random values with a wide dynamic range (so summation order matters).
template <typename T>
std::vector<T> input(int q, std::size_t n, uint64_t salt = 0) {
  std::mt19937_64 g(1000 + 17 * static_cast<uint64_t>(q) + salt);
  std::normal_distribution<double> d(0, 1);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g) * std::pow(10.0, static_cast<int>(g() % 7) - 3));
  return v;
}

template <typename T>
std::vector<T> serial_sum(int world, std::size_t n) {
  std::vector<T> s = input<T>(0, n);
  for (int q = 1; q < world; ++q) {
    const auto x = input<T>(q, n);
    for (std::size_t i = 0; i < n; ++i) s[i] += x[i];
  }
  return s;
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, AllReduceIsBitIdenticalToTheSerialRankOrderSum) {
  const int W = GetParam();
  const std::size_t n = 1037;  // not a multiple of W
  const auto want32 = serial_sum<float>(W, n);
  const auto want64 = serial_sum<double>(W, n);
  std::mutex mu;
  std::vector<std::vector<float>> got32(W);
  run_ranks(W, [&](Communicator& c) {
    auto a = input<float>(c.rank(), n);
    c.all_reduce_sum(a.data(), n);
    auto b = input<double>(c.rank(), n);
    c.all_reduce_sum(b.data(), n);
    EXPECT_EQ(0, std::memcmp(a.data(), want32.data(), n * 4)) << "rank " << c.rank();
    EXPECT_EQ(0, std::memcmp(b.data(), want64.data(), n * 8)) << "rank " << c.rank();
    EXPECT_EQ(c.kind(), "in-process");
    EXPECT_EQ(c.stats()[static_cast<std::size_t>(CollKind::all_reduce)].calls, 2);
  });
}

TEST_P(Collectives, ReduceScatterAllGatherBroadcastBarrierAllToAll) {
  const int W = GetParam();
  const std::size_t n = 129;
  const auto full = serial_sum<float>(W, n * static_cast<std::size_t>(W));
  run_ranks(W, [&](Communicator& c) {
    const int q = c.rank();
    // reduce-scatter: my chunk of the rank-order sum
    const auto x = input<float>(q, n * static_cast<std::size_t>(W));
    std::vector<float> mine(n, -1.f);
    c.reduce_scatter_sum(x.data(), mine.data(), n);
    EXPECT_EQ(0, std::memcmp(mine.data(), full.data() + static_cast<std::size_t>(q) * n, n * 4)) << "rank " << q;
    // double reduce-scatter too
    const auto xd = input<double>(q, 8 * static_cast<std::size_t>(W), 5);
    std::vector<double> md(8);
    c.reduce_scatter_sum(xd.data(), md.data(), 8);
    for (std::size_t i = 0; i < 8; ++i) {
      double s = input<double>(0, 8 * static_cast<std::size_t>(W), 5)[static_cast<std::size_t>(q) * 8 + i];
      for (int p = 1; p < W; ++p) s += input<double>(p, 8 * static_cast<std::size_t>(W), 5)[static_cast<std::size_t>(q) * 8 + i];
      EXPECT_EQ(md[i], s);
    }
    // all-gather (in place: my block already at recv + rank·n)
    std::vector<float> g(n * static_cast<std::size_t>(W), NAN);
    const auto mineg = input<float>(q, n, 9);
    std::copy(mineg.begin(), mineg.end(), g.begin() + static_cast<std::ptrdiff_t>(q * n));
    c.all_gather(g.data() + q * n, g.data(), n);
    for (int p = 0; p < W; ++p) {
      const auto e = input<float>(p, n, 9);
      EXPECT_EQ(0, std::memcmp(g.data() + p * n, e.data(), n * 4)) << "block " << p << " on rank " << q;
    }
    // broadcast from the last rank
    std::vector<double> b = input<double>(q, 33, 3);
    c.broadcast(b.data(), b.size() * 8, W - 1);
    const auto eb = input<double>(W - 1, 33, 3);
    EXPECT_EQ(0, std::memcmp(b.data(), eb.data(), 33 * 8));
    c.barrier();
    // all-to-all: block p of rank q = (q, p) coded
    std::vector<int32_t> s(static_cast<std::size_t>(W) * 5), r(static_cast<std::size_t>(W) * 5, -1);
    for (int p = 0; p < W; ++p)
      for (int k = 0; k < 5; ++k) s[static_cast<std::size_t>(p * 5 + k)] = q * 1000 + p * 10 + k;
    c.all_to_all_bytes(s.data(), r.data(), 5 * sizeof(int32_t));
    for (int p = 0; p < W; ++p)
      for (int k = 0; k < 5; ++k) EXPECT_EQ(r[static_cast<std::size_t>(p * 5 + k)], p * 1000 + q * 10 + k);
    // uneven grouped send/recv: a ring, rank q sends q+1 ints to q+1
    c.group_start();
    std::vector<int32_t> out(static_cast<std::size_t>(q + 1), q), in(static_cast<std::size_t>((q + W - 1) % W + 1), -1);
    c.send(out.data(), out.size() * 4, (q + 1) % W);
    c.recv(in.data(), in.size() * 4, (q + W - 1) % W);
    c.group_end();
    for (auto v : in) EXPECT_EQ(v, (q + W - 1) % W);
    const auto js = c.stats_json();
    for (const char* k : {"all_gather", "reduce_scatter", "broadcast", "barrier", "send_recv"}) EXPECT_TRUE(js.contains(k)) << k;
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, Collectives, ::testing::Values(1, 2, 3, 4));

TEST(InProcess, AnExceptionOnOneRankAbortsTheOthersPromptly) {
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<int> aborted{0};
  try {
    run_ranks(4, [&](Communicator& c) {
      if (c.rank() == 2) throw std::runtime_error("boom on purpose");
      try {
        for (int i = 0; i < 1000; ++i) {
          float x = 1;
          c.all_reduce_sum(&x, 1);  // rank 2 never arrives
        }
      } catch (const CommAborted& e) {
        EXPECT_NE(std::string(e.what()).find("rank 2 failed: boom on purpose"), std::string::npos) << e.what();
        ++aborted;
        throw;
      }
    }, /*timeout_s=*/600);
    FAIL() << "run_ranks should have thrown";
  } catch (const CommAborted&) {
    FAIL() << "the rank that failed first must be reported, not an aborted one";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2 of 4: boom on purpose"), std::string::npos) << e.what();
  }
  EXPECT_EQ(aborted.load(), 3);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

TEST(InProcess, ARankThatNeverArrivesTimesOutNamingIt) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_ranks(3, [&](Communicator& c) {
      if (c.rank() == 1) return;  // leaves without the barrier
      c.barrier();
    }, /*timeout_s=*/0.5);
    FAIL() << "expected a timeout";
  } catch (const CommAborted& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1 that never arrived"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

TEST(InProcess, MismatchedRecvIsRefused) {
  EXPECT_THROW(run_ranks(2, [&](Communicator& c) {
    int32_t a[4] = {0, 1, 2, 3}, b[4];
    c.group_start();
    c.send(a, c.rank() == 0 ? 16 : 8, 1 - c.rank());
    c.recv(b, 16, 1 - c.rank());
    c.group_end();
  }), std::runtime_error);
}

TEST(InProcess, DifferentRecipesAreRefused) {
  try {
    run_ranks(3, [&](Communicator& c) {
      verify_same_config(c, c.rank() == 2 ? std::string(64, 'b') : std::string(64, 'a'));
    });
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("ranks resolved different recipes"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ranks 2 (bbbb"), std::string::npos) << e.what();
  }
}

// ---- launch environment --------------------------------------------------------------------------

LaunchEnv env_of(const std::map<std::string, std::string>& m) {
  return launch_env_from([&](const char* k) -> const char* {
    auto it = m.find(k);
    return it == m.end() ? nullptr : it->second.c_str();
  });
}

TEST(Launch, TorchrunSlurmOpenMpiAndNone) {
  auto e = env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "8"}, {"MASTER_PORT", "12345"}});
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world, 8);
  EXPECT_EQ(e.local_rank, 3);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 12345);
  e = env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"}, {"SLURM_NNODES", "2"}, {"MASTER_ADDR", "node01"}});
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world, 16);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.nodes, 2);
  EXPECT_EQ(e.master_addr, "node01");
  EXPECT_EQ(e.master_port, 29500);
  e = env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  EXPECT_EQ(e.launcher, "openmpi");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world, 2);
  e = env_of({});
  EXPECT_EQ(e.launcher, "none");
  EXPECT_EQ(e.world, 1);
  EXPECT_THROW(env_of({{"RANK", "4"}, {"WORLD_SIZE", "4"}}), std::runtime_error);
  EXPECT_THROW(env_of({{"RANK", "x"}, {"WORLD_SIZE", "4"}}), std::runtime_error);
  try {
    env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "16"}, {"SLURM_NNODES", "2"}});
    FAIL();
  } catch (const std::runtime_error& ex) {
    EXPECT_NE(std::string(ex.what()).find("MASTER_ADDR is not set"), std::string::npos) << ex.what();
  }
}

// ---- TCP rendezvous on 127.0.0.1 ----------------------------------------------------------------

TEST(TcpStore, RanksExchangeValuesAndTheRecipeHash) {
  const int W = 4;
  TcpStore s0("127.0.0.1", 0, 0, W, /*timeout_s=*/10);  // any free port
  const int port = s0.port();
  ASSERT_GT(port, 0);
  std::vector<std::vector<std::string>> got(W);
  std::vector<std::string> ids(W);
  std::vector<std::string> errs(W);
  auto body = [&](TcpStore& s, int q) {
    try {
      if (q == 0) s.set("nccl_unique_id", std::string("\0binary\xff id", 11));
      ids[static_cast<std::size_t>(q)] = s.get("nccl_unique_id");
      got[static_cast<std::size_t>(q)] = s.exchange("hello", "rank-" + std::to_string(q));
      verify_same_config(s, q, W, std::string(64, 'c'));
    } catch (const std::exception& e) {
      errs[static_cast<std::size_t>(q)] = e.what();
    }
  };
  std::vector<std::thread> th;
  for (int q = 1; q < W; ++q)
    th.emplace_back([&, q] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20 * q));
      TcpStore s("127.0.0.1", port, q, W, 10);
      body(s, q);
    });
  body(s0, 0);
  for (auto& t : th) t.join();
  for (int q = 0; q < W; ++q) {
    EXPECT_EQ(errs[static_cast<std::size_t>(q)], "");
    EXPECT_EQ(ids[static_cast<std::size_t>(q)], std::string("\0binary\xff id", 11));
    ASSERT_EQ(got[static_cast<std::size_t>(q)].size(), static_cast<std::size_t>(W));
    for (int p = 0; p < W; ++p) EXPECT_EQ(got[static_cast<std::size_t>(q)][static_cast<std::size_t>(p)], "rank-" + std::to_string(p));
  }
}

TEST(TcpStore, RecipeMismatchIsRefusedOnEveryRank) {
  const int W = 3;
  auto s0 = std::make_unique<TcpStore>("127.0.0.1", 0, 0, W, 10);
  const int port = s0->port();
  std::vector<std::string> errs(W);
  std::vector<std::thread> th;
  for (int q = 0; q < W; ++q)
    th.emplace_back([&, q] {
      std::unique_ptr<TcpStore> mine;
      TcpStore* s = q == 0 ? s0.get() : (mine = std::make_unique<TcpStore>("127.0.0.1", port, q, W, 10)).get();
      try {
        verify_same_config(*s, q, W, q == 1 ? std::string(64, 'x') : std::string(64, 'y'));
      } catch (const std::exception& e) {
        errs[static_cast<std::size_t>(q)] = e.what();
      }
    });
  for (auto& t : th) t.join();
  for (int q = 0; q < W; ++q) EXPECT_NE(errs[static_cast<std::size_t>(q)].find("ranks 1 (xxxx"), std::string::npos) << errs[static_cast<std::size_t>(q)];
}

TEST(TcpStore, AMissingKeyTimesOutAndAMissingServerIsReported) {
  const auto t0 = std::chrono::steady_clock::now();
  {
    TcpStore s0("127.0.0.1", 0, 0, 2, /*timeout_s=*/0.5);
    EXPECT_THROW(s0.get("never-set"), std::runtime_error);
  }
  EXPECT_THROW(TcpStore("127.0.0.1", 1, 1, 2, 0.3), std::runtime_error);  // nobody listens on port 1
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15.0);
}

// Faults in a multi-process run: rank 1 is a real process that heartbeats through the TCP store and is
// killed (SIGKILL); rank 2 reports a failure of its own. The survivor's probe (what an NCCL collective
// that fails or times out appends to its error, and so what rank 0's receipt records) names both.
TEST(Heartbeat, ADeadRankAndAFailedRankAreNamed) {
  int to_child[2];
  ASSERT_EQ(::pipe(to_child), 0);
  const pid_t child = ::fork();  // before any store thread exists in this process
  ASSERT_GE(child, 0);
  if (child == 0) {  // rank 1: heartbeat until killed
    ::close(to_child[1]);
    int port = 0;
    if (::read(to_child[0], &port, sizeof port) != static_cast<ssize_t>(sizeof port)) ::_exit(3);
    try {
      Heartbeat hb(std::make_unique<TcpStore>("127.0.0.1", port, 1, 3, 10), 1, 3, 0.05);
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    } catch (...) {
      ::_exit(4);
    }
  }
  ::close(to_child[0]);
  struct Reap {  // the child never outlives the test, whatever fails
    pid_t pid;
    ~Reap() {
      if (pid > 0) ::kill(pid, SIGKILL), ::waitpid(pid, nullptr, 0);
    }
  } reap{child};
  auto s0 = std::make_unique<TcpStore>("127.0.0.1", 0, 0, 3, 10);
  const int port = s0->port();
  ASSERT_EQ(::write(to_child[1], &port, sizeof port), static_cast<ssize_t>(sizeof port));
  ::close(to_child[1]);
  Heartbeat hb0(std::move(s0), 0, 3, 0.05);
  auto hb2 = std::make_unique<Heartbeat>(std::make_unique<TcpStore>("127.0.0.1", port, 2, 3, 10), 2, 3, 0.05);
  {  // wait for rank 1's heartbeats
    TcpStore probe("127.0.0.1", port, 1, 3, 10);  // a client (rank 0 would serve)
    std::string v;
    const auto t0 = std::chrono::steady_clock::now();
    while (!(probe.try_get("hb/1", v) && v != "0")) {
      ASSERT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0) << "rank 1 never beat";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  const std::string alive = hb0.dead_ranks();
  EXPECT_NE(alive.find("every other rank is alive"), std::string::npos) << alive;
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  reap.pid = -1;
  hb2->report_failure("CUDA out of memory allocating the activation arena");
  const std::string dead = probe_faults();  // hb0 installed itself as the process's fault probe (hb2 last: it wins)
  const std::string from0 = hb0.dead_ranks();
  std::printf("probe: %s\nrank 0: %s\n", dead.c_str(), from0.c_str());
  EXPECT_NE(from0.find("rank 1 is dead"), std::string::npos) << from0;
  EXPECT_NE(from0.find("rank 2 failed: CUDA out of memory"), std::string::npos) << from0;
  EXPECT_NE(dead.find("rank 1 is dead"), std::string::npos) << dead;
  hb2.reset();  // a clean exit is not a death
  const std::string after = hb0.dead_ranks();
  EXPECT_NE(after.find("rank 2 failed"), std::string::npos) << after;
  EXPECT_EQ(after.find("rank 2 is dead"), std::string::npos) << after;
}

}  // namespace
}  // namespace megacpp
