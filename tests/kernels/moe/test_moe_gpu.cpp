// GPU tests of the MoE block (skip without a GPU): both dispatch paths against the float64 reference on
// every test shape (balanced, capacity drops, unbalanced routing with an empty expert) and two seeds,
// fused vs standard agreement, fused determinism (bitwise rerun), and clear errors for bad input.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/registry/op_registry.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
void register_moe_ops(OpRegistry& r);
namespace {

const OpDef& moe_op() {
  static OpRegistry reg = [] {
    OpRegistry r;
    register_moe_ops(r);
    return r;
  }();
  return *reg.find("moe");
}

TEST(MoeGpu, BothPathsMatchReferenceOnEveryShape) {
  MEGACPP_REQUIRE_GPU();
  const OpDef& op = moe_op();
  for (const auto& shape : op.test_shapes())
    for (uint64_t seed : {21ull, 22ull}) {
      const CheckResult r = op.check(shape, seed, OpOptions{});
      std::printf("[moe] %s seed %llu\n%s\n%s\n", shape_to_string(shape).c_str(), (unsigned long long)seed,
                  r.note.c_str(), format_metric_table(r.tensors).c_str());
      EXPECT_TRUE(r.pass()) << shape_to_string(shape) << " seed " << seed;
    }
}

TEST(MoeGpu, SinglePathFlag) {
  MEGACPP_REQUIRE_GPU();
  const OpDef& op = moe_op();
  OpOptions o;
  o.flags["moe-path"] = "standard";
  const CheckResult r = op.check(op.test_shapes().front(), 5, o);
  EXPECT_TRUE(r.pass()) << r.note << "\n" << format_metric_table(r.tensors);
  o.flags["moe-path"] = "bogus";
  try {
    op.check(op.test_shapes().front(), 5, o);
    FAIL() << "bad moe-path accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("supported: standard, fused"), std::string::npos) << e.what();
  }
}

TEST(MoeGpu, BadShapeNamesTheLimit) {
  const OpDef& op = moe_op();
  OpShape s = op.test_shapes().front();
  s["top_k"] = 9;
  try {
    op.check(s, 1, OpOptions{});
    FAIL() << "top_k=9 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("top_k=9 not supported"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace megacpp
