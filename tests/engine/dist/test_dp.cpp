// Data parallelism on the CPU backend with in-process ranks: DP=2 equals one rank on the same global
// batch, ZeRO-1 equals plain DP, a checkpoint written by 2 ranks resumes on 1 and on 4 ranks on the same
// curve, ranks with different recipes are refused, TP on one rank is refused, and the receipt and per-rank
// metrics are written.
//
// Tolerances (fp32): the loss of a step is a sum over micro-batches whose association differs between
// layouts (one rank: ((m0+m1)+m2)+m3; two ranks: (m0+m1)+(m2+m3)), and so is every gradient element
// (sum over micro-batches in backward, then over ranks), so results agree to rounding, not bit for bit:
// losses to 1e-6 relative, parameters to 1e-5 absolute after 6 AdamW steps at lr 3e-3.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "engine/config/recipe_loader.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/trainer.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/common/tiny_training.hpp"

namespace megacpp {
namespace {

namespace fs = std::filesystem;

constexpr double kLossRel = 1e-6, kParamAbs = 1e-5;

Recipe tiny(const std::string& root, const std::vector<std::string>& extra = {}) {
  return test::tiny_training_recipe(root,
                                    "  mbs: 1\n  seq_len: 32\n  global_batch: 4\n  steps: 6\n  lr: 0.003\n  warmup: 2\n"
                                    "  eval_every: 3\n  eval_batches: 3\n  checkpoint_every: 3\n  precision: fp32\n",
                                    extra);
}

using test::TrainRun;

// world 0: the single-rank path (no communicator); else `world` in-process ranks.
TrainRun train(const Recipe& r, int world, TrainOptions o = {}) { return test::train_in_process(r, o, world); }

std::vector<double> losses(const nlohmann::json& tr) {
  std::vector<double> v;
  for (const auto& p : tr["series"]) v.push_back(p["loss"].get<double>());
  return v;
}

CheckpointData final_ckpt(const TrainRun& r) { return load_checkpoint(r.tr["checkpoints"].back()["dir"].get<std::string>()); }

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

void expect_same_curve(const std::vector<double>& a, const std::vector<double>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], kLossRel * std::fabs(a[i])) << what << ": step " << i + 1;
}

TEST(DataParallel, TwoRanksEqualOneRankOnTheSameGlobalBatch) {
  const auto root = test::scratch_dir("dp-equal");
  const Recipe r = tiny(root);
  const TrainRun one = train(r, 0);
  const TrainRun two = train(r, 2);
  ASSERT_EQ(one.code, 0);
  ASSERT_EQ(two.code, 0);
  const auto l1 = losses(one.tr), l2 = losses(two.tr);
  expect_same_curve(l1, l2, "DP=2 vs one rank");
  EXPECT_LT(l1.back(), l1.front());
  EXPECT_NEAR(one.tr["final_val_loss"].get<double>(), two.tr["final_val_loss"].get<double>(), kLossRel * 10);
  const auto c1 = final_ckpt(one), c2 = final_ckpt(two);
  const double dp = max_abs_diff(c1.params, c2.params);
  EXPECT_LE(dp, kParamAbs);
  EXPECT_GT(max_abs_diff(c1.params, load_checkpoint(one.tr["checkpoints"][0]["dir"]).params), 100 * kParamAbs)
      << "the parameters must have moved for the comparison to mean anything";
  std::printf("DP=2 vs 1 rank: max |Δloss| %.3g, max |Δparam| %.3g\n",
              [&] { double m = 0; for (std::size_t i = 0; i < l1.size(); ++i) m = std::max(m, std::fabs(l1[i] - l2[i])); return m; }(), dp);
  // the receipt: per-rank step times and communication per collective type; per-rank metrics streams
  const auto& d = two.tr["distributed"];
  EXPECT_EQ(d["world"], 2);
  EXPECT_EQ(d["communicator"], "in-process");
  ASSERT_EQ(d["per_rank"].size(), 2u);
  for (const auto& pr : d["per_rank"]) {
    EXPECT_EQ(pr["step_ms"].size(), 6u);
    EXPECT_GT(pr["comm"]["all_reduce"]["calls"].get<double>(), 0);
  }
  EXPECT_EQ(two.doc["parallel"]["dp"], 2);
  for (int q = 0; q < 2; ++q) {
    std::ifstream in(two.run_dir + "/metrics-rank" + std::to_string(q) + ".jsonl");
    int lines = 0;
    for (std::string s; std::getline(in, s);) {
      const auto j = nlohmann::json::parse(s);
      EXPECT_EQ(j["rank"], q);
      ++lines;
    }
    EXPECT_EQ(lines, 6) << "rank " << q;
  }
  // small buckets give the same bits as one bucket (element-wise sums, same rank order)
  TrainOptions small;
  small.bucket_elems = 1000;
  const TrainRun two_b = train(r, 2, small);
  EXPECT_EQ(losses(two_b.tr), l2);
  EXPECT_EQ(max_abs_diff(final_ckpt(two_b).params, c2.params), 0.0);
  EXPECT_GT(two_b.tr["distributed"]["per_rank"][0]["comm"]["all_reduce"]["calls"].get<double>(),
            d["per_rank"][0]["comm"]["all_reduce"]["calls"].get<double>());
}

TEST(DataParallel, HybridWithEveryBlockLetterMatchesOneRank) {
  // A, M, E (MoE: the router statistics and aux losses are per rank), D, R — DP=2 and ZeRO-1 on 4 ranks.
  const auto root = test::scratch_dir("dp-hybrid");
  test::make_cpp_corpus(root);
  std::ofstream(root + "/h.yaml") << "model:\n  vocab: 258\n  hidden: 64\n  depth: 5\n  pattern: AMEDR\n"
                                     "  mamba:\n    head_dim: 32\n    state_dim: 16\n    mimo_rank: 2\n    chunk_size: 16\n"
                                     "  mlp:\n    ffn_hidden: 128\n"
                                     "  attention:\n    heads: 4\n    kv_heads: 2\n    head_dim: 16\n"
                                     "  moe:\n    experts: 4\n    top_k: 2\n    ffn_hidden: 64\n    shared_expert_hidden: 64\n"
                                     "  m2rnn:\n    heads: 4\n    key_dim: 16\n    value_dim: 8\n"
                                     "train:\n  mbs: 1\n  seq_len: 32\n  global_batch: 4\n  steps: 3\n  lr: 0.003\n"
                                     "  eval_batches: 2\n  precision: fp32\n"
                                     "data:\n  source: dir\n  inputs: [" << root << "/src]\n  dir: " << root << "/data\n";
  const Recipe r = load_recipe(root + "/h.yaml", {"receipts.dir=" + root + "/runs"});
  const Recipe rz = load_recipe(root + "/h.yaml", {"receipts.dir=" + root + "/runs", "parallel.zero=1"});
  const TrainRun one = train(r, 0), two = train(r, 2), four = train(rz, 4);
  ASSERT_EQ(one.code, 0);
  ASSERT_EQ(two.code, 0);
  ASSERT_EQ(four.code, 0);
  expect_same_curve(losses(one.tr), losses(two.tr), "hybrid DP=2 vs one rank");
  expect_same_curve(losses(one.tr), losses(four.tr), "hybrid DP=4 ZeRO-1 vs one rank");
  EXPECT_LE(max_abs_diff(final_ckpt(one).params, final_ckpt(two).params), kParamAbs);
  EXPECT_LE(max_abs_diff(final_ckpt(one).params, final_ckpt(four).params), kParamAbs);
}

TEST(DataParallel, ZeroOneEqualsPlainDataParallel) {
  const auto root = test::scratch_dir("dp-zero");
  const TrainRun plain = train(tiny(root), 2);
  const TrainRun zero = train(tiny(root, {"parallel.zero=1"}), 2);
  ASSERT_EQ(plain.code, 0);
  ASSERT_EQ(zero.code, 0);
  expect_same_curve(losses(plain.tr), losses(zero.tr), "ZeRO-1 vs plain DP");
  const auto cp = final_ckpt(plain), cz = final_ckpt(zero);
  EXPECT_LE(max_abs_diff(cp.params, cz.params), kParamAbs);
  EXPECT_LE(max_abs_diff(cp.adam_m, cz.adam_m), 1e-6);  // the shards, concatenated on load
  EXPECT_EQ(cz.adam_v.size(), cz.params.size());
  const std::string d = zero.tr["checkpoints"].back()["dir"];
  for (const char* rk : {"rank-00000", "rank-00001"}) EXPECT_TRUE(fs::exists(fs::path(d) / "zero" / rk / "COMPLETE")) << rk;
  EXPECT_EQ(fs::file_size(fs::path(d) / "adam_m.bin"), 0u);
  EXPECT_TRUE(zero.tr["distributed"]["per_rank"][0]["comm"].contains("reduce_scatter"));
  EXPECT_TRUE(zero.tr["distributed"]["per_rank"][0]["comm"].contains("all_gather"));
  // a missing shard marker makes the checkpoint invalid
  fs::remove(fs::path(d) / "zero" / "rank-00001" / "COMPLETE");
  EXPECT_THROW(load_checkpoint(d), std::runtime_error);
}

TEST(DataParallel, ResumeWithADifferentDpSizeContinuesTheSameCurve) {
  const auto root = test::scratch_dir("dp-resume");
  const Recipe r = tiny(root, {"parallel.zero=1"});
  const TrainRun full = train(r, 2);  // uninterrupted reference on 2 ranks
  ASSERT_EQ(full.code, 0);
  TrainOptions stop;
  stop.interrupt_after_step = 3;
  const TrainRun first = train(r, 2, stop);  // checkpoint with 2 ZeRO shards at step 3
  ASSERT_EQ(first.code, 130);
  EXPECT_EQ(first.status, "interrupted");
  const auto lf = losses(full.tr);
  for (int world : {0, 1, 4}) {
    TrainOptions o;
    o.resume = first.run_dir;
    const TrainRun again = train(r, world, o);
    ASSERT_EQ(again.code, 0) << "world " << world;
    EXPECT_EQ(again.tr["resumed_at_step"], 3);
    EXPECT_EQ(again.tr["resumed_from_dp"], 2);
    const auto la = losses(again.tr);
    ASSERT_EQ(la.size(), 3u);
    expect_same_curve(std::vector<double>(lf.begin() + 3, lf.end()), la, world == 0 ? "resumed on 1 rank" : "resumed on 4 ranks");
    EXPECT_LE(max_abs_diff(final_ckpt(again).params, final_ckpt(full).params), kParamAbs) << "world " << world;
  }
}

TEST(DataParallel, RanksWithDifferentRecipesAreRefused) {
  const auto root = test::scratch_dir("dp-mismatch");
  const Recipe a = tiny(root), b = tiny(root, {"train.lr=0.001"});
  ASSERT_NE(a.config_sha256, b.config_sha256);
  try {
    run_ranks(2, [&](Communicator& c) {
      RunReceipt rc("train", {"test"});
      rc.set_recipe(c.rank() == 0 ? a : b);
      TrainOptions o;
      o.quiet = true;
      o.comm = &c;
      run_training(c.rank() == 0 ? a : b, o, rc);
    });
    FAIL() << "expected a refusal";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("ranks resolved different recipes"), std::string::npos) << e.what();
  }
}

TEST(DataParallel, TensorParallelismOnOneRankIsRefusedClearly) {  // the layouts themselves: test_tp.cpp
  const auto root = test::scratch_dir("dp-tp");
  Recipe r = tiny(root);
  r.parallel.tp = 2;  // as if the recipe asked for it (the recipe rules check divisibility)
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r);
  TrainOptions o;
  o.quiet = true;
  try {
    run_training(r, o, rc);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("the world size must be a multiple of tp"), std::string::npos) << e.what();
  }
}

TEST(DataParallel, GlobalBatchMustDivideOverTheRanks) {
  const auto root = test::scratch_dir("dp-divide");
  const Recipe r = tiny(root);
  try {
    train(r, 3);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of mbs·dp"), std::string::npos) << e.what();
  }
}

TEST(DataParallel, AFailingRankIsNamedInTheSurvivorsErrors) {
  // Rank 1 dies after step 2 (an exception on its thread); rank 0's next collective throws naming it — the
  // error a CLI run records as rank 0's receipt failure. (Multi-process NCCL runs name a dead process through
  // the TCP store's heartbeats: test_comm.cpp, Heartbeat.*.)
  const auto root = test::scratch_dir("dp-fault");
  const Recipe r = tiny(root);
  std::string rank0_error;
  std::mutex mu;
  try {
    run_ranks(2, [&](Communicator& c) {
      TrainOptions o;
      o.comm = &c, o.quiet = true, o.fail_rank = 1, o.fail_after_step = 2;
      RunReceipt rc("train", {"test"});
      rc.set_recipe(r);
      try {
        run_training(r, o, rc);
      } catch (const std::exception& e) {
        if (c.rank() == 0) {
          std::lock_guard<std::mutex> lk(mu);
          rank0_error = e.what();
        }
        throw;
      }
    });
    FAIL() << "run_ranks should have thrown";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 of 2: injected failure after step 2"), std::string::npos) << e.what();
  }
  EXPECT_NE(rank0_error.find("rank 1 failed: injected failure after step 2"), std::string::npos) << rank0_error;
}

}  // namespace
}  // namespace megacpp
