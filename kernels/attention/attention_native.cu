// attention_native.cu — the native causal GQA flash-attention backend (attention.hpp API) for Hopper:
// validation, configuration, dispatch to the wgmma (sm_90a warpgroup MMA) kernels, and the small kernels.
//
// Math (layouts in attention.hpp): s = scale q k^T, causal (key <= query), online softmax in the exp2 domain,
// o = softmax(s) v, lse = ln sum exp(s) saved as fp32 (B,H,S). Kernels:
//   forward                 attention_native_fwd_sm90.cu  (one CTA = 128 query rows = 2 warpgroups)
//   attn_bwd_pre (here)     Dv[b,h,i] = <dO_i, O_i> fp32, one warp per row
//   dK/dV and dQ            attention_native_bwd_sm90.cu  (deterministic: every output element written by one
//                           CTA, no atomics; dQ recomputes P and dS: 7 instead of 5 matmuls)
//   RoPE, bench fill        here
// Every kernel is built for sm_90a only; native_unsupported_reason refuses other devices with the reason.
// Limits: D in {64,128}, S % 128 == 0, B*H <= 65535. Assumes 16-byte aligned, contiguous BSHD tensors.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_native_sm90.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/gpu_timing.hpp"

namespace megacpp::attn {
namespace {

struct PreParams {
  const __nv_bfloat16 *o, *dout;
  float* dvec;  // (B,H,S)
  int S, H;
};

// Dv[b,h,i] = sum_d dO[b,i,h,d] * O[b,i,h,d]; one warp per (b,i,h) row.
template <int D>
__global__ void attn_bwd_pre_kernel(PreParams p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  constexpr int PER = D / 32;  // 2 or 4 elements per lane
  const __nv_bfloat16* a = p.dout + row * D + lane * PER;
  const __nv_bfloat16* c = p.o + row * D + lane * PER;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < PER; ++i) acc += __bfloat162float(a[i]) * __bfloat162float(c[i]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    // row enumerates (b, i, h) in BSHD order; Dv is (B, H, S)
    const int64_t h = row % p.H, bi = row / p.H, i = bi % p.S, b = bi / p.S;
    p.dvec[(b * p.H + h) * p.S + i] = acc;
  }
}

// ---- RoPE ----------------------------------------------------------------------------------------
__global__ void rope_kernel(const __nv_bfloat16* x, __nv_bfloat16* y, int64_t n_pairs, int S, int nh, int half,
                            double theta, int enabled, double sign, int64_t pos0) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_pairs) return;
  const int i = static_cast<int>(idx % half);
  const int64_t row = idx / half;  // (b, t, h)
  const int64_t t = (row / nh) % S;
  const int64_t base = row * 2 * half;
  const float x1 = __bfloat162float(x[base + i]), x2 = __bfloat162float(x[base + i + half]);
  if (!enabled) {
    y[base + i] = __float2bfloat16_rn(x1);
    y[base + i + half] = __float2bfloat16_rn(x2);
    return;
  }
  const double f = pow(theta, -static_cast<double>(i) / static_cast<double>(half));
  double sn, cs;
  sincos(static_cast<double>(t + pos0) * f, &sn, &cs);
  const float c = static_cast<float>(cs), s = static_cast<float>(sign * sn);
  y[base + i] = __float2bfloat16_rn(x1 * c - x2 * s);
  y[base + i + half] = __float2bfloat16_rn(x2 * c + x1 * s);
}

__global__ void fill_kernel(__nv_bfloat16* p, int64_t n, uint64_t seed, float amp) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0,1)
    p[i] = __float2bfloat16_rn((2.f * u - 1.f) * amp);
  }
}

int g_fwd_cfg = 0;
int g_bwd_cfg = 0;

void launch_bwd_pre(const AttnShape& s, const AttnBwdArgs& a, float* dvec, cudaStream_t st) {
  const int64_t rows = s.B * s.S * s.H;
  const PreParams pp{static_cast<const __nv_bfloat16*>(a.o), static_cast<const __nv_bfloat16*>(a.dout), dvec,
                     static_cast<int>(s.S), static_cast<int>(s.H)};
  const unsigned blocks = static_cast<unsigned>((rows + 7) / 8);
  if (s.D == 128) attn_bwd_pre_kernel<128><<<blocks, 256, 0, st>>>(pp, rows);
  else attn_bwd_pre_kernel<64><<<blocks, 256, 0, st>>>(pp, rows);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

// parts: 1 = Dv, 2 = dK/dV, 4 = dQ.
void dispatch_bwd(const AttnShape& s, const AttnBwdArgs& a, float* dvec, cudaStream_t st, int parts) {
  if (parts & 1) launch_bwd_pre(s, a, dvec, st);
  if (parts & 6) native_bwd_sm90(s, a, dvec, st, parts & 6, g_bwd_cfg);
}

void check_bwd_workspace(const AttnShape& s, void* workspace, size_t workspace_bytes) {
  if (workspace_bytes < native_bwd_workspace_bytes(s) || workspace == nullptr)
    throw std::invalid_argument("native_bwd: workspace of " + std::to_string(workspace_bytes) + " bytes < needed " +
                                std::to_string(native_bwd_workspace_bytes(s)));
}

}  // namespace

std::string native_unsupported_reason(const AttnShape& s) {
  if (s.B <= 0 || s.S <= 0 || s.H <= 0 || s.Hk <= 0) return "native: B,S,heads,kv_heads must be positive";
  if (s.D != 64 && s.D != 128)
    return "native: head_dim=" + std::to_string(s.D) + " not supported (supported: 64,128)";
  if (s.S % 128 != 0) return "native: S=" + std::to_string(s.S) + " not supported (S % 128 == 0 required)";
  if (s.H % s.Hk != 0)
    return "native: heads=" + std::to_string(s.H) + " not a multiple of kv_heads=" + std::to_string(s.Hk);
  if (s.S > (1 << 30)) return "native: S=" + std::to_string(s.S) + " exceeds 2^30 (32-bit row indices)";
  if (s.B * s.H > 65535)
    return "native: B*heads=" + std::to_string(s.B * s.H) + " exceeds the grid limit 65535";
  // The kernels are built for sm_90a only (wgmma, and the build's single -gencode): on any other GPU they
  // cannot launch, so refuse with the reason instead of failing at launch. Without a usable device the
  // shape checks above are all that can be said (CPU-only callers).
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess) {
    if (major != 9 || minor != 0)
      return "native: needs an sm_90a GPU (compute capability 9.0; kernels built for sm_90a only), device " +
             std::to_string(dev) + " is " + std::to_string(major) + "." + std::to_string(minor);
  } else {
    cudaGetLastError();  // clear the (non-sticky) error of the failed query
  }
  return "";
}
size_t native_fwd_workspace_bytes(const AttnShape&) { return 0; }
size_t native_bwd_workspace_bytes(const AttnShape& s) { return static_cast<size_t>(s.B * s.H * s.S) * 4; }
void native_set_fwd_config(int cfg) { g_fwd_cfg = cfg; }
void native_set_bwd_config(int cfg) { g_bwd_cfg = cfg; }

void native_fwd(const AttnShape& s, const AttnFwdArgs& a, void* stream) {
  const std::string why = native_unsupported_reason(s);
  if (!why.empty()) throw std::invalid_argument(why);
  native_fwd_sm90(s, a, stream, g_fwd_cfg);  // cfg 0 = default tiles, 1 = alternative (see the .cu)
}

void native_bwd(const AttnShape& s, const AttnBwdArgs& a, void* workspace, size_t workspace_bytes, void* stream) {
  const std::string why = native_unsupported_reason(s);
  if (!why.empty()) throw std::invalid_argument(why);
  check_bwd_workspace(s, workspace, workspace_bytes);
  dispatch_bwd(s, a, static_cast<float*>(workspace), static_cast<cudaStream_t>(stream), 7);
}

std::vector<std::pair<std::string, double>> native_bwd_profile(const AttnShape& s, const AttnBwdArgs& a,
                                                               void* workspace, size_t workspace_bytes, int iters) {
  native_bwd(s, a, workspace, workspace_bytes, nullptr);  // validates, fills Dv
  std::vector<std::pair<std::string, double>> r;
  const char* names[3] = {"bwd_pre", "bwd_dkdv", "bwd_dq"};
  for (int i = 0; i < 3; ++i)
    r.emplace_back(names[i],
                   time_gpu([&] { dispatch_bwd(s, a, static_cast<float*>(workspace), nullptr, 1 << i); }, 2, iters)
                       .median_ms);
  return r;
}

std::string native_kernel_report(int64_t D) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& k : nlohmann::json::parse(native_fwd_sm90_report(D))) j.push_back(k);
  for (const auto& k : nlohmann::json::parse(native_bwd_sm90_report(D))) j.push_back(k);
  return j.dump();
}

void rope_bf16(const void* x, void* y, int64_t B, int64_t S, int64_t nh, int64_t D, double theta, bool enabled,
               bool inverse, int64_t pos0, void* stream) {
  if (D % 2 != 0) throw std::invalid_argument("rope: head_dim=" + std::to_string(D) + " must be even");
  if (enabled && !(theta > 0)) throw std::invalid_argument("rope: theta must be > 0");
  const int64_t n_pairs = B * S * nh * (D / 2);
  if (n_pairs == 0) return;
  rope_kernel<<<static_cast<unsigned>((n_pairs + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), n_pairs, static_cast<int>(S),
      static_cast<int>(nh), static_cast<int>(D / 2), theta, enabled ? 1 : 0, inverse ? -1.0 : 1.0, pos0);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void fill_uniform_bf16(void* p, int64_t n, uint64_t seed, float amp, void* stream) {
  if (n <= 0) return;
  fill_kernel<<<1024, 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<__nv_bfloat16*>(p), n, seed, amp);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

}  // namespace megacpp::attn
