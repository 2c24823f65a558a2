// ops_train_ops.cpp — op cases of the training backend's primitives (kernels/train_ops/).
//   check(): CUDA kernels vs the float64 reference (train_ops_ref.cpp) on fresh random inputs; every output
//            and gradient buffer poisoned (0xFF → NaN) first; accumulated gradients start from random
//            values (so "+=" is tested). The reference gets exactly the kernel's inputs (bf16-rounded).
//   bench(): CUDA events, warm-up, median; FLOPs/bytes by formula; kernels' resources; cuBLASLt algos.
// Tolerances (stable_max_rel = max|ours−ref|/max|ref|):
//   kTolBf16 = 1e-2  for bf16 outputs (one bf16 rounding ≈ 2^-9 = 2e-3 relative, plus fp32 math) and for
//                    lm_head_ce's dW, whose GEMM operand G = softmax − onehot is rounded to bf16;
//   kTolF32  = 1e-5  for fp32 outputs computed in fp32 from exact inputs (rstd, dw, linear dW, lse, loss,
//                    AdamW p/m/v);   kTolF64 = 1e-10 for grad_norm (fp64 accumulation of exact squares).
// Every check needs a GPU (needs_gpu = true); CPU-only builds compile this file without the GPU calls.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/common/host_rng.hpp"
#include "kernels/registry/op_registry.hpp"
#include "kernels/train_ops/train_ops_ref.hpp"

#if MEGACPP_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/common/device_array.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/common/gpu_timing.hpp"
#include "kernels/train_ops/act.hpp"
#include "kernels/train_ops/adamw.hpp"
#include "kernels/train_ops/embedding.hpp"
#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/lm_head_ce.hpp"
#include "kernels/train_ops/rmsnorm.hpp"
#endif

namespace megacpp {
namespace train_ops {
namespace {

constexpr double kTolBf16 = 1e-2, kTolF32 = 1e-5, kTolF64 = 1e-10;
constexpr double kEps = 1e-5;  // RMSNorm eps in the checks
constexpr double kPeakTflops = 780.0;  // H100 measured dense bf16 peak (helper brief)

using ref::Vec;

[[maybe_unused]] int64_t get(const OpShape& s, const char* k) {
  auto it = s.find(k);
  if (it == s.end()) throw std::invalid_argument(std::string("train_ops: shape lacks '") + k + "'");
  return it->second;
}
[[maybe_unused]] int64_t get_or(const OpShape& s, const char* k, int64_t d) {
  auto it = s.find(k);
  return it == s.end() ? d : it->second;
}

// A random bf16 tensor: bits for the GPU, the same values as doubles for the reference.
struct Bf {
  std::vector<uint16_t> bits;
  Vec d;
};
[[maybe_unused]] Bf rand_bf(std::size_t n, HostRng& r, double sd) {
  Bf b;
  b.d.resize(n);
  for (auto& x : b.d) x = sd * r.normal();
  b.bits = to_bf16_bits(b.d);
  b.d = from_bf16_bits(b.bits);
  return b;
}
// A random fp32 tensor (values exactly representable in float).
struct F32 {
  std::vector<float> f;
  Vec d;
};
[[maybe_unused]] F32 rand_f32(std::size_t n, HostRng& r, double sd) {
  F32 t;
  t.f.resize(n);
  for (auto& x : t.f) x = float(sd * r.normal());
  t.d.assign(t.f.begin(), t.f.end());
  return t;
}
[[maybe_unused]] std::vector<int32_t> rand_tokens(std::size_t n, HostRng& r, int64_t V, double ignore_frac) {
  std::vector<int32_t> t(n);
  for (auto& x : t) {
    // skewed: half the draws from the first few ids (long runs in the embedding backward)
    const double u = r.uniform();
    x = u < 0.5 ? int32_t(r.uniform() * std::min<int64_t>(V, 4)) : int32_t(r.uniform() * V);
    if (r.uniform() < ignore_frac) x = -1;
  }
  return t;
}

CheckResult no_cuda(const char* op) {
  CheckResult r;
  r.note = std::string(op) + ": CPU-only build (no CUDA): nothing compared";
  return r;
}
[[noreturn]] void no_cuda_bench(const char* op) {
  throw std::runtime_error(std::string(op) + " bench: CPU-only build (no CUDA)");
}

#if MEGACPP_WITH_CUDA
using DBits = DeviceArray<uint16_t>;
bf16* B(const DBits& a) { return reinterpret_cast<bf16*>(a.get()); }
Vec down_bf(const DBits& a) { return from_bf16_bits(a.download()); }
std::string device_note() {
  const auto& rt = gpu_runtime();
  return rt.gpus.empty() ? std::string("no GPU") : rt.gpus[0].name;
}
void cmp_bf(CheckResult& r, const char* name, const DBits& d, const Vec& ref, double tol = kTolBf16) {
  const Vec h = down_bf(d);
  r.tensors.push_back(compare_tensors(name, h, ref, tol, 1e-3));
}
void cmp_f(CheckResult& r, const char* name, const DeviceArray<float>& d, const Vec& ref, double tol = kTolF32) {
  const auto h = d.download();
  r.tensors.push_back(compare_tensors(name, h, ref, tol, 1e-3));
}
void sync() { MEGACPP_CUDA_CHECK(cudaDeviceSynchronize()); }
void fill_timing(BenchResult& br, const TimingStats& t) {
  br.median_ms = t.median_ms;
  br.min_ms = t.min_ms;
  br.max_ms = t.max_ms;
  br.runs = t.runs;
}
void add_kernels(BenchResult& br, const std::vector<KernelInfo>& ks) {
  for (const auto& k : ks) br.kernels.push_back(to_json(kernel_resources(k.name, k.func, k.threads, k.dynamic_smem)));
}
void add_rates(BenchResult& br) {
  const double s = br.median_ms * 1e-3;
  if (br.flops_executed > 0) {
    br.extra["tflops"] = br.flops_executed / s * 1e-12;
    br.extra["pct_of_780_tflops"] = 100.0 * br.flops_executed / s * 1e-12 / kPeakTflops;
  }
  if (br.bytes > 0) br.extra["gb_per_s"] = br.bytes / s * 1e-9;
}
DBits up_bf(const Bf& b) { return DBits(b.bits); }
// Bench inputs: a constant byte pattern (0x3C3C ≈ 0.0115 in bf16; fill byte `b`), no host RNG at full size.
DBits filled(std::size_t n, int b = 0x3C) {
  DBits a(n);
  MEGACPP_CUDA_CHECK(cudaMemset(a.get(), b, n * 2));
  return a;
}
#endif

// ---------------------------------------------------------------------------------------------- linear
CheckResult check_linear(const OpShape& sh, uint64_t seed, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), K = get(sh, "K"), N = get(sh, "N");
  HostRng r(seed * 1000003 + 1);
  const Bf x = rand_bf(M * K, r, 1.0), W = rand_bf(N * K, r, 0.5), dy = rand_bf(M * N, r, 1.0);
  const F32 dW0 = rand_f32(N * K, r, 0.1);
  DBits dx_(up_bf(x)), dW_(up_bf(W)), ddy(up_bf(dy));
  CheckResult res;
  if (!bwd) {
    DBits y(M * N);
    y.poison();
    linear_fwd(B(dx_), B(dW_), B(y), M, K, N, nullptr);
    sync();
    Vec yr;
    ref::linear_fwd(x.d, W.d, yr, M, K, N);
    cmp_bf(res, "y", y, yr);
    res.note = "linear_fwd on " + device_note() + " [" + shape_to_string(sh) + "]: " +
               gemm_plan_for(GemmDesc{false, true, M, N, K, K, K, N, GemmOut::bf16}, 0.f);
  } else {
    DBits dx(M * K);
    dx.poison();
    DeviceArray<float> dW(dW0.f);
    linear_bwd_dx(B(ddy), B(dW_), B(dx), M, K, N, false, nullptr);
    linear_bwd_dw(B(ddy), B(dx_), dW.get(), M, K, N, nullptr);
    sync();
    Vec dxr, dWr = dW0.d;
    ref::linear_bwd(x.d, W.d, dy.d, dxr, dWr, M, K, N);
    cmp_bf(res, "dx", dx, dxr);
    cmp_f(res, "dW(+=)", dW, dWr);
    // accumulate=true: dx += dy·W (bf16 in place): start from the bf16 dx just produced.
    const Vec dx1 = down_bf(dx);
    linear_bwd_dx(B(ddy), B(dW_), B(dx), M, K, N, true, nullptr);
    sync();
    Vec dx2(dx1.size());
    for (std::size_t i = 0; i < dx2.size(); ++i) dx2[i] = dx1[i] + dxr[i];
    cmp_bf(res, "dx(acc)", dx, dx2);
    res.note = "linear_bwd on " + device_note() + " [" + shape_to_string(sh) + "]: dx " +
               gemm_plan_for(GemmDesc{false, false, M, K, N, N, K, K, GemmOut::bf16}, 0.f) + "; dW " +
               gemm_plan_for(GemmDesc{true, false, N, K, M, N, K, K, GemmOut::f32}, 1.f);
  }
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda(bwd ? "linear_bwd" : "linear_fwd");
#endif
}

BenchResult bench_linear(const OpShape& sh, const OpOptions& opt, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), K = get(sh, "K"), N = get(sh, "N");
  DBits x(filled(M * K)), W(filled(N * K)), y(filled(M * N));
  BenchResult br;
  if (!bwd) {
    fill_timing(br, time_gpu([&] { linear_fwd(B(x), B(W), B(y), M, K, N, nullptr); }, opt.warmup, opt.iters));
    br.flops_executed = br.flops_model = 2.0 * M * N * K;
    br.bytes = 2.0 * (M * K + N * K + M * N);
    br.extra["algo"] = gemm_plan_for(GemmDesc{false, true, M, N, K, K, K, N, GemmOut::bf16}, 0.f);
    br.note = "linear_fwd (cuBLASLt, bf16 in/out, fp32 accumulate) on " + device_note();
  } else {
    DBits dx(M * K);
    DeviceArray<float> dW(static_cast<std::size_t>(N * K));
    MEGACPP_CUDA_CHECK(cudaMemset(dW.get(), 0, dW.size() * 4));
    const TimingStats tdx = time_gpu([&] { linear_bwd_dx(B(y), B(W), B(dx), M, K, N, false, nullptr); }, opt.warmup, opt.iters);
    const TimingStats tdw = time_gpu([&] { linear_bwd_dw(B(y), B(x), dW.get(), M, K, N, nullptr); }, opt.warmup, opt.iters);
    fill_timing(br, time_gpu([&] {
                  linear_bwd_dx(B(y), B(W), B(dx), M, K, N, false, nullptr);
                  linear_bwd_dw(B(y), B(x), dW.get(), M, K, N, nullptr);
                }, opt.warmup, opt.iters));
    br.flops_executed = br.flops_model = 4.0 * M * N * K;
    br.bytes = 2.0 * (M * N + N * K + M * K) + 2.0 * (M * N + M * K) + 8.0 * N * K;
    br.extra["dx_ms"] = tdx.median_ms;
    br.extra["dW_ms"] = tdw.median_ms;
    br.extra["dx_tflops"] = 2.0 * M * N * K / (tdx.median_ms * 1e-3) * 1e-12;
    br.extra["dW_tflops"] = 2.0 * M * N * K / (tdw.median_ms * 1e-3) * 1e-12;
    br.extra["algo_dx"] = gemm_plan_for(GemmDesc{false, false, M, K, N, N, K, K, GemmOut::bf16}, 0.f);
    br.extra["algo_dW"] = gemm_plan_for(GemmDesc{true, false, N, K, M, N, K, K, GemmOut::f32}, 1.f);
    br.note = "linear_bwd = dx (bf16) + dW (fp32 +=), cuBLASLt, on " + device_note();
  }
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt;
  no_cuda_bench(bwd ? "linear_bwd" : "linear_fwd");
#endif
}

// ---------------------------------------------------------------------------------------------- rmsnorm
// kind: 0 rmsnorm_fwd, 1 residual_rmsnorm_fwd, 2 rmsnorm_bwd
CheckResult check_rmsnorm(const OpShape& sh, uint64_t seed, int kind) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), C = get(sh, "C");
  HostRng r(seed * 1000003 + 2);
  const Bf x = rand_bf(M * C, r, 1.0), yin = rand_bf(M * C, r, 0.5), dy = rand_bf(M * C, r, 1.0),
           dres = rand_bf(M * C, r, 0.3);
  Bf w = rand_bf(C, r, 0.2);
  for (std::size_t i = 0; i < w.d.size(); ++i) w.d[i] = round_to_bf16(1.0 + w.d[i]);
  w.bits = to_bf16_bits(w.d);
  const F32 dw0 = rand_f32(C, r, 0.1);
  DBits dxx(up_bf(x)), dyin(up_bf(yin)), ddy(up_bf(dy)), ddres(up_bf(dres)), dw_(up_bf(w));
  DeviceArray<float> rstd(M);
  rstd.poison();
  CheckResult res;
  if (kind == 0) {
    DBits y(M * C);
    y.poison();
    rmsnorm_fwd(B(dxx), B(dw_), B(y), rstd.get(), M, C, float(kEps), nullptr);
    sync();
    Vec yr, rr;
    ref::rmsnorm_fwd(x.d, w.d, yr, rr, M, C, kEps);
    cmp_bf(res, "y", y, yr);
    cmp_f(res, "rstd", rstd, rr);
    res.note = "rmsnorm_fwd on " + device_note();
  } else if (kind == 1) {
    DBits hout(M * C), n(M * C);
    hout.poison();
    n.poison();
    residual_rmsnorm_fwd(B(dxx), B(dyin), B(dw_), B(hout), B(n), rstd.get(), M, C, float(kEps), nullptr);
    sync();
    Vec hr, nr, rr;
    ref::residual_rmsnorm_fwd(x.d, yin.d, w.d, hr, nr, rr, M, C, kEps, true);
    cmp_bf(res, "h_out", hout, hr);
    cmp_bf(res, "n", n, nr);
    cmp_f(res, "rstd", rstd, rr);
    // in place: h_out aliases h
    DBits hin(up_bf(x));
    residual_rmsnorm_fwd(B(hin), B(dyin), B(dw_), B(hin), B(n), rstd.get(), M, C, float(kEps), nullptr);
    sync();
    cmp_bf(res, "h_out(in place)", hin, hr);
    res.note = "residual_rmsnorm_fwd on " + device_note();
  } else {
    const bool with_dres = get_or(sh, "dres", 1) != 0;
    // rstd from the reference forward on the exact inputs, rounded to fp32 (what the kernel would save)
    Vec yr, rr;
    ref::rmsnorm_fwd(x.d, w.d, yr, rr, M, C, kEps);
    std::vector<float> rf(rr.begin(), rr.end());
    Vec rrf(rf.begin(), rf.end());
    rstd.upload(rf);
    DBits dx(M * C);
    dx.poison();
    DeviceArray<float> dw(dw0.f), ws(rmsnorm_bwd_workspace_floats(M, C));
    ws.poison();
    DBits* dxo = &dx;
    if (with_dres) dxo = &ddres;  // dres aliases dx: dx = dres + ...
    rmsnorm_bwd(B(dxx), B(dw_), rstd.get(), B(ddy), with_dres ? B(ddres) : nullptr, B(*dxo), dw.get(), ws.get(), M, C,
                nullptr);
    sync();
    Vec dxr, dwr = dw0.d;
    ref::rmsnorm_bwd(x.d, w.d, rrf, dy.d, with_dres ? dres.d : Vec{}, dxr, dwr, M, C);
    cmp_bf(res, with_dres ? "dx(=dres+, in place)" : "dx", *dxo, dxr);
    cmp_f(res, "dw(+=)", dw, dwr);
    res.note = std::string("rmsnorm_bwd on ") + device_note() + (with_dres ? " with dres aliasing dx" : "");
  }
  res.note += " [" + shape_to_string(sh) + "]";
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda(kind == 0 ? "rmsnorm_fwd" : kind == 1 ? "residual_rmsnorm_fwd" : "rmsnorm_bwd");
#endif
}

BenchResult bench_rmsnorm(const OpShape& sh, const OpOptions& opt, int kind) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), C = get(sh, "C");
  DBits x(filled(M * C)), y(filled(M * C)), w(filled(C)), o(M * C), o2(filled(M * C));
  DeviceArray<float> rstd(M), dw(C), ws(rmsnorm_bwd_workspace_floats(M, C));
  rmsnorm_fwd(B(x), B(w), B(o), rstd.get(), M, C, 1e-5f, nullptr);
  BenchResult br;
  const double MC = double(M) * C;
  if (kind == 0) {
    fill_timing(br, time_gpu([&] { rmsnorm_fwd(B(x), B(w), B(o), rstd.get(), M, C, 1e-5f, nullptr); }, opt.warmup, opt.iters));
    br.bytes = 4 * MC + 4.0 * M;
    br.flops_executed = br.flops_model = 4 * MC;
  } else if (kind == 1) {
    fill_timing(br, time_gpu([&] { residual_rmsnorm_fwd(B(x), B(y), B(w), B(o2), B(o), rstd.get(), M, C, 1e-5f, nullptr); },
                             opt.warmup, opt.iters));
    br.bytes = 8 * MC + 4.0 * M;
    br.flops_executed = br.flops_model = 5 * MC;
  } else {
    MEGACPP_CUDA_CHECK(cudaMemset(dw.get(), 0, C * 4));
    fill_timing(br, time_gpu([&] { rmsnorm_bwd(B(x), B(w), rstd.get(), B(y), B(o2), B(o2), dw.get(), ws.get(), M, C, nullptr); },
                             opt.warmup, opt.iters));
    // minimal: read x, dy, dres, write dx (+rstd); executed: + second read of x, dy by the dw kernel
    br.bytes = 8 * MC + 4.0 * M;
    br.extra["bytes_executed"] = 12 * MC + 4.0 * M + 8.0 * double(ws.size());
    br.flops_executed = br.flops_model = 10 * MC;
  }
  br.note = std::string(kind == 0 ? "rmsnorm_fwd" : kind == 1 ? "residual_rmsnorm_fwd" : "rmsnorm_bwd (dres in place, dw +=)") +
            " on " + device_note();
  add_kernels(br, rmsnorm_kernel_info());
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt;
  no_cuda_bench("rmsnorm");
#endif
}

// ---------------------------------------------------------------------------------------------- act
CheckResult check_act(const OpShape& sh, uint64_t seed, int act, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t rows = get(sh, "rows"), cols = get(sh, "cols");
  const bool packed = get_or(sh, "packed", 0) != 0;  // g, u = the two halves of one [rows, 2·cols] buffer
  const Act a = act == 0 ? Act::swiglu : Act::relu2;
  HostRng r(seed * 1000003 + 3 + act);
  const int64_t ld_in = packed ? 2 * cols : cols;
  const Bf gu = rand_bf(rows * ld_in * (packed ? 1 : 2), r, 2.0), da = rand_bf(rows * cols, r, 1.0);
  Vec g(rows * cols), u(rows * cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      g[i * cols + j] = packed ? gu.d[i * ld_in + j] : gu.d[i * cols + j];
      u[i * cols + j] = packed ? gu.d[i * ld_in + cols + j] : gu.d[rows * cols + i * cols + j];
    }
  DBits dgu(up_bf(gu)), dda(up_bf(da));
  const bf16* gp = B(dgu);
  const bf16* up = packed ? B(dgu) + cols : B(dgu) + rows * cols;
  CheckResult res;
  auto unpack = [&](const DBits& d) {  // strided [rows, ld_in] → dense
    const Vec h = down_bf(d);
    Vec o(rows * cols);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) o[i * cols + j] = h[i * ld_in + j];
    return o;
  };
  if (!bwd) {
    DBits out(rows * cols);
    out.poison();
    act_fwd(a, gp, a == Act::swiglu ? up : nullptr, B(out), rows, cols, ld_in, cols, nullptr);
    sync();
    Vec ar;
    ref::act_fwd(act, g, u, ar);
    cmp_bf(res, "a", out, ar);
  } else {
    DBits dg(rows * ld_in), du(rows * ld_in);
    dg.poison();
    du.poison();
    act_bwd(a, gp, a == Act::swiglu ? up : nullptr, B(dda), B(dg), a == Act::swiglu ? B(du) : nullptr, rows, cols, ld_in,
            cols, nullptr);
    sync();
    Vec dgr, dur;
    ref::act_bwd(act, g, u, da.d, dgr, dur);
    const Vec dgo = unpack(dg);
    res.tensors.push_back(compare_tensors("dg", dgo, dgr, kTolBf16, 1e-3));
    if (act == 0) {
      const Vec duo = unpack(du);
      res.tensors.push_back(compare_tensors("du", duo, dur, kTolBf16, 1e-3));
    }
  }
  res.note = std::string(act_name(a)) + (bwd ? "_bwd" : "_fwd") + " on " + device_note() + " [" + shape_to_string(sh) + "]";
  return res;
#else
  (void)sh, (void)seed, (void)bwd;
  return no_cuda(act == 0 ? "swiglu" : "relu2");
#endif
}

BenchResult bench_act(const OpShape& sh, const OpOptions& opt, int act, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t rows = get(sh, "rows"), cols = get(sh, "cols");
  const Act a = act == 0 ? Act::swiglu : Act::relu2;
  const double n = double(rows) * cols;
  DBits gu(filled(2 * rows * cols)), da(filled(rows * cols)), out(rows * cols),
      dgu(2 * rows * cols);
  const bf16* u = a == Act::swiglu ? B(gu) + cols : nullptr;
  BenchResult br;
  if (!bwd) {
    fill_timing(br, time_gpu([&] { act_fwd(a, B(gu), u, B(out), rows, cols, 2 * cols, cols, nullptr); }, opt.warmup, opt.iters));
    br.bytes = (a == Act::swiglu ? 6 : 4) * n;
  } else {
    fill_timing(br, time_gpu([&] {
                  act_bwd(a, B(gu), u, B(da), B(dgu), a == Act::swiglu ? B(dgu) + cols : nullptr, rows, cols, 2 * cols,
                          cols, nullptr);
                }, opt.warmup, opt.iters));
    br.bytes = (a == Act::swiglu ? 10 : 6) * n;
  }
  br.flops_executed = br.flops_model = (a == Act::swiglu ? (bwd ? 12 : 6) : (bwd ? 2 : 1)) * n;
  br.note = std::string(act_name(a)) + (bwd ? "_bwd" : "_fwd") + " (g|u packed rows) on " + device_note();
  add_kernels(br, act_kernel_info(a));
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt, (void)act, (void)bwd;
  no_cuda_bench("act");
#endif
}

// ---------------------------------------------------------------------------------------------- embedding
CheckResult check_embedding(const OpShape& sh, uint64_t seed, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), V = get(sh, "V"), C = get(sh, "C");
  HostRng r(seed * 1000003 + 4);
  const auto tok = rand_tokens(M, r, V, 0.0);
  const Bf wte = rand_bf(V * C, r, 1.0), dout = rand_bf(M * C, r, 1.0);
  const F32 dwte0 = rand_f32(V * C, r, 0.1);
  DeviceArray<int32_t> dtok(tok);
  CheckResult res;
  if (!bwd) {
    DBits dwte(up_bf(wte)), out(M * C);
    out.poison();
    DeviceArray<int> err(std::vector<int>{0});
    embedding_fwd(dtok.get(), B(dwte), B(out), M, V, C, err.get(), nullptr);
    sync();
    Vec outr;
    ref::embedding_fwd(tok, wte.d, outr, C);
    cmp_bf(res, "out", out, outr, 0.0 + 1e-12);  // a gather is exact
    const int e = err.download()[0];  // no token is out of range: the flag must stay 0
    res.tensors.push_back(compare_tensors("1+err_flag", std::vector<double>{1.0 + e}, std::vector<double>{1.0}, 1e-12));
    res.note = "embedding_fwd (gather, exact) on " + device_note();
  } else {
    DBits ddout(up_bf(dout));
    DeviceArray<float> dwte(dwte0.f);
    const std::size_t wsb = embedding_bwd_workspace_bytes(M);
    DeviceArray<char> ws(wsb);
    ws.poison();
    embedding_bwd(dtok.get(), B(ddout), dwte.get(), M, V, C, ws.get(), wsb, nullptr);
    sync();
    Vec dr = dwte0.d;
    ref::embedding_bwd(tok, dout.d, dr, C);
    cmp_f(res, "dwte(+=)", dwte, dr);
    res.note = "embedding_bwd (stable radix sort + per-run sums) on " + device_note();
  }
  res.note += " [" + shape_to_string(sh) + "]";
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda(bwd ? "embedding_bwd" : "embedding_fwd");
#endif
}

BenchResult bench_embedding(const OpShape& sh, const OpOptions& opt, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), V = get(sh, "V"), C = get(sh, "C");
  HostRng r(8);
  const auto tok = rand_tokens(M, r, V, 0.0);
  DeviceArray<int32_t> dtok(tok);
  BenchResult br;
  if (!bwd) {
    DBits wte(filled(V * C)), out(M * C);
    fill_timing(br, time_gpu([&] { embedding_fwd(dtok.get(), B(wte), B(out), M, V, C, nullptr, nullptr); }, opt.warmup, opt.iters));
    br.bytes = 4.0 * M * C + 4.0 * M;
  } else {
    DBits dout(filled(M * C));
    DeviceArray<float> dwte(static_cast<std::size_t>(V * C));
    MEGACPP_CUDA_CHECK(cudaMemset(dwte.get(), 0, dwte.size() * 4));
    const std::size_t wsb = embedding_bwd_workspace_bytes(M);
    DeviceArray<char> ws(wsb);
    fill_timing(br, time_gpu([&] { embedding_bwd(dtok.get(), B(dout), dwte.get(), M, V, C, ws.get(), wsb, nullptr); },
                             opt.warmup, opt.iters));
    int64_t distinct = 0;
    {
      std::vector<int32_t> s = tok;
      std::sort(s.begin(), s.end());
      distinct = std::unique(s.begin(), s.end()) - s.begin();
    }
    br.bytes = 2.0 * M * C + 8.0 * distinct * C + 16.0 * M;
    br.extra["distinct_tokens"] = distinct;
    br.flops_executed = br.flops_model = double(M) * C;
  }
  br.note = std::string(bwd ? "embedding_bwd" : "embedding_fwd") + " (tokens: half from 4 ids, half uniform) on " + device_note();
  add_kernels(br, embedding_kernel_info());
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt;
  no_cuda_bench(bwd ? "embedding_bwd" : "embedding_fwd");
#endif
}

// ---------------------------------------------------------------------------------------------- lm_head_ce
CheckResult check_lm_head_ce(const OpShape& sh, uint64_t seed, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), C = get(sh, "C"), V = get(sh, "V"), chunk = get(sh, "chunk");
  HostRng r(seed * 1000003 + 5);
  const Bf x = rand_bf(M * C, r, 1.0), W = rand_bf(V * C, r, 0.3);
  auto tgt = rand_tokens(M, r, V, 0.15);
  for (std::size_t i = 0; i < tgt.size(); i += 7)
    if (tgt[i] >= 0) tgt[i] = int32_t(V - 1 - (i % 3));  // targets in the last chunk too
  const F32 dW0 = rand_f32(V * C, r, 0.05);
  const double scale = 1.0 / double(M);
  DBits dxx(up_bf(x)), dWW(up_bf(W));
  DeviceArray<int32_t> dt(tgt);
  DeviceArray<float> lse(M);
  DeviceArray<double> loss(1);
  lse.poison();
  loss.poison();
  const std::size_t wsb = lm_head_ce_workspace_bytes(M, C, V, chunk);
  DeviceArray<char> ws(wsb);
  ws.poison();
  lm_head_ce_fwd(B(dxx), B(dWW), dt.get(), M, C, V, chunk, lse.get(), loss.get(), ws.get(), wsb, nullptr);
  CheckResult res;
  Vec lser, dxr, dWr = dW0.d;
  const double lr = ref::lm_head_ce(x.d, W.d, tgt, M, C, V, scale, &lser, bwd ? &dxr : nullptr, bwd ? &dWr : nullptr);
  if (!bwd) {
    sync();
    cmp_f(res, "lse", lse, lser);
    const auto lh = loss.download();
    res.tensors.push_back(compare_tensors("loss_sum", lh, std::vector<double>{lr}, kTolF32));
    res.note = "lm_head_ce_fwd on " + device_note();
  } else {
    DBits dx(M * C);
    dx.poison();
    DeviceArray<float> dW(dW0.f);
    lm_head_ce_bwd(B(dxx), B(dWW), dt.get(), lse.get(), M, C, V, chunk, float(scale), B(dx), dW.get(), ws.get(), wsb, nullptr);
    sync();
    cmp_bf(res, "dx", dx, dxr);
    // dW: fp32 out, but its GEMM operand G is bf16 → the bf16 gate; compare the increment, not dW0 + increment
    const auto dWh = dW.download();
    Vec inc(dWh.size()), incr(dWh.size());
    for (std::size_t i = 0; i < inc.size(); ++i) {
      inc[i] = double(dWh[i]) - dW0.d[i];
      incr[i] = dWr[i] - dW0.d[i];
    }
    res.tensors.push_back(compare_tensors("dW increment", inc, incr, kTolBf16, 1e-3));
    res.tensors.push_back(compare_tensors("dW(+=)", dWh, dWr, kTolBf16, 1e-3));
    res.note = "lm_head_ce_bwd on " + device_note();
  }
  res.note += " [" + shape_to_string(sh) + "] scale 1/M, ~15% ignored targets";
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda(bwd ? "lm_head_ce_bwd" : "lm_head_ce_fwd");
#endif
}

BenchResult bench_lm_head_ce(const OpShape& sh, const OpOptions& opt, bool bwd) {
#if MEGACPP_WITH_CUDA
  const int64_t M = get(sh, "M"), C = get(sh, "C"), V = get(sh, "V"), chunk = get(sh, "chunk");
  HostRng r(11);
  const auto tgt = rand_tokens(M, r, V, 0.0);
  DBits x(filled(M * C)), W(filled(V * C)), dx(M * C);
  DeviceArray<int32_t> dt(tgt);
  DeviceArray<float> lse(M), dW(static_cast<std::size_t>(V * C));
  DeviceArray<double> loss(1);
  MEGACPP_CUDA_CHECK(cudaMemset(dW.get(), 0, dW.size() * 4));
  const std::size_t wsb = lm_head_ce_workspace_bytes(M, C, V, chunk);
  DeviceArray<char> ws(wsb);
  lm_head_ce_fwd(B(x), B(W), dt.get(), M, C, V, chunk, lse.get(), loss.get(), ws.get(), wsb, nullptr);
  BenchResult br;
  const double nch = double((V + chunk - 1) / chunk);
  if (!bwd) {
    fill_timing(br, time_gpu([&] { lm_head_ce_fwd(B(x), B(W), dt.get(), M, C, V, chunk, lse.get(), loss.get(), ws.get(), wsb, nullptr); },
                             opt.warmup, opt.iters));
    br.flops_executed = br.flops_model = 2.0 * M * V * C;
    br.bytes = 2.0 * V * C + nch * 2.0 * M * C + 8.0 * M * V;  // W once, x per chunk, logits write+read
  } else {
    fill_timing(br, time_gpu([&] {
                  lm_head_ce_bwd(B(x), B(W), dt.get(), lse.get(), M, C, V, chunk, 1.0f / M, B(dx), dW.get(), ws.get(), wsb, nullptr);
                }, opt.warmup, opt.iters));
    br.flops_model = 4.0 * M * V * C;
    br.flops_executed = 6.0 * M * V * C;
    br.bytes = 3 * 2.0 * V * C + 8.0 * V * C + nch * (3 * 2.0 * M * C + 8.0 * M * C) + (8.0 + 2 + 2 * 2) * M * V;
  }
  br.extra["chunk"] = chunk;
  br.extra["workspace_bytes"] = double(wsb);
  br.extra["algo_logits"] = gemm_plan_for(GemmDesc{false, true, M, std::min(chunk, V), C, C, C, std::min(chunk, V), GemmOut::f32}, 0.f);
  br.note = std::string(bwd ? "lm_head_ce_bwd (recompute logits + dx + dW)" : "lm_head_ce_fwd") + " on " + device_note();
  add_kernels(br, lm_head_ce_kernel_info());
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt;
  no_cuda_bench(bwd ? "lm_head_ce_bwd" : "lm_head_ce_fwd");
#endif
}

// ---------------------------------------------------------------------------------------------- adamw / grad_norm
CheckResult check_adamw(const OpShape& sh, uint64_t seed) {
#if MEGACPP_WITH_CUDA
  const int64_t n = get(sh, "n"), step = get(sh, "step");
  const bool use_mask = get_or(sh, "mask", 1) != 0;
  HostRng r(seed * 1000003 + 6);
  F32 p = rand_f32(n, r, 0.5), g = rand_f32(n, r, 0.01), m = rand_f32(n, r, 0.003);
  F32 v;
  v.f.resize(n);
  for (auto& x : v.f) x = float(1e-4 * r.uniform(0.01, 1.0));
  v.d.assign(v.f.begin(), v.f.end());
  std::vector<uint8_t> mask;
  if (use_mask) {
    mask.resize(n);
    for (int64_t i = 0; i < n; ++i) mask[i] = ((i / 37) % 3) != 0;  // segments, like norms between matrices
  }
  const float clip = 0.5f;
  DeviceArray<float> dp(p.f), dg(g.f), dm(m.f), dv(v.f), cs(1);
  DeviceArray<uint8_t> dmask(use_mask ? mask : std::vector<uint8_t>(4, 1));
  DBits shadow(n);
  shadow.poison();
  cs.poison();
  DeviceArray<double> ws(grad_norm_workspace_doubles(n)), nrm(1);
  grad_norm(dg.get(), n, ws.get(), nrm.get(), cs.get(), clip, nullptr);
  AdamWHyper h;
  h.lr = 3e-3;
  h.beta1 = 0.9;
  h.beta2 = 0.95;
  h.eps = 1e-8;
  h.weight_decay = 0.1;
  h.step = step;
  adamw_step(dp.get(), dg.get(), dm.get(), dv.get(), B(shadow), use_mask ? dmask.get() : nullptr, n, h, cs.get(), nullptr);
  sync();
  const double gn = ref::grad_norm(g.d), sc = ref::clip_scale(gn, clip);
  Vec pr = p.d, mr = m.d, vr = v.d;
  ref::adamw(pr, g.d, mr, vr, mask, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step, sc);
  CheckResult res;
  cmp_f(res, "p", dp, pr);
  cmp_f(res, "m", dm, mr);
  cmp_f(res, "v", dv, vr);
  cmp_bf(res, "shadow(bf16)", shadow, pr);
  // the change of p, relative to its own scale (p alone would hide an error in a small update)
  const auto ph = dp.download();
  Vec dlt(n), dltr(n);
  for (int64_t i = 0; i < n; ++i) {
    dlt[i] = double(ph[i]) - p.d[i];
    dltr[i] = pr[i] - p.d[i];
  }
  res.tensors.push_back(compare_tensors("p update", dlt, dltr, 1e-4, 1e-3));
  res.note = "adamw_step on " + device_note() + " [" + shape_to_string(sh) + "] clip " + std::to_string(clip) +
             " (grad norm " + std::to_string(gn) + ", device clip scale from grad_norm)";
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda("adamw");
#endif
}

CheckResult check_grad_norm(const OpShape& sh, uint64_t seed) {
#if MEGACPP_WITH_CUDA
  const int64_t n = get(sh, "n");
  HostRng r(seed * 1000003 + 7);
  const F32 g = rand_f32(n, r, 0.02);
  DeviceArray<float> dg(g.f), cs(1);
  DeviceArray<double> ws(grad_norm_workspace_doubles(n)), nrm(1);
  ws.poison();
  nrm.poison();
  cs.poison();
  const double gn = ref::grad_norm(g.d);
  const float clip = float(gn * 0.5);
  grad_norm(dg.get(), n, ws.get(), nrm.get(), cs.get(), clip, nullptr);
  sync();
  CheckResult res;
  const auto nh = nrm.download();
  res.tensors.push_back(compare_tensors("norm", nh, std::vector<double>{gn}, kTolF64));
  cmp_f(res, "clip_scale", cs, std::vector<double>{ref::clip_scale(gn, double(clip))}, kTolF32);
  res.note = "grad_norm on " + device_note() + " [" + shape_to_string(sh) + "]";
  return res;
#else
  (void)sh, (void)seed;
  return no_cuda("grad_norm");
#endif
}

BenchResult bench_adamw(const OpShape& sh, const OpOptions& opt, bool norm_only) {
#if MEGACPP_WITH_CUDA
  const int64_t n = get(sh, "n");
  DeviceArray<float> g(static_cast<std::size_t>(n)), cs(1);
  MEGACPP_CUDA_CHECK(cudaMemset(g.get(), 0, n * 4));
  DeviceArray<double> ws(grad_norm_workspace_doubles(n)), nrm(1);
  BenchResult br;
  if (norm_only) {
    fill_timing(br, time_gpu([&] { grad_norm(g.get(), n, ws.get(), nrm.get(), cs.get(), 1.0f, nullptr); }, opt.warmup, opt.iters));
    br.bytes = 4.0 * n;
    br.flops_executed = br.flops_model = 2.0 * n;
    br.note = "grad_norm (fp64 two-pass) on " + device_note();
  } else {
    DeviceArray<float> p(static_cast<std::size_t>(n)), m(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
    for (auto* a : {&p, &m, &v}) MEGACPP_CUDA_CHECK(cudaMemset(a->get(), 0, n * 4));
    DBits shadow(n);
    DeviceArray<uint8_t> mask(static_cast<std::size_t>(n));
    MEGACPP_CUDA_CHECK(cudaMemset(mask.get(), 1, n));
    AdamWHyper h;
    h.lr = 1e-4;
    h.weight_decay = 0.1;
    fill_timing(br, time_gpu([&] { adamw_step(p.get(), g.get(), m.get(), v.get(), B(shadow), mask.get(), n, h, cs.get(), nullptr); },
                             opt.warmup, opt.iters));
    br.bytes = 31.0 * n;  // read p g m v mask, write p m v shadow
    br.flops_executed = br.flops_model = 15.0 * n;
    br.note = "adamw_step (fp32 master + bf16 shadow + decay mask) on " + device_note();
  }
  add_kernels(br, adamw_kernel_info());
  add_rates(br);
  return br;
#else
  (void)sh, (void)opt;
  no_cuda_bench(norm_only ? "grad_norm" : "adamw");
#endif
}

}  // namespace
}  // namespace train_ops

void register_train_ops_ops(OpRegistry& r) {
  using namespace train_ops;
  const std::string fam = "train_ops";
  // linear: the NAM56R-like MLP fc1 at 16384 tokens (hidden 3584, ffn 18944)
  const std::vector<OpParam> lin = {{"M", 16384, "tokens"}, {"K", 3584, "in features"}, {"N", 18944, "out features"}};
  auto lin_shapes = [] {
    return std::vector<OpShape>{{{"M", 64}, {"K", 96}, {"N", 80}}, {{"M", 37}, {"K", 136}, {"N", 48}}};
  };
  r.add(OpDef{"linear_fwd", fam, "bf16 linear y = x·Wᵀ (cuBLASLt)", true, lin, {}, lin_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_linear(s, seed, false); },
              [](const OpShape& s, const OpOptions& o) { return bench_linear(s, o, false); }});
  r.add(OpDef{"linear_bwd", fam, "bf16 linear backward: dx = dy·W, dW += dyᵀ·x (fp32)", true, lin, {}, lin_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_linear(s, seed, true); },
              [](const OpShape& s, const OpOptions& o) { return bench_linear(s, o, true); }});

  const std::vector<OpParam> rn = {{"M", 16384, "tokens"}, {"C", 3584, "hidden (multiple of 8)"}};
  auto rn_shapes = [] { return std::vector<OpShape>{{{"M", 37}, {"C", 256}}, {{"M", 130}, {"C", 3584}}}; };
  auto rnb_shapes = [] {
    return std::vector<OpShape>{{{"M", 37}, {"C", 256}, {"dres", 0}}, {{"M", 130}, {"C", 3584}, {"dres", 1}}};
  };
  const std::vector<OpParam> rnb = {{"M", 16384, "tokens"}, {"C", 3584, "hidden"}, {"dres", 1, "add a residual gradient (in place)"}};
  r.add(OpDef{"rmsnorm_fwd", fam, "RMSNorm forward (bf16, fp32 rstd saved)", true, rn, {}, rn_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_rmsnorm(s, seed, 0); },
              [](const OpShape& s, const OpOptions& o) { return bench_rmsnorm(s, o, 0); }});
  r.add(OpDef{"residual_rmsnorm_fwd", fam, "fused residual add + RMSNorm: h_out = h + y; n = RMSNorm(h_out)·w", true, rn, {},
              rn_shapes, [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_rmsnorm(s, seed, 1); },
              [](const OpShape& s, const OpOptions& o) { return bench_rmsnorm(s, o, 1); }});
  r.add(OpDef{"rmsnorm_bwd", fam, "RMSNorm backward: dx (+ dres), dw += (deterministic partials)", true, rnb, {}, rnb_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_rmsnorm(s, seed, 2); },
              [](const OpShape& s, const OpOptions& o) { return bench_rmsnorm(s, o, 2); }});

  const std::vector<OpParam> ap = {{"rows", 16384, "tokens"}, {"cols", 18944, "ffn width (multiple of 8)"}};
  auto act_shapes = [] {
    return std::vector<OpShape>{{{"rows", 19}, {"cols", 136}, {"packed", 0}}, {{"rows", 64}, {"cols", 512}, {"packed", 1}}};
  };
  for (int act = 0; act < 2; ++act)
    for (int bwd = 0; bwd < 2; ++bwd) {
      const std::string nm = std::string(act == 0 ? "swiglu" : "relu2") + (bwd ? "_bwd" : "_fwd");
      r.add(OpDef{nm, fam, std::string(act == 0 ? "SwiGLU a = silu(g)·u" : "relu² a = max(g,0)²") + (bwd ? " backward" : " forward"),
                  true, ap, {}, act_shapes,
                  [act, bwd](const OpShape& s, uint64_t seed, const OpOptions&) { return check_act(s, seed, act, bwd != 0); },
                  [act, bwd](const OpShape& s, const OpOptions& o) { return bench_act(s, o, act, bwd != 0); }});
    }

  const std::vector<OpParam> ep = {{"M", 16384, "tokens"}, {"V", 131072, "vocabulary"}, {"C", 3584, "hidden"}};
  auto emb_shapes = [] {
    return std::vector<OpShape>{{{"M", 200}, {"V", 50}, {"C", 64}}, {{"M", 1000}, {"V", 7}, {"C", 136}},
                                {{"M", 300}, {"V", 1000}, {"C", 520}}};
  };
  r.add(OpDef{"embedding_fwd", fam, "token embedding gather", true, ep, {}, emb_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_embedding(s, seed, false); },
              [](const OpShape& s, const OpOptions& o) { return bench_embedding(s, o, false); }});
  r.add(OpDef{"embedding_bwd", fam, "token embedding backward (deterministic scatter-add)", true, ep, {}, emb_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_embedding(s, seed, true); },
              [](const OpShape& s, const OpOptions& o) { return bench_embedding(s, o, true); }});

  const std::vector<OpParam> lp = {{"M", 16384, "tokens"}, {"C", 3584, "hidden"}, {"V", 131072, "vocabulary"},
                                   {"chunk", 8192, "vocabulary columns per chunk"}};
  auto lm_shapes = [] {
    return std::vector<OpShape>{{{"M", 40}, {"C", 64}, {"V", 96}, {"chunk", 40}},
                                {{"M", 17}, {"C", 128}, {"V", 256}, {"chunk", 256}}};
  };
  r.add(OpDef{"lm_head_ce_fwd", fam, "fused LM head + cross-entropy, vocab-chunked (loss, lse)", true, lp, {}, lm_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_lm_head_ce(s, seed, false); },
              [](const OpShape& s, const OpOptions& o) { return bench_lm_head_ce(s, o, false); }});
  r.add(OpDef{"lm_head_ce_bwd", fam, "fused LM head + cross-entropy backward (dx bf16, dW fp32 +=)", true, lp, {}, lm_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_lm_head_ce(s, seed, true); },
              [](const OpShape& s, const OpOptions& o) { return bench_lm_head_ce(s, o, true); }});

  const std::vector<OpParam> op = {{"n", 268435456, "parameters"}, {"step", 3, "0-based optimizer step"},
                                   {"mask", 1, "per-element decay mask"}};
  auto ad_shapes = [] {
    return std::vector<OpShape>{{{"n", 1003}, {"step", 0}, {"mask", 1}}, {{"n", 4096}, {"step", 7}, {"mask", 0}}};
  };
  r.add(OpDef{"adamw", fam, "AdamW step (fp32 master, bf16 shadow, decay mask, device clip scale)", true, op, {}, ad_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_adamw(s, seed); },
              [](const OpShape& s, const OpOptions& o) { return bench_adamw(s, o, false); }});
  const std::vector<OpParam> gp = {{"n", 268435456, "parameters"}};
  auto gn_shapes = [] { return std::vector<OpShape>{{{"n", 1003}}, {{"n", 100003}}, {{"n", 4000000}}}; };
  r.add(OpDef{"grad_norm", fam, "global gradient L2 norm (fp64, deterministic two-pass) + clip scale", true, gp, {}, gn_shapes,
              [](const OpShape& s, uint64_t seed, const OpOptions&) { return check_grad_norm(s, seed); },
              [](const OpShape& s, const OpOptions& o) { return bench_adamw(s, o, true); }});
}

}  // namespace megacpp
