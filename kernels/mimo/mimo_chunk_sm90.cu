// mimo_chunk_sm90.cu — instances and host side of the wgmma chunk loop (mimo_chunk_sm90.cuh): which shapes take
// it, its shared-memory size, and its launch. mimo_fwd() / mimo_bwd_fwd() (mimo_prep.cu) call sm90_refusal() first
// and launch the mma.sync kernels (mimo_fwd_core.cuh) when it returns a reason; the reason is reported by mimo_kernel_infos()
// (hence in every bench receipt), so the choice is never silent.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_chunk_sm90.cuh"

namespace megacpp::mimo::dev {
bool sm90_forced_off() {
  static const bool off = [] {
    const char* e = std::getenv("MEGACPP_MIMO_SM90");
    return e != nullptr && std::string(e) == "0";
  }();
  return off;
}
namespace {
// B·H ≤ the SM count: every CTA has an SM to itself, so R = 4 (the models' rank) gets an instance built for one CTA
// per SM (__launch_bounds__(256, 1): up to 255 registers instead of 128, no spills, loads in flight together).
bool one_cta_per_sm(const MimoDims& d) {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 0;
    return n;
  }();
  return d.R == 4 && static_cast<long long>(d.B) * d.H <= sms;
}
// Instances: N ∈ {64, 128} × R ∈ {1, 2, 4, 8} × (forward, backward), plus R = 4 at one CTA per SM. `Do` is called
// with the kernel's address (a pointer query or a launch).
template <int N, bool BWD, class Do>
auto with_kernel(const MimoDims& d, Do&& f) {
  using sm90::mimo_chunk_sm90_kernel;
  switch (d.R) {
    case 1: return f(mimo_chunk_sm90_kernel<N, BWD, 1, 2>);
    case 2: return f(mimo_chunk_sm90_kernel<N, BWD, 2, 2>);
    case 4: return one_cta_per_sm(d) ? f(mimo_chunk_sm90_kernel<N, BWD, 4, 1>) : f(mimo_chunk_sm90_kernel<N, BWD, 4, 2>);
    default: return f(mimo_chunk_sm90_kernel<N, BWD, 8, 2>);
  }
}
template <class Do>
auto with_kernel(const MimoDims& d, bool bwd, Do&& f) {
  if (d.N == 64) return bwd ? with_kernel<64, true>(d, f) : with_kernel<64, false>(d, f);
  return bwd ? with_kernel<128, true>(d, f) : with_kernel<128, false>(d, f);
}
}  // namespace

std::string sm90_shape_refusal(const MimoDims& d) {
  if (sm90_forced_off()) return "MEGACPP_MIMO_SM90=0";
  if (d.M != 64) return "M=Lc*R=" + std::to_string(d.M) + " (needs 64)";
  if (d.P != 64) return "P=" + std::to_string(d.P) + " (needs 64)";
  if (d.N != 64 && d.N != 128) return "N=" + std::to_string(d.N) + " (needs 64 or 128)";
  if (d.n_ang < 8 || (d.n_ang & (d.n_ang - 1)) != 0)
    return "n_ang=" + std::to_string(d.n_ang) + " (needs a power of two >= 8)";
  return {};
}
std::string sm90_inputs_refusal(const KParams& kp, bool with_dout) {
  const MimoFwdArgs& a = kp.in;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || !aligned16(a.z) || !aligned16(a.angles) ||
      (with_dout && !aligned16(kp.dout)) || (a.psiv_cache && !aligned16(a.psiv_cache)))
    return "a q/k/v/z/angles/dout/psiv pointer is not 16-byte aligned";
  return {};
}
std::string sm90_refusal(const MimoDims& d, bool bwd, bool psiv_read) {
  if (std::string r = sm90_shape_refusal(d); !r.empty()) return r;
  if (bwd && psiv_read) return "PsiV cache read (not implemented in the wgmma kernel)";
  if (sm90_smem(d, bwd) > kSmemLimit) return "shared memory " + std::to_string(sm90_smem(d, bwd)) + " B";
  return {};
}
std::string sm90_refusal(const KParams& kp, bool bwd) {
  std::string r = sm90_refusal(kp.d, bwd, bwd && kp.in.psiv_cache != nullptr);
  return r.empty() ? sm90_inputs_refusal(kp, bwd) : r;
}
std::size_t sm90_smem(const MimoDims& d, bool bwd) { return sm90::sm90_layout(d.N, d.R, d.n_ang, bwd).total; }
const char* sm90_path(const MimoDims& d) {
  return one_cta_per_sm(d) ? "sm90 wgmma (1-CTA/SM instance: B*H <= SMs)" : "sm90 wgmma";
}
const void* sm90_kernel_ptr(const MimoDims& d, bool bwd) {
  return with_kernel(d, bwd, [](auto kern) { return reinterpret_cast<const void*>(kern); });
}

void launch_sm90(const KParams& kp, bool bwd, cudaStream_t st) {
  const int smem = static_cast<int>(sm90_smem(kp.d, bwd));
  with_kernel(kp.d, bwd, [&](auto kern) {
    MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(kp.d.H, kp.d.B), sm90::kThr, smem, st>>>(kp);
    return 0;
  });
  MEGACPP_CUDA_CHECK(cudaGetLastError());
}
}  // namespace megacpp::mimo::dev
