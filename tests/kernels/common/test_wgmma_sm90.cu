// test_wgmma_sm90.cu — one warpgroup computes a 64 x N x K bf16 GEMM with the kernels/common/wgmma_sm90.cuh
// helpers, compared with a float64 host product of the same bf16 inputs (fresh random inputs per seed,
// output poisoned with NaN, accumulators started as NaN in the kernel so that "accumulate = 0" on the
// first k-step is exercised). Two operand forms, the ones the attention kernels use:
//   SS: C = A * Bt^T, A (64 x K) and Bt (N x K) K-major SW128 tiles in smem  (S = Q K^T)
//   RS: C = A * B,    A from registers (m16n8k16 A fragments), B (K x N) MN-major SW128 tile (O += P V)
// Shapes N, K in {64, 128} (K = 128 spans two 64-column blocks, N = 128 two MN blocks: LBO is used).
#include <gtest/gtest.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "kernels/common/cuda_check.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/common/metrics.hpp"
#include "kernels/common/wgmma_sm90.cuh"
#include "tests/common/test_paths.hpp"

namespace megacpp {
namespace {
using namespace megacpp::wgmma;

template <int N>
__device__ __forceinline__ void mma_ss(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
  if constexpr (N == 64) wgmma_m64n64k16_ss<0>(d, a, b, acc);
  else wgmma_m64n128k16_ss<0>(d, a, b, acc);
}
template <int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int acc) {
  if constexpr (N == 64) wgmma_m64n64k16_rs<1>(d, a, b, acc);
  else wgmma_m64n128k16_rs<1>(d, a, b, acc);
}

// a: 64 x K row-major; b: SS -> Bt (N x K) row-major, RS -> B (K x N) row-major; c: 64 x N fp32.
template <int N, int K, bool RS>
__global__ void __launch_bounds__(128) gemm_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  extern __shared__ __align__(1024) unsigned char raw[];
  const uint32_t base = (smem_addr(raw) + 1023u) & ~1023u;
  __nv_bfloat16* sA = reinterpret_cast<__nv_bfloat16*>(raw + (base - smem_addr(raw)));
  __nv_bfloat16* sB = sA + 64 * K;
  const int tid = threadIdx.x;
  for (int i = tid; i < 64 * K; i += 128) sA[sw128_offset<64>(i / K, i % K)] = a[i];
  if (RS) {
    for (int i = tid; i < K * N; i += 128) sB[sw128_offset<K>(i / N, i % N)] = b[i];
  } else {
    for (int i = tid; i < N * K; i += 128) sB[sw128_offset<N>(i / K, i % K)] = b[i];
  }
  fence_proxy_async();
  __syncthreads();
  float d[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = __int_as_float(0x7fffffff);  // NaN: must be overwritten (acc = 0)
  const uint32_t sa = smem_addr(sA), sb = smem_addr(sB);
  if constexpr (RS) {
    uint32_t af[K / 16][4];
    const int w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = 16 * w + g + 8 * (j & 1), col = 16 * kk + 2 * t + 8 * (j >> 1);
        __nv_bfloat162 v;
        v.x = a[r * K + col];
        v.y = a[r * K + col + 1];
        af[kk][j] = *reinterpret_cast<uint32_t*>(&v);
      }
    reg_fence(d);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) mma_rs<N>(d, af[kk], desc_mnmajor<K>(sb, kk), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(d);
  } else {
    reg_fence(d);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk)
      mma_ss<N>(d, desc_kmajor<64>(sa, 0, kk), desc_kmajor<N>(sb, 0, kk), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(d);
  }
#pragma unroll
  for (int i = 0; i < N / 2; ++i) c[acc_row(tid, i) * N + acc_col(tid, i)] = d[i];
}

template <int N, int K, bool RS>
void run_case(uint64_t seed) {
  std::vector<double> a = random_normal(64 * K, seed), b = random_normal(static_cast<size_t>(N) * K, seed + 100);
  round_vector_to_bf16(a);
  round_vector_to_bf16(b);
  std::vector<double> ref(64 * N, 0.0);
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += a[m * K + k] * (RS ? b[k * N + n] : b[n * K + k]);
      ref[m * N + n] = s;
    }
  DeviceArray<uint16_t> da(to_bf16_bits(a)), db(to_bf16_bits(b));
  DeviceArray<float> dc(64 * N);
  dc.poison();
  const int smem = (64 * K + N * K) * 2 + 1024;
  auto kern = gemm_kernel<N, K, RS>;
  MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<1, 128, smem>>>(reinterpret_cast<const __nv_bfloat16*>(da.get()),
                         reinterpret_cast<const __nv_bfloat16*>(db.get()), dc.get());
  MEGACPP_CUDA_CHECK(cudaGetLastError());
  MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> c = dc.download();
  // fp32 accumulation of exact bf16 products: only summation-order rounding (~1e-6 relative).
  const TensorMetric m = compare_tensors("C", std::span<const float>(c), std::span<const double>(ref), 1e-4);
  std::printf("wgmma %s N=%d K=%d seed %llu: stable_max_rel %.3g max_abs %.3g non_finite %zu\n", RS ? "RS" : "SS", N,
              K, static_cast<unsigned long long>(seed), m.stable_max_rel, m.max_abs, m.non_finite);
  EXPECT_TRUE(m.pass()) << (RS ? "RS" : "SS") << " N=" << N << " K=" << K << " rel " << m.stable_max_rel
                        << " non_finite " << m.non_finite;
}

bool is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

TEST(WgmmaSm90, SmemSmemKMajor) {
  MEGACPP_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "wgmma needs sm_90a (compute capability 9.0)";
  for (uint64_t seed : {1ull, 2ull}) {
    run_case<64, 64, false>(seed);
    run_case<128, 128, false>(seed);
    run_case<128, 64, false>(seed);
  }
}

TEST(WgmmaSm90, RegSmemMnMajor) {
  MEGACPP_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "wgmma needs sm_90a (compute capability 9.0)";
  for (uint64_t seed : {3ull, 4ull}) {
    run_case<64, 128, true>(seed);
    run_case<128, 128, true>(seed);
    run_case<128, 64, true>(seed);
  }
}

}  // namespace
}  // namespace megacpp
