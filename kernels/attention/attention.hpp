// attention.hpp — causal GQA flash attention on the GPU: the public, pointer + shape API.
//
// Layout of every backend (no copies, no permutes; the training engine's fused QKV projection writes
// these directly, BSHD = batch, sequence, head, head_dim, row-major, last stride 1):
//   q, o, dq, do : bf16 (B, S, H,  D)
//   k, v, dk, dv : bf16 (B, S, Hk, D)     H % Hk == 0; query head h uses kv head h / (H / Hk)
//   lse          : fp32 (B, H, S)         natural-log log-sum-exp of the scaled scores (saved by forward,
//                                         read by backward; cuDNN's "Stats" and ours are the same tensor)
// Causal mask: query i sees keys j <= i (Sq == Skv). scale defaults to 1/sqrt(D).
// All pointers are device pointers, 16-byte aligned. Workspaces are supplied by the caller.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace megacpp::attn {

struct AttnShape {
  int64_t B = 1, S = 128, H = 1, Hk = 1, D = 128;
  int64_t q_elems() const { return B * S * H * D; }
  int64_t kv_elems() const { return B * S * Hk * D; }
  int64_t lse_elems() const { return B * H * S; }
};

struct AttnFwdArgs {
  const void* q = nullptr;  // bf16
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;        // bf16
  float* lse = nullptr;     // fp32 (B,H,S)
  float scale = 0;          // 0: 1/sqrt(D)
};

struct AttnBwdArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* o = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float scale = 0;
};

inline float effective_scale(const AttnShape& s, float scale) {
  return scale != 0.f ? scale : 1.0f / __builtin_sqrtf(static_cast<float>(s.D));
}

// ---- native backend (attention_native.cu) -------------------------------------------------------
// "" when supported, else the reason naming the limit.
std::string native_unsupported_reason(const AttnShape& s);
size_t native_fwd_workspace_bytes(const AttnShape& s);  // 0
size_t native_bwd_workspace_bytes(const AttnShape& s);  // fp32 D = rowsum(dO*O): 4*B*H*S
// Throw std::invalid_argument when unsupported. `stream` is a cudaStream_t.
void native_fwd(const AttnShape& s, const AttnFwdArgs& a, void* stream);
void native_bwd(const AttnShape& s, const AttnBwdArgs& a, void* workspace, size_t workspace_bytes, void* stream);
// Tile configuration of the forward kernel: 0 = default, 1 = alternative (for the bench's A/B).
void native_set_fwd_config(int cfg);
// Backward configuration: 0 = default, 1 = alternative (attention_native_bwd_sm90.cu), for the bench's A/B.
void native_set_bwd_config(int cfg);
// Times the native backward's kernels one by one (CUDA events, median of `iters`): name -> ms.
std::vector<std::pair<std::string, double>> native_bwd_profile(const AttnShape& s, const AttnBwdArgs& a,
                                                               void* workspace, size_t workspace_bytes, int iters);
// Resource report (JSON text) of the kernels the native backend launches for head dim D.
std::string native_kernel_report(int64_t D);

// RoPE on bf16 x (B,S,nh,D) -> y (may alias x), fp32 math, angles in double (see attention_ref.hpp).
// inverse=true applies the transpose (the backward). enabled=false copies.
void rope_bf16(const void* x, void* y, int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled,
               bool inverse, int64_t pos0, void* stream);

// Bench inputs: n bf16 values uniform in [-amp, amp) from a counter hash of (seed, index), on the device.
void fill_uniform_bf16(void* p, int64_t n, uint64_t seed, float amp, void* stream);

}  // namespace megacpp::attn
