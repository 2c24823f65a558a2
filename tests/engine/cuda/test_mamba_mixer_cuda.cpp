// The M letter (Mamba-3 MIMO mixer) on the CUDA backend against its float64 CPU twin
// (engine/model/mamba_mixer.cpp): bf16 weights and activations on both sides; the GPU rounds proj, ang, the
// scan's bf16 inputs/outputs and the gradients of the projections to bf16, the CPU keeps float64 throughout.
// Each case runs with two seeds; the harness also re-runs the GPU side and demands bitwise-identical results.
// Timing at a realistic shape (hidden 1024, S 4096, B 2): MEGACPP_BLOCK_TIMING=1 (skipped otherwise).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/cuda/device_block.hpp"
#include "engine/model/block.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/gpu_timing.hpp"
#include "kernels/common/host_rng.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/engine/cuda/block_compare.hpp"

namespace megacpp::test {
namespace {

struct MShape {
  int hidden = 256, head_dim = 64, state_dim = 64, expand = 2, ngroups = 1, rank = 4, chunk = 16;
  std::string a_activation = "softplus";
  double rope_fraction = 0.5;
  bool psiv = false;
};

std::string m_yaml(const MShape& s) {
  return "model:\n  vocab: 64\n  hidden: " + std::to_string(s.hidden) +
         "\n  depth: 1\n  pattern: M\n  init_std: 0.05\n  mamba:\n    head_dim: " + std::to_string(s.head_dim) +
         "\n    state_dim: " + std::to_string(s.state_dim) + "\n    expand: " + std::to_string(s.expand) +
         "\n    ngroups: " + std::to_string(s.ngroups) + "\n    mimo_rank: " + std::to_string(s.rank) +
         "\n    chunk_size: " + std::to_string(s.chunk) + "\n    a_activation: " + s.a_activation +
         "\n    rope_fraction: " + (s.rope_fraction == 1.0 ? "1.0" : "0.5") +
         "\nfeatures:\n  psiv_cache: " + (s.psiv ? "true" : "false") + "\n";
}

Recipe m_recipe(const MShape& s) {
  return block_test_recipe("M-N" + std::to_string(s.state_dim) + "-R" + std::to_string(s.rank) + "-G" +
                               std::to_string(s.ngroups) + (s.psiv ? "-psiv" : "") + (s.rope_fraction == 1.0 ? "-rope1" : ""),
                           m_yaml(s));
}

void run_case(const MShape& s, int64_t B, int64_t S) {
  for (uint64_t seed : {1u, 2u}) {
    BlockCompareOptions o;
    o.B = B, o.S = S, o.seed = seed;
    const auto c = compare_device_block(m_recipe(s), BlockKind::Mamba, o);
    std::printf("M hidden=%d P=%d N=%d R=%d G=%d chunk=%d act=%s psiv_cache=%d B=%lld S=%lld seed=%llu\n%s\n",
                s.hidden, s.head_dim, s.state_dim, s.rank, s.ngroups, s.chunk, s.a_activation.c_str(), s.psiv ? 1 : 0,
                static_cast<long long>(B), static_cast<long long>(S), static_cast<unsigned long long>(seed),
                c.table().c_str());
    EXPECT_TRUE(c.pass()) << "seed " << seed;
  }
}

TEST(CudaMambaMixer, N64R4G1MatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  for (bool psiv : {false, true}) {
    MShape s;
    s.psiv = psiv;
    run_case(s, 2, 128);
  }
}

TEST(CudaMambaMixer, N64R4G2MatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  for (bool psiv : {false, true}) {
    MShape s;
    s.ngroups = 2;
    s.psiv = psiv;
    run_case(s, 2, 128);
  }
}

TEST(CudaMambaMixer, N128R2Chunk32MatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  for (bool psiv : {false, true}) {
    MShape s;
    s.state_dim = 128, s.rank = 2, s.chunk = 32;
    s.psiv = psiv;
    run_case(s, 2, 128);
  }
}

// rope_fraction 1: every state pair rotates (twice the angles of the default 0.5).
TEST(CudaMambaMixer, FullRopeMatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  MShape s;
  s.rope_fraction = 1.0;
  run_case(s, 2, 128);
}

// hidden 96 → H = 6 heads, d_in_proj = 914 (not a multiple of 8): the glue's 4-byte copy path; R = 8, chunk 8.
TEST(CudaMambaMixer, HeavyTailP32MatchesCpu) {
  MEGACPP_REQUIRE_GPU();
  MShape s;
  s.hidden = 96, s.head_dim = 32, s.state_dim = 32, s.rank = 8, s.chunk = 8, s.a_activation = "heavy_tail";
  run_case(s, 1, 64);
}

// Forward / backward time of one M block at a realistic shape (CUDA events, warm-up, median of 20).
TEST(CudaMambaMixer, TimingRealisticShape) {
  MEGACPP_REQUIRE_GPU();
  const char* env = std::getenv("MEGACPP_BLOCK_TIMING");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set MEGACPP_BLOCK_TIMING=1 to time the block";
  for (bool psiv : {false, true}) {
    MShape s;
    s.hidden = 1024, s.head_dim = 64, s.state_dim = 128, s.rank = 4, s.chunk = 16, s.psiv = psiv;
    const int64_t B = 2, S = 4096, M = B * S;
    const Recipe r = m_recipe(s);
    ParamStore<float> layout;
    auto cpu = make_block<float>(BlockKind::Mamba, r, layout, "layers.0.", s.chunk);  // declares the layout only
    layout.finalize();
    const auto n = static_cast<std::size_t>(layout.numel());
    std::vector<float> master(n);
    HostRng rng(5);
    for (const auto& sp : layout.specs)
      for (int64_t i = 0; i < sp.numel; ++i) {
        float& p = master[static_cast<std::size_t>(sp.offset + i)];
        switch (sp.init) {
          case Init::normal: p = static_cast<float>(0.02 * rng.normal()); break;
          case Init::normal_scaled_out: p = static_cast<float>(0.01 * rng.normal()); break;
          case Init::mamba_dt_bias: p = static_cast<float>(std::log(std::expm1(rng.uniform(1e-3, 0.1)))); break;
          case Init::constant: p = static_cast<float>(sp.init_value); break;
          default: p = 1.0f; break;
        }
      }
    std::vector<double> md(master.begin(), master.end());
    DeviceArray<float> d_master(master), d_grad(n);
    DeviceArray<uint16_t> d_shadow(to_bf16_bits(md));
    MEGACPP_CUDA_CHECK(cudaMemset(d_grad.get(), 0, n * sizeof(float)));
    cuda_backend::DeviceParams dp;
    dp.layout = &layout, dp.master = d_master.get(), dp.grad = d_grad.get();
    dp.shadow = reinterpret_cast<cuda_backend::bf16*>(d_shadow.get());
    cuda_backend::DeviceArena arena;
    cuda_backend::BlockBuild bb;
    bb.recipe = &r, bb.params = &dp, bb.arena = &arena, bb.prefix = "layers.0.", bb.max_tokens = M, bb.seq_len = S;
    auto blk = cuda_backend::make_device_block(BlockKind::Mamba, bb);
    arena.commit();
    DeviceArray<uint16_t> d_x(to_bf16_bits(random_normal(static_cast<std::size_t>(M * s.hidden), 11))),
        d_dy(to_bf16_bits(random_normal(static_cast<std::size_t>(M * s.hidden), 12))),
        d_y(static_cast<std::size_t>(M * s.hidden)), d_dx(static_cast<std::size_t>(M * s.hidden));
    auto* x = reinterpret_cast<const cuda_backend::bf16*>(d_x.get());
    auto* dy = reinterpret_cast<const cuda_backend::bf16*>(d_dy.get());
    auto* y = reinterpret_cast<cuda_backend::bf16*>(d_y.get());
    auto* dx = reinterpret_cast<cuda_backend::bf16*>(d_dx.get());
    const TimingStats tf = time_gpu([&] { blk->forward(x, y, B, S, nullptr); }, 5, 20);
    const TimingStats tb = time_gpu([&] { blk->backward(dy, dx, B, S, nullptr); }, 5, 20);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("M block timing: hidden=%d P=%d N=%d R=%d G=%d chunk=%d B=%lld S=%lld psiv_cache=%d  record=%s\n"
                "  forward  median %.3f ms (min %.3f, max %.3f, %d runs)\n"
                "  backward median %.3f ms (min %.3f, max %.3f, %d runs)\n"
                "  arena: persistent %.1f MiB, scratch %.1f MiB\n",
                s.hidden, s.head_dim, s.state_dim, s.rank, s.ngroups, s.chunk, static_cast<long long>(B),
                static_cast<long long>(S), psiv ? 1 : 0, blk->record().dump().c_str(), tf.median_ms, tf.min_ms,
                tf.max_ms, tf.runs, tb.median_ms, tb.min_ms, tb.max_ms, tb.runs,
                static_cast<double>(arena.persistent_bytes()) / 1048576.0,
                static_cast<double>(arena.scratch_bytes()) / 1048576.0);
    // the timed outputs must be finite (a block that wrote nothing would time fast)
    const auto yh = d_y.download();
    std::size_t bad = 0;
    for (uint16_t v : yh) bad += ((v & 0x7f80u) == 0x7f80u);
    EXPECT_EQ(bad, 0u);
  }
}

}  // namespace
}  // namespace megacpp::test
