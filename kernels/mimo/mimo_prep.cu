// mimo_prep.cu — host side of the Mamba-3 MIMO kernels (dims, workspace, launches) and the small post kernel
// `mimo_bwd_post`, deterministic (no atomics):
//   dq[b,t,r,g,n] = Σ_{h ∈ group g} dq_h[b,t,r,h,n]       (same for dk)         bf16 out, fp32 sum
//   dq_bias = Σ_b partial, dk_bias, dΨ, dΖ, dΦ, dD likewise                          fp32
//   dγ_t = DFACTOR_t + DGAMMA_t, F = DFACTOR_{t−1} (0 at t=0), σ = σ(trap_t):
//     dΔ_t = dγ_t σ + F (1−σ);   dtrap_t = (dγ_t − F)·Δ_t·σ(1−σ)                    fp32 (B,H,S)
// The decay cumsums (DA_CS, DA_CS_REV, SEGSUM) are computed in-kernel per chunk (mimo_common.cuh::chunk_scalars)
// and their backward is fused into mimo_bwd_bwd, so no separate pre kernel exists.
// Resources: 256 threads per block, no shared memory.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_common.cuh"

namespace megacpp::mimo {
namespace dev {

struct PostParams {
  MimoDims d;
  const bf16_bits *dq_h, *dk_h;
  bf16_bits *dq, *dk;
  const float *dfac, *dgam, *dt;
  const bf16_bits* trap;
  float *ddt, *dtrap;
  // parameter partial sums: 6 segments
  const float* src[6];
  float* dst[6];
  int count[6];
};

__global__ void __launch_bounds__(256) mimo_bwd_post_kernel(const PostParams pp) {
  const MimoDims& d = pp.d;
  const int part = blockIdx.y;
  const size_t gtid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t gstride = static_cast<size_t>(gridDim.x) * blockDim.x;
  if (part == 0) {  // group reduction of dq/dk, 8 elements (16 bytes) per thread
    const int hpg = d.H / d.G, n8 = d.N / 8;
    const size_t vecs = static_cast<size_t>(d.B) * d.S * d.R * d.G * n8;
    for (size_t e = gtid; e < vecs; e += gstride) {
      const int n = static_cast<int>(e % n8) * 8;
      size_t rest = e / n8;
      const int g = static_cast<int>(rest % d.G);
      rest /= d.G;  // (b·S + t)·R + r
      float q[8], k[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) q[u] = k[u] = 0.f;
      for (int hh = g * hpg; hh < (g + 1) * hpg; ++hh) {
        const size_t o = (rest * d.H + hh) * d.N + n;
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(pp.dq_h + o));
        const uint4 b = __ldg(reinterpret_cast<const uint4*>(pp.dk_h + o));
        const uint32_t aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          q[2 * u] += __uint_as_float(aw[u] << 16), q[2 * u + 1] += __uint_as_float(aw[u] & 0xffff0000u);
          k[2 * u] += __uint_as_float(bw[u] << 16), k[2 * u + 1] += __uint_as_float(bw[u] & 0xffff0000u);
        }
      }
      const size_t o = (rest * d.G + g) * d.N + n;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        st_bf16x2g(pp.dq + o + 2 * u, q[2 * u], q[2 * u + 1]);
        st_bf16x2g(pp.dk + o + 2 * u, k[2 * u], k[2 * u + 1]);
      }
    }
  } else if (part == 1) {  // dΔ, dtrap
    const size_t total = static_cast<size_t>(d.B) * d.H * d.S;
    for (size_t e = gtid; e < total; e += gstride) {
      const int t = static_cast<int>(e % d.S);
      const float dg = pp.dfac[e] + pp.dgam[e];
      const float F = t > 0 ? pp.dfac[e - 1] : 0.f;
      const float sg = sigmoidf_(bf2f(pp.trap[e]));
      pp.ddt[e] = dg * sg + F * (1.f - sg);
      pp.dtrap[e] = (dg - F) * pp.dt[e] * sg * (1.f - sg);
    }
  } else {  // Σ_b of per-(b,h) partials
    const int seg = part - 2;
    const int cnt = pp.count[seg];  // elements per batch
    for (size_t e = gtid; e < static_cast<size_t>(cnt); e += gstride) {
      float s = 0.f;
      for (int b = 0; b < d.B; ++b) s += pp.src[seg][static_cast<size_t>(b) * cnt + e];
      pp.dst[seg][e] = s;
    }
  }
}

}  // namespace dev

namespace {
std::size_t fwd_smem(const MimoDims& d) { return dev::fwd_layout(d.N, d.P, d.R, d.Mp, d.Lc).total; }
std::size_t bwd_smem(const MimoDims& d) { return dev::bwd_layout(d.N, d.P, d.R, d.Mp, d.Lc).total; }

int ilog2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

struct WsParts {
  std::size_t states, dq_h, dk_h, dfac, dgam, p_dphi, p_dzeta, p_dpsi, p_dqb, p_dkb, p_dd, total;
};
WsParts ws_parts(const MimoDims& d) {
  WsParts w{};
  std::size_t o = 0;
  auto take = [&](std::size_t bytes) { std::size_t r = o; o = (o + bytes + 255) & ~std::size_t(255); return r; };
  const std::size_t B = d.B, S = d.S, H = d.H, N = d.N, P = d.P, R = d.R;
  w.states = take(2 * B * H * d.nc * N * P);
  w.dq_h = take(2 * B * S * R * H * N);
  w.dk_h = take(2 * B * S * R * H * N);
  w.dfac = take(4 * B * H * S);
  w.dgam = take(4 * B * H * S);
  w.p_dphi = take(4 * B * H * R * P);
  w.p_dzeta = take(4 * B * H * R * P);
  w.p_dpsi = take(4 * B * H * R * P);
  w.p_dqb = take(4 * B * H * R * N);
  w.p_dkb = take(4 * B * H * R * N);
  w.p_dd = take(4 * B * H);
  w.total = o;
  return w;
}

dev::KParams make_params(const MimoDims& d, const MimoBwdArgs* a, const MimoFwdArgs& in, void* ws) {
  dev::KParams kp{};
  kp.d = d;
  kp.lR = ilog2(d.R);
  kp.lN4 = ilog2(d.N / 4);
  kp.fo = dev::fwd_offsets(dev::fwd_layout(d.N, d.P, d.R, d.Mp, d.Lc));
  kp.in = in;
  if (a) {
    const WsParts w = ws_parts(d);
    auto* base = static_cast<unsigned char*>(ws);
    kp.dout = a->dout;
    kp.states = reinterpret_cast<bf16_bits*>(base + w.states);
    kp.dz = a->dz;
    kp.p_dphi = reinterpret_cast<float*>(base + w.p_dphi);
    kp.p_dzeta = reinterpret_cast<float*>(base + w.p_dzeta);
    kp.dq_h = reinterpret_cast<bf16_bits*>(base + w.dq_h);
    kp.dk_h = reinterpret_cast<bf16_bits*>(base + w.dk_h);
    kp.dv = a->dv;
    kp.dadt = a->dadt;
    kp.dfac = reinterpret_cast<float*>(base + w.dfac);
    kp.dgam = reinterpret_cast<float*>(base + w.dgam);
    kp.dangles = a->dangles;
    kp.p_dpsi = reinterpret_cast<float*>(base + w.p_dpsi);
    kp.p_dqb = reinterpret_cast<float*>(base + w.p_dqb);
    kp.p_dkb = reinterpret_cast<float*>(base + w.p_dkb);
    kp.p_dd = reinterpret_cast<float*>(base + w.p_dd);
  }
  return kp;
}

bool in_set(int x, std::initializer_list<int> s) {
  for (int v : s)
    if (v == x) return true;
  return false;
}
}  // namespace

MimoDims mimo_make_dims(int B, int S, int H, int G, int N, int P, int R, int chunk, double rope_fraction,
                        bool outproj_norm) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("mimo: " + m); };
  if (outproj_norm)
    fail("outproj_norm=true (fused output RMSNorm) not supported by the GPU kernels (supported: false)");
  if (!in_set(N, {16, 32, 64, 128, 256})) fail("N=" + std::to_string(N) + " not supported (supported: 16,32,64,128,256)");
  if (!in_set(P, {32, 64, 128})) fail("P=" + std::to_string(P) + " not supported (supported: 32,64,128)");
  if (N * P > 16384)
    fail("N=" + std::to_string(N) + " with P=" + std::to_string(P) +
         " not supported (N*P <= 16384: the state must fit the registers of one CTA)");
  if (!in_set(R, {1, 2, 4, 8})) fail("R=" + std::to_string(R) + " not supported (supported: 1,2,4,8)");
  if (!in_set(chunk, {8, 16, 32, 64})) fail("chunk=" + std::to_string(chunk) + " not supported (supported: 8,16,32,64)");
  if (B <= 0 || S <= 0 || H <= 0 || G <= 0) fail("B, S, H, G must be positive");
  if (H % G != 0) fail("H=" + std::to_string(H) + " not a multiple of G=" + std::to_string(G));
  if (S % chunk != 0) fail("S=" + std::to_string(S) + " not a multiple of chunk=" + std::to_string(chunk));
  if (rope_fraction != 0.5 && rope_fraction != 1.0) fail("rope_fraction must be 0.5 or 1.0");
  MimoDims d;
  d.B = B, d.S = S, d.H = H, d.G = G, d.N = N, d.P = P, d.R = R, d.chunk = chunk;
  int na = static_cast<int>(std::floor(N * rope_fraction));
  na -= na % 2;
  d.n_ang = na / 2;
  for (int mmax : {64, 32, 16}) {
    d.Lc = std::min(chunk, std::max(1, mmax / R));
    d.M = d.Lc * R;
    d.Mp = std::max(16, (d.M + 15) / 16 * 16);
    d.nc = S / d.Lc;
    if (bwd_smem(d) <= dev::kSmemLimit && fwd_smem(d) <= dev::kSmemLimit) return d;
  }
  fail("no chunk length fits shared memory for N=" + std::to_string(N) + ", P=" + std::to_string(P));
  return d;
}

std::size_t mimo_bwd_workspace_bytes(const MimoDims& d) { return ws_parts(d).total; }

// The path each launcher took last (mimo_observed_paths), under a mutex: host side, one compare per launch.
namespace {
std::mutex g_path_mu;
std::string g_paths[3];  // mimo_fwd, mimo_bwd_fwd, mimo_bwd_bwd
// The path label of a launcher: `taken` (the wgmma kernel) when `why` is empty, else the mma.sync fallback and the
// refusal. One formatter for the prediction (mimo_kernel_infos) and the record made at launch, which the gate compares.
std::string path_label(const std::string& why, const char* taken) {
  return why.empty() ? std::string(taken) : "mma.sync (wgmma path refused: " + why + ")";
}
void observe(int k, const std::string& why, const char* taken) {
  const std::lock_guard<std::mutex> lock(g_path_mu);
  if (!why.empty() || g_paths[k] != taken) g_paths[k] = path_label(why, taken);
}
}  // namespace
std::string mimo_observed_paths() {
  const std::lock_guard<std::mutex> lock(g_path_mu);
  static const char* names[3] = {"mimo_fwd", "mimo_bwd_fwd", "mimo_bwd_bwd"};
  std::string r;
  for (int k = 0; k < 3; ++k)
    if (!g_paths[k].empty()) r += (r.empty() ? "" : ", ") + std::string(names[k]) + ": " + g_paths[k];
  return r;
}

// mimo_fwd / mimo_bwd_fwd / mimo_bwd_bwd: the Hopper wgmma kernels (mimo_chunk_sm90.cu, mimo_bwd_bwd_sm90.cu) where
// they apply, else the mma.sync kernels; mimo_kernel_infos() below predicts the same choice from the dims, and
// mimo_observed_paths() reports the one made here.
void mimo_fwd(const MimoDims& d, const MimoFwdArgs& a, cudaStream_t stream) {
  const dev::KParams kp = make_params(d, nullptr, a, nullptr);
  const std::string why = dev::sm90_refusal(kp, false);
  observe(0, why, dev::sm90_path(d));
  if (why.empty()) return dev::launch_sm90(kp, false, stream);
  dev::launch_fwd_kernel(kp, fwd_smem(d), stream);
}
void mimo_bwd_fwd(const MimoDims& d, const MimoBwdArgs& a, void* ws, cudaStream_t stream) {
  const dev::KParams kp = make_params(d, &a, a.in, ws);
  const std::string why = dev::sm90_refusal(kp, true);
  observe(1, why, dev::sm90_path(d));
  if (why.empty()) return dev::launch_sm90(kp, true, stream);
  dev::launch_bwd_fwd_kernel(kp, fwd_smem(d), stream);
}
void mimo_bwd_bwd(const MimoDims& d, const MimoBwdArgs& a, void* ws, cudaStream_t stream) {
  const dev::KParams kp = make_params(d, &a, a.in, ws);
  const std::string why = dev::sm90_bwd_bwd_refusal(kp);
  observe(2, why, "sm90 wgmma");
  if (why.empty()) return dev::launch_sm90_bwd_bwd(kp, stream);
  dev::launch_bwd_bwd_kernel(kp, bwd_smem(d), stream);
}
void mimo_bwd_post(const MimoDims& d, const MimoBwdArgs& a, void* ws, cudaStream_t stream) {
  const WsParts w = ws_parts(d);
  auto* base = static_cast<unsigned char*>(ws);
  dev::PostParams pp{};
  pp.d = d;
  pp.dq_h = reinterpret_cast<const bf16_bits*>(base + w.dq_h);
  pp.dk_h = reinterpret_cast<const bf16_bits*>(base + w.dk_h);
  pp.dq = a.dq, pp.dk = a.dk;
  pp.dfac = reinterpret_cast<const float*>(base + w.dfac);
  pp.dgam = reinterpret_cast<const float*>(base + w.dgam);
  pp.dt = a.in.dt, pp.trap = a.in.trap, pp.ddt = a.ddt, pp.dtrap = a.dtrap;
  const int HRP = d.H * d.R * d.P, HRN = d.H * d.R * d.N;
  const float* srcs[6] = {reinterpret_cast<const float*>(base + w.p_dphi), reinterpret_cast<const float*>(base + w.p_dzeta),
                          reinterpret_cast<const float*>(base + w.p_dpsi), reinterpret_cast<const float*>(base + w.p_dqb),
                          reinterpret_cast<const float*>(base + w.p_dkb), reinterpret_cast<const float*>(base + w.p_dd)};
  float* dsts[6] = {a.dphi, a.dzeta, a.dpsi, a.dq_bias, a.dk_bias, a.dd};
  const int cnts[6] = {HRP, HRP, HRP, HRN, HRN, d.H};
  for (int i = 0; i < 6; ++i) pp.src[i] = srcs[i], pp.dst[i] = dsts[i], pp.count[i] = cnts[i];
  const std::size_t big = static_cast<std::size_t>(d.B) * d.S * d.R * d.G * (d.N / 8);
  const int blocks = static_cast<int>(std::min<std::size_t>((big + 255) / 256, 132 * 16));
  dev::mimo_bwd_post_kernel<<<dim3(blocks, 8), 256, 0, stream>>>(pp);
  MEGACPP_CUDA_CHECK(cudaGetLastError());
}
void mimo_bwd(const MimoDims& d, const MimoBwdArgs& a, void* ws, cudaStream_t stream) {
  mimo_bwd_fwd(d, a, ws, stream);
  mimo_bwd_bwd(d, a, ws, stream);
  mimo_bwd_post(d, a, ws, stream);
}

std::vector<MimoKernelInfo> mimo_kernel_infos(const MimoDims& d, bool psiv_read) {
  auto fwd_side = [&](const char* name, bool bwd) -> MimoKernelInfo {
    const std::string why = dev::sm90_refusal(d, bwd, psiv_read);
    if (why.empty())
      return {name, dev::sm90_kernel_ptr(d, bwd), dev::kSm90Threads, dev::sm90_smem(d, bwd), path_label(why, dev::sm90_path(d))};
    return {name, bwd ? dev::bwd_fwd_kernel_ptr(d) : dev::fwd_kernel_ptr(d),
            bwd ? dev::bwd_fwd_threads(d) : dev::fwd_threads(d), fwd_smem(d), path_label(why, dev::sm90_path(d))};
  };
  const std::string why_bb = dev::sm90_bwd_bwd_refusal(d);
  const MimoKernelInfo bwd_bwd =
      why_bb.empty() ? MimoKernelInfo{"mimo_bwd_bwd", dev::sm90_bwd_bwd_kernel_ptr(d), dev::kSm90BwdThreads,
                                      dev::sm90_bwd_bwd_smem(d), path_label(why_bb, "sm90 wgmma")}
                     : MimoKernelInfo{"mimo_bwd_bwd", dev::bwd_bwd_kernel_ptr(d), dev::bwd_bwd_threads(d), bwd_smem(d),
                                      path_label(why_bb, "sm90 wgmma")};
  return {fwd_side("mimo_fwd", false), fwd_side("mimo_bwd_fwd", true), bwd_bwd,
          {"mimo_bwd_post", reinterpret_cast<const void*>(&dev::mimo_bwd_post_kernel), 256, 0, "elementwise"}};
}

}  // namespace megacpp::mimo
