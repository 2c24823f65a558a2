// mixer_glue.cu — the GPU kernels around the Mamba-3 MIMO scan in the M block (API and layouts: mixer_glue.hpp).
//
// Math (fp32 inside; per token m = (b,t), head h, group g, rank r, state n, angle j):
//   z, v             = the z and x slices of proj                                    (bf16 copies)
//   k[m,r,g,:]       = B[m,g,r,:]·rstd_b·w_B,  rstd_b = 1/sqrt(mean_n B² + eps)      (q likewise from C, w_C)
//   Δ[b,h,t]         = softplus(dd_dt + dt_bias[h]);  A = min(−f(dd_A), −a_floor);  ADT = A·Δ
//   θ[b,t,h,j]       = Σ_{s≤t} π·tanh(ang[b,s,j])·Δ[b,h,s]
// Backward:
//   Gθ               = reverse cumsum_t dθ  (in place in dangles)
//   dang[m,j]        = π·sech²(ang[m,j])·Σ_h Gθ[m,h,j]·Δ[b,h,t]
//   dΔ_tot           = ddt (trapezoid, from the scan) + π·Σ_j Gθ[m,h,j]·tanh(ang[m,j]) + dADT·A
//   d dd_dt          = dΔ_tot·σ(dd_dt+dt_bias);  d dd_A = −dADT·Δ·f'(dd_A) (0 where clamped);  d trap = dtrap
//   dB               = rstd·(dk·w − x̂·mean_n(dk·w·x̂)),  x̂ = B·rstd;  dw_B += Σ dk·x̂  (dC, dw_C from dq likewise)
//   d dt_bias        += Σ_{b,t} d dd_dt
// Kernels:
//   glue_fwd_tok     one CTA (256 threads) per 8 consecutive tokens of one sequence: z/v copies (16-byte vectors
//                    when d_in_proj % 8 == 0), decay prep, trap, RMSNorm (one warp per (token, g, r) row, N ≤ 256).
//   angle_scan<rev>  one CTA per (b,h): thread (segment, j), 256/n_ang segments of S; segment sums → fixed-order
//                    prefix over segments in shared memory → rescan. rev=false: θ from ang and Δ; rev=true: the
//                    reverse cumsum of dθ in place.
//   glue_bwd_tok     one CTA per 8 tokens: dang, decay-prep backward, dz/dv copies, RMSNorm backward; writes its
//                    partial sums of d dt_bias, dw_B, dw_C ((H + 2N) floats per CTA) to the workspace.
//   glue_reduce      one CTA per parameter element: strided sum over the CTA partials + fixed tree → += grad.
//   accum_kernel     dst += src over ≤ 8 segments (the scan's parameter gradients are written, not accumulated).
// Saved for backward (by the caller): proj, ang, rstd_b, rstd_c (and Δ, recomputed or kept).
// Resources: 256 threads everywhere; glue_bwd_tok dynamic smem (2·8·H + 8·n_ang + 16·N) floats (opt-in > 48 KB
// for large H); angle_scan 1 KB static smem. No atomics: every result is bitwise reproducible.
#include "kernels/mimo/mixer_glue.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"

namespace megacpp::mimo {
namespace glue {

constexpr int kT = 256;    // threads per CTA
constexpr int kTPB = 8;    // tokens per CTA in the per-token kernels
constexpr int kW = kT / 32;
constexpr float kPi = 3.14159265358979323846f;

struct GP {
  int B, S, H, G, R, N, P, na;
  int64_t dip, HP, oB, oC, odt, oA, otr;
  float eps, a_floor;
  bool heavy;
};

GP make_gp(const MixerGlueDims& d) {
  GP g{};
  g.B = d.B, g.S = d.S, g.H = d.H, g.G = d.G, g.R = d.R, g.N = d.N, g.P = d.P, g.na = d.n_ang;
  g.dip = d.d_in_proj();
  g.HP = static_cast<int64_t>(d.H) * d.P;
  const int64_t GRN = static_cast<int64_t>(d.G) * d.R * d.N;
  g.oB = 2 * g.HP, g.oC = g.oB + GRN, g.odt = g.oC + GRN, g.oA = g.odt + d.H, g.otr = g.oA + d.H;
  g.eps = d.norm_eps, g.a_floor = d.a_floor, g.heavy = d.heavy_tail;
  return g;
}

__device__ __forceinline__ float bf(const bf16_bits* p) { return __uint_as_float(static_cast<uint32_t>(*p) << 16); }
__device__ __forceinline__ bf16_bits f2bf(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float softplus_f(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float act_f(float x, bool heavy) {
  if (!heavy) return softplus_f(x);
  return x >= 0.f ? 1.f + x : 1.f / (1.f - x);
}
__device__ __forceinline__ float act_g(float x, bool heavy) {
  if (!heavy) return sigmoid_f(x);
  return x >= 0.f ? 1.f : 1.f / ((1.f - x) * (1.f - x));
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int VEC> struct VecT;
template <> struct VecT<8> { using T = uint4; };
template <> struct VecT<4> { using T = uint2; };
template <> struct VecT<2> { using T = uint32_t; };
template <> struct VecT<1> { using T = uint16_t; };

// Copies two [kTPB, HP] slices: src rows of stride `sld` at columns 0 and `scol1`, dst contiguous [M, HP] / strided.
template <int VEC>
__device__ __forceinline__ void copy_pair(const bf16_bits* s0, const bf16_bits* s1, int64_t sld, bf16_bits* d0,
                                          bf16_bits* d1, int64_t dld, int64_t HP) {
  using V = typename VecT<VEC>::T;
  const int64_t nv = HP / VEC, per = kTPB * nv;
  for (int64_t e = threadIdx.x; e < 2 * per; e += kT) {
    const int which = e >= per;
    const int64_t r = which ? e - per : e;
    const int64_t tt = r / nv, c = (r % nv) * VEC;
    const V val = *reinterpret_cast<const V*>((which ? s1 : s0) + tt * sld + c);
    *reinterpret_cast<V*>((which ? d1 : d0) + tt * dld + c) = val;
  }
}

template <int VEC>
__global__ void __launch_bounds__(kT) glue_fwd_tok(const GP g, const MixerGlueFwdArgs a) {
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTPB;
  const int b = static_cast<int>(m0 / g.S), t0 = static_cast<int>(m0 % g.S);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // 1. z, v
  const bf16_bits* prow = a.proj + m0 * g.dip;
  copy_pair<VEC>(prow, prow + g.HP, g.dip, a.z + m0 * g.HP, a.v + m0 * g.HP, g.HP, g.HP);
  // 2. decay prep and the trap logit, (B,H,S) outputs with t fastest
  for (int e = tid; e < kTPB * g.H; e += kT) {
    const int tt = e % kTPB, h = e / kTPB;
    const bf16_bits* row = prow + tt * g.dip;
    const float ddt = bf(row + g.odt + h), dda = bf(row + g.oA + h);
    const float A = fminf(-act_f(dda, g.heavy), -g.a_floor);
    const float dl = softplus_f(ddt + a.dt_bias[h]);
    const int64_t o = (static_cast<int64_t>(b) * g.H + h) * g.S + t0 + tt;
    a.dt[o] = dl;
    a.adt[o] = A * dl;
    a.trap[o] = row[g.otr + h];
  }
  // 3. RMSNorm over N of B (→ k) and C (→ q), layout (g r n) → (r g n)
  const int GR = g.G * g.R, rows = kTPB * 2 * GR;
  for (int rho = warp; rho < rows; rho += kW) {
    const int tt = rho / (2 * GR), rem = rho % (2 * GR), which = rem / GR, gr = rem % GR;
    const int gg = gr / g.R, r = gr % g.R;
    const int64_t m = m0 + tt;
    const bf16_bits* src = prow + tt * g.dip + (which ? g.oC : g.oB) + static_cast<int64_t>(gr) * g.N;
    float xv[8], ss = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = lane + 32 * i;
      xv[i] = n < g.N ? bf(src + n) : 0.f;
      ss += xv[i] * xv[i];
    }
    ss = warp_sum(ss);
    const float rs = 1.f / sqrtf(ss / static_cast<float>(g.N) + g.eps);
    const float* w = which ? a.c_norm : a.b_norm;
    bf16_bits* dst = (which ? a.q : a.k) + ((m * g.R + r) * g.G + gg) * static_cast<int64_t>(g.N);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = lane + 32 * i;
      if (n < g.N) dst[n] = f2bf(xv[i] * rs * w[n]);
    }
    if (lane == 0) (which ? a.rstd_c : a.rstd_b)[(m * g.G + gg) * g.R + r] = rs;
  }
}

// rev=false: io[b,t,h,j] = Σ_{s≤t} π·tanh(ang[b,s,j])·dt[b,h,s];  rev=true: io ← Σ_{s≥t} io[b,s,h,j] (in place).
template <bool kRev>
__global__ void __launch_bounds__(kT) angle_scan(const GP g, const bf16_bits* __restrict__ ang,
                                                 const float* __restrict__ dt, float* io) {
  __shared__ float tot[kT];
  const int b = blockIdx.x / g.H, h = blockIdx.x % g.H;
  const int j = threadIdx.x % g.na, seg = threadIdx.x / g.na, nseg = kT / g.na;
  const int len = (g.S + nseg - 1) / nseg;
  const int ts = min(seg * len, g.S), te = min(ts + len, g.S);
  const float* dtr = dt + (static_cast<int64_t>(b) * g.H + h) * g.S;
  const bf16_bits* ar = ang + static_cast<int64_t>(b) * g.S * g.na + j;
  const int64_t ostride = static_cast<int64_t>(g.H) * g.na;
  float* o = io + (static_cast<int64_t>(b) * g.S * g.H + h) * g.na + j;  // + t·H·n_ang
  float s = 0.f;
  if (!kRev) {
#pragma unroll 4
    for (int t = ts; t < te; ++t) s += kPi * tanhf(bf(ar + static_cast<int64_t>(t) * g.na)) * dtr[t];
  } else {
#pragma unroll 4
    for (int t = ts; t < te; ++t) s += o[t * ostride];
  }
  tot[threadIdx.x] = s;
  __syncthreads();
  float run = 0.f;
  if (!kRev) {
    for (int q = 0; q < seg; ++q) run += tot[q * g.na + j];
    for (int t = ts; t < te; ++t) {
      run += kPi * tanhf(bf(ar + static_cast<int64_t>(t) * g.na)) * dtr[t];
      o[t * ostride] = run;
    }
  } else {
    for (int q = nseg - 1; q > seg; --q) run += tot[q * g.na + j];
    for (int t = te - 1; t >= ts; --t) {
      run += o[t * ostride];
      o[t * ostride] = run;
    }
  }
}

template <int VEC>
__global__ void __launch_bounds__(kT) glue_bwd_tok(const GP g, const MixerGlueBwdArgs a, float* __restrict__ partial) {
  extern __shared__ float sm[];
  float* s_dt = sm;                    // [kTPB][H]
  float* s_gx = s_dt + kTPB * g.H;     // [kTPB][H]
  float* s_th = s_gx + kTPB * g.H;     // [kTPB][n_ang]
  float* s_red = s_th + kTPB * g.na;   // [kW][2][N]
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTPB;
  const int b = static_cast<int>(m0 / g.S), t0 = static_cast<int>(m0 % g.S);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t HN = static_cast<int64_t>(g.H) * g.na;
  for (int e = tid; e < kTPB * g.H; e += kT) {
    const int tt = e % kTPB, h = e / kTPB;
    s_dt[tt * g.H + h] = a.dt[(static_cast<int64_t>(b) * g.H + h) * g.S + t0 + tt];
  }
  for (int e = tid; e < kTPB * g.na; e += kT) s_th[e] = tanhf(bf(a.ang + m0 * g.na + e));
  __syncthreads();
  // 1. dang[m,j] = π·sech²(a)·Σ_h Gθ[m,h,j]·Δ[h]
  for (int e = tid; e < kTPB * g.na; e += kT) {
    const int tt = e / g.na, j = e % g.na;
    const float* G = a.dangles + (m0 + tt) * HN + j;
    float s = 0.f;
    for (int h = 0; h < g.H; ++h) s += G[static_cast<int64_t>(h) * g.na] * s_dt[tt * g.H + h];
    const float th = s_th[e];
    a.dang[m0 * g.na + e] = f2bf(kPi * (1.f - th * th) * s);
  }
  // 2. decay-prep backward (+ the angle path into Δ), trap
  const bf16_bits* prow = a.proj + m0 * g.dip;
  bf16_bits* drow0 = a.dproj + m0 * g.dip;
  for (int e = tid; e < kTPB * g.H; e += kT) {
    const int tt = e % kTPB, h = e / kTPB;
    const float* G = a.dangles + (m0 + tt) * HN + static_cast<int64_t>(h) * g.na;
    const float* th = s_th + tt * g.na;
    float sa = 0.f;
    for (int j = 0; j < g.na; ++j) sa += G[j] * th[j];
    const int64_t o = (static_cast<int64_t>(b) * g.H + h) * g.S + t0 + tt;
    const bf16_bits* row = prow + tt * g.dip;
    bf16_bits* drow = drow0 + tt * g.dip;
    const float ddt_in = bf(row + g.odt + h), dda = bf(row + g.oA + h);
    const float f = act_f(dda, g.heavy);
    const bool clamped = f < g.a_floor;
    const float A = clamped ? -g.a_floor : -f;
    const float x = ddt_in + a.dt_bias[h];
    const float dl = s_dt[tt * g.H + h];
    const float dadt = a.dadt[o];
    const float dtot = a.ddt[o] + kPi * sa + dadt * A;
    const float gx = dtot * sigmoid_f(x);
    drow[g.odt + h] = f2bf(gx);
    drow[g.oA + h] = f2bf(clamped ? 0.f : -(dadt * dl) * act_g(dda, g.heavy));
    drow[g.otr + h] = f2bf(a.dtrap[o]);
    s_gx[tt * g.H + h] = gx;
  }
  // 3. dz, dv
  copy_pair<VEC>(a.dz + m0 * g.HP, a.dv + m0 * g.HP, g.HP, drow0, drow0 + g.HP, g.dip, g.HP);
  // 4. RMSNorm backward of B (from dk) and C (from dq)
  float accB[8], accC[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) accB[i] = accC[i] = 0.f;
  const int GR = g.G * g.R, rows = kTPB * 2 * GR;
  for (int rho = warp; rho < rows; rho += kW) {
    const int tt = rho / (2 * GR), rem = rho % (2 * GR), which = rem / GR, gr = rem % GR;
    const int gg = gr / g.R, r = gr % g.R;
    const int64_t m = m0 + tt;
    const int64_t col = (which ? g.oC : g.oB) + static_cast<int64_t>(gr) * g.N;
    const bf16_bits* src = prow + tt * g.dip + col;
    const float rs = (which ? a.rstd_c : a.rstd_b)[(m * g.G + gg) * g.R + r];
    const float* w = which ? a.c_norm : a.b_norm;
    const bf16_bits* dyn = (which ? a.dq : a.dk) + ((m * g.R + r) * g.G + gg) * static_cast<int64_t>(g.N);
    float xh[8], dw[8], dot = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = lane + 32 * i;
      const bool in = n < g.N;
      xh[i] = in ? bf(src + n) * rs : 0.f;
      const float dy = in ? bf(dyn + n) : 0.f;
      dw[i] = in ? dy * w[n] : 0.f;
      dot += dw[i] * xh[i];
      if (which) accC[i] += dy * xh[i];
      else accB[i] += dy * xh[i];
    }
    dot = warp_sum(dot) / static_cast<float>(g.N);
    bf16_bits* dsrc = drow0 + tt * g.dip + col;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = lane + 32 * i;
      if (n < g.N) dsrc[n] = f2bf(rs * (dw[i] - xh[i] * dot));
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int n = lane + 32 * i;
    if (n < g.N) {
      s_red[(warp * 2 + 0) * g.N + n] = accB[i];
      s_red[(warp * 2 + 1) * g.N + n] = accC[i];
    }
  }
  __syncthreads();
  // 5. this CTA's partial sums: [d dt_bias (H) | dw_B (N) | dw_C (N)]
  const int Ptot = g.H + 2 * g.N;
  float* pp = partial + static_cast<int64_t>(blockIdx.x) * Ptot;
  for (int e = tid; e < Ptot; e += kT) {
    float s = 0.f;
    if (e < g.H) {
      for (int tt = 0; tt < kTPB; ++tt) s += s_gx[tt * g.H + e];
    } else {
      const int k = e - g.H, which = k / g.N, n = k % g.N;
      for (int w = 0; w < kW; ++w) s += s_red[(w * 2 + which) * g.N + n];
    }
    pp[e] = s;
  }
}

__global__ void __launch_bounds__(kT) glue_reduce(const float* __restrict__ partial, int nblk, int H, int N,
                                                  float* g_dt_bias, float* g_b_norm, float* g_c_norm) {
  __shared__ float red[kT];
  const int e = blockIdx.x, Ptot = H + 2 * N;
  float s = 0.f;
  for (int i = threadIdx.x; i < nblk; i += kT) s += partial[static_cast<int64_t>(i) * Ptot + e];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int st = kT / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) red[threadIdx.x] += red[threadIdx.x + st];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float* dst = e < H ? g_dt_bias + e : (e < H + N ? g_b_norm + (e - H) : g_c_norm + (e - H - N));
    *dst += red[0];
  }
}

struct AccumParams {
  float* dst[8];
  const float* src[8];
  int64_t n[8];
};
__global__ void __launch_bounds__(kT) accum_kernel(const AccumParams p) {
  const int s = blockIdx.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kT + threadIdx.x; i < p.n[s];
       i += static_cast<int64_t>(gridDim.x) * kT)
    p.dst[s][i] += p.src[s][i];
}

int vec_width(int64_t dip) { return dip % 8 == 0 ? 8 : dip % 4 == 0 ? 4 : dip % 2 == 0 ? 2 : 1; }

std::size_t bwd_smem(const MixerGlueDims& d) {
  return sizeof(float) * (2 * static_cast<std::size_t>(kTPB) * d.H + static_cast<std::size_t>(kTPB) * d.n_ang +
                          2 * static_cast<std::size_t>(kW) * d.N);
}

}  // namespace glue

void mixer_glue_validate(const MixerGlueDims& d) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("mixer_glue: " + m); };
  if (d.B <= 0 || d.S <= 0 || d.H <= 0 || d.G <= 0 || d.R <= 0 || d.N <= 0 || d.P <= 0)
    fail("B, S, H, G, R, N, P must be positive");
  if (d.S % glue::kTPB != 0) fail("S=" + std::to_string(d.S) + " not a multiple of 8 (8 tokens per CTA)");
  if (d.N > 256) fail("N=" + std::to_string(d.N) + " not supported (N <= 256: one warp per RMSNorm row)");
  if (d.n_ang < 1 || d.n_ang > 128 || (d.n_ang & (d.n_ang - 1)) != 0)
    fail("n_ang=" + std::to_string(d.n_ang) + " not supported (a power of two in 1..128)");
  if (d.H > 1024) fail("H=" + std::to_string(d.H) + " not supported (H <= 1024: per-CTA shared memory)");
  if ((static_cast<int64_t>(d.H) * d.P) % 8 != 0) fail("H*P must be a multiple of 8");
}

std::size_t mixer_glue_bwd_workspace_bytes(const MixerGlueDims& d) {
  const std::size_t nblk = static_cast<std::size_t>(d.tokens() / glue::kTPB);
  return nblk * static_cast<std::size_t>(d.H + 2 * d.N) * sizeof(float);
}

void mixer_glue_fwd(const MixerGlueDims& d, const MixerGlueFwdArgs& a, cudaStream_t st) {
  mixer_glue_validate(d);
  const glue::GP g = glue::make_gp(d);
  const unsigned nblk = static_cast<unsigned>(d.tokens() / glue::kTPB);
  switch (glue::vec_width(g.dip)) {
    case 8: glue::glue_fwd_tok<8><<<nblk, glue::kT, 0, st>>>(g, a); break;
    case 4: glue::glue_fwd_tok<4><<<nblk, glue::kT, 0, st>>>(g, a); break;
    case 2: glue::glue_fwd_tok<2><<<nblk, glue::kT, 0, st>>>(g, a); break;
    default: glue::glue_fwd_tok<1><<<nblk, glue::kT, 0, st>>>(g, a); break;
  }
  MEGACPP_CUDA_CHECK_LAUNCH();
  glue::angle_scan<false><<<static_cast<unsigned>(d.B * d.H), glue::kT, 0, st>>>(g, a.ang, a.dt, a.angles);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void mixer_glue_bwd(const MixerGlueDims& d, const MixerGlueBwdArgs& a, void* ws, cudaStream_t st) {
  mixer_glue_validate(d);
  const glue::GP g = glue::make_gp(d);
  glue::angle_scan<true><<<static_cast<unsigned>(d.B * d.H), glue::kT, 0, st>>>(g, a.ang, a.dt, a.dangles);
  MEGACPP_CUDA_CHECK_LAUNCH();
  const int nblk = static_cast<int>(d.tokens() / glue::kTPB);
  auto* partial = static_cast<float*>(ws);
  const std::size_t smem = glue::bwd_smem(d);
  auto launch = [&](auto kern) {
    if (smem > 48 * 1024)
      MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kern<<<static_cast<unsigned>(nblk), glue::kT, smem, st>>>(g, a, partial);
  };
  switch (glue::vec_width(g.dip)) {
    case 8: launch(glue::glue_bwd_tok<8>); break;
    case 4: launch(glue::glue_bwd_tok<4>); break;
    case 2: launch(glue::glue_bwd_tok<2>); break;
    default: launch(glue::glue_bwd_tok<1>); break;
  }
  MEGACPP_CUDA_CHECK_LAUNCH();
  glue::glue_reduce<<<static_cast<unsigned>(d.H + 2 * d.N), glue::kT, 0, st>>>(partial, nblk, d.H, d.N, a.g_dt_bias,
                                                                               a.g_b_norm, a.g_c_norm);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void accumulate_f32(const AccumSegment* segs, int nseg, cudaStream_t st) {
  if (nseg <= 0) return;
  if (nseg > 8) throw std::invalid_argument("accumulate_f32: at most 8 segments per call (got " + std::to_string(nseg) + ")");
  glue::AccumParams p{};
  int64_t most = 0;
  for (int i = 0; i < nseg; ++i) {
    p.dst[i] = segs[i].dst, p.src[i] = segs[i].src, p.n[i] = segs[i].n;
    most = std::max(most, segs[i].n);
  }
  if (most == 0) return;
  const unsigned bx = static_cast<unsigned>(std::min<int64_t>((most + glue::kT - 1) / glue::kT, 1024));
  glue::accum_kernel<<<dim3(bx, static_cast<unsigned>(nseg)), glue::kT, 0, st>>>(p);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

}  // namespace megacpp::mimo
