// lm_head_ce_vp.cu — vocabulary-parallel fused LM head + cross-entropy (math, shapes: lm_head_ce_vp.hpp).
//
// partial, per vocabulary chunk of this rank's slice: logits [M, vc] fp32 = x·W_cᵀ (cuBLASLt);
//   vp_stats_kernel: one warp per row, online (max, Σexp) merged into the running (mrun, srun), the target
//   logit captured when the GLOBAL target falls in [v_off + c0, v_off + c0 + vc). vp_partial_finish_kernel:
//   stats[m] = (mrun + log srun, target logit or 0).
// combine: vp_combine_kernel (thread per row, ranks in order) → lse, per-row loss (fp64);
//   vp_sum_kernel: one block, fixed order → loss_sum (deterministic, identical on every rank).
// backward, per chunk: recompute logits; vp_grad_kernel G = bf16(scale·(exp(z − lse) − onehot)) (0 for
//   ignored rows); dx_f32 (chunk 0: =, then +=) G·W_c; dW_c += Gᵀ·x (cuBLASLt, fp32 out).
// Workspace: logits fp32 [M,ldz] + G bf16 [M,ldz] + mrun/srun/tgt fp32 [M] + loss rows fp64 [M], with
//   ldz = min(chunk, Vl) rounded up to 8: every GEMM leading dimension is a multiple of 8 elements even when
//   the slice (vocab/tp) is not (e.g. 264/2 = 132): the last chunk is narrower than ldz, the padding columns
//   are never read.
// FLOPs per rank: fwd 2·M·Vl·C, bwd 6·M·Vl·C. Resources: row kernels 256 threads (a warp per row), no
// smem; elementwise 256 threads; sum kernel 1024 threads, 8 KB smem. No atomics.
#include <cmath>

#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/lm_head_ce_vp.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

constexpr int kRowThreads = 256, kRowsPerBlock = 8, kEwThreads = 256, kSumThreads = 1024;

__global__ void vp_init_kernel(float* mrun, float* srun, float* tgt, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  mrun[i] = -INFINITY;
  srun[i] = 0.f;
  tgt[i] = 0.f;
}

// lo = the global vocabulary id of the chunk's first column.
__global__ void __launch_bounds__(kRowThreads) vp_stats_kernel(const float* __restrict__ logits,
                                                               const int32_t* __restrict__ targets, float* __restrict__ mrun,
                                                               float* __restrict__ srun, float* __restrict__ tgt, int64_t M,
                                                               int vc, int ldz, int64_t lo) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= M) return;
  const float* z = logits + row * ldz;
  float mx = -INFINITY, s = 0.f;
  for (int j = lane; j < vc; j += 32) {
    const float v = z[j];
    if (v > mx) {
      s = s * expf(mx - v) + 1.0f;
      mx = v;
    } else {
      s += expf(v - mx);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mn = fmaxf(mx, m2);
    s = (mx == -INFINITY ? 0.f : s * expf(mx - mn)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mn));
    mx = mn;
  }
  if (lane == 0) {
    const float m0 = mrun[row], s0 = srun[row];
    const float mn = fmaxf(m0, mx);
    srun[row] = (m0 == -INFINITY ? 0.f : s0 * expf(m0 - mn)) + (mx == -INFINITY ? 0.f : s * expf(mx - mn));
    mrun[row] = mn;
    const int32_t t = targets[row];
    if (t >= lo && t < lo + vc) tgt[row] = z[t - lo];
  }
}

__global__ void vp_partial_finish_kernel(const float* mrun, const float* srun, const float* tgt, float* stats, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  stats[2 * i] = mrun[i] + logf(srun[i]);
  stats[2 * i + 1] = tgt[i];
}

__global__ void vp_combine_kernel(const float* __restrict__ gathered, int P, const int32_t* __restrict__ targets,
                                  float* __restrict__ lse, double* __restrict__ loss_rows, int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M) return;
  float mx = -INFINITY;
  for (int q = 0; q < P; ++q) mx = fmaxf(mx, gathered[(int64_t(q) * M + i) * 2]);
  float s = 0.f, tl = 0.f;
  for (int q = 0; q < P; ++q) {
    s += expf(gathered[(int64_t(q) * M + i) * 2] - mx);
    tl += gathered[(int64_t(q) * M + i) * 2 + 1];  // one rank owns the target: the others add 0
  }
  const float l = mx + logf(s);
  lse[i] = l;
  loss_rows[i] = targets[i] < 0 ? 0.0 : double(l) - double(tl);
}

__global__ void __launch_bounds__(kSumThreads) vp_sum_kernel(const double* __restrict__ rows, int64_t M, double* out) {
  __shared__ double sh[kSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < M; i += kSumThreads) s += rows[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sh[0];
}

__global__ void __launch_bounds__(kEwThreads) vp_grad_kernel(const float* __restrict__ logits, const float* __restrict__ lse,
                                                             const int32_t* __restrict__ targets, bf16* __restrict__ G,
                                                             int64_t M, int vc, int ldz, int64_t lo, float scale) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i >= M * vc) return;
  const int64_t row = i / vc;
  const int j = int(i % vc);
  const int32_t t = targets[row];
  float g = 0.f;
  if (t >= 0) g = scale * (expf(logits[row * ldz + j] - lse[row]) - (lo + j == t ? 1.0f : 0.0f));
  G[row * ldz + j] = __float2bfloat16_rn(g);
}

__global__ void vp_cast_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kEwThreads + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

std::size_t ru(std::size_t b) { return (b + 255) / 256 * 256; }
int64_t ld_of(int64_t chunk, int64_t Vl) { return ((chunk < Vl ? chunk : Vl) + 7) / 8 * 8; }
struct Ws {
  float* logits;
  bf16* G;
  float *mrun, *srun, *tgt;
  double* loss_rows;
};
Ws carve(void* w, int64_t M, int64_t ldz) {
  char* p = static_cast<char*>(w);
  Ws s;
  s.logits = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * ldz * 4);
  s.G = reinterpret_cast<bf16*>(p);
  p += ru(std::size_t(M) * ldz * 2);
  s.mrun = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.srun = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.tgt = reinterpret_cast<float*>(p);
  p += ru(std::size_t(M) * 4);
  s.loss_rows = reinterpret_cast<double*>(p);
  return s;
}

void check(const char* op, int64_t M, int64_t C, int64_t Vl, int64_t v_off, int64_t chunk, std::size_t ws_bytes) {
  detail::require(M > 0, std::string(op) + ": M must be > 0");
  detail::require(C > 0 && C % 8 == 0, std::string(op) + ": C=" + std::to_string(C) + " not supported (C % 8 == 0)");
  detail::require(Vl > 0, std::string(op) + ": this rank's vocabulary slice must be non-empty");
  detail::require(v_off >= 0 && v_off + Vl < (int64_t(1) << 31), std::string(op) + ": v_off out of range");
  detail::require(chunk > 0 && chunk % 8 == 0 && chunk <= (int64_t(1) << 30),
                  std::string(op) + ": chunk=" + std::to_string(chunk) + " not supported (multiple of 8)");
  detail::require(ws_bytes >= lm_head_ce_vp_workspace_bytes(M, C, Vl, chunk),
                  std::string(op) + ": workspace too small (need lm_head_ce_vp_workspace_bytes)");
}

}  // namespace

std::size_t lm_head_ce_vp_workspace_bytes(int64_t M, int64_t /*C*/, int64_t Vl, int64_t chunk) {
  const int64_t ldz = ld_of(chunk, Vl);
  return ru(std::size_t(M) * ldz * 4) + ru(std::size_t(M) * ldz * 2) + 3 * ru(std::size_t(M) * 4) + ru(std::size_t(M) * 8);
}

void lm_head_ce_vp_partial(const bf16* x, const bf16* W, const int32_t* targets, int64_t M, int64_t C, int64_t Vl,
                           int64_t v_off, int64_t chunk, float* stats, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream) {
  check("lm_head_ce_vp_partial", M, C, Vl, v_off, chunk, workspace_bytes);
  const int64_t ldz = ld_of(chunk, Vl);
  chunk = chunk < Vl ? chunk : Vl;
  const Ws w = carve(workspace, M, ldz);
  vp_init_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  for (int64_t c0 = 0; c0 < Vl; c0 += chunk) {
    const int64_t vc = chunk < Vl - c0 ? chunk : Vl - c0;
    const GemmDesc g{false, true, M, vc, C, C, C, ldz, GemmOut::f32};
    gemm_rm(g, x, W + c0 * C, w.logits, 1.0f, 0.0f, stream);
    vp_stats_kernel<<<detail::grid_1d(M, kRowsPerBlock), kRowThreads, 0, stream>>>(w.logits, targets, w.mrun, w.srun, w.tgt,
                                                                                    M, int(vc), int(ldz), v_off + c0);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  vp_partial_finish_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(w.mrun, w.srun, w.tgt, stats, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void lm_head_ce_vp_combine(const float* gathered, int P, const int32_t* targets, int64_t M, float* lse, double* loss_sum,
                           void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  detail::require(M > 0 && P >= 1, "lm_head_ce_vp_combine: need M > 0 and P >= 1");
  detail::require(workspace_bytes >= ru(std::size_t(M) * 8),
                  "lm_head_ce_vp_combine: workspace too small (need lm_head_ce_vp_workspace_bytes)");
  double* rows = static_cast<double*>(workspace);  // per-row losses (fp64 [M]) at the workspace's start
  vp_combine_kernel<<<detail::grid_1d(M, kEwThreads), kEwThreads, 0, stream>>>(gathered, P, targets, lse, rows, M);
  MEGACPP_CUDA_CHECK_LAUNCH();
  vp_sum_kernel<<<1, kSumThreads, 0, stream>>>(rows, M, loss_sum);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

void lm_head_ce_vp_bwd(const bf16* x, const bf16* W, const int32_t* targets, const float* lse, int64_t M, int64_t C,
                       int64_t Vl, int64_t v_off, int64_t chunk, float scale, float* dx_f32, float* dW, void* workspace,
                       std::size_t workspace_bytes, cudaStream_t stream) {
  check("lm_head_ce_vp_bwd", M, C, Vl, v_off, chunk, workspace_bytes);
  const int64_t ldz = ld_of(chunk, Vl);
  chunk = chunk < Vl ? chunk : Vl;
  const Ws w = carve(workspace, M, ldz);
  for (int64_t c0 = 0; c0 < Vl; c0 += chunk) {
    const int64_t vc = chunk < Vl - c0 ? chunk : Vl - c0;
    const GemmDesc gl{false, true, M, vc, C, C, C, ldz, GemmOut::f32};
    gemm_rm(gl, x, W + c0 * C, w.logits, 1.0f, 0.0f, stream);
    vp_grad_kernel<<<detail::grid_1d(M * vc, kEwThreads), kEwThreads, 0, stream>>>(w.logits, lse, targets, w.G, M, int(vc),
                                                                                    int(ldz), v_off + c0, scale);
    MEGACPP_CUDA_CHECK_LAUNCH();
    const GemmDesc gx{false, false, M, C, vc, ldz, C, C, GemmOut::f32};
    gemm_rm(gx, w.G, W + c0 * C, dx_f32, 1.0f, c0 == 0 ? 0.0f : 1.0f, stream);
    const GemmDesc gw{true, false, vc, C, M, ldz, C, C, GemmOut::f32};
    gemm_rm(gw, w.G, x, dW + c0 * C, 1.0f, 1.0f, stream);
  }
}

void cast_f32_to_bf16(const float* src, bf16* dst, int64_t n, cudaStream_t stream) {
  detail::require(n > 0, "cast_f32_to_bf16: n must be > 0");
  vp_cast_kernel<<<detail::grid_1d(n, kEwThreads), kEwThreads, 0, stream>>>(src, dst, n);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

std::vector<KernelInfo> lm_head_ce_vp_kernel_info() {
  return {{"vp_stats_kernel", (const void*)vp_stats_kernel, kRowThreads, 0},
          {"vp_combine_kernel", (const void*)vp_combine_kernel, kEwThreads, 0},
          {"vp_grad_kernel", (const void*)vp_grad_kernel, kEwThreads, 0},
          {"vp_sum_kernel", (const void*)vp_sum_kernel, kSumThreads, 0}};
}

}  // namespace megacpp::train_ops
