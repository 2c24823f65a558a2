// test_mimo_gpu.cpp — the Mamba-3 MIMO CUDA kernels against the float64 reference (the seeds' 11-shape gate plus
// a G>1 case, the wgmma kernels at R <= 2), determinism (two runs bit-identical) and the PsiV cache (on vs off
// equal). Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "kernels/common/metrics.hpp"
#include "kernels/mimo/mimo_gpu_run.hpp"
#include "kernels/mimo/mimo_ref.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp::mimo {
namespace {

struct Case {
  int64_t N, P, R, L;
};
// The seeds' 11 (N,P,R,chunk) shapes.
const Case kSeedCases[11] = {{16, 64, 4, 8},   {32, 64, 4, 16},  {64, 64, 4, 16}, {128, 64, 4, 16},
                             {256, 64, 4, 8},  {64, 128, 4, 16}, {128, 32, 4, 16}, {128, 128, 4, 8},
                             {128, 64, 8, 8},  {128, 64, 2, 32}, {128, 64, 1, 64}};

MimoShape make_shape(int64_t B, int64_t S, int64_t H, int64_t G, const Case& c) {
  MimoShape s{B, S, H, G, c.N, c.P, c.R, c.L};
  s.validate();
  return s;
}

std::string label(const MimoShape& s) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "B%ld S%ld H%ld G%ld N%ld P%ld R%ld chunk%ld", (long)s.B, (long)s.S, (long)s.H,
                (long)s.G, (long)s.N, (long)s.P, (long)s.R, (long)s.L);
  return buf;
}

// paths (optional): the recorded wgmma / mma.sync choice of the three kernels, for tests that need a given path.
bool gate(const MimoShape& s, uint64_t seed, bool psiv, std::string* paths = nullptr) {
  MimoInputs in = make_random_inputs(s, seed);
  round_inputs_for_gpu(in);
  const std::vector<double> dout = make_random_dout(s, seed);
  const GpuRunResult g = mimo_gpu_run(s, in, dout, psiv);
  std::vector<TensorMetric> ms = mimo_compare_forward(g.out, mimo_forward_chunked(s, in));
  for (auto& m : mimo_compare_grads(g.grads, mimo_backward_chunked(s, in, dout))) ms.push_back(m);
  bool ok = true;
  double worst_g = 0, worst_bad = 0;
  std::string worst_name;
  for (const auto& m : ms) {
    ok = ok && m.pass();
    if (m.name != "out" && m.stable_max_rel > worst_g) worst_g = m.stable_max_rel, worst_name = m.name;
    if (m.bad_frac > worst_bad) worst_bad = m.bad_frac;
  }
  std::printf("GATE | %-40s | out %.2e | worst grad %-8s %.2e | worst bad_frac %.3f | %s | %s\n", label(s).c_str(),
              ms[0].stable_max_rel, worst_name.c_str(), worst_g, worst_bad, ok ? "PASS" : "FAIL", g.note.c_str());
  if (!ok) std::printf("%s", format_metric_table(ms).c_str());
  // the receipts' path column (predicted from the dims) must be what ran: a silent fallback would fail here
  EXPECT_EQ(g.paths_observed, g.paths_predicted) << label(s);
  if (paths != nullptr) *paths = g.paths_observed;
  return ok;
}

TEST(MimoGpu, SeedShapesGate) {
  MEGACPP_REQUIRE_GPU();
  for (const Case& c : kSeedCases) {
    const MimoShape s = make_shape(2, 4 * c.L, 16, 1, c);
    EXPECT_TRUE(gate(s, 1234 + c.N + c.P + c.R + c.L, false)) << label(s);
  }
}

TEST(MimoGpu, GroupsAndLongerSequence) {
  MEGACPP_REQUIRE_GPU();
  EXPECT_TRUE(gate(make_shape(2, 128, 8, 4, {64, 64, 4, 16}), 77, false));
  EXPECT_TRUE(gate(make_shape(1, 256, 4, 2, {128, 64, 4, 16}), 78, true));
  EXPECT_TRUE(gate(make_shape(3, 96, 6, 3, {32, 32, 2, 32}), 79, false));
}

// Many chunks (128) at the training model's widths: the wgmma chunk loop's double buffers, the state carried over a
// long sweep and the chunk-entry states of the backward, at N = 64 (md300m) and N = 128 (the speed-bar width).
TEST(MimoGpu, LongSweepTrainingWidths) {
  MEGACPP_REQUIRE_GPU();
  EXPECT_TRUE(gate(make_shape(1, 2048, 4, 2, {64, 64, 4, 16}), 80, false));
  EXPECT_TRUE(gate(make_shape(1, 2048, 2, 1, {128, 64, 4, 16}), 81, false));
}

// B·H = 144 > the SM count: the wgmma chunk loop's 2-CTAs-per-SM instances (R = 4 with B·H ≤ the SM count, as in
// the other cases, takes the one-CTA-per-SM instance).
TEST(MimoGpu, ManyHeadsTwoCtasPerSm) {
  MEGACPP_REQUIRE_GPU();
  EXPECT_TRUE(gate(make_shape(2, 64, 72, 8, {128, 64, 4, 16}), 82, false));
  EXPECT_TRUE(gate(make_shape(2, 64, 72, 2, {64, 64, 4, 16}), 83, false));
}

// R = 2 and R = 1 with M = Lc·R = 64 (N = 64: the internal chunk is 32 / 64 steps) run the wgmma kernels, which the
// seed shapes (N = 128 there: M = 32, mma.sync) do not reach: the forward's step-weight table in its own region
// (R = 2) or the weights computed inline (R = 1), the two-steps-per-lane chunk scalars (Lc > 16), an epilogue thread
// holding all of its pair's ranks (RG = 1), and mimo_bwd_bwd's inline mask weights at R ≤ 2.
TEST(MimoGpu, WgmmaLowRanks) {
  MEGACPP_REQUIRE_GPU();
  for (const Case c : {Case{64, 64, 2, 32}, Case{64, 64, 1, 64}}) {
    const MimoShape s = make_shape(1, 4 * c.L, 4, 2, c);
    std::string paths;
    EXPECT_TRUE(gate(s, 90 + c.R, false, &paths)) << label(s);
    EXPECT_EQ(paths.find("mma.sync"), std::string::npos) << label(s) << ": " << paths;
  }
}

std::vector<std::vector<double>> flat(const GpuRunResult& r) {
  const MimoGrads& g = r.grads;
  return {r.out,     g.dq,      g.dk,   g.dv,   g.dadt,    g.ddt, g.dtrap, g.dq_bias,
          g.dk_bias, g.dpsi,    g.dzeta, g.dphi, g.dangles, g.dd,  g.dz};
}

TEST(MimoGpu, DeterministicBitIdentical) {
  MEGACPP_REQUIRE_GPU();
  const MimoShape s = make_shape(2, 128, 16, 2, {128, 64, 4, 16});
  MimoInputs in = make_random_inputs(s, 5);
  round_inputs_for_gpu(in);
  const std::vector<double> dout = make_random_dout(s, 5);
  const auto a = flat(mimo_gpu_run(s, in, dout, false));
  const auto b = flat(mimo_gpu_run(s, in, dout, false));
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i] == b[i]) << "tensor #" << i << " differs between runs";
}

TEST(MimoGpu, PsivCacheOnOffEqual) {
  MEGACPP_REQUIRE_GPU();
  const MimoShape s = make_shape(2, 128, 16, 1, {64, 64, 4, 16});
  MimoInputs in = make_random_inputs(s, 6);
  round_inputs_for_gpu(in);
  const std::vector<double> dout = make_random_dout(s, 6);
  const auto a = flat(mimo_gpu_run(s, in, dout, false));
  const auto b = flat(mimo_gpu_run(s, in, dout, true));
  int identical = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const TensorMetric m = compare_tensors("t", b[i], a[i], 1e-2, 1.0);
    EXPECT_TRUE(m.pass()) << "tensor #" << i << " rel " << m.stable_max_rel;
    identical += a[i] == b[i];
  }
  std::printf("PSIV | %d of %zu tensors bit-identical with the cache on vs off\n", identical, a.size());
}

}  // namespace
}  // namespace megacpp::mimo
