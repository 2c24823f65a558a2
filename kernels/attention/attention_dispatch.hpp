// attention_dispatch.hpp — `attention_backend: auto | cudnn | native`, with a record of what ran.
//
// auto   : cuDNN when it builds a plan for the shape, else native; the refusal is recorded as a fallback.
// cudnn  : cuDNN or a std::runtime_error naming why cuDNN refused (never a silent switch to native).
// native : our kernel or std::invalid_argument naming the limit.
// The record (requested, observed, fallbacks with reasons, cuDNN engine id/knobs/notes/build time,
// workspace bytes) serialises to JSON for the run receipt.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_cudnn.hpp"

namespace megacpp::attn {

enum class Backend { Auto, Cudnn, Native };
Backend parse_backend(const std::string& s);  // throws: "attention_backend 'x' unknown (auto|cudnn|native)"
const char* backend_name(Backend b);

struct AttnRecord {
  std::string direction;              // "fwd" | "bwd"
  std::string requested, observed;    // backend names
  std::vector<std::string> fallbacks; // "cudnn -> native: <reason>"
  bool cudnn_tried = false;
  CudnnPlanInfo cudnn;                // valid when cudnn_tried
  std::string native_reason;          // why native was refused (when it was)
  size_t workspace_bytes = 0;         // what the caller must supply for the observed backend
  nlohmann::json to_json() const;
};

// Decide the backend for a shape (builds/fetches the cuDNN plan) without running anything.
AttnRecord attention_resolve(Backend requested, const AttnShape& s, bool backward);

// Run. The workspace must hold at least attention_resolve(...).workspace_bytes (256-byte aligned).
AttnRecord attention_fwd(Backend requested, const AttnShape& s, const AttnFwdArgs& a, void* workspace,
                         size_t workspace_bytes, void* stream);
AttnRecord attention_bwd(Backend requested, const AttnShape& s, const AttnBwdArgs& a, void* workspace,
                         size_t workspace_bytes, void* stream);

}  // namespace megacpp::attn
