// ops_mimo.cpp — op cases of the Mamba-3 MIMO scan kernels: mimo_fwd, mimo_bwd_fwd, mimo_bwd_bwd, mimo_all.
//
// Params: B,S,H,G,N,P,R,chunk (bench default: the seeds' reference H=16,G=1,N=64,P=64,R=4,chunk=16,B=8,S=8192).
// Flag `psiv-cache` (1/true/on): the forward writes PsiV = x·Ψ (B,H,S,R,P bf16) and the backward reads it.
// check(): GPU vs the float64 reference (mimo_ref) on fresh random inputs (q,k,v,z,trap rounded to bf16 first,
//   the rest to fp32), outputs and gradients poisoned (NaN) before the run. mimo_fwd checks `out`
//   (stable_max_rel < 0.01); mimo_bwd_fwd checks its outputs dZ, dΦ, dΖ; mimo_bwd_bwd the other 11 gradients;
//   mimo_all checks out + all 14 gradients (each < 0.02, bad_frac < 0.05).
// bench(): median of ≥ 20 CUDA-event runs after warm-up on synthetic random inputs of the full shape.
//   flops_executed: the spec's dense formula (§4) with the kernels' internal chunk Lc;
//   flops_model: the minimal causal formula F_fwd,min (fwd), F_fwd,min (bwd_fwd: the recompute),
//   2·F_fwd,min (bwd_bwd), 4·F_fwd,min (all: fwd + recompute + bwd); bytes: the spec's minimal-bytes formula.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numbers>
#include <stdexcept>
#include <string>

#include "kernels/common/host_rng.hpp"
#include "kernels/common/npy.hpp"
#include "kernels/mimo/mimo_gpu_run.hpp"
#include "kernels/mimo/mimo_ref.hpp"
#include "kernels/registry/op_registry.hpp"

#if MEGACPP_WITH_CUDA
#include "kernels/common/device_array.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/common/gpu_timing.hpp"
#include "kernels/mimo/mimo_launch.hpp"
#endif

namespace megacpp {
namespace mimo {

void round_inputs_for_gpu(MimoInputs& in) {
  for (auto* v : {&in.q, &in.k, &in.v, &in.z, &in.trap}) round_vector_to_bf16(*v);
  for (auto* v : {&in.adt, &in.dt, &in.angles, &in.q_bias, &in.k_bias, &in.psi, &in.zeta, &in.phi, &in.d,
                  &in.norm_weight})
    for (auto& x : *v) x = static_cast<double>(static_cast<float>(x));
}

std::vector<double> make_random_dout(const MimoShape& s, uint64_t seed) {
  std::vector<double> d = random_normal(static_cast<std::size_t>(s.vz_numel()), seed * 7919 + 17, 1.0);
  round_vector_to_bf16(d);
  return d;
}

std::vector<TensorMetric> mimo_compare_forward(const std::vector<double>& ours, const std::vector<double>& ref) {
  return {compare_tensors("out", ours, ref, 0.01, 1.0)};
}

std::vector<TensorMetric> mimo_compare_grads(const MimoGrads& o, const MimoGrads& r) {
  std::vector<TensorMetric> m;
  auto add = [&](const char* n, const std::vector<double>& a, const std::vector<double>& b) {
    m.push_back(compare_tensors(n, a, b, 0.02, 0.05));
  };
  add("dq", o.dq, r.dq);
  add("dk", o.dk, r.dk);
  add("dv", o.dv, r.dv);
  add("dadt", o.dadt, r.dadt);
  add("ddt", o.ddt, r.ddt);
  add("dtrap", o.dtrap, r.dtrap);
  add("dq_bias", o.dq_bias, r.dq_bias);
  add("dk_bias", o.dk_bias, r.dk_bias);
  add("dpsi", o.dpsi, r.dpsi);
  add("dzeta", o.dzeta, r.dzeta);
  add("dphi", o.dphi, r.dphi);
  add("dangles", o.dangles, r.dangles);
  add("dd", o.dd, r.dd);
  add("dz", o.dz, r.dz);
  return m;
}

#if MEGACPP_WITH_CUDA
namespace {
using U16 = DeviceArray<uint16_t>;
using F32 = DeviceArray<float>;
U16 dev_bf16(const std::vector<double>& v) { return U16(to_bf16_bits(v)); }
F32 dev_f32(const std::vector<double>& v) { return F32(std::vector<float>(v.begin(), v.end())); }
std::vector<double> host_bf16(const U16& a) { return from_bf16_bits(a.download()); }
std::vector<double> host_f32(const F32& a) {
  const auto h = a.download();
  return std::vector<double>(h.begin(), h.end());
}
MimoDims dims_of(const MimoShape& s) {
  return mimo_make_dims(static_cast<int>(s.B), static_cast<int>(s.S), static_cast<int>(s.H), static_cast<int>(s.G),
                        static_cast<int>(s.N), static_cast<int>(s.P), static_cast<int>(s.R), static_cast<int>(s.L),
                        s.rope_fraction, s.outproj_norm);
}
}  // namespace
// "mimo_fwd: <path>, mimo_bwd_fwd: <path>, mimo_bwd_bwd: <path>" as predicted from the dims (the scan kernels whose
// choice mimo_observed_paths() records; bench receipts and the gate use this one format).
std::string predicted_scan_paths(const MimoDims& d, bool psiv) {
  std::string r;
  for (const auto& k : mimo_kernel_infos(d, psiv))
    if (k.name != "mimo_bwd_post") r += (r.empty() ? "" : ", ") + k.name + ": " + k.path;
  return r;
}

GpuRunResult mimo_gpu_run(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout, bool psiv) {
  const MimoDims d = dims_of(s);
  U16 q = dev_bf16(in.q), k = dev_bf16(in.k), v = dev_bf16(in.v), z = dev_bf16(in.z), trap = dev_bf16(in.trap),
      go = dev_bf16(dout);
  F32 adt = dev_f32(in.adt), dt = dev_f32(in.dt), ang = dev_f32(in.angles), qb = dev_f32(in.q_bias),
      kb = dev_f32(in.k_bias), psi = dev_f32(in.psi), zeta = dev_f32(in.zeta), phi = dev_f32(in.phi), dd = dev_f32(in.d);
  U16 out(s.vz_numel()), cache(psiv ? static_cast<std::size_t>(s.B * s.H * s.S * s.R * s.P) : 0);
  U16 gq(s.qk_numel()), gk(s.qk_numel()), gv(s.vz_numel()), gz(s.vz_numel());
  F32 gadt(s.bhs_numel()), gdt(s.bhs_numel()), gtrap(s.bhs_numel()), gqb(s.hrn_numel()), gkb(s.hrn_numel()),
      gpsi(s.hrp_numel()), gzeta(s.hrp_numel()), gphi(s.hrp_numel()), gd(s.H), gang(s.angles_numel());
  DeviceArray<unsigned char> ws(mimo_bwd_workspace_bytes(d));
  for (U16* a : {&out, &gq, &gk, &gv, &gz}) a->poison();
  for (F32* a : {&gadt, &gdt, &gtrap, &gqb, &gkb, &gpsi, &gzeta, &gphi, &gd, &gang}) a->poison();
  ws.poison();
  if (psiv) cache.poison();

  MimoFwdArgs fa;
  fa.q = q.get(), fa.k = k.get(), fa.v = v.get(), fa.z = z.get(), fa.trap = trap.get();
  fa.adt = adt.get(), fa.dt = dt.get(), fa.angles = ang.get();
  fa.q_bias = qb.get(), fa.k_bias = kb.get(), fa.psi = psi.get(), fa.zeta = zeta.get(), fa.phi = phi.get();
  fa.d = dd.get();
  fa.out = out.get();
  fa.psiv_cache = psiv ? cache.get() : nullptr;
  mimo_fwd(d, fa, nullptr);
  MimoBwdArgs ba;
  ba.in = fa;
  ba.dout = go.get();
  ba.dq = gq.get(), ba.dk = gk.get(), ba.dv = gv.get(), ba.dz = gz.get();
  ba.dadt = gadt.get(), ba.ddt = gdt.get(), ba.dtrap = gtrap.get();
  ba.dq_bias = gqb.get(), ba.dk_bias = gkb.get(), ba.dpsi = gpsi.get(), ba.dzeta = gzeta.get(), ba.dphi = gphi.get();
  ba.dd = gd.get(), ba.dangles = gang.get();
  mimo_bwd(d, ba, ws.get(), nullptr);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());

  GpuRunResult r;
  r.out = host_bf16(out);
  r.grads.dq = host_bf16(gq), r.grads.dk = host_bf16(gk), r.grads.dv = host_bf16(gv), r.grads.dz = host_bf16(gz);
  r.grads.dadt = host_f32(gadt), r.grads.ddt = host_f32(gdt), r.grads.dtrap = host_f32(gtrap);
  r.grads.dq_bias = host_f32(gqb), r.grads.dk_bias = host_f32(gkb);
  r.grads.dpsi = host_f32(gpsi), r.grads.dzeta = host_f32(gzeta), r.grads.dphi = host_f32(gphi);
  r.grads.dd = host_f32(gd), r.grads.dangles = host_f32(gang);
  r.note = "gpu internal chunk Lc=" + std::to_string(d.Lc) + " (M=" + std::to_string(d.M) + ")" +
           (psiv ? ", psiv-cache on" : ", psiv-cache off");
  r.paths_predicted = predicted_scan_paths(d, psiv);
  r.paths_observed = mimo::mimo_observed_paths();
  r.note += ", " + r.paths_observed;  // what ran (decided at launch)
  return r;
}
#else
GpuRunResult mimo_gpu_run(const MimoShape&, const MimoInputs&, const std::vector<double>&, bool) {
  throw std::runtime_error("mimo_gpu_run: CPU-only build");
}
#endif

}  // namespace mimo

namespace {

using mimo::MimoShape;

[[maybe_unused]] MimoShape shape_from(const OpShape& o) {
  auto get = [&](const char* k) {
    auto it = o.find(k);
    if (it == o.end()) throw std::invalid_argument(std::string("mimo: missing shape parameter ") + k);
    return it->second;
  };
  MimoShape s{get("B"), get("S"), get("H"), get("G"), get("N"), get("P"), get("R"), get("chunk")};
  s.validate();
  return s;
}

[[maybe_unused]] bool psiv_flag(const OpOptions& o) {
  const std::string f = o.flag("psiv-cache", "0");
  return f == "1" || f == "true" || f == "on" || f == "yes";
}

enum class Which { fwd, bwd_fwd, bwd_bwd, all };

CheckResult check_impl(Which w, const OpShape& shape, uint64_t seed, const OpOptions& opts) {
  CheckResult res;
#if MEGACPP_WITH_CUDA
  const MimoShape s = shape_from(shape);
  mimo::MimoInputs in = mimo::make_random_inputs(s, seed);
  mimo::round_inputs_for_gpu(in);
  const std::vector<double> dout = mimo::make_random_dout(s, seed);
  const bool psiv = psiv_flag(opts);
  const mimo::GpuRunResult g = mimo::mimo_gpu_run(s, in, dout, psiv);
  res.note = g.note;
  if (w == Which::fwd || w == Which::all) {
    const std::vector<double> ref = mimo::mimo_forward_chunked(s, in);
    for (auto& m : mimo::mimo_compare_forward(g.out, ref)) res.tensors.push_back(m);
  }
  if (w != Which::fwd) {
    const mimo::MimoGrads ref = mimo::mimo_backward_chunked(s, in, dout);
    for (auto& m : mimo::mimo_compare_grads(g.grads, ref)) {
      const bool side = m.name == "dz" || m.name == "dphi" || m.name == "dzeta";
      if (w == Which::all || (w == Which::bwd_fwd && side) || (w == Which::bwd_bwd && !side))
        res.tensors.push_back(m);
    }
  }
#else
  (void)w, (void)shape, (void)seed, (void)opts;
  res.note = "CPU-only build: no GPU kernels";
#endif
  return res;
}

#if MEGACPP_WITH_CUDA
// Synthetic full-size inputs for timing (never zeros): a fast host generator, distributions as make_random_inputs.
struct BenchData {
  mimo::MimoDims d;
  DeviceArray<uint16_t> q, k, v, z, trap, dout, out, cache, gq, gk, gv, gz;
  DeviceArray<float> adt, dt, ang, qb, kb, psi, zeta, phi, dd, gadt, gdt, gtrap, gqb, gkb, gpsi, gzeta, gphi, gd, gang;
  DeviceArray<unsigned char> ws;
  mimo::MimoFwdArgs fa;
  mimo::MimoBwdArgs ba;
};

std::vector<uint16_t> rand_bf16(std::size_t n, uint64_t seed, double scale) {
  HostRng rng(seed);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = float_to_bf16_bits(static_cast<float>(scale * (2.0 * rng.uniform() - 1.0) * 1.7));
  return v;
}
std::vector<float> rand_f32(std::size_t n, uint64_t seed, double lo, double hi) {
  HostRng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.uniform(lo, hi));
  return v;
}

std::unique_ptr<BenchData> make_bench_data(const MimoShape& s, bool psiv) {
  auto bd = std::make_unique<BenchData>();
  bd->d = mimo::mimo_make_dims(s.B, s.S, s.H, s.G, s.N, s.P, s.R, s.L);
  const std::size_t nqk = s.qk_numel(), nvz = s.vz_numel(), nbhs = s.bhs_numel();
  bd->q = DeviceArray<uint16_t>(rand_bf16(nqk, 1, 1.0));
  bd->k = DeviceArray<uint16_t>(rand_bf16(nqk, 2, 1.0));
  bd->v = DeviceArray<uint16_t>(rand_bf16(nvz, 3, 1.0));
  bd->z = DeviceArray<uint16_t>(rand_bf16(nvz, 4, 1.0));
  bd->trap = DeviceArray<uint16_t>(rand_bf16(nbhs, 5, 1.0));
  bd->dout = DeviceArray<uint16_t>(rand_bf16(nvz, 6, 1.0));
  std::vector<float> dt = rand_f32(nbhs, 7, 1e-3, 0.1), adt(nbhs);
  {
    HostRng rng(8);
    for (std::size_t i = 0; i < nbhs; ++i) adt[i] = -static_cast<float>(std::log1p(std::exp(rng.normal()))) * dt[i];
  }
  bd->dt = DeviceArray<float>(dt);
  bd->adt = DeviceArray<float>(adt);
  {
    const int64_t NA = s.n_ang();
    std::vector<float> ang(static_cast<std::size_t>(s.angles_numel()));
    HostRng rng(9);
    std::vector<float> a(static_cast<std::size_t>(s.B * s.S * NA));
    for (auto& x : a) x = static_cast<float>(std::numbers::pi * std::tanh(rng.normal()));
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.H; ++h) {
        std::vector<double> acc(NA, 0.0);
        for (int64_t t = 0; t < s.S; ++t) {
          const double dtv = dt[(b * s.H + h) * s.S + t];
          for (int64_t j = 0; j < NA; ++j) {
            acc[j] += a[(b * s.S + t) * NA + j] * dtv;
            ang[((b * s.S + t) * s.H + h) * NA + j] = static_cast<float>(acc[j]);
          }
        }
      }
    bd->ang = DeviceArray<float>(ang);
  }
  const double invR = 1.0 / static_cast<double>(s.R);
  bd->qb = DeviceArray<float>(rand_f32(s.hrn_numel(), 10, 0.5, 1.5));
  bd->kb = DeviceArray<float>(rand_f32(s.hrn_numel(), 11, 0.5, 1.5));
  bd->psi = DeviceArray<float>(rand_f32(s.hrp_numel(), 12, 0.7 * invR, 1.3 * invR));
  bd->zeta = DeviceArray<float>(rand_f32(s.hrp_numel(), 13, 0.7, 1.3));
  bd->phi = DeviceArray<float>(rand_f32(s.hrp_numel(), 14, 0.7 * invR, 1.3 * invR));
  bd->dd = DeviceArray<float>(rand_f32(s.H, 15, 0.7, 1.3));
  bd->out = DeviceArray<uint16_t>(nvz);
  if (psiv) bd->cache = DeviceArray<uint16_t>(static_cast<std::size_t>(s.B * s.H * s.S * s.R * s.P));
  bd->gq = DeviceArray<uint16_t>(nqk);
  bd->gk = DeviceArray<uint16_t>(nqk);
  bd->gv = DeviceArray<uint16_t>(nvz);
  bd->gz = DeviceArray<uint16_t>(nvz);
  bd->gadt = DeviceArray<float>(nbhs);
  bd->gdt = DeviceArray<float>(nbhs);
  bd->gtrap = DeviceArray<float>(nbhs);
  bd->gqb = DeviceArray<float>(s.hrn_numel());
  bd->gkb = DeviceArray<float>(s.hrn_numel());
  bd->gpsi = DeviceArray<float>(s.hrp_numel());
  bd->gzeta = DeviceArray<float>(s.hrp_numel());
  bd->gphi = DeviceArray<float>(s.hrp_numel());
  bd->gd = DeviceArray<float>(s.H);
  bd->gang = DeviceArray<float>(s.angles_numel());
  bd->ws = DeviceArray<unsigned char>(mimo::mimo_bwd_workspace_bytes(bd->d));
  auto& fa = bd->fa;
  fa.q = bd->q.get(), fa.k = bd->k.get(), fa.v = bd->v.get(), fa.z = bd->z.get(), fa.trap = bd->trap.get();
  fa.adt = bd->adt.get(), fa.dt = bd->dt.get(), fa.angles = bd->ang.get();
  fa.q_bias = bd->qb.get(), fa.k_bias = bd->kb.get(), fa.psi = bd->psi.get(), fa.zeta = bd->zeta.get();
  fa.phi = bd->phi.get(), fa.d = bd->dd.get(), fa.out = bd->out.get();
  fa.psiv_cache = psiv ? bd->cache.get() : nullptr;
  auto& ba = bd->ba;
  ba.in = fa;
  ba.dout = bd->dout.get();
  ba.dq = bd->gq.get(), ba.dk = bd->gk.get(), ba.dv = bd->gv.get(), ba.dz = bd->gz.get();
  ba.dadt = bd->gadt.get(), ba.ddt = bd->gdt.get(), ba.dtrap = bd->gtrap.get();
  ba.dq_bias = bd->gqb.get(), ba.dk_bias = bd->gkb.get(), ba.dpsi = bd->gpsi.get();
  ba.dzeta = bd->gzeta.get(), ba.dphi = bd->gphi.get(), ba.dd = bd->gd.get(), ba.dangles = bd->gang.get();
  return bd;
}

void dump_bench(const BenchData& bd, const MimoShape& s, const std::string& dir) {
  auto sh = [](std::initializer_list<int64_t> l) { return std::vector<int64_t>(l); };
  const int64_t B = s.B, S = s.S, H = s.H, G = s.G, N = s.N, P = s.P, R = s.R, NA = s.n_ang();
  auto wb = [&](const char* n, const DeviceArray<uint16_t>& a, std::vector<int64_t> shp) {
    write_npy_bf16(dir + "/" + n + ".npy", a.download(), shp);
  };
  auto wf = [&](const char* n, const DeviceArray<float>& a, std::vector<int64_t> shp) {
    write_npy(dir + "/" + n + ".npy", a.download(), shp);
  };
  wb("q", bd.q, sh({B, S, R, G, N}));
  wb("k", bd.k, sh({B, S, R, G, N}));
  wb("v", bd.v, sh({B, S, H, P}));
  wb("z", bd.z, sh({B, S, H, P}));
  wb("trap", bd.trap, sh({B, H, S}));
  wb("dout", bd.dout, sh({B, S, H, P}));
  wf("adt", bd.adt, sh({B, H, S}));
  wf("dt", bd.dt, sh({B, H, S}));
  wf("angles", bd.ang, sh({B, S, H, NA}));
  wf("q_bias", bd.qb, sh({H, R, N}));
  wf("k_bias", bd.kb, sh({H, R, N}));
  wf("psi", bd.psi, sh({H, R, P}));
  wf("zeta", bd.zeta, sh({H, R, P}));
  wf("phi", bd.phi, sh({H, R, P}));
  wf("d", bd.dd, sh({H}));
  wb("out", bd.out, sh({B, S, H, P}));
  wb("dq", bd.gq, sh({B, S, R, G, N}));
  wb("dk", bd.gk, sh({B, S, R, G, N}));
  wb("dv", bd.gv, sh({B, S, H, P}));
  wb("dz", bd.gz, sh({B, S, H, P}));
  wf("dadt", bd.gadt, sh({B, H, S}));
  wf("ddt", bd.gdt, sh({B, H, S}));
  wf("dtrap", bd.gtrap, sh({B, H, S}));
  wf("dq_bias", bd.gqb, sh({H, R, N}));
  wf("dk_bias", bd.gkb, sh({H, R, N}));
  wf("dpsi", bd.gpsi, sh({H, R, P}));
  wf("dzeta", bd.gzeta, sh({H, R, P}));
  wf("dphi", bd.gphi, sh({H, R, P}));
  wf("dd", bd.gd, sh({H}));
  wf("dangles", bd.gang, sh({B, S, H, NA}));
}

BenchResult bench_impl(Which w, const OpShape& shape, const OpOptions& opts) {
  const MimoShape s = shape_from(shape);
  const bool psiv = psiv_flag(opts);
  auto bd = make_bench_data(s, psiv);
  const mimo::MimoDims& d = bd->d;
  void* ws = bd->ws.get();
  // Run everything once (fills the states / cache that the later stages read).
  mimo::mimo_fwd(d, bd->fa, nullptr);
  mimo::mimo_bwd(d, bd->ba, ws, nullptr);
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  if (!opts.dump_dir.empty()) dump_bench(*bd, s, opts.dump_dir);
  std::function<void()> fn;
  switch (w) {
    case Which::fwd: fn = [&] { mimo::mimo_fwd(d, bd->fa, nullptr); }; break;
    case Which::bwd_fwd: fn = [&] { mimo::mimo_bwd_fwd(d, bd->ba, ws, nullptr); }; break;
    case Which::bwd_bwd: fn = [&] { mimo::mimo_bwd_bwd(d, bd->ba, ws, nullptr); }; break;
    case Which::all:
      fn = [&] {
        mimo::mimo_fwd(d, bd->fa, nullptr);
        mimo::mimo_bwd(d, bd->ba, ws, nullptr);
      };
      break;
  }
  const TimingStats t = time_gpu(fn, std::max(3, opts.warmup), std::max(20, opts.iters));
  BenchResult r;
  r.median_ms = t.median_ms, r.min_ms = t.min_ms, r.max_ms = t.max_ms, r.runs = t.runs;
  const double T = static_cast<double>(s.B) * s.S, H = s.H, R = s.R, N = s.N, P = s.P, G = s.G, L = d.Lc;
  const double NA = static_cast<double>(s.n_ang());
  const double f_fwd = T * H * R * (4 * L * R * N + 2 * L * R * P + 4 * N * P);
  const double f_bb = T * H * R * (6 * L * R * N + 6 * L * R * P + 8 * N * P);
  const double f_min = T * H * ((s.L + 1.0) * R * R * (N + P) + 4 * R * N * P);
  const double fwd_reads = 4 * T * R * G * N + 4 * T * H * P + 8 * T * H + 2 * T * H + 4 * T * NA;
  const double b_fwd = fwd_reads + 2 * T * H * P;
  const double b_bwd = 2 * T * H * P + fwd_reads + 4 * T * R * G * N + 4 * T * H * P + 10 * T * H + 4 * T * NA;
  switch (w) {
    case Which::fwd: r.flops_executed = f_fwd, r.flops_model = f_min, r.bytes = b_fwd; break;
    case Which::bwd_fwd: r.flops_executed = f_fwd, r.flops_model = f_min, r.bytes = fwd_reads + 4 * T * H * P; break;
    case Which::bwd_bwd: r.flops_executed = f_bb, r.flops_model = 2 * f_min, r.bytes = b_bwd - fwd_reads - 2 * T * H * P; break;
    case Which::all: r.flops_executed = 2 * f_fwd + f_bb, r.flops_model = 4 * f_min, r.bytes = b_fwd + b_bwd; break;
  }
  for (const auto& k : mimo::mimo_kernel_infos(d, psiv)) {
    r.kernels.push_back(to_json(kernel_resources(k.name, k.func, k.threads, k.dynamic_smem)));
    r.kernels.back()["path"] = k.path;
  }
  r.extra["internal_chunk_Lc"] = d.Lc;
  r.extra["psiv_cache"] = psiv;
  r.extra["workspace_bytes"] = static_cast<double>(mimo::mimo_bwd_workspace_bytes(d));
  r.extra["psiv_cache_bytes"] = psiv ? 2.0 * s.B * s.H * s.S * s.R * s.P : 0.0;
  if (w == Which::all) {  // split times
    const TimingStats a = time_gpu([&] { mimo::mimo_fwd(d, bd->fa, nullptr); }, 3, 20);
    const TimingStats b = time_gpu([&] { mimo::mimo_bwd_fwd(d, bd->ba, ws, nullptr); }, 3, 20);
    const TimingStats c = time_gpu([&] { mimo::mimo_bwd_bwd(d, bd->ba, ws, nullptr); }, 3, 20);
    const TimingStats e = time_gpu([&] { mimo::mimo_bwd_post(d, bd->ba, ws, nullptr); }, 3, 20);
    r.extra["fwd_ms"] = a.median_ms;
    r.extra["bwd_fwd_ms"] = b.median_ms;
    r.extra["bwd_bwd_ms"] = c.median_ms;
    r.extra["bwd_post_ms"] = e.median_ms;
  }
  r.note = "mimo internal chunk Lc=" + std::to_string(d.Lc) + (psiv ? ", psiv-cache on" : ", psiv-cache off") + ", " +
           mimo::predicted_scan_paths(d, psiv);
  return r;
}
#endif

std::vector<OpShape> test_shapes() {
  // The seeds' 11 (N,P,R,chunk) shapes at H=16, G=1, B=2, S = 4 chunks, plus a G>1 case.
  const int seeds[11][4] = {{16, 64, 4, 8},   {32, 64, 4, 16},  {64, 64, 4, 16}, {128, 64, 4, 16},
                            {256, 64, 4, 8},  {64, 128, 4, 16}, {128, 32, 4, 16}, {128, 128, 4, 8},
                            {128, 64, 8, 8},  {128, 64, 2, 32}, {128, 64, 1, 64}};
  std::vector<OpShape> v;
  for (const auto& x : seeds)
    v.push_back({{"B", 2}, {"S", 4 * x[3]}, {"H", 16}, {"G", 1}, {"N", x[0]}, {"P", x[1]}, {"R", x[2]}, {"chunk", x[3]}});
  v.push_back({{"B", 2}, {"S", 64}, {"H", 8}, {"G", 4}, {"N", 64}, {"P", 64}, {"R", 4}, {"chunk", 16}});
  return v;
}

OpDef make_op(const char* name, const char* summary, Which w) {
  OpDef op;
  op.name = name;
  op.family = "mimo";
  op.summary = summary;
  op.needs_gpu = true;
  op.params = {{"B", 8, "batch"},      {"S", 8192, "sequence length (multiple of chunk)"},
               {"H", 16, "heads"},     {"G", 1, "B/C groups (divides H)"},
               {"N", 64, "state dim"}, {"P", 64, "head dim"},
               {"R", 4, "MIMO rank"},  {"chunk", 16, "chunk length"}};
  op.flags = {"psiv-cache"};
  op.test_shapes = test_shapes;
  op.check = [w](const OpShape& s, uint64_t seed, const OpOptions& o) { return check_impl(w, s, seed, o); };
#if MEGACPP_WITH_CUDA
  op.bench = [w](const OpShape& s, const OpOptions& o) { return bench_impl(w, s, o); };
#endif
  return op;
}

}  // namespace

void register_mimo_ops(OpRegistry& r) {
  r.add(make_op("mimo_fwd", "Mamba-3 MIMO scan forward (CUDA, mma.sync bf16)", Which::fwd));
  r.add(make_op("mimo_bwd_fwd", "Mamba-3 MIMO backward recompute pass (states, dZ, dPhi, dZeta)", Which::bwd_fwd));
  r.add(make_op("mimo_bwd_bwd", "Mamba-3 MIMO backward reverse chunk loop (the other gradients)", Which::bwd_bwd));
  r.add(make_op("mimo_all", "Mamba-3 MIMO forward + whole backward", Which::all));
}

}  // namespace megacpp
