// mixer_glue.hpp — host API of the GPU kernels around the Mamba-3 MIMO scan in the M block (the CUDA twin of
// the per-token code in engine/model/mamba_mixer.cpp). Host-only header (no device code); CUDA builds only.
//
// Forward (mixer_glue_fwd), from the projections of M = B·S tokens:
//   proj  bf16 [M, d_in_proj] = [z (H·P) | x (H·P) | B (G·R·N, g r n) | C (G·R·N) | dd_dt (H) | dd_A (H) | trap (H)]
//   ang   bf16 [M, n_ang]
// it writes the scan's inputs in the layouts of kernels/mimo/mimo_launch.hpp:
//   z, v   (B,S,H,P) bf16                 copies of the z and x slices
//   k, q   (B,S,R,G,N) bf16               RMSNorm_N(B)·w_B, RMSNorm_N(C)·w_C per (token, g, r); rstd_b/rstd_c
//                                         (M,G,R) fp32 saved
//   trap   (B,H,S) bf16                   the trap logit slice (bits copied)
//   dt, adt (B,H,S) fp32                  Δ = softplus(dd_dt + dt_bias), ADT = min(−f(dd_A), −a_floor)·Δ
//   angles (B,S,H,n_ang) fp32             θ = cumsum_t π·tanh(ang)·Δ
// Backward (mixer_glue_bwd), from the scan's gradients dq, dk (B,S,R,G,N) bf16, dv, dz (B,S,H,P) bf16,
// dadt, ddt (trapezoid path), dtrap (B,H,S) fp32 and dangles (B,S,H,n_ang) fp32 (OVERWRITTEN: reverse cumsum):
//   dproj bf16 [M, d_in_proj], dang bf16 [M, n_ang] (overwritten) and the fp32 gradients of dt_bias (H),
//   B_norm (N), C_norm (N) ACCUMULATED (+=): per-CTA partials in the workspace + fixed-order reduction.
// Everything is deterministic (no atomics); fp32 math. The float64 references: kernels/mimo/mimo_prep_ref.hpp
// (decay prep, angle cumsum) and the CPU block (RMSNorm, layouts).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/mimo/mimo_launch.hpp"

namespace megacpp::mimo {

struct MixerGlueDims {
  int B = 0, S = 0, H = 0, G = 0, R = 0, N = 0, P = 0, n_ang = 0;
  float norm_eps = 1e-5f, a_floor = 1e-4f;
  bool heavy_tail = false;  // A activation: softplus (false) or heavy_tail (true)
  int64_t tokens() const { return static_cast<int64_t>(B) * S; }
  int64_t d_in_proj() const { return 2LL * H * P + 2LL * G * R * N + 3LL * H; }
};
// Throws std::invalid_argument naming the limit: S % 8 == 0, N ≤ 256, n_ang a power of two ≤ 128 (≥ 1),
// H ≤ 1024, all sizes positive.
void mixer_glue_validate(const MixerGlueDims& d);

struct MixerGlueFwdArgs {
  const bf16_bits* proj = nullptr;  // [M, d_in_proj]
  const bf16_bits* ang = nullptr;   // [M, n_ang]
  const float *dt_bias = nullptr, *b_norm = nullptr, *c_norm = nullptr;  // (H), (N), (N) fp32
  bf16_bits *z = nullptr, *v = nullptr, *q = nullptr, *k = nullptr, *trap = nullptr;
  float *dt = nullptr, *adt = nullptr, *angles = nullptr;
  float *rstd_b = nullptr, *rstd_c = nullptr;  // (M, G, R)
};
void mixer_glue_fwd(const MixerGlueDims& d, const MixerGlueFwdArgs& a, cudaStream_t stream);

struct MixerGlueBwdArgs {
  const bf16_bits* proj = nullptr;
  const bf16_bits* ang = nullptr;
  const float *dt_bias = nullptr, *b_norm = nullptr, *c_norm = nullptr;
  const float* dt = nullptr;                            // (B,H,S) Δ of the forward
  const float *rstd_b = nullptr, *rstd_c = nullptr;     // (M,G,R) of the forward
  const bf16_bits *dq = nullptr, *dk = nullptr, *dv = nullptr, *dz = nullptr;
  const float *dadt = nullptr, *ddt = nullptr, *dtrap = nullptr;
  float* dangles = nullptr;  // in: dθ (B,S,H,n_ang); out: its reverse cumsum along S (scratch use)
  bf16_bits *dproj = nullptr, *dang = nullptr;
  float *g_dt_bias = nullptr, *g_b_norm = nullptr, *g_c_norm = nullptr;  // accumulated (+=)
};
std::size_t mixer_glue_bwd_workspace_bytes(const MixerGlueDims& d);
void mixer_glue_bwd(const MixerGlueDims& d, const MixerGlueBwdArgs& a, void* workspace, cudaStream_t stream);

// dst[i] += src[i] for each segment (fp32, elementwise, deterministic). At most 8 segments per call.
struct AccumSegment {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t n = 0;
};
void accumulate_f32(const AccumSegment* segs, int nseg, cudaStream_t stream);

}  // namespace megacpp::mimo
