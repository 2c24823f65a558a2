// The E letter on the CUDA backend against its float64 CPU twin (engine/model/moe_block.cpp): both see the
// same bf16-rounded weights, x and dy; the GPU computes in bf16 with fp32 accumulation.
//
// 1. The harness (block_compare): y, dx and every parameter gradient (accumulated onto a random start),
//    bitwise rerun, for E=8, top_k=2, ffn 128, shared expert 128 and 0, swiglu and relu2, softmax and
//    sigmoid scores, capacity_factor 0 (dropless) and 1.0 (drops), both dispatch paths (features.fused_moe).
//    The harness runs with aux_scale = 1 and does not look at the auxiliary losses.
// 2. Our own twin comparison (below): the auxiliary-loss values (aux, z), tokens per expert and the dropped
//    fraction of the forward, and the gradients with set_aux_scale(s ≠ 1) and large aux/z coefficients with
//    a small dy, so that the auxiliary terms dominate the router gradient (the test first checks, on the CPU,
//    that s = 2.5 and s = 1 give router gradients that differ by far more than the tolerance).
//    Router margins: both sides route from identical bf16 x and Wr; the only difference in the logits is fp32
//    vs float64 accumulation of a 128-term dot product (~1e-6 absolute here), so a top-k choice can flip only
//    when the K-th and (K+1)-th logits of a token are closer than that. Our comparison computes every token's
//    gap from the float64 logits and requires it to exceed the worst-case fp32 error bound of the two logits
//    (2·γ_H·Σ|x·w| + 1e-5 for the fp32 scores; a guard on the test's inputs: a smaller gap fails with that
//    message, not as a confusing mismatch). The router std (0.1 over
//    H = 128 → logits ~N(0, 1.1²)) keeps the gaps clear. The harness cases use init_std 0.05 (logits
//    ~N(0, 0.57²)); a flip there would show as one token's y being off by O(1) relative (max_rel fails).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "engine/cuda/device_block.hpp"
#include "engine/model/block.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/common/metrics.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/engine/cuda/block_compare.hpp"

namespace megacpp::test {
namespace {

struct MoeCase {
  std::string act = "swiglu";
  int shared = 128;
  std::string score = "softmax";
  double cf = 0.0;
  std::string path = "fused";
  double aux_coef = 0.01, z_coef = 0.001;
  double init_std = 0.05;
};

std::string case_name(const MoeCase& c) {
  char b[160];
  std::snprintf(b, sizeof b, "E-%s-S%d-%s-cf%.2g-%s", c.act.c_str(), c.shared, c.score.c_str(), c.cf, c.path.c_str());
  return b;
}

Recipe moe_recipe(const MoeCase& c) {
  char y[1024];
  std::snprintf(y, sizeof y,
                "model:\n  vocab: 64\n  hidden: 128\n  depth: 1\n  pattern: E\n  init_std: %g\n  moe:\n"
                "    experts: 8\n    top_k: 2\n    ffn_hidden: 128\n    shared_expert_hidden: %d\n"
                "    activation: %s\n    score: %s\n    capacity_factor: %g\n    aux_loss_coef: %g\n"
                "    z_loss_coef: %g\nfeatures:\n  fused_moe: %s\n",
                c.init_std, c.shared, c.act.c_str(), c.score.c_str(), c.cf, c.aux_coef, c.z_coef, c.path.c_str());
  return block_test_recipe(case_name(c), y);
}

// ---- 1. the harness -------------------------------------------------------------------------------------
void harness_case(const MoeCase& c, uint64_t seed = 1) {
  BlockCompareOptions o;  // B 2, S 128, tolerances y 0.02, dx/grads 0.03
  o.seed = seed;
  const auto r = compare_device_block(moe_recipe(c), BlockKind::Moe, o);
  std::printf("[%s seed %llu]\n%s\n", case_name(c).c_str(), static_cast<unsigned long long>(seed), r.table().c_str());
  EXPECT_TRUE(r.pass()) << case_name(c);
}

TEST(CudaMoe, SwigluSharedBothPaths) {
  MEGACPP_REQUIRE_GPU();
  for (const char* p : {"fused", "standard"}) {
    MoeCase c;
    c.path = p;
    harness_case(c, 1);
    harness_case(c, 2);
  }
}

TEST(CudaMoe, Relu2NoSharedBothPaths) {
  MEGACPP_REQUIRE_GPU();
  for (const char* p : {"fused", "standard"}) {
    MoeCase c;
    c.act = "relu2", c.shared = 0, c.path = p;
    harness_case(c);
  }
}

TEST(CudaMoe, Relu2SharedSigmoidBothPaths) {
  MEGACPP_REQUIRE_GPU();
  for (const char* p : {"fused", "standard"}) {
    MoeCase c;
    c.act = "relu2", c.score = "sigmoid", c.path = p;
    harness_case(c);
  }
}

TEST(CudaMoe, CapacityDropsBothPaths) {
  MEGACPP_REQUIRE_GPU();
  for (const char* p : {"fused", "standard"}) {
    MoeCase c;
    c.cf = 1.0, c.path = p;  // C = ceil(1.0 · 256·2 / 8) = 64 slots per expert: the busier experts drop
    harness_case(c);
  }
}

// ---- 2. aux / z losses and set_aux_scale against the twin ---------------------------------------------
struct TwinResult {
  std::vector<TensorMetric> metrics;
  AuxLosses cpu, gpu;
  double min_gap = 0;       // min over tokens of (K-th − (K+1)-th largest logit), float64
  double min_gap_ratio = 0; // min over tokens of gap / (worst-case fp32 logit error bound of that token)
  double scale_effect = 0;  // max|g_router(s) − g_router(1)| / max|g_router(s)| on the CPU
  nlohmann::json record;
};

struct CpuSide {
  Recipe r;
  ParamStore<double> ps;
  std::vector<double> g0, x, dy, y_ref, dx_ref;
  TwinResult out;
};

// The CPU twin's side (float64) of the comparison: inputs, margins, the scale-sensitivity check, references.
void cpu_side(const MoeCase& c, double aux_scale, uint64_t seed, CpuSide& cs) {
  const int64_t B = 2, S = 128, H = 128, M = B * S;
  const std::string prefix = "layers.0.";
  cs.r = moe_recipe(c);
  const Recipe& r = cs.r;
  ParamStore<double>& ps = cs.ps;
  auto cpu = make_block<double>(BlockKind::Moe, r, ps, prefix, M);
  ps.finalize();
  cpu->bind(ps);
  HostRng rng(seed * 104729 + 3);
  for (auto& s : ps.specs) {
    const bool router = s.name == prefix + "moe.router";
    const double sd = router ? 0.1 : 0.05;
    for (int64_t i = 0; i < s.numel; ++i)
      ps.data[static_cast<std::size_t>(s.offset + i)] = round_to_bf16(sd * rng.normal());
  }
  std::vector<double>& g0 = cs.g0;
  g0.resize(static_cast<std::size_t>(ps.numel()));
  for (auto& g : g0) g = static_cast<float>(0.01 * rng.normal());
  std::vector<double>&x = cs.x, &dy = cs.dy;
  x.resize(static_cast<std::size_t>(M * H)), dy.resize(x.size());
  for (auto& v : x) v = round_to_bf16(rng.normal());
  for (auto& v : dy) v = round_to_bf16(0.01 * rng.normal());  // small: the auxiliary terms matter

  TwinResult& out = cs.out;
  // Router margins from the float64 logits.
  {
    const int ri = ps.find(prefix + "moe.router");
    const double* wr = ps.param(ri);
    const int64_t E = r.model.moe.experts, K = r.model.moe.top_k;
    out.min_gap = out.min_gap_ratio = 1e300;
    // |fl32(z) − z| ≤ γ_H · Σ_h |x_h w_eh| (any summation order, γ_H = H·2⁻²⁴/(1 − H·2⁻²⁴)); two logits may
    // err, plus 1e-5 for the fp32 softmax/sigmoid (monotone; a few ulp of the scores).
    const double gamma = H * std::ldexp(1.0, -24) / (1 - H * std::ldexp(1.0, -24));
    for (int64_t t = 0; t < M; ++t) {
      std::vector<double> z(static_cast<std::size_t>(E));
      double amax = 0;
      for (int64_t e = 0; e < E; ++e) {
        double a = 0, ab = 0;
        for (int64_t h = 0; h < H; ++h) a += x[t * H + h] * wr[e * H + h], ab += std::abs(x[t * H + h] * wr[e * H + h]);
        z[static_cast<std::size_t>(e)] = a;
        amax = std::max(amax, ab);
      }
      std::sort(z.begin(), z.end(), [](double a, double b) { return a > b; });
      const double gap = z[static_cast<std::size_t>(K - 1)] - z[static_cast<std::size_t>(K)];
      out.min_gap = std::min(out.min_gap, gap);
      out.min_gap_ratio = std::min(out.min_gap_ratio, gap / (2 * gamma * amax + 1e-5));
    }
  }
  // CPU twin, at scale 1 (the sensitivity check) and at aux_scale.
  std::vector<double>&y_ref = cs.y_ref, &dx_ref = cs.dx_ref;
  y_ref.resize(x.size()), dx_ref.resize(x.size());
  const int ri = ps.find(prefix + "moe.router");
  const auto& rs = ps.spec(ri);
  std::vector<double> g_router_1;
  {
    ps.grads = g0;
    cpu->set_aux_scale(1.0);
    cpu->forward(x.data(), y_ref.data(), B, S);
    cpu->backward(dy.data(), dx_ref.data(), B, S);
    g_router_1.assign(ps.grads.begin() + rs.offset, ps.grads.begin() + rs.offset + rs.numel);
  }
  ps.grads = g0;
  cpu->set_aux_scale(aux_scale);
  cpu->forward(x.data(), y_ref.data(), B, S);
  cpu->backward(dy.data(), dx_ref.data(), B, S);
  out.cpu = cpu->aux_losses();
  {
    double num = 0, den = 0;
    for (int64_t i = 0; i < rs.numel; ++i) {
      const double a = ps.grads[static_cast<std::size_t>(rs.offset + i)];
      num = std::max(num, std::abs(a - g_router_1[static_cast<std::size_t>(i)]));
      den = std::max(den, std::abs(a - g0[static_cast<std::size_t>(rs.offset + i)]));
    }
    out.scale_effect = den > 0 ? num / den : 0;
  }

}

TwinResult twin_compare(const MoeCase& c, double aux_scale, uint64_t seed) {
  const int64_t B = 2, S = 128, M = B * S;
  const std::string prefix = "layers.0.";
  CpuSide cs;
  cpu_side(c, aux_scale, seed, cs);
  const Recipe& r = cs.r;
  ParamStore<double>& ps = cs.ps;
  const auto &g0 = cs.g0, &x = cs.x, &dy = cs.dy, &y_ref = cs.y_ref, &dx_ref = cs.dx_ref;
  TwinResult out = cs.out;
  // Device side: the same layout, fp32 master, bf16 shadow, fp32 grads starting at g0.
  ParamStore<float> layout;
  for (const auto& s : ps.specs) layout.add(s.name, s.shape, s.init, s.decay, s.init_value);
  layout.finalize();
  const auto n = static_cast<std::size_t>(ps.numel());
  std::vector<float> master(n), grad0(n);
  for (std::size_t i = 0; i < n; ++i) master[i] = static_cast<float>(ps.data[i]), grad0[i] = static_cast<float>(g0[i]);
  DeviceArray<float> d_master(master), d_grad(grad0);
  DeviceArray<uint16_t> d_shadow(to_bf16_bits(ps.data));
  cuda_backend::DeviceParams dp;
  dp.layout = &layout, dp.master = d_master.get(), dp.grad = d_grad.get();
  dp.shadow = reinterpret_cast<cuda_backend::bf16*>(d_shadow.get());
  cuda_backend::DeviceArena arena;
  cuda_backend::BlockBuild bb;
  bb.recipe = &r, bb.params = &dp, bb.arena = &arena, bb.prefix = prefix, bb.max_tokens = M, bb.seq_len = S;
  auto dev = cuda_backend::make_device_block(BlockKind::Moe, bb);
  arena.commit();
  DeviceArray<uint16_t> d_x(to_bf16_bits(x)), d_dy(to_bf16_bits(dy)), d_y(x.size()), d_dx(x.size());
  MEGACPP_CUDA_CHECK(cudaMemset(d_y.get(), 0xFF, x.size() * 2));
  MEGACPP_CUDA_CHECK(cudaMemset(d_dx.get(), 0xFF, x.size() * 2));
  cudaStream_t st = nullptr;
  MEGACPP_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  dev->set_aux_scale(aux_scale);
  dev->forward(reinterpret_cast<const cuda_backend::bf16*>(d_x.get()), reinterpret_cast<cuda_backend::bf16*>(d_y.get()),
               B, S, st);
  dev->backward(reinterpret_cast<const cuda_backend::bf16*>(d_dy.get()),
                reinterpret_cast<cuda_backend::bf16*>(d_dx.get()), B, S, st);
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st));
  MEGACPP_CUDA_CHECK(cudaStreamDestroy(st));
  out.gpu = dev->aux_losses();
  out.record = dev->record();
  std::vector<uint16_t> hy(x.size()), hdx(x.size());
  MEGACPP_CUDA_CHECK(cudaMemcpy(hy.data(), d_y.get(), hy.size() * 2, cudaMemcpyDeviceToHost));
  MEGACPP_CUDA_CHECK(cudaMemcpy(hdx.data(), d_dx.get(), hdx.size() * 2, cudaMemcpyDeviceToHost));
  const auto g = d_grad.download();
  out.metrics.push_back(compare_tensors("y", from_bf16_bits(hy), y_ref, 0.02, 0.01));
  out.metrics.push_back(compare_tensors("dx", from_bf16_bits(hdx), dx_ref, 0.03, 0.01));
  for (const auto& s : ps.specs) {
    std::vector<double> ours(static_cast<std::size_t>(s.numel)), ref(ours.size());
    for (int64_t i = 0; i < s.numel; ++i) {
      const auto k = static_cast<std::size_t>(s.offset + i);
      ours[static_cast<std::size_t>(i)] = static_cast<double>(g[k]) - static_cast<double>(grad0[k]);
      ref[static_cast<std::size_t>(i)] = ps.grads[k] - g0[k];
    }
    out.metrics.push_back(compare_tensors("grad " + s.name.substr(prefix.size()), ours, ref, 0.03, 0.01));
  }
  return out;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

void aux_case(const MoeCase& c, double aux_scale, uint64_t seed) {
  const TwinResult t = twin_compare(c, aux_scale, seed);
  std::printf("[%s aux_coef %g z_coef %g aux_scale %g seed %llu] min router gap %.3e (%.1fx the fp32 error bound), scale effect on CPU router grad "
              "%.3f\n%s\n",
              case_name(c).c_str(), c.aux_coef, c.z_coef, aux_scale, static_cast<unsigned long long>(seed), t.min_gap,
              t.min_gap_ratio, t.scale_effect, format_metric_table(t.metrics).c_str());
  std::printf("  aux: cpu %.9g gpu %.9g (rel %.2e) | z: cpu %.9g gpu %.9g (rel %.2e) | dropped: cpu %.6f gpu %.6f\n",
              t.cpu.aux, t.gpu.aux, rel(t.gpu.aux, t.cpu.aux), t.cpu.z, t.gpu.z, rel(t.gpu.z, t.cpu.z),
              t.cpu.dropped_frac, t.gpu.dropped_frac);
  std::string tpe_c, tpe_g;
  for (auto v : t.cpu.tokens_per_expert) tpe_c += std::to_string(v) + " ";
  for (auto v : t.gpu.tokens_per_expert) tpe_g += std::to_string(v) + " ";
  std::printf("  tokens/expert: cpu [%s] gpu [%s]\n  record: %s\n", tpe_c.c_str(), tpe_g.c_str(), t.record.dump().c_str());
  ASSERT_GT(t.min_gap_ratio, 1.0) << "test inputs: a token's top-k logits are too close for a fair fp32-vs-fp64 routing "
                                "comparison (pick another seed)";
  EXPECT_GT(t.scale_effect, 0.3) << "the auxiliary terms must dominate the router gradient for this check to bite";
  for (const auto& m : t.metrics) EXPECT_TRUE(m.pass()) << m.name;
  EXPECT_LT(rel(t.gpu.aux, t.cpu.aux), 1e-4);
  EXPECT_LT(rel(t.gpu.z, t.cpu.z), 1e-4);
  EXPECT_EQ(t.gpu.tokens_per_expert, t.cpu.tokens_per_expert);
  EXPECT_DOUBLE_EQ(t.gpu.dropped_frac, t.cpu.dropped_frac);
  EXPECT_EQ(t.record.value("path", ""), c.path);
  EXPECT_EQ(t.record.value("requested", ""), c.path);
}

TEST(CudaMoe, AuxLossesAndAuxScaleMatchCpu) {
  MEGACPP_REQUIRE_GPU();
  for (const char* p : {"fused", "standard"}) {
    MoeCase c;
    c.path = p, c.aux_coef = 5.0, c.z_coef = 1.0;
    aux_case(c, 2.5, 11);
    MoeCase d = c;
    d.act = "relu2", d.shared = 0, d.score = "sigmoid", d.cf = 1.0;
    aux_case(d, 0.4, 12);
  }
}

// ---- refusals -----------------------------------------------------------------------------------------
TEST(CudaMoe, RefusesOtherTokenCountsAndRelu2SharedExpert) {
  MEGACPP_REQUIRE_GPU();
  MoeCase c;
  const Recipe r = moe_recipe(c);
  ParamStore<float> layout;
  {
    ParamStore<double> ps;
    auto cpu = make_block<double>(BlockKind::Moe, r, ps, "layers.0.", 256);
    for (const auto& s : ps.specs) layout.add(s.name, s.shape, s.init, s.decay, s.init_value);
  }
  layout.finalize();
  DeviceArray<float> d_master(static_cast<std::size_t>(layout.numel())), d_grad(static_cast<std::size_t>(layout.numel()));
  DeviceArray<uint16_t> d_shadow(static_cast<std::size_t>(layout.numel()));
  cuda_backend::DeviceParams dp;
  dp.layout = &layout, dp.master = d_master.get(), dp.grad = d_grad.get();
  dp.shadow = reinterpret_cast<cuda_backend::bf16*>(d_shadow.get());
  cuda_backend::DeviceArena arena;
  cuda_backend::BlockBuild bb;
  bb.recipe = &r, bb.params = &dp, bb.arena = &arena, bb.prefix = "layers.0.", bb.max_tokens = 256, bb.seq_len = 128;
  auto dev = cuda_backend::make_device_block(BlockKind::Moe, bb);
  arena.commit();
  DeviceArray<uint16_t> d_x(128 * 128), d_y(128 * 128);
  try {
    dev->forward(reinterpret_cast<const cuda_backend::bf16*>(d_x.get()), reinterpret_cast<cuda_backend::bf16*>(d_y.get()),
                 1, 128, nullptr);
    ADD_FAILURE() << "B·S = 128 with max_tokens 256 was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  Recipe r2 = r;
  r2.model.moe.shared_activation = "relu2";
  bb.recipe = &r2;
  try {
    cuda_backend::make_device_block(BlockKind::Moe, bb);
    ADD_FAILURE() << "shared_activation relu2 was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("model.moe.shared_activation"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace megacpp::test
