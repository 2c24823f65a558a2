// The --nproc-per-node process launcher (engine/dist/local_workers.hpp), with /bin/sh as the worker so the
// test needs no GPU: every worker sees its torchrun-style environment; a failing worker is named and the
// others are stopped after the grace period instead of running on.
#include <gtest/gtest.h>

#include <chrono>

#include "engine/dist/local_workers.hpp"

namespace megacpp {
namespace {

TEST(LocalWorkers, EveryWorkerGetsItsTorchrunEnvironment) {
  // Each worker checks its own variables and exits 0 only if all are right (rank k: RANK = LOCAL_RANK = k).
  const std::string check =
      "test \"$WORLD_SIZE\" = 3 && test \"$LOCAL_WORLD_SIZE\" = 3 && test \"$RANK\" = \"$LOCAL_RANK\" && "
      "test \"$RANK\" -ge 0 && test \"$RANK\" -lt 3 && test \"$MASTER_ADDR\" = 127.0.0.1 && test \"$MASTER_PORT\" -gt 0 && "
      "test \"$EXTRA\" = yes";
  const LocalLaunch l = launch_local_workers(3, {"sh", "-c", check}, 5.0, {"EXTRA=yes"}, "/bin/sh");
  ASSERT_EQ(l.workers.size(), 3u);
  EXPECT_EQ(l.failed_rank, -1) << l.summary;
  EXPECT_EQ(l.exit_code(), 0);
  for (const auto& w : l.workers) EXPECT_EQ(w.exit_code, 0) << "rank " << w.rank;
}

TEST(LocalWorkers, AFailingWorkerIsNamedAndTheOthersAreStopped) {
  // Rank 1 fails at once with code 7; the others would sleep 60 s. With a 0.3 s grace the launch must end
  // within a few seconds, name rank 1 and return its code.
  const auto t0 = std::chrono::steady_clock::now();
  const LocalLaunch l =
      launch_local_workers(3, {"sh", "-c", "if [ \"$RANK\" = 1 ]; then exit 7; fi; exec sleep 60"}, 0.3, {}, "/bin/sh");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 10.0);
  EXPECT_EQ(l.failed_rank, 1) << l.summary;
  EXPECT_EQ(l.exit_code(), 7);
  EXPECT_NE(l.summary.find("rank 1"), std::string::npos);
  EXPECT_NE(l.summary.find("first failure"), std::string::npos) << l.summary;
  for (const auto& w : l.workers)
    if (w.rank != 1) {
      EXPECT_TRUE(w.terminated_by_launcher) << l.summary;
      EXPECT_NE(w.exit_code, 0);
    }
}

TEST(LocalWorkers, BadArgumentsAreRefused) {
  EXPECT_THROW(launch_local_workers(0, {"sh"}, 1.0, {}, "/bin/sh"), std::invalid_argument);
  EXPECT_THROW(launch_local_workers(2, {}, 1.0, {}, "/bin/sh"), std::invalid_argument);
  // A worker that cannot be executed exits 127 and is reported as the failure.
  const LocalLaunch l = launch_local_workers(1, {"nope"}, 0.1, {}, "/nonexistent/megacpp");
  EXPECT_EQ(l.failed_rank, 0);
  EXPECT_EQ(l.exit_code(), 127);
}

}  // namespace
}  // namespace megacpp
