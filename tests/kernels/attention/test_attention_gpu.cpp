// GPU tests of the attention family (skip without a GPU):
//  - native and cuDNN vs the float64 reference (full comparison up to 4k tokens forward / 2k backward,
//    sampled query rows beyond), D = 64 and 128, MHA and GQA, two seeds each;
//  - cuDNN vs native on the GPU at 16k tokens (forward and backward);
//  - determinism of the native backward (bitwise), dispatcher records and error messages;
//  - with MEGACPP_ATTN_BENCH=1: the speed-bar table (tools/device/attention.sh).
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_dispatch.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/common/metrics.hpp"
#include "kernels/registry/op_registry.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp {
void register_attention_ops(OpRegistry& r);
namespace {

const OpRegistry& reg() {
  static OpRegistry r = [] {
    OpRegistry x;
    register_attention_ops(x);
    return x;
  }();
  return r;
}

OpShape shp(int64_t B, int64_t S, int64_t H, int64_t Hk, int64_t D) {
  return {{"B", B}, {"S", S}, {"heads", H}, {"kv_heads", Hk}, {"head_dim", D}};
}

void run_check(const std::string& op, const OpShape& s, const std::string& backend, uint64_t seed) {
  OpOptions o;
  o.flags["backend"] = backend;
  const CheckResult r = reg().find(op)->check(s, seed, o);
  std::printf("%-9s %-6s [%s] seed %llu: %s\n%s", op.c_str(), backend.c_str(), shape_to_string(s).c_str(),
              static_cast<unsigned long long>(seed), r.pass() ? "pass" : "FAIL", format_metric_table(r.tensors).c_str());
  EXPECT_TRUE(r.pass()) << op << " " << backend << " " << shape_to_string(s) << "\n" << r.note;
  if (backend != "auto") EXPECT_NE(r.note.find("\"observed\":\"" + backend + "\""), std::string::npos) << r.note;
}

std::vector<OpShape> ref_shapes() {
  return {shp(1, 128, 2, 2, 64),  shp(2, 256, 4, 1, 64),  shp(1, 384, 4, 2, 128), shp(2, 512, 2, 2, 128),
          shp(1, 1024, 8, 2, 64), shp(1, 2048, 2, 1, 128)};
}

class AttnBackends : public ::testing::TestWithParam<std::string> {};

TEST_P(AttnBackends, ForwardMatchesReference) {
  MEGACPP_REQUIRE_GPU();
  for (const auto& s : ref_shapes())
    for (uint64_t seed : {1ull, 2ull}) run_check("attn_fwd", s, GetParam(), seed);
}

TEST_P(AttnBackends, BackwardMatchesReference) {
  MEGACPP_REQUIRE_GPU();
  for (const auto& s : ref_shapes())
    for (uint64_t seed : {1ull, 2ull}) run_check("attn_bwd", s, GetParam(), seed);
}

TEST_P(AttnBackends, LongForwardFullAndSampledRows) {
  MEGACPP_REQUIRE_GPU();
  run_check("attn_fwd", shp(1, 4096, 2, 1, 128), GetParam(), 3);  // full comparison
  run_check("attn_fwd", shp(1, 8192, 2, 2, 64), GetParam(), 4);   // 64 sampled rows
}

// The native kernels' alternative configurations against the reference: forward configs 1 and 2 on every
// reference shape (MHA, GQA, D 64/128) and the long shapes (4k full, 8k sampled rows); backward config 1
// on every reference shape. Two seeds each. (The defaults run in AttnBackends.)
TEST(AttnGpu, NativeTileConfigsMatchReference) {
  MEGACPP_REQUIRE_GPU();
  auto shapes = ref_shapes();
  shapes.push_back(shp(1, 4096, 2, 1, 128));
  shapes.push_back(shp(1, 8192, 2, 2, 64));
  for (const auto& s : shapes)
    for (uint64_t seed : {11ull, 12ull})
      for (const auto& [op, cfg] : std::vector<std::pair<std::string, std::string>>{
               {"attn_fwd", "1"}, {"attn_fwd", "2"}, {"attn_bwd", "1"}}) {
        const bool fwd = op == "attn_fwd";
        if (!fwd && s.at("S") > 2048) continue;
        OpOptions o;
        o.flags["backend"] = "native";
        o.flags[fwd ? "native-fwd-config" : "native-bwd-config"] = cfg;
        const CheckResult r = reg().find(op)->check(s, seed, o);
        std::printf("%s native cfg %s [%s] seed %llu: %s\n%s", op.c_str(), cfg.c_str(), shape_to_string(s).c_str(),
                    static_cast<unsigned long long>(seed), r.pass() ? "pass" : "FAIL",
                    format_metric_table(r.tensors).c_str());
        EXPECT_TRUE(r.pass()) << op << " " << shape_to_string(s) << "\n" << r.note;
      }
}

INSTANTIATE_TEST_SUITE_P(Backends, AttnBackends, ::testing::Values("native", "cudnn"));

TEST(AttnGpu, RopeMatchesReference) {
  MEGACPP_REQUIRE_GPU();
  for (const auto& s : reg().find("attn_rope")->test_shapes())
    for (const char* on : {"on", "off"}) {
      OpOptions o;
      o.flags["rope"] = on;
      o.flags["theta"] = "500000";
      const CheckResult r = reg().find("attn_rope")->check(s, 7, o);
      EXPECT_TRUE(r.pass()) << r.note << "\n" << format_metric_table(r.tensors);
    }
}

// Runs fwd + bwd of one backend on shared inputs; returns O, LSE, dQ, dK, dV as doubles.
struct Outs {
  std::vector<double> o, lse, dq, dk, dv;
  attn::AttnRecord rf, rb;
};
Outs run_backend(const std::string& backend, const attn::AttnShape& s, DeviceArray<uint16_t>& q,
                 DeviceArray<uint16_t>& k, DeviceArray<uint16_t>& v, DeviceArray<uint16_t>& dout) {
  DeviceArray<uint16_t> o(q.size()), dq(q.size()), dk(k.size()), dv(k.size());
  DeviceArray<float> lse(static_cast<size_t>(s.lse_elems()));
  o.poison(), dq.poison(), dk.poison(), dv.poison(), lse.poison();
  const auto be = attn::parse_backend(backend);
  Outs r;
  const auto pf = attn::attention_resolve(be, s, false);
  DeviceArray<unsigned char> wsf(pf.workspace_bytes);
  r.rf = attn::attention_fwd(be, s, {q.get(), k.get(), v.get(), o.get(), lse.get(), 0.f}, wsf.get(), wsf.size(), nullptr);
  const auto pb = attn::attention_resolve(be, s, true);
  DeviceArray<unsigned char> wsb(pb.workspace_bytes);
  wsb.poison();
  r.rb = attn::attention_bwd(be, s, {q.get(), k.get(), v.get(), o.get(), dout.get(), lse.get(), dq.get(), dk.get(), dv.get(), 0.f},
                             wsb.get(), wsb.size(), nullptr);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  r.o = from_bf16_bits(o.download());
  auto l = lse.download();
  r.lse.assign(l.begin(), l.end());
  r.dq = from_bf16_bits(dq.download());
  r.dk = from_bf16_bits(dk.download());
  r.dv = from_bf16_bits(dv.download());
  return r;
}

TEST(AttnGpu, CudnnVsNativeAt16k) {
  MEGACPP_REQUIRE_GPU();
  for (int64_t D : {128, 64}) {
    const attn::AttnShape s{1, 16384, 4, 2, D};
    DeviceArray<uint16_t> q(static_cast<size_t>(s.q_elems())), k(static_cast<size_t>(s.kv_elems())),
        v(static_cast<size_t>(s.kv_elems())), dout(static_cast<size_t>(s.q_elems()));
    attn::fill_uniform_bf16(q.get(), s.q_elems(), 101, 1.7f, nullptr);
    attn::fill_uniform_bf16(k.get(), s.kv_elems(), 102, 1.7f, nullptr);
    attn::fill_uniform_bf16(v.get(), s.kv_elems(), 103, 1.7f, nullptr);
    attn::fill_uniform_bf16(dout.get(), s.q_elems(), 104, 1.7f, nullptr);
    const Outs a = run_backend("cudnn", s, q, k, v, dout);
    const Outs b = run_backend("native", s, q, k, v, dout);
    std::vector<TensorMetric> ms = {compare_tensors("O", a.o, b.o, 1e-2, 1e-3),
                                    compare_tensors("LSE", a.lse, b.lse, 1e-3, 1e-3),
                                    compare_tensors("dQ", a.dq, b.dq, 3e-2, 1e-3),
                                    compare_tensors("dK", a.dk, b.dk, 3e-2, 1e-3),
                                    compare_tensors("dV", a.dv, b.dv, 3e-2, 1e-3)};
    std::printf("cudnn vs native, B=1 S=16384 H=4 Hk=2 D=%lld (ref = native)\n%s", static_cast<long long>(D),
                format_metric_table(ms).c_str());
    std::printf("cudnn fwd record: %s\ncudnn bwd record: %s\n", a.rf.to_json().dump().c_str(), a.rb.to_json().dump().c_str());
    for (const auto& m : ms) EXPECT_TRUE(m.pass()) << m.name;
  }
}

TEST(AttnGpu, NativeBackwardIsDeterministic) {
  MEGACPP_REQUIRE_GPU();
  const attn::AttnShape s{2, 1024, 8, 2, 128};
  DeviceArray<uint16_t> q(static_cast<size_t>(s.q_elems())), k(static_cast<size_t>(s.kv_elems())),
      v(static_cast<size_t>(s.kv_elems())), dout(static_cast<size_t>(s.q_elems()));
  attn::fill_uniform_bf16(q.get(), s.q_elems(), 1, 1.7f, nullptr);
  attn::fill_uniform_bf16(k.get(), s.kv_elems(), 2, 1.7f, nullptr);
  attn::fill_uniform_bf16(v.get(), s.kv_elems(), 3, 1.7f, nullptr);
  attn::fill_uniform_bf16(dout.get(), s.q_elems(), 4, 1.7f, nullptr);
  for (int cfg : {0, 1}) {
    attn::native_set_bwd_config(cfg);
    const Outs a = run_backend("native", s, q, k, v, dout);
    const Outs b = run_backend("native", s, q, k, v, dout);
    attn::native_set_bwd_config(0);
    EXPECT_EQ(a.o, b.o) << "bwd config " << cfg;
    EXPECT_EQ(a.dq, b.dq) << "bwd config " << cfg;
    EXPECT_EQ(a.dk, b.dk) << "bwd config " << cfg;
    EXPECT_EQ(a.dv, b.dv) << "bwd config " << cfg;
  }
}

TEST(AttnGpu, DispatcherRecordsAndRefusals) {
  MEGACPP_REQUIRE_GPU();
  // auto on a supported shape: cuDNN, with engine id and build time recorded; second call hits the cache.
  const attn::AttnShape s{1, 256, 4, 2, 128};
  const auto r1 = attn::attention_resolve(attn::Backend::Auto, s, false);
  std::printf("auto fwd record: %s\n", r1.to_json().dump().c_str());
  EXPECT_EQ(r1.requested, "auto");
  if (r1.observed == "cudnn") {
    EXPECT_GE(r1.cudnn.engine_global_index, 0);
    EXPECT_GT(r1.cudnn.build_ms, 0.0);
    EXPECT_TRUE(r1.fallbacks.empty());
  } else {
    ASSERT_EQ(r1.fallbacks.size(), 1u) << "auto fell back without saying why";
    EXPECT_FALSE(r1.cudnn.error.empty());
  }
  const auto r2 = attn::attention_resolve(attn::Backend::Auto, s, false);
  EXPECT_TRUE(r2.cudnn.cache_hit);
  // native refuses head_dim 96 naming the limit; cudnn accepts it (multiple of 8); auto picks cudnn.
  try {
    attn::attention_resolve(attn::Backend::Native, attn::AttnShape{1, 256, 2, 2, 96}, false);
    ADD_FAILURE() << "native accepted head_dim 96";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim=96"), std::string::npos) << e.what();
  }
  // S not a multiple of 128: cuDNN (as built) and native refuse; auto says both reasons.
  try {
    attn::attention_resolve(attn::Backend::Auto, attn::AttnShape{1, 200, 2, 2, 64}, false);
    ADD_FAILURE() << "S=200 accepted";
  } catch (const std::runtime_error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("cudnn"), std::string::npos) << w;
    EXPECT_NE(w.find("S=200"), std::string::npos) << w;
  }
  EXPECT_THROW(attn::attention_resolve(attn::Backend::Cudnn, attn::AttnShape{1, 200, 2, 2, 64}, true),
               std::runtime_error);
  EXPECT_THROW(attn::parse_backend("flash"), std::invalid_argument);
}

TEST(AttnGpu, AutoFallbackIsRecordedNeverSilent) {
  MEGACPP_REQUIRE_GPU();
  const attn::AttnShape s{1, 640, 2, 1, 64};  // a shape no other test plans (refusals are cached per shape)
  setenv("MEGACPP_ATTN_DISABLE_CUDNN", "1", 1);
  const auto r = attn::attention_resolve(attn::Backend::Auto, s, true);
  EXPECT_THROW(attn::attention_resolve(attn::Backend::Cudnn, s, false), std::runtime_error);
  unsetenv("MEGACPP_ATTN_DISABLE_CUDNN");
  std::printf("auto bwd with cuDNN disabled: %s\n", r.to_json().dump().c_str());
  EXPECT_EQ(r.observed, "native");
  ASSERT_EQ(r.fallbacks.size(), 1u);
  EXPECT_NE(r.fallbacks[0].find("MEGACPP_ATTN_DISABLE_CUDNN"), std::string::npos) << r.fallbacks[0];
  EXPECT_NE(r.to_json().dump().find("cudnn -> native"), std::string::npos);
  // and the backend it fell back to is correct on that shape
  OpOptions o;
  o.flags["backend"] = "native";
  EXPECT_TRUE(reg().find("attn_bwd")->check(shp(1, 640, 2, 1, 64), 9, o).pass());
}

// ---- speed bar (only with MEGACPP_ATTN_BENCH=1) ---------------------------------------------------
TEST(AttnBench, SpeedBar) {
  MEGACPP_REQUIRE_GPU();
  if (!std::getenv("MEGACPP_ATTN_BENCH")) GTEST_SKIP() << "set MEGACPP_ATTN_BENCH=1";
  const char* out = std::getenv("MEGACPP_ATTN_BENCH_OUT");
  nlohmann::json all = nlohmann::json::array();
  std::printf("\n%-7s %-4s %-6s %-3s %-5s | %9s %7s | %9s %7s | %11s %7s | %s\n", "backend", "D", "S", "B", "cfg",
              "fwd ms", "TF/s", "bwd ms", "TF/s", "fwd+bwd ms", "TF/s", "engine/build");
  const int iters = std::getenv("MEGACPP_ATTN_ITERS") ? std::atoi(std::getenv("MEGACPP_ATTN_ITERS")) : 20;
  for (int64_t D : {128, 64})
    for (int64_t S : {4096, 8192, 16384})
      for (const char* be : {"cudnn", "native"}) {
        const OpShape sh = shp(32768 / S, S, 16, 16, D);
        OpOptions o;
        o.flags["backend"] = be;
        o.flags["profile"] = "1";
        o.warmup = 3;
        o.iters = iters;
        const BenchResult f = reg().find("attn_fwd")->bench(sh, o);
        const BenchResult b = reg().find("attn_bwd")->bench(sh, o);
        const double ftf = f.extra.value("tflops", 0.0), btf = b.extra.value("tflops", 0.0);
        std::string eng;
        if (std::string(be) == "cudnn") {
          const auto& cf = f.extra["record"]["cudnn"];
          const auto& cb = b.extra["record_bwd"]["cudnn"];
          eng = "fwd eng" + std::to_string(cf.value("engine_global_index", -1)) + " " + cf.value("knobs", std::string()) +
                " build " + std::to_string(static_cast<int>(cf.value("build_ms", 0.0))) + "ms; bwd eng" +
                std::to_string(cb.value("engine_global_index", -1)) + " build " +
                std::to_string(static_cast<int>(cb.value("build_ms", 0.0))) + "ms";
        }
        std::printf("%-7s %-4lld %-6lld %-3lld %-5s | %9.3f %7.1f | %9.3f %7.1f | %11.3f %7.1f | %s\n", be,
                    static_cast<long long>(D), static_cast<long long>(S), static_cast<long long>(32768 / S), "dflt",
                    f.median_ms, ftf, b.median_ms, btf, b.extra.value("fwd_bwd_median_ms", 0.0),
                    b.extra.value("fwd_bwd_tflops", 0.0), eng.c_str());
        all.push_back({{"backend", be}, {"D", D}, {"S", S}, {"B", 32768 / S}, {"fwd", {{"median_ms", f.median_ms}, {"min_ms", f.min_ms}, {"max_ms", f.max_ms}, {"runs", f.runs}, {"extra", f.extra}, {"kernels", f.kernels}}},
                       {"bwd", {{"median_ms", b.median_ms}, {"min_ms", b.min_ms}, {"max_ms", b.max_ms}, {"runs", b.runs}, {"extra", b.extra}, {"kernels", b.kernels}}}});
        const bool ab = !std::getenv("MEGACPP_ATTN_AB") || std::string(std::getenv("MEGACPP_ATTN_AB")) != "0";
        if (ab && std::string(be) == "native") {  // A/B of the alternative tile configs
          // MEGACPP_ATTN_AB_FWD_CFGS / _BWD_CFGS: digits of the configs to A/B (default "12" / "1").
          const char* fe = std::getenv("MEGACPP_ATTN_AB_FWD_CFGS");
          const char* bw = std::getenv("MEGACPP_ATTN_AB_BWD_CFGS");
          const std::string fcfgs = fe ? fe : "12", bcfgs = bw ? bw : "1";
          for (char fc : fcfgs) {
            o.flags["native-fwd-config"] = std::string(1, fc);
            const BenchResult f1 = reg().find("attn_fwd")->bench(sh, o);
            o.flags.erase("native-fwd-config");
            std::printf("%-7s %-4lld %-6lld %-3lld fwd%c  | %9.3f %7.1f |\n", be, static_cast<long long>(D),
                        static_cast<long long>(S), static_cast<long long>(32768 / S), fc, f1.median_ms,
                        f1.extra.value("tflops", 0.0));
            all.back()[std::string("fwd_cfg") + fc] = {{"median_ms", f1.median_ms}, {"min_ms", f1.min_ms},
                                                       {"max_ms", f1.max_ms}, {"extra", f1.extra}};
          }
          for (char bc : bcfgs) {
            const int c = bc - '0';
            o.flags["native-bwd-config"] = std::to_string(c);
            o.flags["profile"] = "1";
            const BenchResult b1 = reg().find("attn_bwd")->bench(sh, o);
            std::printf("%-7s %-4lld %-6lld %-3lld bwd%d  | %9s %7s | %9.3f %7.1f | %11.3f %7.1f |\n", be,
                        static_cast<long long>(D), static_cast<long long>(S), static_cast<long long>(32768 / S), c, "",
                        "", b1.median_ms, b1.extra.value("tflops", 0.0), b1.extra.value("fwd_bwd_median_ms", 0.0),
                        b1.extra.value("fwd_bwd_tflops", 0.0));
            all.back()["bwd_cfg" + std::to_string(c)] = {{"median_ms", b1.median_ms}, {"min_ms", b1.min_ms},
                                                         {"max_ms", b1.max_ms}, {"extra", b1.extra}};
            if (b1.extra.contains("profile_ms"))
              std::printf("        native bwd%d kernels (ms): %s\n", c, b1.extra["profile_ms"].dump().c_str());
          }
          o.flags.erase("native-bwd-config");
        }
        if (std::string(be) == "native") {
          if (b.extra.contains("profile_ms")) std::printf("        native bwd kernels (ms): %s\n", b.extra["profile_ms"].dump().c_str());
        }
        std::fflush(stdout);
      }
  if (out) std::ofstream(out) << all.dump(1) << "\n";
}

}  // namespace
}  // namespace megacpp
