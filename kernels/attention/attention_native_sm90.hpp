// attention_native_sm90.hpp — internal: the Hopper (sm_90a, wgmma) kernels of the native attention backend,
// called from attention_native.cu (which owns validation and the public API of attention.hpp).
#pragma once
#include <string>

#include "kernels/attention/attention.hpp"

namespace megacpp::attn {
// Forward with wgmma (attention_native_fwd_sm90.cu). The shape must already be validated
// (native_unsupported_reason(s) empty). `stream` is a cudaStream_t. cfg 0 = default tiles, 1 = alternative.
void native_fwd_sm90(const AttnShape& s, const AttnFwdArgs& a, void* stream, int cfg);
// Backward dK/dV (parts & 2) and dQ (parts & 4) kernels with wgmma (attention_native_bwd_sm90.cu);
// dvec = rowsum(dO*O) (B,H,S) fp32, computed before by the caller. cfg 0 = default, 1 = alternative.
void native_bwd_sm90(const AttnShape& s, const AttnBwdArgs& a, const float* dvec, void* stream, int parts, int cfg);
// Resource reports (JSON array text, same format as native_kernel_report) for head dim D.
std::string native_fwd_sm90_report(int64_t D);
std::string native_bwd_sm90_report(int64_t D);
}  // namespace megacpp::attn
