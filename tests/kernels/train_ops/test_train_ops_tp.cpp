// test_train_ops_tp.cpp — GPU tests of the tensor-parallel train_ops kernels (skip without a GPU):
//   * rmsnorm_tp (channels split over P ranks, statistics summed between the kernels) against the float64
//     RMSNorm over all channels (train_ops_ref rmsnorm_fwd / rmsnorm_bwd);
//   * lm_head_ce_vp (vocabulary split over P ranks: partial stats, combine, partial backward) against the
//     float64 fused LM head + CE over the whole vocabulary (train_ops_ref lm_head_ce), with ignored rows;
//   * both deterministic: a second run is bitwise equal.
// The P ranks are simulated on one GPU: each rank's kernels run on its slice, the "collective" (a sum or
// a concatenation) is done on the host in rank order, exactly what the model's all-reduce/all-gather do.
// Inputs are fresh random bf16 values; outputs are poisoned (NaN) first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "tests/common/test_paths.hpp"

#if MEGACPP_WITH_CUDA
#include "kernels/common/device_array.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/common/metrics.hpp"
#include "kernels/train_ops/lm_head_ce_vp.hpp"
#include "kernels/train_ops/rmsnorm.hpp"
#include "kernels/train_ops/rmsnorm_tp.hpp"
#include "kernels/train_ops/train_ops_ref.hpp"

namespace megacpp::train_ops {
namespace {

using Vec = std::vector<double>;
using DBits = DeviceArray<uint16_t>;
bf16* B(const DBits& a) { return reinterpret_cast<bf16*>(a.get()); }

Vec rand_bf16(std::size_t n, uint64_t seed, double sd) {
  Vec v = random_normal(n, seed, sd);
  for (auto& x : v) x = round_to_bf16(x);
  return v;
}
// columns [c0, c0 + n) of a row-major [M, C] matrix
Vec cols(const Vec& a, int64_t M, int64_t C, int64_t c0, int64_t n) {
  Vec o(static_cast<std::size_t>(M * n));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n; ++j) o[static_cast<std::size_t>(m * n + j)] = a[static_cast<std::size_t>(m * C + c0 + j)];
  return o;
}
void put_cols(Vec& a, const Vec& part, int64_t M, int64_t C, int64_t c0, int64_t n) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n; ++j) a[static_cast<std::size_t>(m * C + c0 + j)] = part[static_cast<std::size_t>(m * n + j)];
}
Vec to_d(const std::vector<float>& f) { return Vec(f.begin(), f.end()); }
void sync() { MEGACPP_CUDA_CHECK(cudaDeviceSynchronize()); }

struct NormOut {
  Vec y, dx, dw;
  std::vector<uint16_t> y_bits, dx_bits;
  std::vector<float> dw_raw;
};

NormOut run_rmsnorm_tp(const Vec& x, const Vec& w, const Vec& dy, int64_t M, int64_t C, int P, float eps) {
  const int64_t Cl = C / P;
  NormOut o;
  o.y.assign(static_cast<std::size_t>(M * C), 0), o.dx = o.y, o.dw.assign(static_cast<std::size_t>(C), 0);
  std::vector<DBits> xs, ws, dys;
  for (int q = 0; q < P; ++q) {
    xs.emplace_back(to_bf16_bits(cols(x, M, C, q * Cl, Cl)));
    ws.emplace_back(to_bf16_bits(Vec(w.begin() + q * Cl, w.begin() + (q + 1) * Cl)));
    dys.emplace_back(to_bf16_bits(cols(dy, M, C, q * Cl, Cl)));
  }
  // forward: partial Σx², summed in rank order (the all-reduce), then apply per rank
  std::vector<float> ss(static_cast<std::size_t>(M), 0.f);
  DeviceArray<float> ssd(static_cast<std::size_t>(M)), rstd(static_cast<std::size_t>(M)), dot(static_cast<std::size_t>(M));
  for (int q = 0; q < P; ++q) {
    ssd.poison();
    rmsnorm_tp_sumsq(B(xs[q]), ssd.get(), M, Cl, nullptr);
    const auto part = ssd.download();
    for (int64_t m = 0; m < M; ++m) ss[static_cast<std::size_t>(m)] += part[static_cast<std::size_t>(m)];
  }
  ssd.upload(ss);
  std::vector<float> dots(static_cast<std::size_t>(M), 0.f);
  std::vector<DBits> ys;
  for (int q = 0; q < P; ++q) {
    ys.emplace_back(static_cast<std::size_t>(M * Cl));
    ys.back().poison(), rstd.poison();
    rmsnorm_tp_apply(B(xs[q]), B(ws[q]), ssd.get(), B(ys.back()), rstd.get(), M, Cl, C, eps, nullptr);
    const auto yb = ys.back().download();
    put_cols(o.y, from_bf16_bits(yb), M, C, q * Cl, Cl);
    o.y_bits.insert(o.y_bits.end(), yb.begin(), yb.end());
    // backward statistics
    dot.poison();
    rmsnorm_tp_bwd_dot(B(xs[q]), B(ws[q]), B(dys[q]), dot.get(), M, Cl, nullptr);
    const auto part = dot.download();
    for (int64_t m = 0; m < M; ++m) dots[static_cast<std::size_t>(m)] += part[static_cast<std::size_t>(m)];
  }
  dot.upload(dots);
  DeviceArray<float> wsp(rmsnorm_bwd_workspace_floats(M, Cl));
  for (int q = 0; q < P; ++q) {
    DBits dx(static_cast<std::size_t>(M * Cl));
    dx.poison();
    DeviceArray<float> dw(std::vector<float>(static_cast<std::size_t>(Cl), 0.25f));  // accumulated onto 0.25
    rmsnorm_tp_bwd(B(xs[q]), B(ws[q]), rstd.get(), B(dys[q]), dot.get(), B(dx), dw.get(), wsp.get(), M, Cl, C, nullptr);
    const auto dxb = dx.download();
    put_cols(o.dx, from_bf16_bits(dxb), M, C, q * Cl, Cl);
    o.dx_bits.insert(o.dx_bits.end(), dxb.begin(), dxb.end());
    const auto dwq = dw.download();
    for (int64_t c = 0; c < Cl; ++c) o.dw[static_cast<std::size_t>(q * Cl + c)] = dwq[static_cast<std::size_t>(c)] - 0.25;
    o.dw_raw.insert(o.dw_raw.end(), dwq.begin(), dwq.end());
  }
  sync();
  return o;
}

TEST(TrainOpsTp, RmsnormChannelSplitMatchesTheFullNormInFloat64) {
  MEGACPP_REQUIRE_GPU();
  const float eps = 1e-5f;
  for (const auto& [M, C, P] : std::vector<std::tuple<int64_t, int64_t, int>>{{130, 64, 2}, {67, 256, 4}, {256, 128, 1}}) {
    const Vec x = rand_bf16(static_cast<std::size_t>(M * C), 11 + C, 1.0);
    const Vec w = rand_bf16(static_cast<std::size_t>(C), 12 + C, 0.5);
    const Vec dy = rand_bf16(static_cast<std::size_t>(M * C), 13 + C, 1.0);
    Vec y, rstd, dx, dw(static_cast<std::size_t>(C), 0.0);
    ref::rmsnorm_fwd(x, w, y, rstd, M, C, eps);
    ref::rmsnorm_bwd(x, w, rstd, dy, {}, dx, dw, M, C);
    const NormOut o = run_rmsnorm_tp(x, w, dy, M, C, P, eps);
    // bf16 outputs 1e-2, the fp32 dw 1e-5 (ops_train_ops.cpp's tolerances); ≤ 0.1 % of elements beyond them.
    const std::vector<TensorMetric> ms = {compare_tensors("y", o.y, y, 1e-2, 1e-3), compare_tensors("dx", o.dx, dx, 1e-2, 1e-3),
                                          compare_tensors("dw", o.dw, dw, 1e-5, 1e-3)};
    for (const auto& m : ms) EXPECT_TRUE(m.pass()) << "M=" << M << " C=" << C << " P=" << P << "\n" << format_metric_table(ms);
    const NormOut o2 = run_rmsnorm_tp(x, w, dy, M, C, P, eps);  // deterministic
    EXPECT_EQ(o.y_bits, o2.y_bits);
    EXPECT_EQ(o.dx_bits, o2.dx_bits);
    EXPECT_EQ(0, std::memcmp(o.dw_raw.data(), o2.dw_raw.data(), o.dw_raw.size() * sizeof(float)));
  }
}

// P = 1 is the plain kernel: bitwise the same forward and dx as rmsnorm_fwd / rmsnorm_bwd.
TEST(TrainOpsTp, RmsnormOneRankIsThePlainKernelBitForBit) {
  MEGACPP_REQUIRE_GPU();
  const int64_t M = 97, C = 192;
  const DBits x(to_bf16_bits(rand_bf16(static_cast<std::size_t>(M * C), 3, 1.0)));
  const DBits w(to_bf16_bits(rand_bf16(static_cast<std::size_t>(C), 4, 0.5)));
  const DBits dy(to_bf16_bits(rand_bf16(static_cast<std::size_t>(M * C), 5, 1.0)));
  DBits y1(static_cast<std::size_t>(M * C)), y2(static_cast<std::size_t>(M * C)), dx1(y1.size()), dx2(y1.size());
  DeviceArray<float> r1(static_cast<std::size_t>(M)), r2(r1.size()), ss(r1.size()), dot(r1.size());
  DeviceArray<float> dw1(std::vector<float>(static_cast<std::size_t>(C), 0.f)), dw2(std::vector<float>(static_cast<std::size_t>(C), 0.f));
  DeviceArray<float> ws(rmsnorm_bwd_workspace_floats(M, C));
  for (auto* a : {&y1, &y2, &dx1, &dx2}) a->poison();
  rmsnorm_fwd(B(x), B(w), B(y1), r1.get(), M, C, 1e-5f, nullptr);
  rmsnorm_bwd(B(x), B(w), r1.get(), B(dy), nullptr, B(dx1), dw1.get(), ws.get(), M, C, nullptr);
  rmsnorm_tp_sumsq(B(x), ss.get(), M, C, nullptr);
  rmsnorm_tp_apply(B(x), B(w), ss.get(), B(y2), r2.get(), M, C, C, 1e-5f, nullptr);
  rmsnorm_tp_bwd_dot(B(x), B(w), B(dy), dot.get(), M, C, nullptr);
  rmsnorm_tp_bwd(B(x), B(w), r2.get(), B(dy), dot.get(), B(dx2), dw2.get(), ws.get(), M, C, C, nullptr);
  sync();
  EXPECT_EQ(y1.download(), y2.download());
  EXPECT_EQ(dx1.download(), dx2.download());
  const auto a = dw1.download(), b = dw2.download();
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

struct CeOut {
  double loss = 0;
  Vec lse, dx, dW;
  std::vector<float> lse_raw, dx_raw, dW_raw;
};

CeOut run_ce_vp(const Vec& x, const Vec& W, const std::vector<int32_t>& tgt, int64_t M, int64_t C, int64_t V, int P,
                int64_t chunk, double scale) {
  const int64_t Vl = V / P;
  const DBits xd(to_bf16_bits(x));
  DeviceArray<int32_t> td(tgt);
  const std::size_t wsb = lm_head_ce_vp_workspace_bytes(M, C, Vl, chunk);
  DeviceArray<unsigned char> ws(wsb);
  DeviceArray<float> stats(static_cast<std::size_t>(2 * M)), all(static_cast<std::size_t>(2 * M * P));
  DeviceArray<float> lse(static_cast<std::size_t>(M));
  DeviceArray<double> loss(1);
  std::vector<DBits> Ws;
  std::vector<float> gathered;
  for (int q = 0; q < P; ++q) {
    Ws.emplace_back(to_bf16_bits(Vec(W.begin() + q * Vl * C, W.begin() + (q + 1) * Vl * C)));
    stats.poison();
    lm_head_ce_vp_partial(B(xd), B(Ws[q]), td.get(), M, C, Vl, q * Vl, chunk, stats.get(), ws.get(), wsb, nullptr);
    const auto s = stats.download();
    gathered.insert(gathered.end(), s.begin(), s.end());  // the all-gather, rank order
  }
  all.upload(gathered);
  lse.poison(), loss.poison();
  lm_head_ce_vp_combine(all.get(), P, td.get(), M, lse.get(), loss.get(), ws.get(), wsb, nullptr);
  CeOut o;
  o.loss = loss.download()[0];
  o.lse_raw = lse.download();
  o.lse = to_d(o.lse_raw);
  std::vector<float> dxs(static_cast<std::size_t>(M * C), 0.f);
  o.dW.assign(static_cast<std::size_t>(V * C), 0.0);
  DeviceArray<float> dxf(static_cast<std::size_t>(M * C));
  for (int q = 0; q < P; ++q) {
    dxf.poison();
    DeviceArray<float> dW(std::vector<float>(static_cast<std::size_t>(Vl * C), 0.f));
    lm_head_ce_vp_bwd(B(xd), B(Ws[q]), td.get(), lse.get(), M, C, Vl, q * Vl, chunk, static_cast<float>(scale), dxf.get(),
                      dW.get(), ws.get(), wsb, nullptr);
    const auto d = dxf.download();
    for (std::size_t i = 0; i < d.size(); ++i) dxs[i] += d[i];  // the all-reduce, rank order
    const auto dw = dW.download();
    for (std::size_t i = 0; i < dw.size(); ++i) o.dW[static_cast<std::size_t>(q * Vl * C) + i] = dw[i];
    o.dW_raw.insert(o.dW_raw.end(), dw.begin(), dw.end());
  }
  // the model's final rounding: dx = bf16(Σ fp32 partials)
  DeviceArray<float> dsum(dxs);
  DBits dxb(dxs.size());
  dxb.poison();
  cast_f32_to_bf16(dsum.get(), B(dxb), static_cast<int64_t>(dxs.size()), nullptr);
  sync();
  o.dx = from_bf16_bits(dxb.download());
  o.dx_raw = dxs;
  return o;
}

TEST(TrainOpsTp, VocabParallelCrossEntropyMatchesTheFullVocabularyInFloat64) {
  MEGACPP_REQUIRE_GPU();
  // (M, C, V, P, chunk): several chunks per slice, one chunk, a slice smaller than the chunk; slices that are
  // not a multiple of 8 (264/2 = 132 with a last chunk of 4; 264/4 = 66 in one chunk; padded leading dims)
  for (const auto& [M, C, V, P, chunk] : std::vector<std::tuple<int64_t, int64_t, int64_t, int, int64_t>>{
           {100, 64, 512, 2, 64}, {37, 128, 272, 2, 8192}, {64, 32, 384, 4, 48}, {50, 64, 256, 1, 64},
           {40, 64, 264, 2, 64}, {33, 64, 264, 4, 8192}}) {
    const Vec x = rand_bf16(static_cast<std::size_t>(M * C), 21 + V, 1.0);
    const Vec W = rand_bf16(static_cast<std::size_t>(V * C), 22 + V, 0.3);
    HostRng rng(23 + static_cast<uint64_t>(V));
    std::vector<int32_t> tgt(static_cast<std::size_t>(M));
    for (auto& t : tgt) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(V));
    tgt[3] = -1, tgt[static_cast<std::size_t>(M - 1)] = -1;  // ignored rows
    tgt[5] = static_cast<int32_t>(V - 1), tgt[6] = 0;        // the slices' edges
    const double scale = 1.0 / static_cast<double>(M);
    Vec lse, dx, dW(static_cast<std::size_t>(V * C), 0.0);
    const double ref_loss = ref::lm_head_ce(x, W, tgt, M, C, V, scale, &lse, &dx, &dW);
    const CeOut o = run_ce_vp(x, W, tgt, M, C, V, P, chunk, scale);
    EXPECT_NEAR(o.loss, ref_loss, 1e-5 * std::fabs(ref_loss)) << "M=" << M << " V=" << V << " P=" << P;
    Vec lse_valid, lse_ref_valid;  // lse of ignored rows is not specified by the reference
    for (int64_t m = 0; m < M; ++m)
      if (tgt[static_cast<std::size_t>(m)] >= 0)
        lse_valid.push_back(o.lse[static_cast<std::size_t>(m)]), lse_ref_valid.push_back(lse[static_cast<std::size_t>(m)]);
    // ops_train_ops.cpp's tolerances for lm_head_ce: fp32 lse 1e-5; bf16-operand dx / dW 1e-2 (≤ 0.1 % of
    // elements beyond it).
    const std::vector<TensorMetric> ms = {compare_tensors("lse", lse_valid, lse_ref_valid, 1e-5, 1e-3),
                                          compare_tensors("dx", o.dx, dx, 1e-2, 1e-3),
                                          compare_tensors("dW", o.dW, dW, 1e-2, 1e-3)};
    for (const auto& m : ms)
      EXPECT_TRUE(m.pass()) << "M=" << M << " C=" << C << " V=" << V << " P=" << P << " chunk=" << chunk << "\n"
                            << format_metric_table(ms);
    const CeOut o2 = run_ce_vp(x, W, tgt, M, C, V, P, chunk, scale);  // deterministic
    EXPECT_EQ(o.loss, o2.loss);
    EXPECT_EQ(0, std::memcmp(o.lse_raw.data(), o2.lse_raw.data(), o.lse_raw.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(o.dx_raw.data(), o2.dx_raw.data(), o.dx_raw.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(o.dW_raw.data(), o2.dW_raw.data(), o.dW_raw.size() * sizeof(float)));
  }
}

TEST(TrainOpsTp, VocabParallelRefusesBadShapes) {
  MEGACPP_REQUIRE_GPU();
  DeviceArray<unsigned char> ws(1 << 20);
  DeviceArray<float> stats(64);
  // chunk not a multiple of 8, C not a multiple of 8, a workspace that is too small
  EXPECT_THROW(lm_head_ce_vp_partial(nullptr, nullptr, nullptr, 8, 64, 132, 0, 60, stats.get(), ws.get(), 1 << 20, nullptr),
               std::invalid_argument);
  EXPECT_THROW(lm_head_ce_vp_partial(nullptr, nullptr, nullptr, 8, 60, 132, 0, 64, stats.get(), ws.get(), 1 << 20, nullptr),
               std::invalid_argument);
  EXPECT_THROW(lm_head_ce_vp_partial(nullptr, nullptr, nullptr, 8, 64, 132, 0, 64, stats.get(), ws.get(), 16, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace megacpp::train_ops
#else
TEST(TrainOpsTp, NeedsCuda) { GTEST_SKIP() << "CPU-only build"; }
#endif
