// attention_cudnn.hpp — cuDNN 9 fused flash attention through the backend graph API (no cudnn_frontend).
//
// The graph is the "composite" SDPA pattern that cuDNN's runtime-compiled flash engines match (works on
// 9.14: the dedicated SDPA operation descriptors need newer versions for causal masks / backward):
//   fwd: S = Q K^T (fp32) * scale -> causal mask (GEN_INDEX row/col, CMP_GE, BINARY_SELECT -inf)
//        -> m = max, E = exp(S - m), l = sum E, Stats = m + log l (fp32 out), P = E / l (bf16) -> O = P V
//   bwd: softmax_sum = rowsum(dO*O) (fp32, in our workspace); P = exp(mask(S*scale - Stats));
//        dV = P^T dO (GQA: + head-group reduction); dS = P (dO V^T - softmax_sum) scale;
//        dK = dS^T Q (GQA: + reduction); dQ_accum (fp32, workspace) = dS K; dQ = identity(dQ_accum).
// Tensors are described in BSHD memory (see attention.hpp) via strides, so no copies.
// Plans are cached per (shape, direction, scale-independent); the first use of a shape builds the plan
// (heuristics mode A, first engine config that finalizes) and records the build time, engine global
// index, knobs and notes. The caller supplies the workspace (query *_workspace_bytes first).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/attention/attention.hpp"

namespace megacpp::attn {

struct CudnnPlanInfo {
  bool ok = false;
  std::string direction;              // "fwd" | "bwd"
  std::string error;                  // why no plan (when !ok): every refused config, or the graph error
  int64_t engine_global_index = -1;
  std::string knobs;                  // "k<type>=<value>,..."
  std::vector<std::string> notes;     // numerical / behaviour notes ("NONDETERMINISTIC", "RUNTIME_COMPILATION")
  int engine_configs = 0;             // how many configs heuristics offered
  int config_index = -1;              // which one finalized
  std::vector<std::string> refused;   // "cfg#i: <status>" for configs that did not finalize
  size_t cudnn_workspace_bytes = 0;   // cuDNN's own workspace
  size_t total_workspace_bytes = 0;   // what the caller must supply (bwd adds dQ_accum + softmax_sum)
  double build_ms = 0;                // graph + heuristics + plan finalize (NVRTC compile) on first use
  bool cache_hit = false;
  size_t cudnn_version = 0;           // cudnnGetVersion() at run time
  nlohmann::json to_json() const;
};

// Build (or fetch from the cache) the plan for `s`. Never throws for "cuDNN refused": returns ok=false
// with the reason. Throws only for programming errors (CUDA errors, bad handles).
CudnnPlanInfo cudnn_fwd_plan(const AttnShape& s);
CudnnPlanInfo cudnn_bwd_plan(const AttnShape& s);
// Cheap static pre-check of what the graph needs ("" when the shape is worth trying). The environment
// variable MEGACPP_ATTN_DISABLE_CUDNN=1 makes it refuse (operational switch; used by the fallback test).
// A refusal is cached with the plan of that shape.
std::string cudnn_static_unsupported_reason(const AttnShape& s);

// Execute (plan must be ok, else std::runtime_error with the reason). Workspace of at least
// total_workspace_bytes, 256-byte aligned. `stream` is a cudaStream_t.
void cudnn_fwd(const AttnShape& s, const AttnFwdArgs& a, void* workspace, size_t workspace_bytes, void* stream);
void cudnn_bwd(const AttnShape& s, const AttnBwdArgs& a, void* workspace, size_t workspace_bytes, void* stream);

size_t cudnn_runtime_version();  // 0 in CPU-only builds
void cudnn_clear_plan_cache();

}  // namespace megacpp::attn
