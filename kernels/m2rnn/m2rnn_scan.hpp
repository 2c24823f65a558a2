// m2rnn_scan.hpp — launchers of the CUDA M²RNN scan core (forward and BPTT backward).
//
// The scan core is the recurrence of m2rnn_ref.hpp (per b, head n):
//   H_t = f_t H_{t-1} + (1 - f_t) tanh(H_{t-1} W_n + k_t v_tᵀ),  o_t = H_tᵀ q_t + D_n ⊙ v_t.
// The rest of the block (projections, conv, gate, norm) is ordinary GEMM / elementwise work for the
// engine; these kernels take the conv outputs q, k, v (bf16), the gate value f (fp32) and the
// per-head parameters W, D (fp32), and return o (fp32).
//
// Layouts (row-major): q [B,S,Nq,K], k [B,S,Nk,K], v [B,S,N,V] — each with a token stride ld_* in
// elements (ld_q ≥ Nq·K etc.; e.g. ld = conv channels C when q/k/v point into the conv output);
// f [B,S,N]; W [N,V,V]; D [N,V]; h0, hT, dh0, dhT [B,N,K,V]; o, do, dv [B,S,N,V]; df [B,S,N];
// dq [B,S,Nq,K]; dk [B,S,Nk,K]; dW [N,V,V]; dD [N,V] (all fp32 except q, k, v).
//
// Supported (refused otherwise, naming the limit): V = 16; K ∈ {16, 32, 48, 64}; S a multiple of 32;
// N divisible by Nq and Nk; ld_q, ld_k, ld_v multiples of 8 and q, k, v 16-byte aligned.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/m2rnn/m2rnn_ref.hpp"

namespace megacpp::m2rnn {

constexpr int kGpuCheckpointEvery = 16;  // the forward saves H every 16 steps for the backward

struct GpuScanArgs {
  ScanShape shape;
  int64_t ld_q = 0, ld_k = 0, ld_v = 0;  // 0: packed (Nq·K, Nk·K, N·V)
  // inputs (device pointers)
  const uint16_t* q = nullptr;  // bf16 bits
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  const float* f = nullptr;
  const float* W = nullptr;
  const float* D = nullptr;
  const float* h0 = nullptr;  // may be null: zero initial state
  // 0: the optimised kernels (default); 1: the first, baseline kernels (kept for comparison and as a
  // fallback; docs/perf/m2rnn.md). Both compute the same function and share the checkpoint format.
  int variant = 0;
};

// Throws std::invalid_argument naming the limit when the kernels do not support `a`.
void gpu_validate(const GpuScanArgs& a);
// Floats of the checkpoint buffer the forward writes for the backward: B·N·(S/16)·K·V.
std::size_t gpu_checkpoint_floats(const ScanShape& s);
// Floats of the backward's workspace: per-head dq/dk partials and per-(b, K-block) dW, per-b dD partials.
std::size_t gpu_bwd_workspace_floats(const ScanShape& s);

// o [B,S,N,V] (required); hT (may be null); ckpt (may be null: inference, no backward).
void scan_forward_gpu(const GpuScanArgs& a, float* o, float* hT, float* ckpt, void* stream = nullptr);

struct GpuScanGrads {
  float* dq = nullptr;  // [B,S,Nq,K]
  float* dk = nullptr;  // [B,S,Nk,K]
  float* dv = nullptr;  // [B,S,N,V]
  float* df = nullptr;  // [B,S,N]
  float* dW = nullptr;  // [N,V,V]
  float* dD = nullptr;  // [N,V]
  float* dh0 = nullptr;  // [B,N,K,V] (may be null)
};
// dout [B,S,N,V]; dhT may be null. ckpt: written by scan_forward_gpu on the same inputs.
// workspace: gpu_bwd_workspace_floats(shape) floats. Every output is fully overwritten (no
// accumulation into the caller's buffers); parameter gradients are reduced in a fixed order
// (deterministic, no float atomics).
void scan_backward_gpu(const GpuScanArgs& a, const float* ckpt, const float* dout, const float* dhT, Clip clip,
                       float clip_value, const GpuScanGrads& g, float* workspace, void* stream = nullptr);

// Resources of the kernels for receipts (JSON array of KernelResources), for shape `s`.
struct GpuKernelInfo {
  const void* func;
  const char* name;
  int threads;
  std::size_t smem;
};
GpuKernelInfo gpu_fwd_kernel_info(const ScanShape& s, int variant = 0);
GpuKernelInfo gpu_bwd_kernel_info(const ScanShape& s, int variant = 0);

}  // namespace megacpp::m2rnn
