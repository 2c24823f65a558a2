// Runs the real binary: every subcommand exists, exit codes are as documented, and every run —
// failed ones included — leaves a valid receipt.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/receipts/receipt.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {

struct CliRun {
  int code;
  std::string out;
};

CliRun run(const std::string& args) {
  const std::string cmd = std::string(MEGACPP_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (p && fgets(buf.data(), buf.size(), p)) out += buf.data();
  const int st = p ? pclose(p) : -1;
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::vector<nlohmann::json> receipts_in(const std::string& dir) {
  std::vector<nlohmann::json> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.path().filename() == "receipt.json") {
      std::ifstream in(e.path());
      std::stringstream ss;
      ss << in.rdbuf();
      out.push_back(nlohmann::json::parse(ss.str()));
    }
  return out;
}

TEST(Cli, VersionNamesTheLibraries) {
  const CliRun r = run("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("megacpp 0."), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.find("cuDNN") != std::string::npos || r.out.find("without CUDA") != std::string::npos) << r.out;
}

TEST(Cli, EverySubcommandHasHelp) {
  for (const char* sub : {"train", "bench", "sweep", "plan", "data"}) {
    const CliRun r = run(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub << "\n" << r.out;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub;
  }
}

TEST(Cli, BadRecipeFailsWithExitOneAndAFailedReceipt) {
  const auto dir = test::scratch_dir("cli-bad");
  std::ofstream(dir + "/bad.yaml") << "model:\n  pattern: MQ\n";
  const CliRun r = run("plan " + dir + "/bad.yaml --receipts-dir " + dir + "/runs");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("bad.yaml:2:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bad-pattern-letter"), std::string::npos) << r.out;
  const auto rs = receipts_in(dir + "/runs");
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0]["status"], "failed");
  EXPECT_EQ(rs[0]["error_detail"]["rule"], "bad-pattern-letter");
  EXPECT_TRUE(receipt_schema_problems(rs[0]).empty());
}

TEST(Cli, UsageErrorExitsTwo) {
  EXPECT_EQ(run("plan").code, 2);
  EXPECT_EQ(run("no-such-command").code, 2);
}

TEST(Cli, BenchUnknownKernelIsAClearError) {
  const auto dir = test::scratch_dir("cli-bench");
  const CliRun r = run("bench --kernel no_such_kernel --receipts-dir " + dir);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown kernel 'no_such_kernel'"), std::string::npos) << r.out;
  EXPECT_EQ(receipts_in(dir).size(), 1u);
}


TEST(Cli, NprocProcessesNeedOneGpuPerWorker) {
  // --launch processes starts one worker per GPU: with fewer GPUs than workers (none on CI, one on the
  // device) it is refused before anything starts, with the reason in the receipt.
  const auto dir = test::scratch_dir("cli-nproc");
  const CliRun r = run("train " + test::source_path("recipes/smoke.yaml") +
                       " --set train.steps=1 --nproc-per-node 64 --launch processes --receipts-dir " + dir);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("one process per GPU needs 64 GPUs"), std::string::npos) << r.out;
  const auto rs = receipts_in(dir);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0]["status"], "failed");
  EXPECT_EQ(rs[0]["launch"]["requested"], "processes");
  EXPECT_EQ(rs[0]["launch"]["nproc_per_node"], 64);
  EXPECT_EQ(run("train " + test::source_path("recipes/smoke.yaml") + " --nproc-per-node 2 --launch fork").code, 2);
}

}  // namespace
}  // namespace megacpp
