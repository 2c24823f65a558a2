// test_m2rnn_gpu.cpp — the CUDA M²RNN scan forward/backward against the float64 reference on fresh
// random inputs (outputs poisoned first), over shapes, K-block counts, sequence lengths and clip
// modes; bitwise determinism across runs; a sequence in two halves with the carried state; q/k/v read
// through token strides (pointing into a conv-output-like buffer); refusal of unsupported shapes.
// Every GPU test skips cleanly without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "kernels/common/host_rng.hpp"
#include "kernels/m2rnn/m2rnn_ops.hpp"
#include "kernels/m2rnn/m2rnn_ref.hpp"
#include "tests/common/test_paths.hpp"

#if MEGACPP_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/common/device_array.hpp"
#include "kernels/m2rnn/m2rnn_scan.hpp"
#endif

namespace megacpp::m2rnn {
namespace {

OpShape shp(int B, int S, int N, int K, int V = 16) {
  return {{"B", B}, {"S", S}, {"heads", N}, {"key_dim", K}, {"value_dim", V}};
}

void expect_pass(const CheckResult& r) {
  std::printf("%s\n%s", r.note.c_str(), format_metric_table(r.tensors).c_str());
  EXPECT_TRUE(r.pass()) << r.note << "\n" << format_metric_table(r.tensors);
}

TEST(M2rnnGpu, ForwardMatchesReference) {
  MEGACPP_REQUIRE_GPU();
  for (const char* variant : {"0", "1"}) {
    OpOptions opt;
    opt.flags["variant"] = variant;
    for (const auto& s : {shp(2, 64, 3, 64), shp(1, 96, 2, 32), shp(3, 32, 5, 16), shp(1, 128, 2, 48),
                          shp(1, 1024, 2, 64), shp(1, 4096, 2, 64)})
      for (uint64_t seed : {1ull, 2ull}) expect_pass(check_fwd(s, seed, opt));
  }
}

TEST(M2rnnGpu, BackwardMatchesReferenceAllClipModes) {
  MEGACPP_REQUIRE_GPU();
  for (const char* variant : {"0", "1"}) {
    for (const char* clip : {"off", "kernel", "total"}) {
      OpOptions opt;
      opt.flags["clip"] = clip;
      opt.flags["variant"] = variant;
      for (const auto& s : {shp(2, 64, 3, 64), shp(1, 96, 2, 32), shp(3, 32, 5, 16), shp(1, 128, 2, 48)})
        expect_pass(check_bwd(s, 3, opt));
    }
    OpOptions opt;
    opt.flags["variant"] = variant;
    for (const auto& s : {shp(1, 1024, 2, 64), shp(1, 4096, 2, 64)}) expect_pass(check_bwd(s, 4, opt));
  }
}

#if MEGACPP_WITH_CUDA
struct Inputs {
  ScanShape s;
  std::vector<uint16_t> q, k, v;
  std::vector<float> f, W, D, dout;
};
Inputs make_inputs(ScanShape s, uint64_t seed) {
  HostRng r(seed);
  Inputs in;
  in.s = s;
  auto bf = [&](std::size_t n, double sd) {
    std::vector<double> d(n);
    for (auto& x : d) x = sd * r.normal();
    return to_bf16_bits(d);
  };
  in.q = bf(s.q_size(), 0.5);
  in.k = bf(s.k_size(), 0.7);
  in.v = bf(s.v_size(), 0.7);
  in.f.resize(s.f_size());
  for (auto& x : in.f) x = float(r.uniform(0.3, 0.999));
  in.W.resize(s.w_size());
  for (std::size_t i = 0; i < in.W.size(); ++i) in.W[i] = float(((i / s.V) % s.V == i % s.V ? 0.7 : 0.0) + 0.05 * r.normal());
  in.D.resize(s.d_size());
  for (auto& x : in.D) x = float(1.0 + 0.3 * r.normal());
  in.dout.resize(s.v_size());
  for (auto& x : in.dout) x = float(r.normal());
  return in;
}
template <typename T>
std::vector<T> tok_slice(const std::vector<T>& t, int B, int S, std::size_t per, int t0, int len) {
  std::vector<T> r;
  for (int b = 0; b < B; ++b)
    r.insert(r.end(), t.begin() + (std::size_t(b) * S + t0) * per, t.begin() + (std::size_t(b) * S + t0 + len) * per);
  return r;
}

struct GpuRun {
  std::vector<float> o, hT, dq, dk, dv, df, dW, dD, dh0;
};
GpuRun run_gpu(const Inputs& in, const std::vector<float>* h0, const std::vector<float>* dhT, Clip clip) {
  const ScanShape& s = in.s;
  DeviceArray<uint16_t> q(in.q), k(in.k), v(in.v);
  DeviceArray<float> f(in.f), W(in.W), D(in.D), dout(in.dout), o(s.v_size()), hT(s.h_size()),
      ck(gpu_checkpoint_floats(s));
  DeviceArray<float> dh0v, dhTv;
  if (h0) dh0v = DeviceArray<float>(*h0);
  if (dhT) dhTv = DeviceArray<float>(*dhT);
  GpuScanArgs a;
  a.shape = s;
  a.q = q.get();
  a.k = k.get();
  a.v = v.get();
  a.f = f.get();
  a.W = W.get();
  a.D = D.get();
  a.h0 = h0 ? dh0v.get() : nullptr;
  o.poison();
  hT.poison();
  scan_forward_gpu(a, o.get(), hT.get(), ck.get());
  DeviceArray<float> dq(s.q_size()), dk(s.k_size()), dv(s.v_size()), df(s.f_size()), dW(s.w_size()),
      dD(s.d_size()), dh0(s.h_size()), ws(gpu_bwd_workspace_floats(s));
  for (auto* d : {&dq, &dk, &dv, &df, &dW, &dD, &dh0, &ws}) d->poison();
  scan_backward_gpu(a, ck.get(), dout.get(), dhT ? dhTv.get() : nullptr, clip, 1.0f,
                    {dq.get(), dk.get(), dv.get(), df.get(), dW.get(), dD.get(), dh0.get()}, ws.get());
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  return {o.download(), hT.download(), dq.download(), dk.download(), dv.download(), df.download(),
          dW.download(), dD.download(), dh0.download()};
}
#endif

TEST(M2rnnGpu, BitwiseDeterministicAcrossRuns) {
  MEGACPP_REQUIRE_GPU();
#if MEGACPP_WITH_CUDA
  const Inputs in = make_inputs({2, 256, 6, 64, 16, 1, 1}, 77);
  const GpuRun a = run_gpu(in, nullptr, nullptr, Clip::Kernel), b = run_gpu(in, nullptr, nullptr, Clip::Kernel);
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(a.o, b.o));
  EXPECT_TRUE(same(a.dq, b.dq));
  EXPECT_TRUE(same(a.dk, b.dk));
  EXPECT_TRUE(same(a.dv, b.dv));
  EXPECT_TRUE(same(a.df, b.df));
  EXPECT_TRUE(same(a.dW, b.dW));
  EXPECT_TRUE(same(a.dD, b.dD));
  EXPECT_TRUE(same(a.dh0, b.dh0));
#endif
}

TEST(M2rnnGpu, TwoHalvesWithCarriedStateEqualOnePass) {
  MEGACPP_REQUIRE_GPU();
#if MEGACPP_WITH_CUDA
  const ScanShape s{2, 256, 3, 64, 16, 1, 1};
  const Inputs full = make_inputs(s, 5);
  const int S1 = 96, S2 = s.S - S1;
  auto half = [&](int t0, int len) {
    Inputs h;
    h.s = s;
    h.s.S = len;
    h.q = tok_slice(full.q, s.B, s.S, std::size_t(s.K), t0, len);
    h.k = tok_slice(full.k, s.B, s.S, std::size_t(s.K), t0, len);
    h.v = tok_slice(full.v, s.B, s.S, std::size_t(s.N) * s.V, t0, len);
    h.f = tok_slice(full.f, s.B, s.S, std::size_t(s.N), t0, len);
    h.dout = tok_slice(full.dout, s.B, s.S, std::size_t(s.N) * s.V, t0, len);
    h.W = full.W;
    h.D = full.D;
    return h;
  };
  const GpuRun one = run_gpu(full, nullptr, nullptr, Clip::Off);
  const Inputs i1 = half(0, S1), i2 = half(S1, S2);
  const GpuRun r1f = run_gpu(i1, nullptr, nullptr, Clip::Off);
  const GpuRun r2 = run_gpu(i2, &r1f.hT, nullptr, Clip::Off);
  const GpuRun r1 = run_gpu(i1, nullptr, &r2.dh0, Clip::Off);  // the second half's dh0 seeds the first half
  // forward: bit-identical (the carried fp32 state is the state the single pass holds)
  const auto o1 = tok_slice(one.o, s.B, s.S, std::size_t(s.N) * s.V, 0, S1);
  const auto o2 = tok_slice(one.o, s.B, s.S, std::size_t(s.N) * s.V, S1, S2);
  EXPECT_EQ(std::memcmp(o1.data(), r1.o.data(), o1.size() * 4), 0);
  EXPECT_EQ(std::memcmp(o2.data(), r2.o.data(), o2.size() * 4), 0);
  EXPECT_EQ(std::memcmp(one.hT.data(), r2.hT.data(), one.hT.size() * 4), 0);
  // backward: same up to the order of the parameter-gradient sums
  auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0, d = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      m = std::max(m, std::fabs(double(b[i])));
      d = std::max(d, std::fabs(double(a[i]) - b[i]));
    }
    return d / std::max(m, 1e-30);
  };
  std::vector<float> dW(one.dW.size()), dD(one.dD.size());
  for (std::size_t i = 0; i < dW.size(); ++i) dW[i] = r1.dW[i] + r2.dW[i];
  for (std::size_t i = 0; i < dD.size(); ++i) dD[i] = r1.dD[i] + r2.dD[i];
  EXPECT_LT(rel(dW, one.dW), 1e-5);
  EXPECT_LT(rel(dD, one.dD), 1e-5);
  EXPECT_LT(rel(r1.dh0, one.dh0), 1e-5);
  EXPECT_LT(rel(r1.dv, tok_slice(one.dv, s.B, s.S, std::size_t(s.N) * s.V, 0, S1)), 1e-5);
  EXPECT_LT(rel(r2.dq, tok_slice(one.dq, s.B, s.S, std::size_t(s.K), S1, S2)), 1e-5);
#endif
}

TEST(M2rnnGpu, StridedInputsEqualPacked) {
  MEGACPP_REQUIRE_GPU();
#if MEGACPP_WITH_CUDA
  const ScanShape s{2, 64, 4, 64, 16, 1, 1};
  const Inputs in = make_inputs(s, 9);
  // conv-output-like buffer [B,S,C] with C = K + K + N·V: q | k | v
  const int C = s.K + s.K + s.N * s.V;
  std::vector<uint16_t> conv(std::size_t(s.B) * s.S * C);
  for (std::size_t t = 0; t < std::size_t(s.B) * s.S; ++t) {
    std::memcpy(&conv[t * C], &in.q[t * s.K], s.K * 2);
    std::memcpy(&conv[t * C + s.K], &in.k[t * s.K], s.K * 2);
    std::memcpy(&conv[t * C + 2 * s.K], &in.v[t * s.N * s.V], s.N * s.V * 2);
  }
  DeviceArray<uint16_t> dconv(conv);
  DeviceArray<float> f(in.f), W(in.W), D(in.D), o(s.v_size());
  GpuScanArgs a;
  a.shape = s;
  a.q = dconv.get();
  a.k = dconv.get() + s.K;
  a.v = dconv.get() + 2 * s.K;
  a.ld_q = a.ld_k = a.ld_v = C;
  a.f = f.get();
  a.W = W.get();
  a.D = D.get();
  o.poison();
  scan_forward_gpu(a, o.get(), nullptr, nullptr);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  const GpuRun packed = run_gpu(in, nullptr, nullptr, Clip::Off);
  const auto oh = o.download();
  EXPECT_EQ(std::memcmp(oh.data(), packed.o.data(), oh.size() * 4), 0);
#endif
}

TEST(M2rnnGpu, RefusesUnsupportedShapesNamingTheLimit) {
#if MEGACPP_WITH_CUDA
  alignas(16) static uint16_t dummy[64];
  static float fd[64];
  auto msg = [&](ScanShape s) -> std::string {
    GpuScanArgs a;
    a.shape = s;
    a.q = a.k = a.v = dummy;
    a.f = a.W = a.D = fd;
    try {
      gpu_validate(a);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(msg({1, 64, 2, 64, 32, 1, 1}).find("value_dim=32 not supported (supported: 16)"), std::string::npos);
  EXPECT_NE(msg({1, 64, 2, 128, 16, 1, 1}).find("key_dim=128 not supported (supported: 16, 32, 48, 64)"),
            std::string::npos);
  EXPECT_NE(msg({1, 100, 2, 64, 16, 1, 1}).find("S=100 not supported (must be a multiple of 32)"), std::string::npos);
  EXPECT_EQ(msg({1, 64, 2, 64, 16, 1, 1}), "");
#else
  GTEST_SKIP() << "CPU-only build";
#endif
}

}  // namespace
}  // namespace megacpp::m2rnn
