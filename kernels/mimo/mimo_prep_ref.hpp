// mimo_prep_ref.hpp — float64 references of the small pre-ops of the Mamba-3 MIMO layer (spec §1, §3.1, §3.4).
//
// 1. Angle cumsum:  θ[b,t,h,j] = Σ_{s≤t} π·tanh(a[b,s,j])·Δ[b,h,s]     a (B,S,N_ang) raw, Δ (B,H,S) → θ (B,S,H,N_ang)
//    backward: Gθ_t = Σ_{t'≥t} dθ_{t'};  da[b,t,j] = Σ_h Gθ_t[j]·Δ_t·π·sech²(a_t[j]);  dΔ_t = π·Σ_j Gθ_t[j]·tanh(a_t[j])
// 2. Decay preprocessing (per b, t, h):
//      A   = min(−f(dd_A), −a_floor),  f = softplus (default) or heavy_tail: f(x) = 1+x (x ≥ 0), 1/(1−x) (x < 0)
//      Δ   = softplus(dd_dt + dt_bias)
//      ADT = A·Δ
//    inputs dd_dt, dd_A (B,S,H) (the in_proj slices), dt_bias (H); outputs A, Δ, ADT (B,H,S).
//    backward from dADT and dΔ (B,H,S; dΔ = every other path into Δ, e.g. trapezoid + angle):
//      dΔ_tot = dΔ + dADT·A;  dA = dADT·Δ;  d dd_dt = dΔ_tot·σ(dd_dt+dt_bias);  d dt_bias = Σ_{b,t} d dd_dt;
//      d dd_A = −dA·f'(dd_A) where unclamped (f(dd_A) ≥ a_floor), 0 where clamped (f(dd_A) < a_floor).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::mimo::prep {

// ---- angle cumsum ----
std::vector<double> angle_cumsum_forward(int64_t B, int64_t S, int64_t H, int64_t n_ang,
                                         const std::vector<double>& raw_angles,  // (B,S,N_ang)
                                         const std::vector<double>& dt);         // (B,H,S)
struct AngleCumsumGrads {
  std::vector<double> draw_angles;  // (B,S,N_ang), summed over heads
  std::vector<double> ddt;          // (B,H,S), the angle path's contribution to dΔ
};
AngleCumsumGrads angle_cumsum_backward(int64_t B, int64_t S, int64_t H, int64_t n_ang,
                                       const std::vector<double>& raw_angles, const std::vector<double>& dt,
                                       const std::vector<double>& dangles);  // (B,S,H,N_ang)

// ---- decay preprocessing ----
enum class AActivation { softplus, heavy_tail };
AActivation parse_a_activation(const std::string& name);  // "softplus" | "heavy_tail"; throws otherwise

struct DecayPrepOutputs {
  std::vector<double> A, dt, adt;  // (B,H,S)
};
DecayPrepOutputs decay_prep_forward(int64_t B, int64_t S, int64_t H,
                                    const std::vector<double>& dd_dt,    // (B,S,H)
                                    const std::vector<double>& dd_A,     // (B,S,H)
                                    const std::vector<double>& dt_bias,  // (H)
                                    AActivation act = AActivation::softplus, double a_floor = 1e-4);
struct DecayPrepGrads {
  std::vector<double> ddd_dt, ddd_A;  // (B,S,H)
  std::vector<double> ddt_bias;       // (H)
};
DecayPrepGrads decay_prep_backward(int64_t B, int64_t S, int64_t H, const std::vector<double>& dd_dt,
                                   const std::vector<double>& dd_A, const std::vector<double>& dt_bias,
                                   const std::vector<double>& dadt,  // (B,H,S)
                                   const std::vector<double>& ddt,   // (B,H,S), other paths into Δ
                                   AActivation act = AActivation::softplus, double a_floor = 1e-4);

// scalar helpers (float64, stable)
double softplus(double x);
double sigmoid(double x);
double a_activation(double x, AActivation act);        // f
double a_activation_grad(double x, AActivation act);   // f'

}  // namespace megacpp::mimo::prep
