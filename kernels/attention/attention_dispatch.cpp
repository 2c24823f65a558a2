// attention_dispatch.cpp — see attention_dispatch.hpp.
#include "kernels/attention/attention_dispatch.hpp"

#include <stdexcept>

namespace megacpp::attn {

Backend parse_backend(const std::string& s) {
  if (s.empty() || s == "auto") return Backend::Auto;
  if (s == "cudnn") return Backend::Cudnn;
  if (s == "native") return Backend::Native;
  throw std::invalid_argument("attention_backend '" + s + "' unknown (supported: auto, cudnn, native)");
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Auto: return "auto";
    case Backend::Cudnn: return "cudnn";
    case Backend::Native: return "native";
  }
  return "?";
}

nlohmann::json AttnRecord::to_json() const {
  nlohmann::json j = {{"direction", direction},   {"requested", requested},     {"observed", observed},
                      {"fallbacks", fallbacks},   {"workspace_bytes", workspace_bytes}};
  if (cudnn_tried) j["cudnn"] = cudnn.to_json();
  if (!native_reason.empty()) j["native_refused"] = native_reason;
  return j;
}

AttnRecord attention_resolve(Backend requested, const AttnShape& s, bool backward) {
  AttnRecord r;
  r.direction = backward ? "bwd" : "fwd";
  r.requested = backend_name(requested);
  if (requested == Backend::Cudnn || requested == Backend::Auto) {
    r.cudnn_tried = true;
    r.cudnn = backward ? cudnn_bwd_plan(s) : cudnn_fwd_plan(s);
    if (r.cudnn.ok) {
      r.observed = "cudnn";
      r.workspace_bytes = r.cudnn.total_workspace_bytes;
      return r;
    }
    if (requested == Backend::Cudnn)
      throw std::runtime_error("attention_backend=cudnn requested but cuDNN " + std::to_string(r.cudnn.cudnn_version) +
                               " refused " + r.direction + ": " + r.cudnn.error);
    r.fallbacks.push_back("cudnn -> native: " + r.cudnn.error);
  }
  r.native_reason = native_unsupported_reason(s);
  if (!r.native_reason.empty()) {
    if (requested == Backend::Native) throw std::invalid_argument(r.native_reason);
    throw std::runtime_error("attention_backend=auto: no backend for this shape: " +
                             (r.fallbacks.empty() ? std::string() : r.fallbacks.front() + "; ") + r.native_reason);
  }
  r.observed = "native";
  r.workspace_bytes = backward ? native_bwd_workspace_bytes(s) : native_fwd_workspace_bytes(s);
  return r;
}

AttnRecord attention_fwd(Backend requested, const AttnShape& s, const AttnFwdArgs& a, void* ws, size_t ws_bytes,
                         void* stream) {
  AttnRecord r = attention_resolve(requested, s, false);
  if (r.observed == "cudnn") cudnn_fwd(s, a, ws, ws_bytes, stream);
  else native_fwd(s, a, stream);
  return r;
}

AttnRecord attention_bwd(Backend requested, const AttnShape& s, const AttnBwdArgs& a, void* ws, size_t ws_bytes,
                         void* stream) {
  AttnRecord r = attention_resolve(requested, s, true);
  if (r.observed == "cudnn") cudnn_bwd(s, a, ws, ws_bytes, stream);
  else native_bwd(s, a, ws, ws_bytes, stream);
  return r;
}

}  // namespace megacpp::attn
