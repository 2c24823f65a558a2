// m2rnn_ref.hpp — float64 CPU reference of the M²RNN ("R") block and of its scan core.
//
// Spec: ../shared/docs/m2rnn-spec.md (Mishra, Tan, Stoica, Gonzalez, Dao 2026; authors' lm-engine block).
//
// Scan core (what the CUDA kernels do), per batch b, head n, time t (0-based), H ∈ R^{K×V}:
//   P_t = H_{t-1} W_n + k_t v_{t,n}ᵀ ;  Z_t = tanh(P_t) ;  H_t = f_{t,n} H_{t-1} + (1 - f_{t,n}) Z_t
//   o_{t,n} = H_tᵀ q_t + D_n ⊙ v_{t,n}
//   head n uses q head ⌊n / (N/Nq)⌋ and k head ⌊n / (N/Nk)⌋ (MegaCpp / authors: Nq = Nk = 1).
// Layouts (row-major, last index fastest):
//   q [B,S,Nq,K]  k [B,S,Nk,K]  v [B,S,N,V]  f [B,S,N] (the gate value in (0,1))
//   W [N,V,V] (W[n][a][j], acts from the right)  D [N,V]  h0/hT [B,N,K,V]  o [B,S,N,V]
//
// Block (one R layer; pre-norm + residual optional, normally the engine's):
//   xn = prenorm ? RMSNorm(x)·w_pre : x              (eps prenorm_eps)
//   u  = xn · W_in          W_in [d, P], P = C + N + N·V, C = Nq·K + Nk·K + N·V
//        columns [ q (Nq·K) | k (Nk·K) | v (N·V) | φ (N) | g (N·V) ]
//   c  = SiLU(causal depthwise conv_w(u[:, :C]))      conv_w [C, w]; tap w-1 multiplies the current token;
//        the w-1 previous pre-conv rows come from the carried conv tail (zeros at sequence start)
//   f  = exp(-exp(A_log) · softplus(φ + dt_bias))     A_log, dt_bias [N]
//   o  = scan(q, k, v from c; f; W; D; h0)
//   m  = o ⊙ SiLU(g) ;  r = γ ⊙ m / sqrt(mean(m²) + norm_eps)  (one norm over all N·V channels), γ [N·V]
//   y  = r · W_out (+ x when prenorm)                  W_out [N·V, d]
//
// State-gradient clipping (the BPTT state gradient G, elementwise clamp to [-c, c]):
//   Off    : exact gradients (what the finite-difference tests check).
//   Kernel : xma Triton semantics — clamp the carried G (incl. dH_T at the first reverse step) before
//            adding the readout term q ⊗ do.
//   Total  : torch op.py semantics — clamp G_t = G + q ⊗ do.
//   dh0 is the (unclamped) carried G after the last reverse step in every mode.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::m2rnn {

enum class Clip { Off, Kernel, Total };
Clip parse_clip(const std::string& s);  // "off" | "kernel" | "total"; throws std::invalid_argument
const char* clip_name(Clip c);

struct ScanShape {
  int B = 1, S = 1, N = 1, K = 64, V = 16, Nq = 1, Nk = 1;
  std::size_t q_size() const { return std::size_t(B) * S * Nq * K; }
  std::size_t k_size() const { return std::size_t(B) * S * Nk * K; }
  std::size_t v_size() const { return std::size_t(B) * S * N * V; }
  std::size_t f_size() const { return std::size_t(B) * S * N; }
  std::size_t w_size() const { return std::size_t(N) * V * V; }
  std::size_t d_size() const { return std::size_t(N) * V; }
  std::size_t h_size() const { return std::size_t(B) * N * K * V; }
};
// Throws std::invalid_argument naming the offending value (non-positive dims, N not divisible by Nq/Nk).
void validate(const ScanShape& s);

struct ScanInputs {
  std::vector<double> q, k, v, f, W, D;
  std::vector<double> h0;  // empty: zero initial state
};
struct ScanOutputs {
  std::vector<double> o, hT;
};
struct ScanGrads {
  std::vector<double> dq, dk, dv, df, dW, dD, dh0;
};

void scan_forward(const ScanShape& s, const ScanInputs& in, ScanOutputs& out);
// dout: gradient of o [B,S,N,V]; dhT: gradient of the final state (empty: zero).
void scan_backward(const ScanShape& s, const ScanInputs& in, const std::vector<double>& dout,
                   const std::vector<double>& dhT, Clip clip, double clip_value, ScanGrads& g);

// ---- Whole block ----------------------------------------------------------------------------------
struct BlockConfig {
  int hidden = 3584;
  int heads = 44;
  int key_dim = 64;
  int value_dim = 16;
  int conv_width = 4;
  int q_heads = 1;
  int k_heads = 1;
  double norm_eps = 1e-5;
  bool prenorm_residual = false;  // include x + mixer(RMSNorm(x)) (normally done by the engine)
  double prenorm_eps = 1e-5;
  Clip clip = Clip::Off;
  double clip_value = 1.0;

  int conv_channels() const { return q_heads * key_dim + k_heads * key_dim + heads * value_dim; }
  int proj_width() const { return conv_channels() + heads + heads * value_dim; }
  ScanShape scan_shape(int B, int S) const { return {B, S, heads, key_dim, value_dim, q_heads, k_heads}; }
};
// MegaCpp default: heads = hidden / (key_dim + value_dim) (3584 / 80 = 44) when heads is not given.
int default_heads(int hidden, int key_dim, int value_dim);
void validate(const BlockConfig& c);

struct BlockParams {
  std::vector<double> w_in;     // [d, P]
  std::vector<double> conv_w;   // [C, w]
  std::vector<double> A_log;    // [N]
  std::vector<double> dt_bias;  // [N]
  std::vector<double> W;        // [N, V, V]
  std::vector<double> D;        // [N, V]
  std::vector<double> gamma;    // [N·V]
  std::vector<double> w_out;    // [N·V, d]
  std::vector<double> w_pre;    // [d] (only with prenorm_residual; empty otherwise)
};
// Shapes of every parameter, by name, in the order above (w_pre only with prenorm_residual).
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<ParamInfo> param_shapes(const BlockConfig& c);
// The authors' initialisation (spec §1), drawn from `seed`; n_layers scales W_out's std.
BlockParams init_params(const BlockConfig& c, uint64_t seed, int n_layers);
void check_params(const BlockConfig& c, const BlockParams& p);  // sizes; throws std::invalid_argument

// Carried state between calls: a sequence run in pieces equals one pass.
struct BlockState {
  std::vector<double> H;          // [B, N, K, V]
  std::vector<double> conv_tail;  // [B, w-1, C]: the last w-1 pre-conv rows (u[:, :C])
};
BlockState zero_state(const BlockConfig& c, int B);

struct BlockGrads {
  BlockParams dparams;  // same layout as BlockParams
  std::vector<double> dx;  // [B, S, d]
  BlockState dstate_in;    // gradient of the incoming state
};

// y [B,S,d]. state_in may be null (zeros). state_out may be null.
void block_forward(const BlockConfig& c, const BlockParams& p, int B, int S, const std::vector<double>& x,
                   const BlockState* state_in, std::vector<double>& y, BlockState* state_out);
// dy [B,S,d]; dstate_out may be null (the final state is unused). Recomputes the forward internally.
void block_backward(const BlockConfig& c, const BlockParams& p, int B, int S, const std::vector<double>& x,
                    const BlockState* state_in, const std::vector<double>& dy, const BlockState* dstate_out,
                    BlockGrads& g);

// Backward of the input projection u = x·w_in (w_in [d, P], x [rows, d], du [rows, P]):
// dx = du·w_inᵀ (overwritten), dw_in += xᵀ·du. Shared by block_backward and the model's R block.
void input_projection_backward(const double* x, const double* w_in, const double* du, std::size_t rows, int d, int P,
                               double* dw_in, double* dx);

}  // namespace megacpp::m2rnn
