// Shipped recipes parse; extends and --set work; pattern tiling and counts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/config/recipe_loader.hpp"
#include "engine/config/validate.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {

TEST(Recipes, EveryShippedRecipeParses) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(test::source_path("recipes"))) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    const Recipe r = load_recipe(e.path().string());
    EXPECT_EQ(static_cast<int64_t>(r.layers.layers.size()), r.model.depth);
    EXPECT_EQ(r.sha256.size(), 64u);
    ++n;
  }
  EXPECT_GE(n, 4);
}

TEST(Recipes, Nam56rShapeAndCounts) {
  const Recipe r = load_recipe(test::source_path("recipes/nam56r.yaml"));
  EXPECT_EQ(r.model.hidden, 3584);
  EXPECT_EQ(r.model.depth, 52);
  EXPECT_EQ(r.layers.count(BlockKind::Attention), 13);
  EXPECT_EQ(r.layers.count(BlockKind::Mamba), 13);
  EXPECT_EQ(r.layers.count(BlockKind::Moe), 22);
  EXPECT_EQ(r.layers.count(BlockKind::M2rnn), 4);
  EXPECT_EQ(r.layers.count(BlockKind::Dense), 0);
  EXPECT_EQ(r.model.mamba.heads, 112);   // 3584*2/64, derived
  EXPECT_EQ(r.model.m2rnn.heads, 44);    // 3584/(64+16), derived (floor)
  EXPECT_EQ(mamba_n_angles(r.model.mamba), 16);  // floor_even(64*0.5)/2
  EXPECT_EQ(r.layers.letters().substr(0, 16), "AEMEAEMEAEMRAEME");
}

TEST(Recipes, ExtendsInheritsAndOverrides) {
  const Recipe r = load_recipe(test::source_path("recipes/nam52.yaml"));
  EXPECT_EQ(r.model.pattern, "AEMEAEDE");
  EXPECT_EQ(r.model.hidden, 3584);  // inherited
  EXPECT_EQ(r.files.size(), 2u);
  EXPECT_EQ(std::filesystem::path(r.files.back()).filename(), "nam56r.yaml");
  EXPECT_EQ(r.marks.at("model.pattern").file, r.files.front());
  EXPECT_EQ(std::filesystem::path(r.marks.at("model.hidden").file).filename(), "nam56r.yaml");
  EXPECT_EQ(r.layers.count(BlockKind::Dense), 6);  // 6 full tiles of AEMEAEDE (one D each) + "AEME"
}

TEST(Recipes, SetOverridesAreAppliedAndRecorded) {
  const Recipe r = load_recipe(test::source_path("recipes/smoke.yaml"), {"train.steps=7", "train.recompute=[M, D]",
                                                                         "features.fused_moe=false"});
  EXPECT_EQ(r.train.steps, 7);
  EXPECT_EQ(r.train.recompute, (std::vector<std::string>{"M", "D"}));
  EXPECT_EQ(r.features.fused_moe, "standard");
  EXPECT_EQ(r.marks.at("train.steps").file, "--set");
  EXPECT_EQ(r.overrides.size(), 3u);
  const Recipe base = load_recipe(test::source_path("recipes/smoke.yaml"));
  EXPECT_NE(r.config_sha256, base.config_sha256);
  EXPECT_EQ(r.sha256, base.sha256);  // same files
}

TEST(Pattern, TilingWithoutStagesAndExactWithStages) {
  ExpandedPattern p;
  PatternProblem prob;
  ASSERT_TRUE(expand_pattern("AEMEAEMEAEMR", 52, p, prob));
  EXPECT_EQ(p.count(BlockKind::Attention), 13);
  EXPECT_EQ(p.count(BlockKind::Moe), 22);
  EXPECT_EQ(p.count(BlockKind::Mamba), 13);
  EXPECT_EQ(p.count(BlockKind::M2rnn), 4);
  EXPECT_EQ(p.stages, 1);
  ASSERT_TRUE(expand_pattern("AD|MD|ME", 6, p, prob));
  EXPECT_EQ(p.stages, 3);
  EXPECT_EQ(p.letters(), "ADMDME");
  EXPECT_EQ(p.stage_of_layer, (std::vector<int>{0, 0, 1, 1, 2, 2}));
  EXPECT_FALSE(expand_pattern("AD|MD", 5, p, prob));
  EXPECT_EQ(prob.rule, "depth-mismatch");
  EXPECT_FALSE(expand_pattern("AQ", 5, p, prob));
  EXPECT_EQ(prob.rule, "bad-pattern-letter");
  EXPECT_EQ(prob.offset, 1);
  EXPECT_FALSE(expand_pattern("", 5, p, prob));
  EXPECT_EQ(prob.rule, "empty-pattern");
  ASSERT_TRUE(expand_pattern("AEMEAEDE", 52, p, prob));
  EXPECT_EQ(p.count(BlockKind::Dense), 6);  // 6 full tiles of 8 (one D each) + "AEME"
}

TEST(Recipes, UnusedSectionsAreNotCheckedByGeometryRules) {
  // A pattern without A does not care that attention heads do not divide by tp.
  const auto dir = test::scratch_dir("recipe-unused");
  std::ofstream(dir + "/r.yaml") << "model:\n  hidden: 64\n  depth: 2\n  pattern: D\n  attention:\n    heads: 3\n"
                                    "  mlp:\n    ffn_hidden: 128\nparallel:\n  tp: 2\n";
  EXPECT_NO_THROW(load_recipe(dir + "/r.yaml"));
}

}  // namespace
}  // namespace megacpp
