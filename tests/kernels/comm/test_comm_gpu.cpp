// comm on the visible GPUs (skip without a GPU): every collective, both dtypes, every test shape and two
// seeds against the float64 reference (outputs poisoned first); a short bench per collective (positive time,
// algBw/busBw consistent with nccl-tests' factors, the one-GPU caveat in the note); bad input names the limit.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/comm/comm_ref.hpp"
#include "kernels/registry/op_registry.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
void register_comm_ops(OpRegistry& r);
namespace {

const OpRegistry& reg() {
  static OpRegistry r = [] {
    OpRegistry x;
    register_comm_ops(x);
    return x;
  }();
  return r;
}

TEST(CommGpu, EveryCollectiveMatchesReference) {
  MEGACPP_REQUIRE_GPU();
  ASSERT_EQ(reg().all().size(), 4u);
  for (const auto& op : reg().all())
    for (const auto& shape : op.test_shapes())
      for (uint64_t seed : {31ull, 32ull}) {
        const CheckResult r = op.check(shape, seed, OpOptions{});
        std::printf("[%s] %s seed %llu\n%s\n%s", op.name.c_str(), shape_to_string(shape).c_str(),
                    static_cast<unsigned long long>(seed), r.note.c_str(), format_metric_table(r.tensors).c_str());
        EXPECT_TRUE(r.pass()) << op.name << " " << shape_to_string(shape) << " seed " << seed;
        // Both dtypes ran: at least one recv metric per GPU per dtype plus send_intact.
        EXPECT_GE(r.tensors.size(), 4u);
      }
}

TEST(CommGpu, ShortBenchReportsNcclTestsBandwidths) {
  MEGACPP_REQUIRE_GPU();
  for (const auto& op : reg().all()) {
    OpOptions o;
    o.flags["dtype"] = "f32";
    o.warmup = 2;
    o.iters = 20;
    const OpShape s{{"bytes", 8 << 20}, {"gpus", 0}};
    const BenchResult b = op.bench(s, o);
    std::printf("[%s bench] %.4f ms, %s\n  %s\n", op.name.c_str(), b.median_ms, b.extra.dump().c_str(), b.note.c_str());
    EXPECT_GT(b.median_ms, 0.0);
    EXPECT_GE(b.runs, 20);
    const int G = b.extra.at("gpus").get<int>();
    const double alg = b.extra.at("algbw_GBps").get<double>(), bus = b.extra.at("busbw_GBps").get<double>();
    EXPECT_NEAR(alg, (8 << 20) / (b.median_ms * 1e-3) * 1e-9, 1e-6 * alg);
    EXPECT_NEAR(bus, alg * comm::bus_factor(comm::parse_coll(op.name), G), 1e-9 * alg + 1e-12);
    if (G == 1) EXPECT_NE(b.note.find("ONE GPU"), std::string::npos) << b.note;
  }
}

TEST(CommGpu, BadInputNamesTheLimit) {
  MEGACPP_REQUIRE_GPU();
  const OpDef* op = reg().find("allgather");
  ASSERT_NE(op, nullptr);
  OpOptions o;
  o.flags["dtype"] = "f32";
  try {
    op->check({{"bytes", 13442}, {"gpus", 0}}, 1, o);
    FAIL() << "13442 bytes accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of dtype size"), std::string::npos) << e.what();
  }
  try {
    op->check({{"bytes", 13440}, {"gpus", 4096}}, 1, o);
    FAIL() << "gpus=4096 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("GPU(s) visible"), std::string::npos) << e.what();
  }
  o.flags["dtype"] = "fp8";
  EXPECT_THROW(op->check({{"bytes", 13440}, {"gpus", 0}}, 1, o), std::invalid_argument);
}

}  // namespace
}  // namespace megacpp
