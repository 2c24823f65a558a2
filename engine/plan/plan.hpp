// plan.hpp — what a recipe costs before it runs: layers, parameters, FLOPs, memory per rank.
// The formulas are written out in docs/flops.md; MFU everywhere uses flops_per_token_step.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config/recipe.hpp"

namespace megacpp {

struct PlanOptions {
  int64_t world = 1;      // ranks; dp = world / tp for the dense part, experts replicated over world / (tp·ep)
  double gpu_mem_gib = 0; // 0 = the detected GPU's memory, else 80
};

struct BlockParams {
  BlockKind kind;
  int64_t layers = 0;            // how many layers of this kind
  int64_t params_per_layer = 0;  // total parameters of one layer (incl. its pre-norm)
  int64_t active_per_layer = 0;  // parameters touched per token (MoE: top_k experts + shared + router)
  double fwd_flops_per_token_per_layer = 0;  // at train.seq_len
};

struct MemoryEstimate {       // bytes per rank
  double weights = 0;         // bf16 model weights
  double grads = 0;           // bf16 gradients
  double master = 0;          // fp32 master weights
  double optimizer = 0;       // AdamW m and v, fp32
  double activations = 0;     // saved for backward at mbs x seq_len
  double psiv_cache = 0;      // features.psiv_cache
  double workspace = 0;       // library workspaces, logits chunks, comm buffers
  double total() const { return weights + grads + master + optimizer + activations + psiv_cache + workspace; }
};

struct Plan {
  std::vector<BlockKind> layers;          // expanded pattern
  std::vector<BlockParams> blocks;        // one entry per kind that appears
  int64_t embedding_params = 0, lm_head_params = 0, final_norm_params = 0;
  int64_t total_params = 0, active_params = 0;
  double fwd_flops_per_token = 0;         // model FLOPs, forward
  double step_flops_per_token = 0;        // forward + backward (3x forward)
  double tokens_per_step = 0;             // global_batch * seq_len
  int64_t world = 1, tp = 1, ep = 1, dp = 1;
  int64_t params_per_rank = 0;
  MemoryEstimate memory;                  // per rank
  double gpu_mem_gib = 0;
  bool fits = true;
  std::vector<std::string> notes;         // e.g. why it does not fit, divisibility of world
};

Plan make_plan(const Recipe& r, const PlanOptions& opt = {});
nlohmann::json to_json(const Plan& p);
std::string format_plan(const Recipe& r, const Plan& p);  // the human-readable report

}  // namespace megacpp
