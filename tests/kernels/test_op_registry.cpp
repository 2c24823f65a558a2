// Runs every registered op's correctness check on each of its test shapes, on fresh random inputs
// (two seeds: an error that moves between seeds beyond rounding points at a race).
// GPU ops skip where there is no GPU; CPU ops always run.
#include <gtest/gtest.h>

#include <set>

#include "kernels/registry/op_registry.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {

TEST(OpRegistry, NamesAreUniqueAndEveryOpIsComplete) {
  std::set<std::string> seen;
  for (const auto& op : op_registry().all()) {
    EXPECT_TRUE(seen.insert(op.name).second) << op.name;
    EXPECT_FALSE(op.family.empty()) << op.name;
    EXPECT_TRUE(static_cast<bool>(op.check)) << op.name << " has no correctness check";
    EXPECT_TRUE(static_cast<bool>(op.test_shapes)) << op.name << " has no test shapes";
  }
}

TEST(OpRegistry, EveryOpMatchesItsReference) {
  int ran = 0;
  for (const auto& op : op_registry().all()) {
    if (op.needs_gpu && !gpu_available()) continue;
    for (const auto& shape : op.test_shapes()) {
      for (uint64_t seed : {11ull, 12ull}) {
        OpOptions opt;
        const CheckResult r = op.check(shape, seed, opt);
        EXPECT_TRUE(r.pass()) << op.name << " [" << shape_to_string(shape) << "] seed " << seed << "\n"
                              << r.note << "\n" << format_metric_table(r.tensors);
        ++ran;
      }
    }
  }
  if (ran == 0) GTEST_SKIP() << "no op ran here (" << gpu_runtime().why_not << ")";
}

}  // namespace
}  // namespace megacpp
