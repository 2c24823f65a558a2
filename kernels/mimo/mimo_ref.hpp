// mimo_ref.hpp — float64 CPU reference of the Mamba-3 MIMO scan core (docs: ../shared/docs/mamba3-spec.md §2–§3).
//
// Math (per batch b, head h, g = h / (H/G), r < R):
//   q_{t,r} = Q[b,t,r,g,:] + q_bias[h,r,:]      k_{t,r} = K[b,t,r,g,:] + k_bias[h,r,:]
//   q̄ = Rot_{θ_t} q, k̄ = Rot_{θ_t} k; half-split pairs (j, j+N/2) for j < N_ang:
//        (u_j, u_{j+N/2}) -> (cosθ_j u_j − sinθ_j u_{j+N/2}, sinθ_j u_j + cosθ_j u_{j+N/2})
//   v_{t,r}[p] = V[b,t,h,p]·Ψ[h,r,p]
//   α_t = exp(ADT_t), λ_t = σ(trap_t), γ_t = λ_t Δ_t, β_t = (1−λ_t) Δ_t α_t
//   h_t = α_t h_{t−1} + β_t Σ_r k̄_{t−1,r} v_{t−1,r}ᵀ + γ_t Σ_r k̄_{t,r} v_{t,r}ᵀ     (h_{−1} = 0, k̄_{−1} = 0)
//   y_{t,r}[p] = Σ_n q̄_{t,r}[n] h_t[n,p] + D_h v_{t,r}[p]
//   out[b,t,h,p] = Σ_r Φ[h,r,p]·silu(z·Ζ[h,r,p])·y_{t,r}[p]                      (outproj_norm = false)
//   out[b,t,h,p] = Σ_r Φ·silu(z·Ζ)·w[h·P+p]·y_{t,r}[p]·rsqrt(mean_p(y_{t,r}²)+eps)  (outproj_norm = true)
//
// Layouts (row-major, last index fastest) — the kernel-level tensors:
//   q, k     (B,S,R,G,N)   Ĉ and B̂ after their RMSNorm, bias NOT added
//   v, z     (B,S,H,P)
//   adt, dt, trap (B,H,S)  ADT = A·Δ (<0), Δ (>0), trap logit (pre-sigmoid)
//   q_bias, k_bias (H,R,N); psi, zeta, phi (H,R,P); d (H); norm_weight (H·P)
//   angles   (B,S,H,N_ang) CUMULATIVE θ
//   out      (B,S,H,P)
// Gradients (MimoGrads) have the shapes of the inputs they belong to; dq/dk are reduced over the H/G heads
// of each group; ddt is the direct (trapezoid) path only — the angle path is not included because angles are
// inputs here (add it with prep::angle_cumsum_backward). dnorm_weight is empty unless outproj_norm.
// Everything is float64; no clamps are active (ADT < 0 makes every decay-cumsum ≤ 0).
// Cost: the (b,h) pairs run on MEGACPP_REF_THREADS threads (default: hardware_concurrency; one thread for tiny
// problems); results are bitwise independent of the thread count (shared gradients are summed in (b,h) order).
#pragma once
#include <cstdint>
#include <vector>

namespace megacpp::mimo {

struct MimoShape {
  int64_t B, S, H, G, N, P, R, L;
  double rope_fraction = 0.5;
  bool outproj_norm = false;
  double norm_eps = 1e-5;

  int64_t n_ang() const;    // floor_even(N·rope_fraction)/2
  int64_t nchunks() const;  // S / L
  // Throws std::invalid_argument naming the limit: N ∈ {16,32,64,128,256}, P ∈ {32,64,128}, R ∈ {1,2,4,8},
  // L ∈ {8,16,32,64}, H % G == 0, S % L == 0, all > 0, rope_fraction ∈ {0.5, 1}.
  void validate() const;

  // element counts of the tensors
  int64_t qk_numel() const { return B * S * R * G * N; }
  int64_t vz_numel() const { return B * S * H * P; }
  int64_t bhs_numel() const { return B * H * S; }
  int64_t hrn_numel() const { return H * R * N; }
  int64_t hrp_numel() const { return H * R * P; }
  int64_t angles_numel() const { return B * S * H * n_ang(); }
  int64_t heads_per_group() const { return H / G; }
};

struct MimoInputs {  // float64, the kernel-level layouts above
  std::vector<double> q, k;            // (B,S,R,G,N)
  std::vector<double> v, z;            // (B,S,H,P)
  std::vector<double> adt, dt, trap;   // (B,H,S)
  std::vector<double> q_bias, k_bias;  // (H,R,N)
  std::vector<double> psi, zeta, phi;  // (H,R,P): MIMO_V, MIMO_Z, MIMO_Out
  std::vector<double> angles;          // (B,S,H,N_ang) cumulative
  std::vector<double> d;               // (H)
  std::vector<double> norm_weight;     // (H·P), only when outproj_norm (else empty)
};

struct MimoGrads {
  std::vector<double> dq, dk, dv, dadt, ddt, dtrap, dq_bias, dk_bias, dpsi, dzeta, dphi, dangles, dd, dz,
      dnorm_weight;
};

// Realistic random inputs (never zeros): Δ = softplus(dd_dt + dt_bias) with dt_bias = softplus⁻¹(dt0),
// dt0 log-uniform in [1e-3, 1e-1]; A = −softplus(N(0,1)) clamped ≤ −1e-4; ADT = A·Δ; trap ~ N(0,1);
// angles = cumsum_t π·tanh(a)·Δ with a ~ N(0,1); q,k = RMSNorm_N(N(0,1)) (weight 1); biases 1 ± 0.5;
// Ψ, Φ ≈ (1/R)(1 ± 0.3); Ζ, D ≈ 1 ± 0.3; v, z ~ N(0,1); norm_weight ≈ 1 ± 0.3 (when outproj_norm).
MimoInputs make_random_inputs(const MimoShape& s, uint64_t seed);

// §2 recurrence literally; out (B,S,H,P).
std::vector<double> mimo_forward_step(const MimoShape& s, const MimoInputs& in);
// §3 chunked form (the kernels' algorithm); out (B,S,H,P).
std::vector<double> mimo_forward_chunked(const MimoShape& s, const MimoInputs& in);
// The state S_c entering each chunk c (c = 0..nc−1, S_0 = 0) of the chunked form: (B,H,nc,N,P).
// Note S_c = h_{cL−1} + γ̃_{cL−1}·Σ_r k̄_{cL−1,r} v_{cL−1,r}ᵀ (the pending β term is folded in).
std::vector<double> mimo_chunk_states(const MimoShape& s, const MimoInputs& in);

// All gradients of L = Σ dout ⊙ out. dout is (B,S,H,P).
MimoGrads mimo_backward_chunked(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout);
// Reverse-mode of the step recurrence (independent derivation, the cross-check).
MimoGrads mimo_backward_step(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout);

}  // namespace megacpp::mimo
