// moe_ref.hpp — the MoE block (the E letter): configuration, and the float64 CPU reference of its
// forward and backward. The GPU paths (moe.hpp / moe.cu) compute the same function.
//
// Block math (pre-norm: x is the already-normalised input; the caller adds y to the residual):
//   T tokens, H hidden, E experts, K top_k, F ffn_hidden (per routed expert), S shared_hidden (0: none).
//   z = x · Wr^T                       router logits [T,E]             Wr [E,H]
//   p = softmax(z) or sigmoid(z)       scores        [T,E]
//   topk(p_t) → e_{t,1..K} (descending score, ties → lower expert index)
//   w_{t,k} = p_{t,e_k} / Σ_j p_{t,e_j}  (renormalised; renorm=false: w = p)
//   routed expert e on a row r:   a = x_r · W1_e^T  [F1]   (relu²: F1 = F; swiglu: F1 = 2F, rows [0,F) gate, [F,2F) up)
//                                 h = relu(a)²  |  silu(a_gate) ⊙ a_up       [F]
//                                 o = h · W2_e^T [H]        W1 [E,F1,H], W2 [E,H,F]
//   shared expert (SwiGLU, every token): hs = silu(x·S1g^T) ⊙ (x·S1u^T), ys = hs · S2^T
//                                        S1 [2S,H] (rows [0,S) gate, [S,2S) up), S2 [H,S]
//   y_t = ys_t + Σ_k kept_{t,k} · w_{t,k} · o_{e_k}(x_t)
//   capacity (capacity_factor > 0): C = ceil(cf · T·K / E); slots are taken per expert in token order
//   (slot index t·K + k); a slot whose position in its expert is ≥ C is dropped (kept = 0). Dropless: cf = 0.
//   aux loss  L_aux = aux_coef · E · Σ_e f_e · P_e,  f_e = (#slots routed to e, before drops) / (T·K),
//             P_e = mean_t q_{t,e}, q = p (softmax) or p / Σ_e p (sigmoid); f is a constant (no gradient).
//   z-loss    L_z = z_coef · mean_t (logsumexp_e z_{t,e})²
// Backward: the scalar loss is L = <dy, y> + L_aux + L_z; gradients of everything but the routing choice.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::moe {

enum class Activation { Relu2, SwiGLU };
enum class Score { Softmax, Sigmoid };

struct MoeConfig {
  int64_t tokens = 0, hidden = 0, experts = 0, top_k = 0, ffn_hidden = 0, shared_hidden = 0;
  Activation act = Activation::Relu2;  // routed experts (NAM56R: relu²)
  Score score = Score::Softmax;
  bool renorm = true;
  double aux_coef = 1e-2;
  double z_coef = 1e-3;
  double capacity_factor = 0.0;  // 0: dropless

  int64_t ffn1() const { return act == Activation::SwiGLU ? 2 * ffn_hidden : ffn_hidden; }
  int64_t slots() const { return tokens * top_k; }
  // Per-expert capacity in slots; -1 when dropless.
  int64_t capacity() const;
  // Throws std::invalid_argument naming the violated limit.
  void validate() const;
  std::string to_string() const;
};

// Parameter sizes (elements), row-major, in the layouts above.
struct MoeParamSizes {
  int64_t router, w1, w2, s1, s2;
};
MoeParamSizes param_sizes(const MoeConfig& c);

struct MoeParamsRef {
  std::vector<double> router, w1, w2, s1, s2;
};

struct RouterStats {
  std::vector<int64_t> tokens_per_expert;  // slots routed to each expert, before capacity drops
  int64_t min = 0, max = 0;
  double std = 0;            // population std of tokens_per_expert
  double dropped_frac = 0;   // dropped slots / (T·K)
};
RouterStats router_stats(const MoeConfig& c, const std::vector<int32_t>& experts, const std::vector<uint8_t>& kept);

// Capacity rule shared with the GPU: kept[t·K+k] from the chosen experts (token order, stable).
std::vector<uint8_t> capacity_keep(const MoeConfig& c, const std::vector<int32_t>& experts);

struct MoeForwardRef {
  std::vector<double> logits, probs;      // [T,E]
  std::vector<int32_t> experts;           // [T,K]
  std::vector<uint8_t> kept;              // [T,K]
  std::vector<double> weights;            // [T,K] (renormalised; dropped slots keep their weight here)
  std::vector<double> expert_out;         // [T,K,H] o_{e_k}(x_t) (before weighting)
  std::vector<double> y;                  // [T,H]
  double aux_loss = 0, z_loss = 0;
  RouterStats stats;
};

// `fixed_experts` (size T·K) freezes the top-k choice (tests: makes the block differentiable and lets the
// reference follow a GPU's choice); nullptr: choose top-k from the scores.
MoeForwardRef moe_forward_ref(const MoeConfig& c, const std::vector<double>& x, const MoeParamsRef& w,
                              const std::vector<int32_t>* fixed_experts = nullptr);

struct MoeGradsRef {
  std::vector<double> x, router, w1, w2, s1, s2;
};
// Gradients of L = <dy,y> + L_aux + L_z with the routing of `f` held fixed.
MoeGradsRef moe_backward_ref(const MoeConfig& c, const std::vector<double>& x, const MoeParamsRef& w,
                             const MoeForwardRef& f, const std::vector<double>& dy);

// Scalar loss used by the finite-difference tests.
double moe_loss_ref(const MoeForwardRef& f, const std::vector<double>& dy);

}  // namespace megacpp::moe
