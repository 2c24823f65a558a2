// test_train_ops_gpu.cpp — GPU tests of kernels/train_ops/ (skip without a GPU):
//   * every train_ops op case (the same check() that test_op_registry and `megacpp sweep` run) on its
//     test shapes and on a few larger shapes, against the float64 reference;
//   * determinism: each backward reduction run twice on the same inputs gives bitwise-equal results
//     (rmsnorm dw/dx, embedding dwte, lm_head_ce loss/lse/dx/dW, grad_norm, linear dW, adamw).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tests/common/test_paths.hpp"

#if MEGACPP_WITH_CUDA
#include "kernels/common/device_array.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/registry/op_registry.hpp"
#include "kernels/train_ops/act.hpp"
#include "kernels/train_ops/adamw.hpp"
#include "kernels/train_ops/embedding.hpp"
#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/lm_head_ce.hpp"
#include "kernels/train_ops/rmsnorm.hpp"

namespace megacpp {
void register_train_ops_ops(OpRegistry& r);
namespace train_ops {
namespace {

using DBits = DeviceArray<uint16_t>;
bf16* B(const DBits& a) { return reinterpret_cast<bf16*>(a.get()); }
DBits rand_bits(std::size_t n, uint64_t seed, double sd) {
  HostRng r(seed);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = float_to_bf16_bits(float(sd * r.normal()));
  return DBits(v);
}
std::vector<float> rand_f(std::size_t n, uint64_t seed, double sd) {
  HostRng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(sd * r.normal());
  return v;
}
template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
const OpRegistry& local_registry() {
  static const OpRegistry reg = [] {
    OpRegistry r;
    register_train_ops_ops(r);
    return r;
  }();
  return reg;
}
void run_check(const std::string& name, const OpShape& s, uint64_t seed) {
  const OpDef* op = local_registry().find(name);
  ASSERT_NE(op, nullptr) << name;
  const CheckResult r = op->check(s, seed, OpOptions{});
  EXPECT_TRUE(r.pass()) << name << " [" << shape_to_string(s) << "] seed " << seed << "\n"
                        << r.note << "\n" << format_metric_table(r.tensors);
}

TEST(TrainOpsGpu, EveryOpMatchesTheReferenceOnItsTestShapes) {
  MEGACPP_REQUIRE_GPU();
  for (const auto& op : local_registry().all())
    for (const auto& s : op.test_shapes())
      for (uint64_t seed : {21ull, 22ull}) run_check(op.name, s, seed);
}

TEST(TrainOpsGpu, LargerShapesMatchTheReference) {
  MEGACPP_REQUIRE_GPU();
  run_check("linear_fwd", {{"M", 512}, {"K", 1024}, {"N", 384}}, 31);
  run_check("linear_bwd", {{"M", 512}, {"K", 1024}, {"N", 384}}, 32);
  run_check("rmsnorm_bwd", {{"M", 1000}, {"C", 3584}, {"dres", 1}}, 33);
  run_check("residual_rmsnorm_fwd", {{"M", 1000}, {"C", 3584}}, 34);
  run_check("embedding_bwd", {{"M", 4096}, {"V", 300}, {"C", 3584}}, 35);
  run_check("lm_head_ce_fwd", {{"M", 256}, {"C", 512}, {"V", 4096}, {"chunk", 1024}}, 36);
  run_check("lm_head_ce_bwd", {{"M", 256}, {"C", 512}, {"V", 4096}, {"chunk", 1024}}, 37);
  run_check("grad_norm", {{"n", 50000001}}, 38);
}

TEST(TrainOpsGpu, RmsnormBackwardIsBitwiseDeterministic) {
  MEGACPP_REQUIRE_GPU();
  const int64_t M = 4099, C = 3584;
  DBits x = rand_bits(M * C, 1, 1.0), w = rand_bits(C, 2, 1.0), dy = rand_bits(M * C, 3, 1.0), dx(M * C);
  DeviceArray<float> rstd(M), ws(rmsnorm_bwd_workspace_floats(M, C));
  DBits y(M * C);
  rmsnorm_fwd(B(x), B(w), B(y), rstd.get(), M, C, 1e-5f, nullptr);
  std::vector<std::vector<float>> dws;
  std::vector<std::vector<uint16_t>> dxs;
  for (int run = 0; run < 2; ++run) {
    DeviceArray<float> dw(std::vector<float>(C, 0.25f));
    dx.poison();
    rmsnorm_bwd(B(x), B(w), rstd.get(), B(dy), nullptr, B(dx), dw.get(), ws.get(), M, C, nullptr);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    dws.push_back(dw.download());
    dxs.push_back(dx.download());
  }
  EXPECT_TRUE(bitwise_equal(dws[0], dws[1]));
  EXPECT_TRUE(bitwise_equal(dxs[0], dxs[1]));
}

TEST(TrainOpsGpu, EmbeddingBackwardIsBitwiseDeterministic) {
  MEGACPP_REQUIRE_GPU();
  const int64_t M = 16384, V = 259, C = 512;
  HostRng r(4);
  std::vector<int32_t> tok(M);
  for (auto& t : tok) t = r.uniform() < 0.3 ? 32 : int32_t(r.uniform() * V);  // one very frequent token
  DeviceArray<int32_t> dt(tok);
  DBits dout = rand_bits(M * C, 5, 1.0);
  const std::size_t wsb = embedding_bwd_workspace_bytes(M);
  DeviceArray<char> ws(wsb);
  std::vector<std::vector<float>> outs;
  for (int run = 0; run < 2; ++run) {
    DeviceArray<float> dwte(std::vector<float>(V * C, 0.0f));
    ws.poison();
    embedding_bwd(dt.get(), B(dout), dwte.get(), M, V, C, ws.get(), wsb, nullptr);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    outs.push_back(dwte.download());
  }
  EXPECT_TRUE(bitwise_equal(outs[0], outs[1]));
}

TEST(TrainOpsGpu, LmHeadCeIsBitwiseDeterministic) {
  MEGACPP_REQUIRE_GPU();
  const int64_t M = 1024, C = 512, V = 8192, chunk = 2048;
  DBits x = rand_bits(M * C, 6, 1.0), W = rand_bits(V * C, 7, 0.1), dx(M * C);
  HostRng r(8);
  std::vector<int32_t> tgt(M);
  for (auto& t : tgt) t = r.uniform() < 0.1 ? -1 : int32_t(r.uniform() * V);
  DeviceArray<int32_t> dt(tgt);
  const std::size_t wsb = lm_head_ce_workspace_bytes(M, C, V, chunk);
  DeviceArray<char> ws(wsb);
  DeviceArray<float> lse(M);
  DeviceArray<double> loss(1);
  std::vector<std::vector<double>> losses;
  std::vector<std::vector<float>> lses, dWs;
  std::vector<std::vector<uint16_t>> dxs;
  for (int run = 0; run < 2; ++run) {
    DeviceArray<float> dW(std::vector<float>(V * C, 0.0f));
    lm_head_ce_fwd(B(x), B(W), dt.get(), M, C, V, chunk, lse.get(), loss.get(), ws.get(), wsb, nullptr);
    lm_head_ce_bwd(B(x), B(W), dt.get(), lse.get(), M, C, V, chunk, 1.0f / M, B(dx), dW.get(), ws.get(), wsb, nullptr);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    losses.push_back(loss.download());
    lses.push_back(lse.download());
    dWs.push_back(dW.download());
    dxs.push_back(dx.download());
  }
  EXPECT_TRUE(bitwise_equal(losses[0], losses[1]));
  EXPECT_TRUE(bitwise_equal(lses[0], lses[1]));
  EXPECT_TRUE(bitwise_equal(dWs[0], dWs[1]));
  EXPECT_TRUE(bitwise_equal(dxs[0], dxs[1]));
  EXPECT_GT(losses[0][0], 0.0);
}

TEST(TrainOpsGpu, GradNormLinearAndAdamwAreBitwiseDeterministic) {
  MEGACPP_REQUIRE_GPU();
  const int64_t n = 10000019;
  DeviceArray<float> g(rand_f(n, 9, 0.01));
  DeviceArray<double> ws(grad_norm_workspace_doubles(n)), nrm(1);
  DeviceArray<float> cs(1);
  std::vector<std::vector<double>> norms;
  std::vector<std::vector<float>> ps;
  for (int run = 0; run < 2; ++run) {
    grad_norm(g.get(), n, ws.get(), nrm.get(), cs.get(), 1.0f, nullptr);
    DeviceArray<float> p(rand_f(n, 10, 0.5)), m(std::vector<float>(n, 0.f)), v(std::vector<float>(n, 0.f));
    AdamWHyper h;
    h.lr = 1e-3;
    h.weight_decay = 0.1;
    adamw_step(p.get(), g.get(), m.get(), v.get(), nullptr, nullptr, n, h, cs.get(), nullptr);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    norms.push_back(nrm.download());
    ps.push_back(p.download());
  }
  EXPECT_TRUE(bitwise_equal(norms[0], norms[1]));
  EXPECT_TRUE(bitwise_equal(ps[0], ps[1]));

  const int64_t M = 4096, K = 1024, N = 768;
  DBits x = rand_bits(M * K, 11, 1.0), dy = rand_bits(M * N, 12, 1.0);
  std::vector<std::vector<float>> dWs;
  for (int run = 0; run < 2; ++run) {
    DeviceArray<float> dW(std::vector<float>(N * K, 0.0f));
    linear_bwd_dw(B(dy), B(x), dW.get(), M, K, N, nullptr);
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
    dWs.push_back(dW.download());
  }
  EXPECT_TRUE(bitwise_equal(dWs[0], dWs[1])) << gemm_plan_for(GemmDesc{true, false, N, K, M, N, K, K, GemmOut::f32}, 1.f);
}

TEST(TrainOpsGpu, BadArgumentsAreRefusedWithTheLimit) {
  MEGACPP_REQUIRE_GPU();
  DBits a(64 * 12);
  DeviceArray<float> r(64);
  try {
    rmsnorm_fwd(B(a), B(a), B(a), r.get(), 64, 12, 1e-5f, nullptr);
    FAIL() << "C=12 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("C=12"), std::string::npos) << e.what();
  }
  EXPECT_THROW(act_fwd(Act::swiglu, B(a), nullptr, B(a), 4, 16, 16, 16, nullptr), std::invalid_argument);
  EXPECT_THROW(lm_head_ce_fwd(B(a), B(a), nullptr, 8, 12, 64, 64, nullptr, nullptr, nullptr, 0, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace train_ops
}  // namespace megacpp
#else
TEST(TrainOpsGpu, SkippedInCpuOnlyBuild) { GTEST_SKIP() << "CPU-only build (MEGACPP_WITH_CUDA=OFF)"; }
#endif
