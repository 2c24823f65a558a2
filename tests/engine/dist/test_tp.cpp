// Tensor and expert parallelism on the CPU backend with in-process ranks (issue 8).
//
// 1. Model level, float64: the sharded model (TP=2, EP=2, TP=2×EP=2; pattern AMEDR: every letter) gives the same loss and the same
//    gradients (gathered to the full layout, after the TP reduction of the replicated-but-partial
//    tensors and the data-parallel sum over the EP ranks' different micro-batches) as the tp = ep = 1
//    model on the same tokens. Tolerance: 1e-9 relative (max |Δ| / max |ref| per tensor): only the
//    summation order differs (row-parallel partial sums, vocabulary-parallel sum-exp). Also TP=2×EP=4
//    with tied embeddings, relu² MLP/experts, a sigmoid router and capacity drops.
// 2. Trainer level, fp32, pattern AMEDR: DP=2, TP=2, EP=2 and TP=2×EP=2×DP=2 (8 ranks) train the same curve as one
//    rank over 3 AdamW steps: losses to 2e-6 relative, final parameters (checkpoints hold the full
//    layout) to 2e-5 absolute, AdamW second moments to 1e-4 of their maximum. fp32 rounding of
//    differently ordered sums is all that differs (measured: |Δloss| ≤ 2.2e-8, |Δparam| ≤ 6.6e-6).
// 3. Refusals: a vocabulary TP does not divide, ZeRO-1 with TP/EP, a world that tp·ep does not divide.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "engine/config/recipe_loader.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/model/model.hpp"
#include "engine/model/parallel.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/trainer.hpp"
#include "kernels/common/host_rng.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/common/tiny_training.hpp"

namespace megacpp {
namespace {

std::string hybrid_yaml(const std::string& root, const std::string& pattern) {
  test::make_cpp_corpus(root);
  const std::string path = root + "/h-" + pattern + ".yaml";
  std::ofstream(path) << "model:\n  vocab: 258\n  hidden: 64\n  depth: " << pattern.size() << "\n  pattern: " << pattern << "\n"
                      << "  mamba:\n    head_dim: 32\n    state_dim: 16\n    mimo_rank: 2\n    chunk_size: 16\n    ngroups: 2\n"
                         "  mlp:\n    ffn_hidden: 128\n"
                         "  attention:\n    heads: 4\n    kv_heads: 2\n    head_dim: 16\n"
                         "  moe:\n    experts: 4\n    top_k: 2\n    ffn_hidden: 64\n    shared_expert_hidden: 64\n"
                         "  m2rnn:\n    heads: 4\n    key_dim: 16\n    value_dim: 8\n"
                         "train:\n  mbs: 1\n  seq_len: 32\n  global_batch: 4\n  steps: 3\n  lr: 0.003\n"
                         "  eval_batches: 3\n  precision: fp32\n"
                         "data:\n  source: dir\n  inputs: ["
                      << root << "/src]\n  dir: " << root << "/data\n";
  return path;
}

// ---- 1. model level (float64) ------------------------------------------------------------------

std::vector<int32_t> random_tokens(int64_t S, int64_t V, uint64_t seed) {
  HostRng rng(seed);
  std::vector<int32_t> t(static_cast<std::size_t>(S + 1));
  for (auto& x : t) x = static_cast<int32_t>(rng.uniform() * static_cast<double>(V)) % static_cast<int32_t>(V);
  return t;
}

// world = tp·ep ranks; rank = ep_index·tp + tp_index; EP rank e runs micro-batch e (the EP ranks are
// data-parallel replicas); the reference runs all ep micro-batches on the full model.
void check_model_level(const std::string& pattern, int tp, int ep, const std::vector<std::string>& extra = {}) {
  const auto root = test::scratch_dir("tp-model-" + pattern);
  std::vector<std::string> sets = {"receipts.dir=" + root + "/runs", "parallel.tp=" + std::to_string(tp),
                                   "parallel.ep=" + std::to_string(ep)};
  sets.insert(sets.end(), extra.begin(), extra.end());
  const Recipe r = load_recipe(hybrid_yaml(root, pattern), sets);
  const int64_t S = 32, V = r.model.vocab;
  const double scale = 1.0 / static_cast<double>(ep * S);
  std::vector<std::vector<int32_t>> toks;
  for (int e = 0; e < ep; ++e) toks.push_back(random_tokens(S, V, 100 + static_cast<uint64_t>(e)));
  Model<double> ref(r, 1, S);
  ref.init_params(7);
  double ref_loss = 0;
  for (int e = 0; e < ep; ++e) ref_loss += ref.forward_backward(toks[static_cast<std::size_t>(e)].data(), 1, scale);
  const auto& rp = ref.params();

  std::mutex mu;
  std::vector<double> full_grad, full_param;
  double loss_total = 0;
  run_ranks(tp * ep, [&](Communicator& c) {
    const int ti = c.rank() % tp, ei = c.rank() / tp;
    auto tpc = c.split(ei, ti), epc = c.split(ti, ei);
    ModelParallel mp;
    mp.tp = tpc.get(), mp.tp_rank = ti, mp.tp_size = tp, mp.ep = epc.get(), mp.ep_rank = ei, mp.ep_size = ep;
    Model<double> m(r, 1, S, mp);
    m.init_params(7);
    auto& ps = m.params();
    double loss = m.forward_backward(toks[static_cast<std::size_t>(ei)].data(), 1, scale);
    // the trainer's reduction: TP-partial tensors over TP; dense tensors over the data-parallel ranks
    // (here the EP group); expert tensors are complete on their owner (dp/ep = 1)
    tp_reduce_partial_grads(ps, mp);
    for (std::size_t i = 0; i < ps.specs.size(); ++i) {
      const ParamSpec& sp = ps.specs[i];
      double* g = ps.grad(static_cast<int>(i));
      const bool expert = sp.shard == ShardGroup::ep || sp.shard == ShardGroup::tp_ep;
      if (!expert && ep > 1) epc->all_reduce_sum(g, static_cast<std::size_t>(sp.numel));
    }
    epc->all_reduce_sum(&loss, 1);
    std::vector<double> fg(static_cast<std::size_t>(full_numel(ps))), fp(fg.size());
    gather_full(ps, mp, ps.grads.data(), fg.data());
    gather_full(ps, mp, ps.data.data(), fp.data());
    if (c.rank() == 0) {
      int n_tp = 0, n_ep = 0, n_partial = 0;
      for (const auto& sp : ps.specs)
        n_tp += sp.shard == ShardGroup::tp || sp.shard == ShardGroup::tp_ep,
            n_ep += sp.shard == ShardGroup::ep || sp.shard == ShardGroup::tp_ep, n_partial += sp.tp_grad_partial;
      std::lock_guard<std::mutex> lk(mu);
      full_grad = fg, full_param = fp, loss_total = loss;
      // the layout is really exercised: A, M, D, E and the vocabulary split over TP (M's angle_proj/B/C
      // norms and E's router partial), E's experts split over EP
      EXPECT_GE(n_tp, tp > 1 ? 1 + 2 + 9 + 2 + 4 : 0);  // vocabulary, A (qkv, out), M (in, out, 7 per-head), D (2 or 3), E
      EXPECT_EQ(n_partial, tp > 1 ? 4 : 0);
      EXPECT_EQ(n_ep, ep > 1 ? 2 : 0);
      EXPECT_LT(ps.numel(), tp * ep > 1 ? full_numel(ps) : full_numel(ps) + 1);
    }
  });
  ASSERT_EQ(full_grad.size(), rp.grads.size()) << "the full layout must be the tp = ep = 1 ParamStore's";
  EXPECT_NEAR(loss_total, ref_loss, 1e-10 * std::fabs(ref_loss)) << pattern << " tp=" << tp << " ep=" << ep;
  double worst = 0;
  for (const auto& sp : rp.specs) {
    double mx = 0, md = 0, pd = 0;
    for (int64_t k = 0; k < sp.numel; ++k) {
      const auto i = static_cast<std::size_t>(sp.offset + k);
      mx = std::max(mx, std::fabs(rp.grads[i]));
      md = std::max(md, std::fabs(rp.grads[i] - full_grad[i]));
      pd = std::max(pd, std::fabs(rp.data[i] - full_param[i]));
    }
    EXPECT_EQ(pd, 0.0) << sp.name << ": the sharded init must equal the full model's";
    EXPECT_GT(mx, 0.0) << sp.name << ": a gradient of zero tests nothing";
    EXPECT_LE(md, 1e-9 * mx) << sp.name << " (tp=" << tp << ", ep=" << ep << "): max |Δgrad| " << md << " of max " << mx;
    worst = std::max(worst, mx > 0 ? md / mx : 0.0);
  }
  std::printf("%s tp=%d ep=%d: |Δloss| %.3g, worst relative gradient difference %.3g over %zu tensors\n", pattern.c_str(), tp, ep,
              std::fabs(loss_total - ref_loss), worst, rp.specs.size());
}

TEST(TensorParallel, ModelTp2MatchesOneRankInFloat64) { check_model_level("AMEDR", 2, 1); }
TEST(ExpertParallel, ModelEp2MatchesOneRankInFloat64) { check_model_level("AMEDR", 1, 2); }
TEST(TensorExpertParallel, ModelTp2Ep2MatchesOneRankInFloat64) { check_model_level("AMEDR", 2, 2); }
// tied embeddings (one vocabulary-parallel tensor for lookup and head), relu² MLP, sigmoid router with
// capacity drops and a relu² expert FFN, 4 EP ranks (one expert each), GQA with one kv head per TP rank
TEST(TensorExpertParallel, ModelVariantsTp2Ep4MatchOneRankInFloat64) {
  check_model_level("AMED", 2, 4,
                    {"model.tie_embeddings=true", "model.mlp.activation=relu2", "model.moe.score=sigmoid",
                     "model.moe.capacity_factor=1.0", "model.moe.activation=relu2"});
}

// ---- 2. trainer level (fp32) -------------------------------------------------------------------

using test::TrainRun;

TrainRun train(const Recipe& r, int world) { return test::train_in_process(r, {}, world); }

std::vector<double> losses(const nlohmann::json& tr) {
  std::vector<double> v;
  for (const auto& p : tr["series"]) v.push_back(p["loss"].get<double>());
  return v;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

void expect_same_run(const TrainRun& one, const TrainRun& other, const char* what) {
  ASSERT_EQ(one.code, 0);
  ASSERT_EQ(other.code, 0) << what;
  const auto a = losses(one.tr), b = losses(other.tr);
  ASSERT_EQ(a.size(), b.size()) << what;
  double dl = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], b[i], 2e-6 * std::fabs(a[i])) << what << ": step " << i + 1;
    dl = std::max(dl, std::fabs(a[i] - b[i]));
  }
  EXPECT_NEAR(one.tr["final_val_loss"].get<double>(), other.tr["final_val_loss"].get<double>(), 2e-5) << what;
  const auto c1 = load_checkpoint(one.tr["checkpoints"].back()["dir"].get<std::string>());
  const auto c2 = load_checkpoint(other.tr["checkpoints"].back()["dir"].get<std::string>());
  const double dp = max_abs_diff(c1.params, c2.params);
  EXPECT_LE(dp, 2e-5) << what;
  double vmax = 0;
  for (float x : c1.adam_v) vmax = std::max(vmax, static_cast<double>(x));
  EXPECT_GT(vmax, 0.0);
  EXPECT_LE(max_abs_diff(c1.adam_v, c2.adam_v), 1e-4 * vmax) << what << ": AdamW second moments (full layout)";
  std::printf("%s vs one rank: max |Δloss| %.3g, max |Δparam| %.3g after %zu steps\n", what, dl, dp, a.size());
}

TEST(TensorExpertParallel, TrainerLayoutsTrainTheSameCurveAsOneRank) {
  const auto root = test::scratch_dir("tp-train");
  auto recipe = [&](const std::string& pattern, int tp, int ep) {
    return load_recipe(hybrid_yaml(root, pattern), {"receipts.dir=" + root + "/runs", "parallel.tp=" + std::to_string(tp),
                                                    "parallel.ep=" + std::to_string(ep)});
  };
  // one rank is the reference of every layout (its recipe differs only in parallel.*); all five letters
  const TrainRun one = train(recipe("AMEDR", 1, 1), 0);
  ASSERT_EQ(one.code, 0);
  EXPECT_LT(losses(one.tr).back(), losses(one.tr).front());
  expect_same_run(one, train(recipe("AMEDR", 1, 1), 2), "AMEDR DP=2");
  const TrainRun tp2 = train(recipe("AMEDR", 2, 1), 2);
  expect_same_run(one, tp2, "AMEDR TP=2");
  EXPECT_EQ(tp2.tr["distributed"]["tp"], 2);
  expect_same_run(one, train(recipe("AMEDR", 1, 2), 2), "AMEDR EP=2");
  const TrainRun all = train(recipe("AMEDR", 2, 2), 8);
  expect_same_run(one, all, "AMEDR TP=2 x EP=2 x DP=2");
  EXPECT_EQ(all.tr["distributed"]["dp"], 4);
  EXPECT_EQ(all.tr["distributed"]["ep"], 2);
  EXPECT_GT(all.tr["distributed"]["per_rank"][0]["comm"]["send_recv"]["calls"].get<double>(), 0) << "EP all-to-alls";
}

TEST(TensorExpertParallel, ACheckpointWrittenUnderTpEpResumesOnOneRank) {
  const auto root = test::scratch_dir("tp-resume");
  const Recipe r2 = load_recipe(hybrid_yaml(root, "AMEDR"), {"receipts.dir=" + root + "/runs", "parallel.tp=2", "parallel.ep=2",
                                                              "train.checkpoint_every=2", "train.steps=4"});
  const Recipe r1 = load_recipe(hybrid_yaml(root, "AMEDR"), {"receipts.dir=" + root + "/runs", "train.checkpoint_every=2", "train.steps=4"});
  const TrainRun full = train(r1, 0);
  ASSERT_EQ(full.code, 0);
  const TrainRun par = train(r2, 4);  // TP=2 × EP=2, dp 2
  ASSERT_EQ(par.code, 0);
  const std::string ck = par.tr["checkpoints"][0]["dir"];
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r1);
  TrainOptions o;
  o.quiet = true;
  o.resume = ck;
  ASSERT_EQ(run_training(r1, o, rc), 0);
  const auto la = losses(rc.training()), lf = losses(full.tr);
  ASSERT_EQ(la.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) EXPECT_NEAR(la[i], lf[i + 2], 2e-6 * lf[i + 2]) << "resumed step " << i + 3;
  const auto cr = load_checkpoint(rc.training()["checkpoints"].back()["dir"].get<std::string>());
  EXPECT_LE(max_abs_diff(cr.params, load_checkpoint(full.tr["checkpoints"].back()["dir"].get<std::string>()).params), 2e-5);
}

// ---- 3. refusals -------------------------------------------------------------------------------

std::string error_of(const Recipe& r, int world) {
  try {
    train(r, world);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(TensorExpertParallel, UnimplementedLayoutsAreRefusedClearly) {
  const auto root = test::scratch_dir("tp-refuse");
  const std::string y = hybrid_yaml(root, "AMEDR");
  const std::string rd = "receipts.dir=" + root + "/runs";
  std::string e = error_of(load_recipe(y, {rd, "parallel.tp=2", "model.vocab=259"}), 2);
  EXPECT_NE(e.find("parallel.tp=2 does not divide model.vocab=259"), std::string::npos) << e;
  e = error_of(load_recipe(y, {rd, "parallel.ep=2", "parallel.zero=1"}), 2);
  EXPECT_NE(e.find("ZeRO-1 is implemented for pure data parallelism only"), std::string::npos) << e;
  e = error_of(load_recipe(y, {rd, "parallel.ep=2"}), 0);
  EXPECT_NE(e.find("the world size must be a multiple of tp, and ep must divide"), std::string::npos) << e;
  e = error_of(load_recipe(y, {rd, "parallel.ep=4"}), 2);
  EXPECT_NE(e.find("ep must divide"), std::string::npos) << e;
}

// ---- the communicator's split ------------------------------------------------------------------

TEST(Communicator, SplitFormsIndependentGroupsOrderedByKey) {
  std::mutex mu;
  std::vector<std::array<int, 3>> seen;  // world rank, sub rank, sub sum
  run_ranks(6, [&](Communicator& c) {
    // colors: rank % 2; keys reversed: the sub rank order is by descending world rank
    auto sub = c.split(c.rank() % 2, 100 - c.rank());
    double v = c.rank();
    sub->all_reduce_sum(&v, 1);
    auto subsub = sub->split(sub->rank() < 2 ? 0 : 1, sub->rank());  // a split of a split
    double one = 1;
    subsub->all_reduce_sum(&one, 1);
    std::lock_guard<std::mutex> lk(mu);
    seen.push_back({c.rank(), sub->rank() * 100 + sub->world() * 10 + static_cast<int>(one), static_cast<int>(v)});
  });
  ASSERT_EQ(seen.size(), 6u);
  for (const auto& s : seen) {
    const int q = s[0];
    const int expect_sub_rank = (4 + (q % 2) - q) / 2;  // evens 4,2,0 → 0,1,2; odds 5,3,1 → 0,1,2
    EXPECT_EQ(s[1] / 100, expect_sub_rank) << q;
    EXPECT_EQ((s[1] / 10) % 10, 3) << q;
    EXPECT_EQ(s[1] % 10, expect_sub_rank < 2 ? 2 : 1) << q;
    EXPECT_EQ(s[2], q % 2 ? 1 + 3 + 5 : 0 + 2 + 4) << q;
  }
  // a failing rank aborts the sub-communicators too (nothing hangs)
  EXPECT_THROW(run_ranks(4,
                         [&](Communicator& c) {
                           auto sub = c.split(c.rank() % 2, c.rank());
                           if (c.rank() == 3) throw std::runtime_error("boom");
                           double v = 1;
                           sub->all_reduce_sum(&v, 1);
                           sub->all_reduce_sum(&v, 1);
                         },
                         30),
               std::exception);
}

}  // namespace
}  // namespace megacpp
