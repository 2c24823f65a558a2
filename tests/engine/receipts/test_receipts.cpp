// Receipts: required fields, written on failure too, atomic under SIGKILL, metrics stream survives.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "engine/config/recipe_loader.hpp"
#include "engine/receipts/atomic_file.hpp"
#include "engine/receipts/receipt.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

TEST(Receipt, OkReceiptHasEveryRequiredField) {
  const auto dir = test::scratch_dir("receipt-ok");
  RunReceipt rc("plan", {"megacpp", "plan", "recipes/smoke.yaml"});
  const Recipe r = load_recipe(test::source_path("recipes/smoke.yaml"));
  rc.set_recipe(r);
  rc.set_location(dir, r.name);
  rc.record_feature("attention_backend", "auto", "native", "cuDNN refused head_dim 16");
  rc.result()["answer"] = 42;
  rc.finish_ok();
  const auto j = read_json(rc.receipt_path());
  EXPECT_TRUE(receipt_schema_problems(j).empty()) << j.dump(2);
  EXPECT_EQ(j["schema"], "megacpp.receipt/1");
  EXPECT_EQ(j["status"], "ok");
  EXPECT_EQ(j["recipe"]["sha256"], r.sha256);
  EXPECT_EQ(j["recipe"]["config"]["model"]["pattern"], r.model.pattern);
  EXPECT_EQ(j["features"]["attention_backend"]["observed"], "native");
  EXPECT_EQ(j["result"]["answer"], 42);
  EXPECT_TRUE(j["end_time"].is_string());
  EXPECT_NE(rc.run_dir().find("-plan-smoke"), std::string::npos);
}

TEST(Receipt, FailedRunStillWritesItsReceipt) {
  const auto dir = test::scratch_dir("receipt-fail");
  RunReceipt rc("train", {"megacpp", "train", "x.yaml"});
  rc.set_location(dir, "x");
  rc.finish_failed("something broke", "error");
  const auto j = read_json(rc.receipt_path());
  EXPECT_TRUE(receipt_schema_problems(j).empty()) << j.dump(2);
  EXPECT_EQ(j["status"], "failed");
  EXPECT_EQ(j["error"]["message"], "something broke");
}

TEST(Receipt, SchemaCheckerFindsProblems) {
  nlohmann::json j = {{"schema", "megacpp.receipt/1"}, {"status", "failed"}};
  const auto p = receipt_schema_problems(j);
  EXPECT_GE(p.size(), 5u);
}

TEST(Receipt, MetricsStreamKeepsEveryCompletedLine) {
  const auto dir = test::scratch_dir("receipt-metrics");
  RunReceipt rc("train", {"megacpp"});
  rc.set_location(dir, "m");
  for (int i = 0; i < 5; ++i) rc.metrics().append(nlohmann::json{{"step", i}}.dump());
  std::ifstream in(rc.run_dir() + "/metrics.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) EXPECT_EQ(nlohmann::json::parse(line)["step"], n++);
  EXPECT_EQ(n, 5);
}

// A writer killed at a random moment never leaves a truncated receipt: the target is either absent
// (first write not finished) or one of the complete versions.
TEST(AtomicFile, KilledWriterNeverLeavesATruncatedFile) {
  const auto dir = test::scratch_dir("atomic-kill");
  const std::string path = dir + "/receipt.json";
  for (int trial = 0; trial < 12; ++trial) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int v = 0;; ++v) {
        nlohmann::json j = {{"version", v}, {"payload", std::string(200000 + (v % 7) * 10000, 'x')}, {"end", true}};
        write_file_atomic(path, j.dump());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(3 + trial * 5));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!std::filesystem::exists(path)) continue;
    nlohmann::json j;
    ASSERT_NO_THROW(j = read_json(path)) << "trial " << trial << ": truncated or corrupt receipt";
    EXPECT_TRUE(j["end"].get<bool>());
  }
}

}  // namespace
}  // namespace megacpp
