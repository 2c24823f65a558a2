// test_plan.cpp — `megacpp plan` numbers against values computed by hand.
//
// Every expected number below is a literal worked out by hand from the block definitions in
// docs/params.md and the formulas in docs/flops.md; the arithmetic is in the comments. If one of
// these fails, either the formula in plan.cpp or the docs changed: update both and the hand count.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/config/recipe_loader.hpp"
#include "engine/plan/plan.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {

// A small recipe with one layer of every block kind.
//   hidden h=64, vocab 256, 5 layers A M E D R
//   A: 4 query heads, 2 kv heads, head_dim 16
//   M: expand 2 -> d_inner 128, head_dim P=16 -> H=8, G=2, R=2, N=8, chunk L=8, N_ang = 8*0.5/2 = 2
//   E: 4 experts relu2 ffn 32, top-2, shared expert swiglu 16
//   D: swiglu ffn 96
//   R: N=2 heads, K=8, V=4, conv width 4 -> C = 2K + N*V = 16 + 8 = 24
//   train: mbs 2, seq_len 32, global_batch 8
const char* kSmallYaml = R"(model:
  vocab: 256
  hidden: 64
  depth: 5
  pattern: AMEDR
  attention:
    heads: 4
    kv_heads: 2
    head_dim: 16
  mamba:
    head_dim: 16
    state_dim: 8
    expand: 2
    ngroups: 2
    mimo_rank: 2
    chunk_size: 8
    rope_fraction: 0.5
  moe:
    experts: 4
    top_k: 2
    ffn_hidden: 32
    shared_expert_hidden: 16
    activation: relu2
    shared_activation: swiglu
  mlp:
    ffn_hidden: 96
    activation: swiglu
  m2rnn:
    heads: 2
    key_dim: 8
    value_dim: 4
    conv_width: 4
train:
  mbs: 2
  seq_len: 32
  global_batch: 8
)";

// NAM56R as the issue and the public Megatron recipe give it (hidden 3584, 56/8 heads of 64,
// vocab 65536, Mamba-3 MIMO state 64 / head 64 / expand 2 / groups 8 / rank 4 / chunk 16,
// MoE 16 experts relu2 ffn 896 top-4 + shared swiglu 1024, M²RNN K=64 V=16 with the derived
// heads = 3584 / (64+16) = 44).
const char* kNam56rYaml = R"(model:
  vocab: 65536
  hidden: 3584
  depth: 52
  pattern: AEMEAEMEAEMR
  attention:
    heads: 56
    kv_heads: 8
    head_dim: 64
    rope_theta: 500000
  mamba:
    head_dim: 64
    state_dim: 64
    expand: 2
    ngroups: 8
    mimo_rank: 4
    chunk_size: 16
  moe:
    experts: 16
    top_k: 4
    ffn_hidden: 896
    shared_expert_hidden: 1024
    activation: relu2
    shared_activation: swiglu
  mlp:
    ffn_hidden: 18944
  m2rnn:
    key_dim: 64
    value_dim: 16
    conv_width: 4
train:
  mbs: 1
  seq_len: 4096
  global_batch: 64
)";

class PlanTest : public ::testing::Test {
 protected:
  Recipe load(const char* yaml, const std::vector<std::string>& overrides = {}) {
    if (dir_.empty()) dir_ = test::scratch_dir("plan");
    const std::string path = dir_ + "/r" + std::to_string(n_++) + ".yaml";
    std::ofstream(path) << yaml;
    return load_recipe(path, overrides);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  const BlockParams& block(const Plan& p, BlockKind k) {
    for (const auto& b : p.blocks)
      if (b.kind == k) return b;
    ADD_FAILURE() << "no block " << block_name(k);
    static BlockParams none;
    return none;
  }
  std::string dir_;
  int n_ = 0;
};

bool has_note(const Plan& p, const std::string& s) {
  for (const auto& n : p.notes)
    if (n.find(s) != std::string::npos) return true;
  return false;
}

TEST_F(PlanTest, SmallRecipeParametersByHand) {
  const Recipe r = load(kSmallYaml);
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);

  ASSERT_EQ(p.layers.size(), 5u);
  ASSERT_EQ(p.blocks.size(), 5u);

  // A: qkv 64*(4+2*2)*16 = 8192; out 4*16*64 = 4096; pre-norm 64 -> 12,352
  EXPECT_EQ(block(p, BlockKind::Attention).params_per_layer, 12352);
  EXPECT_EQ(block(p, BlockKind::Attention).active_per_layer, 12352);
  // M: in_proj 64*(2*128 + 2*2*2*8 + 3*8) = 64*344 = 22,016; angle_proj 64*2 = 128;
  //    out_proj 128*64 = 8192; dt_bias 8; B_bias+C_bias 2*8*2*8 = 256; B_norm+C_norm 2*8 = 16;
  //    Psi,Zeta,Phi 3*8*2*16 = 768; D 8; pre-norm 64
  //    22016+128+8192+8+256+16+768+8+64 = 31,456
  EXPECT_EQ(block(p, BlockKind::Mamba).params_per_layer, 31456);
  // E: router 64*4 = 256; experts 4 * (2*64*32 = 4096) = 16,384; shared 3*64*16 = 3072; norm 64
  //    total 256+16384+3072+64 = 19,776; active 256 + 2*4096 + 3072 + 64 = 11,584
  EXPECT_EQ(block(p, BlockKind::Moe).params_per_layer, 19776);
  EXPECT_EQ(block(p, BlockKind::Moe).active_per_layer, 11584);
  // D: 3*64*96 = 18,432 + norm 64 = 18,496
  EXPECT_EQ(block(p, BlockKind::Dense).params_per_layer, 18496);
  // R: W_in 64*(24 + 2 + 2*4) = 64*34 = 2176; conv 24*4 = 96; A_log 2; dt_bias 2; W 2*4*4 = 32;
  //    D 2*4 = 8; gamma 8; W_out 8*64 = 512; norm 64 -> 2176+96+2+2+32+8+8+512+64 = 2900
  EXPECT_EQ(block(p, BlockKind::M2rnn).params_per_layer, 2900);

  EXPECT_EQ(p.embedding_params, 16384);  // 256*64
  EXPECT_EQ(p.lm_head_params, 16384);    // 256*64, untied
  EXPECT_EQ(p.final_norm_params, 64);
  // 12352+31456+19776+18496+2900 = 84,980; + 16384 + 16384 + 64 = 117,812
  EXPECT_EQ(p.total_params, 117812);
  // 117,812 - (19,776 - 11,584 = 8192 inactive expert params) = 109,620
  EXPECT_EQ(p.active_params, 109620);
  EXPECT_EQ(p.params_per_rank, 117812);  // world 1: everything on one rank
  EXPECT_EQ(p.world, 1);
  EXPECT_EQ(p.tp, 1);
  EXPECT_EQ(p.ep, 1);
  EXPECT_EQ(p.dp, 1);
}

TEST_F(PlanTest, SmallRecipeFlopsByHand) {
  const Recipe r = load(kSmallYaml);
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);
  // A: 2*(8192+4096) = 24,576 + core 2*4*16*32 = 4096 -> 28,672
  EXPECT_DOUBLE_EQ(block(p, BlockKind::Attention).fwd_flops_per_token_per_layer, 28672);
  // M: 2*(22016+128+8192) = 60,672; scan H*((L+1)*R^2*(N+P) + 4*R*N*P)
  //    = 8*(9*4*24 + 4*2*8*16) = 8*(864+1024) = 15,104 -> 75,776
  EXPECT_DOUBLE_EQ(block(p, BlockKind::Mamba).fwd_flops_per_token_per_layer, 75776);
  // E: 2*256 + top2 * 2*4096 + 2*3072 = 512 + 16,384 + 6144 = 23,040
  EXPECT_DOUBLE_EQ(block(p, BlockKind::Moe).fwd_flops_per_token_per_layer, 23040);
  // D: 2*18,432 = 36,864
  EXPECT_DOUBLE_EQ(block(p, BlockKind::Dense).fwd_flops_per_token_per_layer, 36864);
  // R: 2*(2176+512) = 5376; 2*N*K*V*V = 2*2*8*4*4 = 512; 2*N*K*V = 128; N*K*V = 64; conv 2*24*4 = 192
  //    5376+512+128+64+192 = 6272
  EXPECT_DOUBLE_EQ(block(p, BlockKind::M2rnn).fwd_flops_per_token_per_layer, 6272);
  // + LM head 2*64*256 = 32,768:  28672+75776+23040+36864+6272+32768 = 203,392
  EXPECT_DOUBLE_EQ(p.fwd_flops_per_token, 203392);
  EXPECT_DOUBLE_EQ(p.step_flops_per_token, 610176);  // 3 * 203,392
  EXPECT_DOUBLE_EQ(p.tokens_per_step, 256);           // global_batch 8 * seq_len 32
}

TEST_F(PlanTest, SmallRecipeMemoryByHand) {
  const Recipe r = load(kSmallYaml);
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);
  EXPECT_DOUBLE_EQ(p.memory.weights, 235624);    // 2 * 117,812
  EXPECT_DOUBLE_EQ(p.memory.grads, 471248);      // 4 * 117,812 (fp32 gradient accumulation)
  EXPECT_DOUBLE_EQ(p.memory.master, 471248);     // 4 * 117,812
  EXPECT_DOUBLE_EQ(p.memory.optimizer, 942496);  // 8 * 117,812
  // saved bytes per token:
  //   A 2*(64 + 8*16 + 4*16) + 4*4 (fp32 LSE)          = 512 + 16 = 528
  //   M 2*(64 + 344 + 128 + 2*2*2*8)                    = 2*600   = 1200
  //   E 2*64 + 2 rows*2*(64 + 2*32) + 2*3*16 + 4*4      = 128+512+96+16 = 752
  //   D 2*(64 + 3*96)                                   = 704
  //   R 2*(64 + 34 + 24) + 4*(2*8*4)/64                 = 244 + 4 = 248
  //   final norm input 2*64                             = 128
  //   sum 3560 B/token * mbs 2 * seq 32 = 227,840
  EXPECT_DOUBLE_EQ(p.memory.activations, 227840);
  EXPECT_DOUBLE_EQ(p.memory.psiv_cache, 0);
  // 512 MiB + min(64, 2048) tokens * 256 vocab * 4 B * 2 (logits + grad) = 536,870,912 + 131,072
  EXPECT_DOUBLE_EQ(p.memory.workspace, 537001984);
  EXPECT_TRUE(p.fits);
  EXPECT_DOUBLE_EQ(p.gpu_mem_gib, 80);

  // PsiV cache: B*S*H*R*P*2 per M layer = 2*32*8*2*16*2 = 32,768
  const Plan q = make_plan(load(kSmallYaml, {"features.psiv_cache=true"}), o);
  EXPECT_DOUBLE_EQ(q.memory.psiv_cache, 32768);
}

TEST_F(PlanTest, TiedEmbeddingsDropTheHeadButNotItsFlops) {
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(load(kSmallYaml, {"model.tie_embeddings=true"}), o);
  EXPECT_EQ(p.lm_head_params, 0);
  EXPECT_EQ(p.total_params, 101428);           // 117,812 - 16,384
  EXPECT_DOUBLE_EQ(p.fwd_flops_per_token, 203392);  // the head matmul still runs
}

TEST_F(PlanTest, TensorAndExpertParallelSharding) {
  // tp 2, ep 2, zero 1 on 4 ranks: dp = 4/2 = 2, expert-dp = 4/(2*2) = 1
  const Recipe r = load(kSmallYaml, {"parallel.tp=2", "parallel.ep=2", "parallel.zero=1"});
  PlanOptions o;
  o.world = 4;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);
  EXPECT_EQ(p.tp, 2);
  EXPECT_EQ(p.ep, 2);
  EXPECT_EQ(p.dp, 2);
  // per rank:
  //   A (8192+4096)/2 + 64                                        = 6208
  //   M 22016/2 + 128 (angle_proj, replicated) + 8192/2 + 8/2 + 256/2 + 16 (B/C norms, replicated)
  //     + 768/2 + 8/2 + 64                                        = 11008+128+4096+4+128+16+384+4+64 = 15,832
  //   E router 256 (replicated) + 2 local experts * 4096/2 + shared 3072/2 + 64 = 256+4096+1536+64 = 5952
  //     (of which routed experts 4096)
  //   D 18432/2 + 64                                              = 9280
  //   R 2176/2 + 96/2 + 2/2 + 2/2 + 32/2 + 8/2 + 8/2 + 512/2 + 64  = 1088+48+1+1+16+4+4+256+64 = 1482
  //   embedding 16384/2 = 8192, head 8192, final norm 64
  //   6208+15832+5952+9280+1482+8192+8192+64 = 55,202
  EXPECT_EQ(p.params_per_rank, 55202);
  EXPECT_DOUBLE_EQ(p.memory.weights, 110404);  // 2 * 55,202
  // zero=1: dense 55,202 - 4096 = 51,106 over dp 2 -> 25,553; experts 4096 over expert-dp 1
  //   master 4*(25,553 + 4096) = 118,596; AdamW 8*29,649 = 237,192
  EXPECT_DOUBLE_EQ(p.memory.master, 118596);
  EXPECT_DOUBLE_EQ(p.memory.optimizer, 237192);
  // totals do not depend on the layout
  EXPECT_EQ(p.total_params, 117812);
  EXPECT_FALSE(has_note(p, "not divisible"));

  // 8 ranks: dp 4, expert-dp 2: master 4*(51,106/4 + 4096/2) = 4*(12,776.5 + 2048) = 59,298
  o.world = 8;
  const Plan q = make_plan(r, o);
  EXPECT_EQ(q.dp, 4);
  EXPECT_EQ(q.params_per_rank, 55202);
  EXPECT_DOUBLE_EQ(q.memory.master, 59298);
  EXPECT_DOUBLE_EQ(q.memory.optimizer, 118596);
}

TEST_F(PlanTest, WorldDivisibilityNotes) {
  const Recipe r = load(kSmallYaml, {"parallel.tp=2", "parallel.ep=2"});
  PlanOptions o;
  o.gpu_mem_gib = 80;
  o.world = 2;  // 2 % (2*2) != 0
  const Plan bad = make_plan(r, o);
  EXPECT_TRUE(has_note(bad, "world 2 not divisible by tp·ep = 4"));
  EXPECT_FALSE(bad.fits);  // a layout that cannot run never "fits", however small the model
  EXPECT_NE(format_plan(r, bad).find("CANNOT RUN"), std::string::npos);
  EXPECT_EQ(to_json(bad)["layout_valid"], false);
  o.world = 6;  // 6 % 2 == 0 but 6 % 4 != 0
  EXPECT_TRUE(has_note(make_plan(r, o), "world 6 not divisible by tp·ep = 4"));
  o.world = 3;  // 3 % 2 != 0
  EXPECT_TRUE(has_note(make_plan(r, o), "world 3 not divisible by tp 2"));
  o.world = 8;
  const Plan good = make_plan(r, o);
  EXPECT_FALSE(has_note(good, "not divisible"));
  EXPECT_TRUE(good.fits);
  EXPECT_EQ(to_json(good)["layout_valid"], true);
}

TEST_F(PlanTest, DoesNotFitIsDetectedAndSaid) {
  const Recipe r = load(kSmallYaml);
  PlanOptions o;
  o.gpu_mem_gib = 0.25;  // the 512 MiB workspace alone exceeds 92% of 0.25 GiB
  const Plan p = make_plan(r, o);
  EXPECT_FALSE(p.fits);
  EXPECT_TRUE(has_note(p, "does not fit"));
  const std::string text = format_plan(r, p);
  EXPECT_NE(text.find("DOES NOT FIT"), std::string::npos) << text;
  EXPECT_EQ(to_json(p)["fits"], false);

  o.gpu_mem_gib = 1.0;  // 0.92 GiB usable > ~0.50 GiB
  const Plan q = make_plan(r, o);
  EXPECT_TRUE(q.fits);
  EXPECT_NE(format_plan(r, q).find("FITS:"), std::string::npos);
}

TEST_F(PlanTest, Nam56rTotalAndFit) {
  const Recipe r = load(kNam56rYaml);
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);
  ASSERT_EQ(p.layers.size(), 52u);
  EXPECT_EQ(block(p, BlockKind::Attention).layers, 13);
  EXPECT_EQ(block(p, BlockKind::Mamba).layers, 13);
  EXPECT_EQ(block(p, BlockKind::Moe).layers, 22);
  EXPECT_EQ(block(p, BlockKind::M2rnn).layers, 4);
  // per layer (docs/params.md): A 29,363,712; M 93,159,264; E 113,831,424 (active 36,761,088);
  // R 8,205,528; embedding = head = 65536*3584 = 234,881,024; final norm 3584
  EXPECT_EQ(block(p, BlockKind::Attention).params_per_layer, 29363712);
  EXPECT_EQ(block(p, BlockKind::Mamba).params_per_layer, 93159264);
  EXPECT_EQ(block(p, BlockKind::Moe).params_per_layer, 113831424);
  EXPECT_EQ(block(p, BlockKind::Moe).active_per_layer, 36761088);
  EXPECT_EQ(block(p, BlockKind::M2rnn).params_per_layer, 8205528);
  // 13*29,363,712 + 13*93,159,264 + 22*113,831,424 + 4*8,205,528 + 2*234,881,024 + 3584
  EXPECT_EQ(p.total_params, 4599677760);
  EXPECT_EQ(p.active_params, 2904130368);
  // sane band around the public 4.73 B (the gap is explained in docs/params.md)
  EXPECT_GT(p.total_params, 4'400'000'000);
  EXPECT_LT(p.total_params, 4'900'000'000);
  // forward FLOPs/token (docs/flops.md worked example): 13*88,080,384 + 13*197,263,360
  //   + 22*73,515,008 + 4*17,955,328 + 469,762,048 = 5,868,382,208
  EXPECT_DOUBLE_EQ(p.fwd_flops_per_token, 5868382208.0);
  // one 80 GiB GPU cannot hold 4.6 B params at 18 B/param (77.1 GiB) plus activations
  EXPECT_FALSE(p.fits);
  // 8 x H200 with ep 8 and zero 1 fits
  const Recipe r8 = load(kNam56rYaml, {"parallel.ep=8", "parallel.zero=1"});
  o.world = 8;
  o.gpu_mem_gib = 140;
  EXPECT_TRUE(make_plan(r8, o).fits);
}

TEST_F(PlanTest, ShippedNam56rRecipeIsInBand) {
  const std::string path = test::source_path("recipes/nam56r.yaml");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not shipped yet";
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(load_recipe(path), o);
  EXPECT_GT(p.total_params, 4'400'000'000);
  EXPECT_LT(p.total_params, 4'900'000'000);
}

TEST_F(PlanTest, ReportListsEveryLayerAndTheNumbers) {
  const Recipe r = load(kNam56rYaml);
  PlanOptions o;
  o.gpu_mem_gib = 80;
  const Plan p = make_plan(r, o);
  const std::string text = format_plan(r, p);
  for (int i = 0; i < 52; ++i)
    EXPECT_NE(text.find(" " + std::to_string(i) + " "), std::string::npos) << "layer " << i << " missing\n" << text;
  EXPECT_NE(text.find("mamba3_mimo"), std::string::npos);
  EXPECT_NE(text.find("4,599,677,760"), std::string::npos) << text;
  EXPECT_NE(text.find("2,904,130,368"), std::string::npos);
  EXPECT_NE(text.find("234,881,024"), std::string::npos);  // embedding and head shown separately
  EXPECT_NE(text.find("ESTIMATE"), std::string::npos);
  EXPECT_NE(text.find("DOES NOT FIT"), std::string::npos);

  const nlohmann::json j = to_json(p);
  EXPECT_EQ(j["params"]["total"], 4599677760);
  EXPECT_EQ(j["layers"], r.layers.letters());
  EXPECT_EQ(j["blocks"].size(), 4u);
  EXPECT_EQ(j["memory_bytes_per_rank"]["estimate"], true);
  EXPECT_DOUBLE_EQ(j["flops"]["step_per_token"].get<double>(), 3 * 5868382208.0);
}

}  // namespace
}  // namespace megacpp
