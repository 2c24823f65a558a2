// mimo_chunk_sm90.cu — instances and host side of the wgmma chunk loop (mimo_chunk_sm90.cuh): which shapes take
// it, its shared-memory size, and its launch. mimo_fwd.cu / mimo_bwd_fwd.cu call sm90_refusal() first and launch
// the mma.sync kernels (mimo_fwd_core.cuh) when it returns a reason; the reason is reported by mimo_kernel_infos()
// (hence in every bench receipt), so the choice is never silent.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/mimo/mimo_chunk_sm90.cuh"

namespace megacpp::mimo::dev {
namespace {
bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
bool forced_off() {
  static const bool off = [] {
    const char* e = std::getenv("MEGACPP_MIMO_SM90");
    return e != nullptr && std::string(e) == "0";
  }();
  return off;
}
// Instances: N ∈ {64, 128} × R ∈ {1, 2, 4, 8} × (forward, backward).
template <int N, bool BWD>
const void* ptr_nb(int R) {
  switch (R) {
    case 1: return reinterpret_cast<const void*>(&sm90::mimo_chunk_sm90_kernel<N, BWD, 1>);
    case 2: return reinterpret_cast<const void*>(&sm90::mimo_chunk_sm90_kernel<N, BWD, 2>);
    case 4: return reinterpret_cast<const void*>(&sm90::mimo_chunk_sm90_kernel<N, BWD, 4>);
    default: return reinterpret_cast<const void*>(&sm90::mimo_chunk_sm90_kernel<N, BWD, 8>);
  }
}
template <int N, bool BWD>
void launch_nb(const KParams& kp, int smem, cudaStream_t st) {
  const dim3 grid(kp.d.H, kp.d.B);
  switch (kp.d.R) {
    case 1: sm90::mimo_chunk_sm90_kernel<N, BWD, 1><<<grid, sm90::kThr, smem, st>>>(kp); break;
    case 2: sm90::mimo_chunk_sm90_kernel<N, BWD, 2><<<grid, sm90::kThr, smem, st>>>(kp); break;
    case 4: sm90::mimo_chunk_sm90_kernel<N, BWD, 4><<<grid, sm90::kThr, smem, st>>>(kp); break;
    default: sm90::mimo_chunk_sm90_kernel<N, BWD, 8><<<grid, sm90::kThr, smem, st>>>(kp); break;
  }
}
}  // namespace

std::string sm90_refusal(const MimoDims& d, bool bwd, bool psiv_read) {
  if (forced_off()) return "MEGACPP_MIMO_SM90=0";
  if (d.M != 64) return "M=Lc*R=" + std::to_string(d.M) + " (needs 64)";
  if (d.P != 64) return "P=" + std::to_string(d.P) + " (needs 64)";
  if (d.N != 64 && d.N != 128) return "N=" + std::to_string(d.N) + " (needs 64 or 128)";
  if (d.n_ang < 8 || (d.n_ang & (d.n_ang - 1)) != 0)
    return "n_ang=" + std::to_string(d.n_ang) + " (needs a power of two >= 8)";
  if (bwd && psiv_read) return "PsiV cache read (not implemented in the wgmma kernel)";
  if (sm90_smem(d, bwd) > 232448) return "shared memory " + std::to_string(sm90_smem(d, bwd)) + " B";
  return {};
}
std::string sm90_refusal(const KParams& kp, bool bwd) {
  std::string r = sm90_refusal(kp.d, bwd, bwd && kp.in.psiv_cache != nullptr);
  if (!r.empty()) return r;
  const MimoFwdArgs& a = kp.in;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || !aligned16(a.z) || !aligned16(a.angles) ||
      (bwd && !aligned16(kp.dout)) || (!bwd && a.psiv_cache && !aligned16(a.psiv_cache)))
    return "a q/k/v/z/angles/dout pointer is not 16-byte aligned";
  return {};
}
std::size_t sm90_smem(const MimoDims& d, bool bwd) { return sm90::sm90_layout(d.N, d.R, d.n_ang, bwd).total; }
const void* sm90_kernel_ptr(const MimoDims& d, bool bwd) {
  if (d.N == 64) return bwd ? ptr_nb<64, true>(d.R) : ptr_nb<64, false>(d.R);
  return bwd ? ptr_nb<128, true>(d.R) : ptr_nb<128, false>(d.R);
}

void launch_sm90(const KParams& kp, bool bwd, cudaStream_t st) {
  const int smem = static_cast<int>(sm90_smem(kp.d, bwd));
  MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(sm90_kernel_ptr(kp.d, bwd), cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (kp.d.N == 64) bwd ? launch_nb<64, true>(kp, smem, st) : launch_nb<64, false>(kp, smem, st);
  else bwd ? launch_nb<128, true>(kp, smem, st) : launch_nb<128, false>(kp, smem, st);
  MEGACPP_CUDA_CHECK(cudaGetLastError());
}
}  // namespace megacpp::mimo::dev
