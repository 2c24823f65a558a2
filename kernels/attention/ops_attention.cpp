// ops_attention.cpp — op cases of the attention family: attn_fwd, attn_bwd (flag backend=auto|cudnn|native)
// and attn_rope. check() compares the GPU result with the float64 reference (attention_ref.hpp) on fresh
// random bf16-representable inputs, outputs poisoned (NaN) first; bench() times with CUDA events.
//
// Tolerances (stable_max_rel = max|ours-ref| / max|ref|), bf16 in/out with fp32 accumulation:
//   O 1e-2 (bf16 output rounding 2^-9 relative plus P rounded to bf16 before P·V), LSE 1e-3 (fp32 all the way),
//   dQ, dK, dV 2e-2 (P and dS rounded to bf16 before their matmuls; sums over up to S*H/Hk terms),
//   bad_frac (elements off by > 10% of max|ref|) < 1e-3. RoPE 1e-2.
// Long sequences: above kFullRows query rows, forward compares a sample of 64 rows (first, last, random)
// against the reference; every output element is still checked for NaN/Inf. Backward compares in full
// up to S = kFullBwd (its reference is O(S^2 d) per head).
// Causal FLOPs (half the score matrix): fwd = 2 matmuls * 2 * B*H*S*S*D / 2 = 2*B*H*S^2*D; bwd = 2.5 x fwd.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention/attention_ref.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/common/metrics.hpp"
#include "kernels/registry/op_registry.hpp"

#if MEGACPP_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_dispatch.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/common/gpu_timing.hpp"
#endif

namespace megacpp {

namespace {

constexpr int64_t kFullRows = 4096;
constexpr int64_t kFullBwd = 2048;
constexpr double kPeakTflops = 780.0;  // measured H100 bf16 dense peak used across the project

[[maybe_unused]] attn_ref::Shape ref_shape(const OpShape& s) {
  attn_ref::Shape r;
  r.B = s.at("B");
  r.S = s.at("S");
  r.H = s.at("heads");
  r.Hk = s.at("kv_heads");
  r.D = s.at("head_dim");
  attn_ref::validate(r);
  return r;
}

std::vector<OpParam> attn_params() {
  return {{"B", 2, "batch"},
          {"S", 16384, "sequence length (multiple of 128)"},
          {"heads", 16, "query heads"},
          {"kv_heads", 16, "key/value heads (heads % kv_heads == 0)"},
          {"head_dim", 128, "head dim (64 or 128 native; cuDNN: multiple of 8, <= 256)"}};
}

std::vector<OpShape> attn_test_shapes() {
  return {{{"B", 1}, {"S", 256}, {"heads", 4}, {"kv_heads", 2}, {"head_dim", 64}},
          {{"B", 2}, {"S", 128}, {"heads", 2}, {"kv_heads", 2}, {"head_dim", 128}}};
}

[[maybe_unused]] double causal_fwd_flops(const attn_ref::Shape& s) {
  return 2.0 * 2.0 * static_cast<double>(s.B * s.H) * static_cast<double>(s.S) * static_cast<double>(s.S) *
         static_cast<double>(s.D) / 2.0;
}

#if MEGACPP_WITH_CUDA
attn::AttnShape gpu_shape(const attn_ref::Shape& r) { return attn::AttnShape{r.B, r.S, r.H, r.Hk, r.D}; }

std::vector<double> rand_bf16(size_t n, uint64_t seed) {
  std::vector<double> v = random_normal(n, seed, 1.0);
  round_vector_to_bf16(v);
  return v;
}

DeviceArray<uint16_t> to_dev_bf16(const std::vector<double>& v) { return DeviceArray<uint16_t>(to_bf16_bits(v)); }

std::vector<double> bf16_dev_to_host(const DeviceArray<uint16_t>& d) { return from_bf16_bits(d.download()); }

std::vector<double> f32_dev_to_host(const DeviceArray<float>& d) {
  auto h = d.download();
  return std::vector<double>(h.begin(), h.end());
}

// Rows to compare: all, or a sample when S is large. Returns query positions.
std::vector<int64_t> compare_rows(int64_t S, uint64_t seed) {
  std::vector<int64_t> rows;
  if (S <= kFullRows) return rows;  // empty = all
  HostRng rng(seed ^ 0xA5A5A5A5ull);
  rows.push_back(0);
  rows.push_back(S - 1);
  for (int i = 0; i < 62; ++i) rows.push_back(static_cast<int64_t>(rng.uniform() * static_cast<double>(S)) % S);
  return rows;
}

// Gathers rows `rows` of a (B,S,nh,D) tensor (or (B,H,S) when D==1 and lse) into a flat vector.
std::vector<double> gather_bshd(const std::vector<double>& x, const attn_ref::Shape& s, int64_t nh, int64_t D,
                                const std::vector<int64_t>& rows) {
  std::vector<double> out;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t : rows)
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t d = 0; d < D; ++d) out.push_back(x[static_cast<size_t>(((b * s.S + t) * nh + h) * D + d)]);
  return out;
}
std::vector<double> gather_lse(const std::vector<double>& x, const attn_ref::Shape& s, const std::vector<int64_t>& rows) {
  std::vector<double> out;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t t : rows) out.push_back(x[static_cast<size_t>((b * s.H + h) * s.S + t)]);
  return out;
}

size_t count_non_finite(const std::vector<double>& v) {
  size_t n = 0;
  for (double x : v) n += std::isfinite(x) ? 0 : 1;
  return n;
}

CheckResult check_fwd(const OpShape& shape, uint64_t seed, const OpOptions& opt) {
  const attn_ref::Shape s = ref_shape(shape);
  const attn::AttnShape g = gpu_shape(s);
  const auto backend = attn::parse_backend(opt.flag("backend", "auto"));
  const auto q = rand_bf16(static_cast<size_t>(s.q_elems()), seed * 3 + 1);
  const auto k = rand_bf16(static_cast<size_t>(s.kv_elems()), seed * 3 + 2);
  const auto v = rand_bf16(static_cast<size_t>(s.kv_elems()), seed * 3 + 3);
  auto dq = to_dev_bf16(q), dk = to_dev_bf16(k), dv = to_dev_bf16(v);
  DeviceArray<uint16_t> dout(static_cast<size_t>(s.q_elems()));
  DeviceArray<float> dlse(static_cast<size_t>(s.lse_elems()));
  dout.poison();
  dlse.poison();
  const attn::AttnRecord rec0 = attn::attention_resolve(backend, g, false);
  DeviceArray<unsigned char> ws(rec0.workspace_bytes);
  attn::AttnFwdArgs a{dq.get(), dk.get(), dv.get(), dout.get(), dlse.get(), 0.f};
  const std::string cfg = opt.flag("native-fwd-config");
  if (!cfg.empty()) attn::native_set_fwd_config(std::stoi(cfg));
  const attn::AttnRecord rec = attn::attention_fwd(backend, g, a, ws.get(), ws.size(), nullptr);
  attn::native_set_fwd_config(0);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  const auto o_gpu = bf16_dev_to_host(dout);
  const auto lse_gpu = f32_dev_to_host(dlse);

  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  const std::vector<int64_t> rows = compare_rows(s.S, seed);
  std::vector<double> o_ref(static_cast<size_t>(s.q_elems()), 0.0), lse_ref(static_cast<size_t>(s.lse_elems()), 0.0);
  attn_ref::forward(s, scale, q.data(), k.data(), v.data(), o_ref.data(), lse_ref.data(), rows);
  CheckResult r;
  if (rows.empty()) {
    r.tensors.push_back(compare_tensors("O", o_gpu, o_ref, 1e-2, 1e-3));
    r.tensors.push_back(compare_tensors("LSE", lse_gpu, lse_ref, 1e-3, 1e-3));
  } else {
    auto mo = compare_tensors("O[rows]", gather_bshd(o_gpu, s, s.H, s.D, rows), gather_bshd(o_ref, s, s.H, s.D, rows),
                              1e-2, 1e-3);
    auto ml = compare_tensors("LSE[rows]", gather_lse(lse_gpu, s, rows), gather_lse(lse_ref, s, rows), 1e-3, 1e-3);
    mo.non_finite += count_non_finite(o_gpu);  // every element must have been written
    ml.non_finite += count_non_finite(lse_gpu);
    r.tensors.push_back(mo);
    r.tensors.push_back(ml);
  }
  r.note = "attn_fwd " + rec.to_json().dump() + (rows.empty() ? "" : " (64 sampled query rows compared)");
  return r;
}

CheckResult check_bwd(const OpShape& shape, uint64_t seed, const OpOptions& opt) {
  const attn_ref::Shape s = ref_shape(shape);
  if (s.S > kFullBwd)
    throw std::invalid_argument("attn_bwd check: S=" + std::to_string(s.S) + " > " + std::to_string(kFullBwd) +
                                " (reference cost); compare backends against each other instead");
  const attn::AttnShape g = gpu_shape(s);
  const auto backend = attn::parse_backend(opt.flag("backend", "auto"));
  const auto q = rand_bf16(static_cast<size_t>(s.q_elems()), seed * 5 + 1);
  const auto k = rand_bf16(static_cast<size_t>(s.kv_elems()), seed * 5 + 2);
  const auto v = rand_bf16(static_cast<size_t>(s.kv_elems()), seed * 5 + 3);
  const auto dO = rand_bf16(static_cast<size_t>(s.q_elems()), seed * 5 + 4);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  std::vector<double> o(static_cast<size_t>(s.q_elems())), lse(static_cast<size_t>(s.lse_elems()));
  attn_ref::forward(s, scale, q.data(), k.data(), v.data(), o.data(), lse.data());
  round_vector_to_bf16(o);  // what a bf16 forward hands to the backward
  std::vector<float> lse_f(lse.begin(), lse.end());
  std::vector<double> dq_ref(static_cast<size_t>(s.q_elems())), dk_ref(static_cast<size_t>(s.kv_elems())),
      dv_ref(static_cast<size_t>(s.kv_elems()));
  attn_ref::backward(s, scale, q.data(), k.data(), v.data(), o.data(), dO.data(), lse.data(), dq_ref.data(),
                     dk_ref.data(), dv_ref.data());

  auto d_q = to_dev_bf16(q), d_k = to_dev_bf16(k), d_v = to_dev_bf16(v), d_o = to_dev_bf16(o), d_do = to_dev_bf16(dO);
  DeviceArray<float> d_lse(lse_f);
  DeviceArray<uint16_t> g_dq(static_cast<size_t>(s.q_elems())), g_dk(static_cast<size_t>(s.kv_elems())),
      g_dv(static_cast<size_t>(s.kv_elems()));
  g_dq.poison();
  g_dk.poison();
  g_dv.poison();
  const attn::AttnRecord rec0 = attn::attention_resolve(backend, g, true);
  DeviceArray<unsigned char> ws(rec0.workspace_bytes);
  ws.poison();  // the backends must not rely on a zeroed workspace
  attn::AttnBwdArgs a{d_q.get(), d_k.get(), d_v.get(), d_o.get(), d_do.get(), d_lse.get(),
                      g_dq.get(), g_dk.get(), g_dv.get(), 0.f};
  const std::string cfg = opt.flag("native-bwd-config");
  if (!cfg.empty()) attn::native_set_bwd_config(std::stoi(cfg));
  const attn::AttnRecord rec = attn::attention_bwd(backend, g, a, ws.get(), ws.size(), nullptr);
  attn::native_set_bwd_config(0);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  CheckResult r;
  r.tensors.push_back(compare_tensors("dQ", bf16_dev_to_host(g_dq), dq_ref, 2e-2, 1e-3));
  r.tensors.push_back(compare_tensors("dK", bf16_dev_to_host(g_dk), dk_ref, 2e-2, 1e-3));
  r.tensors.push_back(compare_tensors("dV", bf16_dev_to_host(g_dv), dv_ref, 2e-2, 1e-3));
  r.note = "attn_bwd " + rec.to_json().dump() + (cfg.empty() ? "" : " native-bwd-config " + cfg);
  return r;
}

struct BenchBuffers {
  DeviceArray<uint16_t> q, k, v, o, dout, dq, dk, dv;
  DeviceArray<float> lse;
  explicit BenchBuffers(const attn_ref::Shape& s)
      : q(static_cast<size_t>(s.q_elems())), k(static_cast<size_t>(s.kv_elems())), v(static_cast<size_t>(s.kv_elems())),
        o(static_cast<size_t>(s.q_elems())), dout(static_cast<size_t>(s.q_elems())), dq(static_cast<size_t>(s.q_elems())),
        dk(static_cast<size_t>(s.kv_elems())), dv(static_cast<size_t>(s.kv_elems())),
        lse(static_cast<size_t>(s.lse_elems())) {
    attn::fill_uniform_bf16(q.get(), s.q_elems(), 11, 1.7f, nullptr);
    attn::fill_uniform_bf16(k.get(), s.kv_elems(), 12, 1.7f, nullptr);
    attn::fill_uniform_bf16(v.get(), s.kv_elems(), 13, 1.7f, nullptr);
    attn::fill_uniform_bf16(dout.get(), s.q_elems(), 14, 1.7f, nullptr);
  }
};

void run_fwd(const attn::AttnRecord& rec, const attn::AttnShape& g, BenchBuffers& b, void* ws, size_t wsb) {
  attn::AttnFwdArgs a{b.q.get(), b.k.get(), b.v.get(), b.o.get(), b.lse.get(), 0.f};
  if (rec.observed == "cudnn") attn::cudnn_fwd(g, a, ws, wsb, nullptr);
  else attn::native_fwd(g, a, nullptr);
}
void run_bwd(const attn::AttnRecord& rec, const attn::AttnShape& g, BenchBuffers& b, void* ws, size_t wsb) {
  attn::AttnBwdArgs a{b.q.get(), b.k.get(), b.v.get(), b.o.get(), b.dout.get(), b.lse.get(),
                      b.dq.get(), b.dk.get(), b.dv.get(), 0.f};
  if (rec.observed == "cudnn") attn::cudnn_bwd(g, a, ws, wsb, nullptr);
  else attn::native_bwd(g, a, ws, wsb, nullptr);
}

void add_kernel_report(BenchResult& r, const attn::AttnRecord& rec, int64_t D) {
  if (rec.observed == "native") r.kernels = nlohmann::json::parse(attn::native_kernel_report(D));
}

BenchResult bench_fwd(const OpShape& shape, const OpOptions& opt) {
  const attn_ref::Shape s = ref_shape(shape);
  const attn::AttnShape g = gpu_shape(s);
  const auto backend = attn::parse_backend(opt.flag("backend", "auto"));
  if (!opt.flag("native-fwd-config").empty()) attn::native_set_fwd_config(std::stoi(opt.flag("native-fwd-config")));
  BenchBuffers b(s);
  const attn::AttnRecord rec = attn::attention_resolve(backend, g, false);
  DeviceArray<unsigned char> ws(rec.workspace_bytes);
  const TimingStats t = time_gpu([&] { run_fwd(rec, g, b, ws.get(), ws.size()); }, opt.warmup, opt.iters);
  BenchResult r;
  r.median_ms = t.median_ms;
  r.min_ms = t.min_ms;
  r.max_ms = t.max_ms;
  r.runs = t.runs;
  r.flops_executed = r.flops_model = causal_fwd_flops(s);
  r.bytes = 2.0 * static_cast<double>(2 * s.q_elems() + 2 * s.kv_elems()) + 4.0 * static_cast<double>(s.lse_elems());
  const double tf = r.flops_model / (t.median_ms * 1e-3) * 1e-12;
  r.extra = {{"record", rec.to_json()}, {"tflops", tf}, {"pct_of_780", 100.0 * tf / kPeakTflops}};
  add_kernel_report(r, rec, s.D);
  r.note = "observed backend " + rec.observed;
  attn::native_set_fwd_config(0);
  return r;
}

BenchResult bench_bwd(const OpShape& shape, const OpOptions& opt) {
  const attn_ref::Shape s = ref_shape(shape);
  const attn::AttnShape g = gpu_shape(s);
  const auto backend = attn::parse_backend(opt.flag("backend", "auto"));
  if (!opt.flag("native-bwd-config").empty()) attn::native_set_bwd_config(std::stoi(opt.flag("native-bwd-config")));
  BenchBuffers b(s);
  const attn::AttnRecord rf = attn::attention_resolve(backend, g, false);
  const attn::AttnRecord rb = attn::attention_resolve(backend, g, true);
  DeviceArray<unsigned char> wsf(rf.workspace_bytes), wsb(rb.workspace_bytes);
  run_fwd(rf, g, b, wsf.get(), wsf.size());  // o and lse for the backward
  const TimingStats t = time_gpu([&] { run_bwd(rb, g, b, wsb.get(), wsb.size()); }, opt.warmup, opt.iters);
  const TimingStats tfb = time_gpu(
      [&] {
        run_fwd(rf, g, b, wsf.get(), wsf.size());
        run_bwd(rb, g, b, wsb.get(), wsb.size());
      },
      opt.warmup, opt.iters);
  BenchResult r;
  r.median_ms = t.median_ms;
  r.min_ms = t.min_ms;
  r.max_ms = t.max_ms;
  r.runs = t.runs;
  r.flops_executed = r.flops_model = 2.5 * causal_fwd_flops(s);
  r.bytes = 2.0 * static_cast<double>(4 * s.q_elems() + 4 * s.kv_elems()) + 4.0 * static_cast<double>(s.lse_elems());
  const double tf = r.flops_model / (t.median_ms * 1e-3) * 1e-12;
  const double tf_fb = 3.5 * causal_fwd_flops(s) / (tfb.median_ms * 1e-3) * 1e-12;
  r.extra = {{"record_fwd", rf.to_json()}, {"record_bwd", rb.to_json()},        {"tflops", tf},
             {"pct_of_780", 100.0 * tf / kPeakTflops}, {"fwd_bwd_median_ms", tfb.median_ms},
             {"fwd_bwd_tflops", tf_fb}, {"fwd_bwd_runs", tfb.runs}};
  add_kernel_report(r, rb, s.D);
  if (rb.observed == "native" && opt.flag("profile") == "1") {
    attn::AttnBwdArgs a{b.q.get(), b.k.get(), b.v.get(), b.o.get(), b.dout.get(), b.lse.get(),
                        b.dq.get(), b.dk.get(), b.dv.get(), 0.f};
    nlohmann::json prof = nlohmann::json::object();
    for (const auto& [name, ms] : attn::native_bwd_profile(g, a, wsb.get(), wsb.size(), opt.iters)) prof[name] = ms;
    r.extra["profile_ms"] = prof;
  }
  r.note = "observed backend fwd " + rf.observed + ", bwd " + rb.observed;
  attn::native_set_bwd_config(0);
  return r;
}

CheckResult check_rope(const OpShape& shape, uint64_t seed, const OpOptions& opt) {
  const int64_t B = shape.at("B"), S = shape.at("S"), nh = shape.at("heads"), D = shape.at("head_dim");
  const double theta = opt.flag("theta").empty() ? 10000.0 : std::stod(opt.flag("theta"));
  const bool enabled = opt.flag("rope", "on") != "off";
  const size_t n = static_cast<size_t>(B * S * nh * D);
  const auto x = rand_bf16(n, seed * 7 + 1);
  auto dx = to_dev_bf16(x);
  DeviceArray<uint16_t> dy(n), dz(n);
  dy.poison();
  dz.poison();
  attn::rope_bf16(dx.get(), dy.get(), B, S, nh, D, theta, enabled, false, 0, nullptr);
  attn::rope_bf16(dx.get(), dz.get(), B, S, nh, D, theta, enabled, true, 0, nullptr);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> y(n), z(n);
  attn_ref::rope_forward(B, S, nh, D, theta, enabled, x.data(), y.data());
  attn_ref::rope_backward(B, S, nh, D, theta, enabled, x.data(), z.data());
  CheckResult r;
  r.tensors.push_back(compare_tensors("rope_fwd", bf16_dev_to_host(dy), y, 1e-2, 1e-3));
  r.tensors.push_back(compare_tensors("rope_bwd", bf16_dev_to_host(dz), z, 1e-2, 1e-3));
  r.note = std::string("rope theta=") + std::to_string(theta) + (enabled ? " on" : " off");
  return r;
}

BenchResult bench_rope(const OpShape& shape, const OpOptions& opt) {
  const int64_t B = shape.at("B"), S = shape.at("S"), nh = shape.at("heads"), D = shape.at("head_dim");
  const size_t n = static_cast<size_t>(B * S * nh * D);
  DeviceArray<uint16_t> x(n), y(n);
  attn::fill_uniform_bf16(x.get(), static_cast<int64_t>(n), 5, 1.f, nullptr);
  const TimingStats t = time_gpu([&] { attn::rope_bf16(x.get(), y.get(), B, S, nh, D, 10000.0, true, false, 0, nullptr); },
                                 opt.warmup, opt.iters);
  BenchResult r;
  r.median_ms = t.median_ms;
  r.min_ms = t.min_ms;
  r.max_ms = t.max_ms;
  r.runs = t.runs;
  r.bytes = 4.0 * static_cast<double>(n);
  return r;
}
#else
[[noreturn]] void no_gpu() { throw std::runtime_error("attention ops need a CUDA build"); }
#endif

}  // namespace

void register_attention_ops(OpRegistry& r) {
  OpDef f;
  f.name = "attn_fwd";
  f.family = "attention";
  f.summary = "causal GQA flash attention forward (bf16, saves LSE); --backend auto|cudnn|native";
  f.needs_gpu = true;
  f.params = attn_params();
  f.flags = {"backend", "native-fwd-config"};
  f.test_shapes = attn_test_shapes;
#if MEGACPP_WITH_CUDA
  f.check = check_fwd;
  f.bench = bench_fwd;
#else
  f.check = [](const OpShape&, uint64_t, const OpOptions&) -> CheckResult { no_gpu(); };
#endif
  r.add(f);

  OpDef b;
  b.name = "attn_bwd";
  b.family = "attention";
  b.summary = "causal GQA flash attention backward (dQ,dK,dV); --backend auto|cudnn|native";
  b.needs_gpu = true;
  b.params = attn_params();
  b.flags = {"backend", "native-bwd-config", "profile"};
  b.test_shapes = attn_test_shapes;
#if MEGACPP_WITH_CUDA
  b.check = check_bwd;
  b.bench = bench_bwd;
#else
  b.check = [](const OpShape&, uint64_t, const OpOptions&) -> CheckResult { no_gpu(); };
#endif
  r.add(b);

  OpDef p;
  p.name = "attn_rope";
  p.family = "attention";
  p.summary = "rotary position embedding on bf16 (B,S,heads,head_dim), forward and transpose";
  p.needs_gpu = true;
  p.params = {{"B", 2, "batch"}, {"S", 4096, "sequence"}, {"heads", 16, "heads"}, {"head_dim", 128, "head dim (even)"}};
  p.flags = {"theta", "rope"};
  p.test_shapes = [] {
    return std::vector<OpShape>{{{"B", 1}, {"S", 300}, {"heads", 3}, {"head_dim", 64}},
                                {{"B", 2}, {"S", 64}, {"heads", 2}, {"head_dim", 128}}};
  };
#if MEGACPP_WITH_CUDA
  p.check = check_rope;
  p.bench = bench_rope;
#else
  p.check = [](const OpShape&, uint64_t, const OpOptions&) -> CheckResult { no_gpu(); };
#endif
  r.add(p);
}

}  // namespace megacpp
