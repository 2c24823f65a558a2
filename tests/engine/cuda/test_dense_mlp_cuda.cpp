// The D letter on the CUDA backend against its float64 CPU twin (bf16 weights and activations on
// both sides; the GPU computes in bf16 with fp32 accumulation).
#include <gtest/gtest.h>

#include "tests/common/test_paths.hpp"
#include "tests/engine/cuda/block_compare.hpp"

namespace megacpp::test {
namespace {

Recipe mlp_recipe(const std::string& act, int hidden, int ffn) {
  return block_test_recipe("D-" + act, "model:\n  vocab: 64\n  hidden: " + std::to_string(hidden) +
                                           "\n  depth: 1\n  pattern: D\n  init_std: 0.05\n  mlp:\n    ffn_hidden: " +
                                           std::to_string(ffn) + "\n    activation: " + act + "\n");
}

TEST(CudaDenseMlp, SwigluMatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  for (uint64_t seed : {1u, 2u}) {
    BlockCompareOptions o;
    o.seed = seed;
    const auto c = compare_device_block(mlp_recipe("swiglu", 256, 512), BlockKind::Dense, o);
    std::printf("%s\n", c.table().c_str());
    EXPECT_TRUE(c.pass());
  }
}

TEST(CudaDenseMlp, Relu2MatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  BlockCompareOptions o;
  o.S = 64;
  const auto c = compare_device_block(mlp_recipe("relu2", 128, 384), BlockKind::Dense, o);
  std::printf("%s\n", c.table().c_str());
  EXPECT_TRUE(c.pass());
}

}  // namespace
}  // namespace megacpp::test
