// The training loop end to end on the CPU backend, on a small corpus made here: loss decreases,
// an interrupted + resumed run equals the uninterrupted one bit for bit, a checkpoint written by a
// killed process is never half-visible, a corrupt checkpoint is refused with the previous one offered,
// and corrupt data is refused.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "engine/config/recipe_loader.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/trainer.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/common/tiny_training.hpp"

namespace megacpp {
namespace {

namespace fs = std::filesystem;

Recipe tiny(const std::string& root, const std::vector<std::string>& extra = {}) {
  return test::tiny_training_recipe(root,
                                    "  mbs: 2\n  seq_len: 32\n  global_batch: 4\n  steps: 8\n  lr: 0.003\n  warmup: 2\n"
                                    "  eval_every: 4\n  eval_batches: 2\n  checkpoint_every: 2\n  precision: fp32\n",
                                    extra);
}

std::vector<double> losses(const nlohmann::json& tr) {
  std::vector<double> v;
  for (const auto& p : tr["series"]) v.push_back(p["loss"].get<double>());
  return v;
}

TEST(Train, LossDecreasesAndTheReceiptIsComplete) {
  const auto root = test::scratch_dir("train-basic");
  const Recipe r = tiny(root, {"train.steps=12"});
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r);
  TrainOptions o;
  o.quiet = true;
  ASSERT_EQ(run_training(r, o, rc), 0);
  rc.finish_ok();
  const auto& tr = rc.training();
  const auto l = losses(tr);
  ASSERT_EQ(l.size(), 12u);
  EXPECT_LT(l.back(), l.front() - 0.5);
  EXPECT_TRUE(tr["final_val_loss"].is_number());
  EXPECT_GT(tr["goodput"]["goodput"].get<double>(), 0.0);
  EXPECT_TRUE(tr["goodput"]["badput"].contains("data_loading_sync"));
  EXPECT_EQ(tr["checkpoints"].size(), 6u);  // every 2 steps + the final one
  EXPECT_EQ(list_checkpoints(rc.run_dir() + "/checkpoints").size(), 3u);  // keep_checkpoints = 3
  EXPECT_EQ(rc.doc()["features"]["device"]["observed"], "cpu");
}

TEST(Train, ResumedRunEqualsTheUninterruptedRunBitForBit) {
  const auto root = test::scratch_dir("train-resume");
  const Recipe r = tiny(root);
  std::vector<double> full, first, second;
  {
    RunReceipt rc("train", {"test"});
    rc.set_recipe(r);
    TrainOptions o;
    o.quiet = true;
    ASSERT_EQ(run_training(r, o, rc), 0);
    full = losses(rc.training());
  }
  std::string run_dir;
  {
    RunReceipt rc("train", {"test"});
    rc.set_recipe(r);
    TrainOptions o;
    o.quiet = true;
    o.interrupt_after_step = 3;  // as if SIGINT arrived in step 3: checkpoint at 3, status interrupted
    ASSERT_EQ(run_training(r, o, rc), 130);
    EXPECT_EQ(rc.status(), "interrupted");
    first = losses(rc.training());
    run_dir = rc.run_dir();
  }
  {
    RunReceipt rc("train", {"test"});
    rc.set_recipe(r);
    TrainOptions o;
    o.quiet = true;
    o.resume = run_dir;
    ASSERT_EQ(run_training(r, o, rc), 0);
    EXPECT_EQ(rc.training()["resumed_at_step"], 3);
    second = losses(rc.training());
  }
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(second.size(), 5u);
  first.insert(first.end(), second.begin(), second.end());
  ASSERT_EQ(first.size(), full.size());
  for (std::size_t i = 0; i < full.size(); ++i) EXPECT_EQ(first[i], full[i]) << "step " << i + 1;
}

TEST(Checkpoint, KilledWriterNeverLeavesAHalfVisibleCheckpoint) {
  const auto root = test::scratch_dir("ckpt-kill");
  const std::string dir = root + "/checkpoints";
  for (int trial = 0; trial < 8; ++trial) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      CheckpointData c;
      c.params.assign(3'000'000, 1.5f);
      c.adam_m.assign(3'000'000, 0.5f);
      c.adam_v.assign(3'000'000, 0.25f);
      for (int64_t s = 1;; ++s) {
        c.state.step = s;
        save_checkpoint(dir, c, 2);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + 15 * trial));
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    for (const auto& ck : list_checkpoints(dir)) EXPECT_NO_THROW(load_checkpoint(ck)) << ck;
  }
}

TEST(Checkpoint, CorruptCheckpointIsRefusedAndThePreviousOneOffered) {
  const auto root = test::scratch_dir("ckpt-corrupt");
  CheckpointData c;
  c.params = {1, 2, 3};
  c.adam_m = {0, 0, 0};
  c.adam_v = {0, 0, 0};
  c.state.step = 1;
  save_checkpoint(root, c, 5);
  c.state.step = 2;
  const std::string newest = save_checkpoint(root, c, 5);
  {
    std::fstream f(newest + "/params.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2);
    f.put('\x7f');
  }
  try {
    latest_valid_checkpoint(root);
    FAIL() << "corrupt checkpoint accepted";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("params.bin fails its checksum"), std::string::npos) << m;
    EXPECT_NE(m.find("step-00000001"), std::string::npos) << m;
  }
}

TEST(Train, CorruptDataIsRefused) {
  const auto root = test::scratch_dir("train-baddata");
  const Recipe r = tiny(root, {"train.steps=1"});
  {
    RunReceipt rc("train", {"test"});
    rc.set_recipe(r);
    TrainOptions o;
    o.quiet = true;
    ASSERT_EQ(run_training(r, o, rc), 0);  // prepares the data
  }
  int flipped = 0;
  for (const auto& e : fs::recursive_directory_iterator(root + "/data"))
    if (e.path().extension() == ".tok") {
      if (!e.is_regular_file()) continue;
      std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(e.path()) - 3));
      f.put('\x01'), f.put('\x02');
      ++flipped;
    }
  ASSERT_GT(flipped, 0);
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r);
  TrainOptions o;
  o.quiet = true;
  try {
    run_training(r, o, rc);
    FAIL() << "corrupt shard accepted";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(".tok"), std::string::npos) << "the error names the shard: " << m;
    EXPECT_NE(m.find("checksum"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace megacpp
