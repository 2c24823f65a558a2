// lm_head_ce_device.cuh — the pieces shared by the chunked LM head + cross-entropy (lm_head_ce.cu) and its
// vocabulary-parallel twin (lm_head_ce_vp.cu): the kernel bodies (each .cu keeps its own thin __global__
// wrappers, so kernel names and resources stay per file), the workspace layout, the argument checks and the
// per-chunk GEMMs. Every chunk buffer (logits fp32, G bf16) has leading dimension ldz ≥ vc (lm_head_ce: ldz
// = vc). Launch shapes: row kernels kCeRowThreads threads (a warp per row, kCeRowsPerBlock rows), no smem;
// elementwise kCeEwThreads threads; the sum kCeSumThreads threads in ONE block, 8 KB smem.
#pragma once
#include <cmath>
#include <string>

#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/train_ops_common.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops::detail {

constexpr int kCeRowThreads = 256, kCeRowsPerBlock = 8, kCeEwThreads = 256, kCeSumThreads = 1024;

// Σexp of two (max, Σexp) pairs rescaled to the common max mn; an empty pair (max = −inf) adds 0.
__device__ __forceinline__ float ce_merge_sumexp(float ma, float sa, float mb, float sb, float mn) {
  return (ma == -INFINITY ? 0.f : sa * expf(ma - mn)) + (mb == -INFINITY ? 0.f : sb * expf(mb - mn));
}

// Running row statistics before the first chunk: mrun = −inf, srun = 0, target logit = 0.
__device__ __forceinline__ void ce_init_rows(float* mrun, float* srun, float* tgt, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kCeEwThreads + threadIdx.x;
  if (i >= M) return;
  mrun[i] = -INFINITY;
  srun[i] = 0.f;
  tgt[i] = 0.f;
}

// One warp per row of the chunk logits z [M, vc] (leading dimension ldz): online (max, Σexp) per lane in fp32,
// butterfly merge over the warp, merged by lane 0 into the running (mrun, srun); the target logit is captured
// when targets[row] falls in [lo, lo + vc) (lo = the vocabulary id of the chunk's first column).
__device__ __forceinline__ void ce_chunk_stats_rows(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                                                    float* __restrict__ mrun, float* __restrict__ srun,
                                                    float* __restrict__ tgt, int64_t M, int vc, int ldz, int64_t lo) {
  const int64_t row = int64_t(blockIdx.x) * kCeRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float* z = logits + row * ldz;
  float mx = -INFINITY, s = 0.f;
  for (int j = lane; j < vc; j += 32) {
    const float v = z[j];
    if (v > mx) {
      s = s * expf(mx - v) + 1.0f;  // exp(-inf) = 0 on the first element
      mx = v;
    } else {
      s += expf(v - mx);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mn = fmaxf(mx, m2);
    s = ce_merge_sumexp(mx, s, m2, s2, mn);
    mx = mn;
  }
  if (lane == 0) {
    const float m0 = mrun[row], s0 = srun[row];
    const float mn = fmaxf(m0, mx);
    srun[row] = ce_merge_sumexp(m0, s0, mx, s, mn);
    mrun[row] = mn;
    const int32_t t = targets[row];
    if (t >= lo && t < lo + vc) tgt[row] = z[t - lo];
  }
}

// One block of kCeSumThreads: thread k sums rows k, k + kCeSumThreads, ... in order, then a fixed tree →
// *out = Σ rows (deterministic).
__device__ __forceinline__ void ce_sum_rows_fixed_order(const double* __restrict__ rows, int64_t M, double* out) {
  __shared__ double sh[kCeSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < M; i += kCeSumThreads) s += rows[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kCeSumThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sh[0];
}

// Element i of the chunk's M×vc entries (row = i / vc, column j = i % vc, vocabulary id lo + j):
// G = bf16(scale·(exp(z − lse) − [lo + j = t])), 0 for ignored rows (t < 0). Buffers at row·ldz + j;
// DENSE (ldz == vc): at i.
template <bool DENSE>
__device__ __forceinline__ void ce_grad_elem(const float* __restrict__ logits, const float* __restrict__ lse,
                                             const int32_t* __restrict__ targets, bf16* __restrict__ G, int64_t M, int vc,
                                             int ldz, int64_t lo, float scale) {
  const int64_t i = int64_t(blockIdx.x) * kCeEwThreads + threadIdx.x;
  if (i >= M * vc) return;
  const int64_t row = i / vc;
  const int j = int(i % vc);
  const int64_t k = DENSE ? i : row * ldz + j;
  const int32_t t = targets[row];
  float g = 0.f;
  if (t >= 0) g = scale * (expf(logits[k] - lse[row]) - (lo + j == t ? 1.0f : 0.0f));
  G[k] = __float2bfloat16_rn(g);
}

// dst[i] = bf16(src[i]), i < n.
__device__ __forceinline__ void ce_cast_elem(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kCeEwThreads + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

// ---- host side ----

inline std::size_t ce_round256(std::size_t b) { return (b + 255) / 256 * 256; }

// Workspace layout, each piece rounded up to 256 bytes: logits fp32 [M, ldz], G bf16 [M, ldz], dx_f32 fp32
// [dxf_elems] (absent when 0), mrun / srun / tgt fp32 [M], loss rows fp64 [M].
struct CeWorkspace {
  float* logits;
  bf16* G;
  float* dxf;  // nullptr when dxf_elems == 0
  float *mrun, *srun, *tgt;
  double* loss_rows;
};
inline std::size_t ce_workspace_bytes(int64_t M, int64_t ldz, int64_t dxf_elems) {
  return ce_round256(std::size_t(M) * ldz * 4) + ce_round256(std::size_t(M) * ldz * 2) +
         ce_round256(std::size_t(dxf_elems) * 4) + 3 * ce_round256(std::size_t(M) * 4) + ce_round256(std::size_t(M) * 8);
}
inline CeWorkspace ce_carve(void* w, int64_t M, int64_t ldz, int64_t dxf_elems) {
  char* p = static_cast<char*>(w);
  CeWorkspace s;
  s.logits = reinterpret_cast<float*>(p);
  p += ce_round256(std::size_t(M) * ldz * 4);
  s.G = reinterpret_cast<bf16*>(p);
  p += ce_round256(std::size_t(M) * ldz * 2);
  s.dxf = dxf_elems > 0 ? reinterpret_cast<float*>(p) : nullptr;
  p += ce_round256(std::size_t(dxf_elems) * 4);
  s.mrun = reinterpret_cast<float*>(p);
  p += ce_round256(std::size_t(M) * 4);
  s.srun = reinterpret_cast<float*>(p);
  p += ce_round256(std::size_t(M) * 4);
  s.tgt = reinterpret_cast<float*>(p);
  p += ce_round256(std::size_t(M) * 4);
  s.loss_rows = reinterpret_cast<double*>(p);
  return s;
}

// Argument checks (std::invalid_argument naming the limit), in the launchers' order: rows and channels ...
inline void ce_require_rows_channels(const char* op, int64_t M, int64_t C) {
  require(M > 0, std::string(op) + ": M must be > 0");
  require(C > 0 && C % 8 == 0, std::string(op) + ": C=" + std::to_string(C) + " not supported (C % 8 == 0)");
}
// ... then the chunk and the workspace (need: the bytes that `need_fn` returns for these arguments).
inline void ce_require_chunk_workspace(const char* op, int64_t chunk, std::size_t ws_bytes, std::size_t need,
                                       const char* need_fn) {
  require(chunk > 0 && chunk % 8 == 0 && chunk <= (int64_t(1) << 30),
          std::string(op) + ": chunk=" + std::to_string(chunk) + " not supported (multiple of 8)");
  require(ws_bytes >= need, std::string(op) + ": workspace too small (need " + need_fn + ")");
}

// logits [M, vc] fp32 (leading dimension ldz) = x [M,C] · W_cᵀ, W_c = W rows [c0, c0 + vc) (cuBLASLt).
inline void ce_chunk_logits(const bf16* x, const bf16* W, int64_t M, int64_t C, int64_t c0, int64_t vc, int64_t ldz,
                            float* logits, cudaStream_t stream) {
  const GemmDesc g{false, true, M, vc, C, C, C, ldz, GemmOut::f32};
  gemm_rm(g, x, W + c0 * C, logits, 1.0f, 0.0f, stream);
}

// The chunk's two gradient GEMMs (cuBLASLt, fp32 out), G [M, vc] bf16 with leading dimension ldz:
//   dx_f32 [M,C] (c0 == 0: =, else +=) G·W_c;   dW_c [vc,C] (= dW rows [c0, c0 + vc)) += Gᵀ·x.
inline void ce_chunk_grad_gemms(const bf16* G, const bf16* W, const bf16* x, int64_t M, int64_t C, int64_t c0, int64_t vc,
                                int64_t ldz, float* dx_f32, float* dW, cudaStream_t stream) {
  const GemmDesc gx{false, false, M, C, vc, ldz, C, C, GemmOut::f32};
  gemm_rm(gx, G, W + c0 * C, dx_f32, 1.0f, c0 == 0 ? 0.0f : 1.0f, stream);
  const GemmDesc gw{true, false, vc, C, M, ldz, C, C, GemmOut::f32};
  gemm_rm(gw, G, x, dW + c0 * C, 1.0f, 1.0f, stream);
}

}  // namespace megacpp::train_ops::detail
