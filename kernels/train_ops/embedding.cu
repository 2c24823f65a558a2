// embedding.cu — token embedding forward (gather) and deterministic backward (scatter-add).
//
// Math: out[m,:] = wte[tok[m],:];  dwte[v,:] += Σ_{m: tok[m]=v} dout[m,:]  (fp32 accumulation)
// Backward: (1) iota positions; (2) cub::DeviceRadixSort::SortPairs(tokens → positions), a stable LSD
// radix sort, so equal tokens keep ascending positions; (3) grid (M, column tiles): the block at sorted
// index i exits unless i starts a run (i == 0 or key[i] ≠ key[i−1]); the run's rows are summed in
// ascending position order in fp32 registers and added once to dwte[v] → bitwise deterministic, no
// atomics. Cost note: a very frequent token's run is walked by one block per column tile (4 rows in
// flight per iteration); splitting long runs is the next optimisation.
// Shapes: tokens int32 [M], wte bf16 [V,C], out/dout bf16 [M,C], dwte fp32 [V,C].
// Saved for backward: tokens. Resources: gather 256 threads (one 16-byte vector each); run-sum 64
// threads × 8 columns (512 columns per block); workspace = 4 int32 arrays of M + cub's temp storage.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/train_ops/embedding.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

using detail::load8;
using detail::store8;
constexpr int kGatherThreads = 256, kSumThreads = 64;

__global__ void __launch_bounds__(kGatherThreads) embedding_fwd_kernel(const int32_t* __restrict__ tok,
                                                                       const bf16* __restrict__ wte, bf16* __restrict__ out,
                                                                       int64_t M, int64_t V, int64_t C8, int* err) {
  const int64_t i = int64_t(blockIdx.x) * kGatherThreads + threadIdx.x;
  if (i >= M * C8) return;
  const int64_t m = i / C8, c = (i % C8) * 8;
  const int32_t t = tok[m];
  const int64_t C = C8 * 8;
  if (t < 0 || t >= V) {
    float z[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    store8(out + m * C + c, z);
    if (err) *err = 1;
    return;
  }
  *reinterpret_cast<uint4*>(out + m * C + c) = *reinterpret_cast<const uint4*>(wte + int64_t(t) * C + c);
}

__global__ void iota_kernel(int32_t* p, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (i < M) p[i] = int32_t(i);
}

__global__ void __launch_bounds__(kSumThreads) embedding_bwd_runs_kernel(const int32_t* __restrict__ key,
                                                                         const int32_t* __restrict__ pos,
                                                                         const bf16* __restrict__ dout,
                                                                         float* __restrict__ dwte, int64_t M, int64_t V,
                                                                         int64_t C) {
  const int64_t i = blockIdx.x;
  const int32_t t = key[i];
  if ((i > 0 && key[i - 1] == t) || t < 0 || t >= V) return;  // not a run start, or invalid token
  const int64_t cv = int64_t(blockIdx.y) * kSumThreads + threadIdx.x;
  if (cv * 8 >= C) return;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = i;
  // 4 rows in flight, summed in ascending order (same order as one row at a time).
  for (; j + 3 < M && key[j + 3] == t; j += 4) {
    float a[4][8];
#pragma unroll
    for (int q = 0; q < 4; ++q) load8(dout + int64_t(pos[j + q]) * C + cv * 8, a[q]);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[k] += a[q][k];
  }
  for (; j < M && key[j] == t; ++j) {
    float a[8];
    load8(dout + int64_t(pos[j]) * C + cv * 8, a);
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] += a[k];
  }
  float4* d = reinterpret_cast<float4*>(dwte + int64_t(t) * C + cv * 8);  // 32-byte aligned (checked)
  float4 a0 = d[0], a1 = d[1];
  a0.x += acc[0], a0.y += acc[1], a0.z += acc[2], a0.w += acc[3];
  a1.x += acc[4], a1.y += acc[5], a1.z += acc[6], a1.w += acc[7];
  d[0] = a0;
  d[1] = a1;
}

std::size_t cub_temp_bytes(int64_t M) {
  std::size_t bytes = 0;
  MEGACPP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const int32_t*)nullptr, (int32_t*)nullptr,
                                                     (const int32_t*)nullptr, (int32_t*)nullptr, int(M)));
  return bytes;
}
std::size_t round_up(std::size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

void embedding_fwd(const int32_t* tokens, const bf16* wte, bf16* out, int64_t M, int64_t V, int64_t C, int* err_flag,
                   cudaStream_t stream) {
  detail::require(M > 0 && V > 0, "embedding_fwd: M and V must be > 0");
  detail::require(C > 0 && C % 8 == 0, "embedding_fwd: C=" + std::to_string(C) + " not supported (C % 8 == 0)");
  detail::require_aligned16(wte, "embedding_fwd", "wte");
  detail::require_aligned16(out, "embedding_fwd", "out");
  embedding_fwd_kernel<<<detail::grid_1d(M * (C / 8), kGatherThreads), kGatherThreads, 0, stream>>>(tokens, wte, out, M, V,
                                                                                                      C / 8, err_flag);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::size_t embedding_bwd_workspace_bytes(int64_t M) {
  return 3 * round_up(std::size_t(M) * sizeof(int32_t)) + round_up(cub_temp_bytes(M));
}

void embedding_bwd(const int32_t* tokens, const bf16* dout, float* dwte, int64_t M, int64_t V, int64_t C,
                   void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  detail::require(M > 0 && M < (int64_t(1) << 31) && V > 0, "embedding_bwd: need 0 < M < 2^31 and V > 0");
  detail::require(C > 0 && C % 8 == 0, "embedding_bwd: C=" + std::to_string(C) + " not supported (C % 8 == 0)");
  detail::require_aligned16(dout, "embedding_bwd", "dout");
  detail::require_aligned16(dwte, "embedding_bwd", "dwte");
  detail::require(workspace_bytes >= embedding_bwd_workspace_bytes(M),
                  "embedding_bwd: workspace too small (need embedding_bwd_workspace_bytes(M))");
  auto* base = static_cast<char*>(workspace);
  const std::size_t arr = round_up(std::size_t(M) * sizeof(int32_t));
  auto* pos_in = reinterpret_cast<int32_t*>(base);
  auto* key_out = reinterpret_cast<int32_t*>(base + arr);
  auto* pos_out = reinterpret_cast<int32_t*>(base + 2 * arr);
  void* temp = base + 3 * arr;
  std::size_t temp_bytes = workspace_bytes - 3 * arr;
  iota_kernel<<<detail::grid_1d(M, 256), 256, 0, stream>>>(pos_in, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  // All 32 key bits (cub orders signed keys correctly); negative / ≥ V tokens form runs that are skipped.
  MEGACPP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, key_out, pos_in, pos_out, int(M), 0, 32,
                                                     stream));
  const int64_t tiles = (C / 8 + kSumThreads - 1) / kSumThreads;
  detail::require(tiles <= 65535, "embedding_bwd: C too large");
  embedding_bwd_runs_kernel<<<dim3(unsigned(M), unsigned(tiles)), kSumThreads, 0, stream>>>(key_out, pos_out, dout, dwte,
                                                                                             M, V, C);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> embedding_kernel_info() {
  return {{"embedding_fwd_kernel", (const void*)embedding_fwd_kernel, kGatherThreads, 0},
          {"embedding_bwd_runs_kernel", (const void*)embedding_bwd_runs_kernel, kSumThreads, 0}};
}

}  // namespace megacpp::train_ops
