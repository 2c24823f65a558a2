// attention_ref.hpp — float64 CPU reference of causal grouped-query scaled-dot-product attention
// (forward saving the log-sum-exp, backward) and of rotary position embedding (RoPE).
//
// Layouts (the same for every backend, see attention.hpp):
//   q, o, dq, do : (B, S, H,  D)   row-major, contiguous ("BSHD")
//   k, v, dk, dv : (B, S, Hk, D)   H % Hk == 0; query head h reads kv head h / (H/Hk)
//   lse          : (B, H, S)       natural-log log-sum-exp of the *scaled* scores of each query row
// Math, for query i, key j <= i (causal, top-left aligned, Sq == Skv):
//   s_ij = scale * <q_i, k_j>,  lse_i = log sum_j exp(s_ij),  p_ij = exp(s_ij - lse_i),  o_i = sum_j p_ij v_j
// Backward: D_i = <do_i, o_i>, dp_ij = <do_i, v_j>, ds_ij = p_ij (dp_ij - D_i),
//   dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_{i, heads of group} ds_ij q_i, dv_j = sum_{i, heads} p_ij do_i.
// RoPE (half-split / "NeoX" pairing): for position p and i < D/2, f_i = theta^(-2i/D), a = p f_i:
//   y_i = x_i cos a - x_{i+D/2} sin a,   y_{i+D/2} = x_{i+D/2} cos a + x_i sin a   (off: y = x).
#pragma once
#include <cstdint>
#include <vector>

namespace megacpp::attn_ref {

struct Shape {
  int64_t B = 1, S = 1, H = 1, Hk = 1, D = 64;
  int64_t q_elems() const { return B * S * H * D; }
  int64_t kv_elems() const { return B * S * Hk * D; }
  int64_t lse_elems() const { return B * H * S; }
};

// Throws std::invalid_argument naming the limit when a shape is malformed (H % Hk, sizes <= 0).
void validate(const Shape& s);

// o (B,S,H,D), lse (B,H,S). Only query rows listed in `rows` (positions in [0,S)) are computed when
// `rows` is non-empty (for long-sequence spot checks); the others are left untouched.
void forward(const Shape& s, double scale, const double* q, const double* k, const double* v, double* o,
             double* lse, const std::vector<int64_t>& rows = {});

// dq (B,S,H,D), dk, dv (B,S,Hk,D) from q, k, v, o, do and the forward's lse.
void backward(const Shape& s, double scale, const double* q, const double* k, const double* v, const double* o,
              const double* dout, const double* lse, double* dq, double* dk, double* dv);

// Scalar loss L = sum(o * w) for finite-difference tests: forward then dot with w.
double loss(const Shape& s, double scale, const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<double>& w);

// RoPE on x (B, S, nh, D) in place semantics: y = rope(x). `enabled=false` copies. pos0: position of s=0.
void rope_forward(int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled, const double* x,
                  double* y, int64_t pos0 = 0);
// dx = rope^T(dy) (the inverse rotation).
void rope_backward(int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled, const double* dy,
                   double* dx, int64_t pos0 = 0);

}  // namespace megacpp::attn_ref
