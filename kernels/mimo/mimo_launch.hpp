// mimo_launch.hpp — host API of the native CUDA Mamba-3 MIMO scan kernels (spec: ../shared/docs/mamba3-spec.md).
//
// Kernels (names as in the seeds, so profiles read the same):
//   mimo_fwd        forward, one CTA per (b,h), sequential over chunks, state N×P fp32 in registers;
//                   optionally writes the PsiV cache and the final state.
//   mimo_bwd_fwd    the same recompute pass; writes the chunk-entry states (bf16), dZ and per-(b,h) partials of
//                   dΦ (MIMO_Out) and dΖ (MIMO_Z).
//   mimo_bwd_bwd    reverse chunk loop carrying dS (fp32 registers): dQ/dK per value head (bf16 workspace), dV,
//                   dADT (decay cumsum backward fused), dAngles, DFACTOR/DGAMMA (B,H,S) and partials of dΨ, dD,
//                   dQ_bias, dK_bias.
//   mimo_bwd_post   group reduction of dQ/dK (H → G heads), Σ_b of every parameter partial, dΔ and dtrap from
//                   DFACTOR/DGAMMA. Deterministic: no float atomics anywhere.
// mimo_fwd / mimo_bwd_fwd (mimo_chunk_sm90.cuh) and mimo_bwd_bwd (mimo_bwd_bwd_sm90.cu) run Hopper wgmma kernels
// where they apply (M = 64, P = 64, N ∈ {64,128}, aligned inputs; mimo_bwd_fwd also no PsiV read), else the
// mma.sync kernels; mimo_kernel_infos() predicts which and why, mimo_observed_paths() records what ran.
// Layouts: as kernels/mimo/mimo_ref.hpp (row-major): q,k (B,S,R,G,N) bf16 without bias; v,z,out,dout (B,S,H,P) bf16;
// adt,dt (B,H,S) fp32; trap (B,H,S) bf16 logit; q_bias,k_bias (H,R,N) fp32; psi,zeta,phi (H,R,P) fp32; d (H) fp32;
// angles (B,S,H,N_ang) fp32 CUMULATIVE. Gradients: dq,dk (B,S,R,G,N) bf16; dv,dz (B,S,H,P) bf16; dadt,ddt,dtrap
// (B,H,S) fp32; dq_bias,dk_bias (H,R,N), dpsi,dzeta,dphi (H,R,P), dd (H), dangles (B,S,H,N_ang) fp32.
// PsiV cache: (B,H,S,R,P) bf16 — for each (b,h) every chunk's M×P block (rows t·R+r) is contiguous.
//
// Internal chunk: the chunked algorithm computes the same function for any chunk length, so the kernels use
// Lc = min(chunk, Mmax/R) steps per chunk (Lc divides chunk, hence S), M = Lc·R rows, with Mmax ∈ {64,32,16}
// the largest that fits shared memory (MimoDims::Lc). Results do not depend on it beyond rounding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace megacpp::mimo {

using bf16_bits = uint16_t;  // device data are __nv_bfloat16; the host API passes raw bits

struct MimoDims {
  int B = 0, S = 0, H = 0, G = 0, N = 0, P = 0, R = 0, chunk = 0;
  int n_ang = 0;
  // derived (mimo_make_dims)
  int Lc = 0;   // internal chunk steps
  int M = 0;    // Lc·R rows per chunk
  int Mp = 0;   // M rounded up to 16
  int nc = 0;   // S / Lc
};

// Validates (throws std::invalid_argument naming the limit) and fills the derived fields.
// Supported: N ∈ {16,32,64,128,256}, P ∈ {32,64,128}, N·P ≤ 16384, R ∈ {1,2,4,8}, chunk ∈ {8,16,32,64},
// H % G == 0, S % chunk == 0, rope_fraction ∈ {0.5,1}; outproj_norm = true is refused (not on GPU).
MimoDims mimo_make_dims(int B, int S, int H, int G, int N, int P, int R, int chunk, double rope_fraction = 0.5,
                        bool outproj_norm = false);

struct MimoFwdArgs {
  const bf16_bits *q = nullptr, *k = nullptr, *v = nullptr, *z = nullptr, *trap = nullptr;
  const float *adt = nullptr, *dt = nullptr, *angles = nullptr;
  const float *q_bias = nullptr, *k_bias = nullptr, *psi = nullptr, *zeta = nullptr, *phi = nullptr, *d = nullptr;
  bf16_bits* out = nullptr;
  bf16_bits* psiv_cache = nullptr;  // optional output (B,H,S,R,P)
  float* final_state = nullptr;     // optional output (B,H,N,P) fp32
};

struct MimoBwdArgs {
  MimoFwdArgs in;                   // inputs (out/final_state unused); in.psiv_cache: if set, READ instead of x·Ψ
  const bf16_bits* dout = nullptr;  // (B,S,H,P)
  bf16_bits *dq = nullptr, *dk = nullptr, *dv = nullptr, *dz = nullptr;
  float *dadt = nullptr, *ddt = nullptr, *dtrap = nullptr;
  float *dq_bias = nullptr, *dk_bias = nullptr, *dpsi = nullptr, *dzeta = nullptr, *dphi = nullptr, *dd = nullptr;
  float* dangles = nullptr;
};

// Backward workspace (bytes) and its parts.
std::size_t mimo_bwd_workspace_bytes(const MimoDims& d);

void mimo_fwd(const MimoDims& d, const MimoFwdArgs& a, cudaStream_t stream = nullptr);
// The three backward stages (for per-kernel timing) and the whole backward.
void mimo_bwd_fwd(const MimoDims& d, const MimoBwdArgs& a, void* workspace, cudaStream_t stream = nullptr);
void mimo_bwd_bwd(const MimoDims& d, const MimoBwdArgs& a, void* workspace, cudaStream_t stream = nullptr);
void mimo_bwd_post(const MimoDims& d, const MimoBwdArgs& a, void* workspace, cudaStream_t stream = nullptr);
void mimo_bwd(const MimoDims& d, const MimoBwdArgs& a, void* workspace, cudaStream_t stream = nullptr);

struct MimoKernelInfo {
  std::string name;
  const void* func;
  int threads;
  std::size_t dynamic_smem;
  std::string path;  // which implementation ("sm90 wgmma", or "mma.sync" with the reason the wgmma path refused)
};
// The kernels launched for these dims (for kernel_resources()); psiv_read: the backward reads the PsiV cache.
std::vector<MimoKernelInfo> mimo_kernel_infos(const MimoDims& d, bool psiv_read = false);
// What the last launches of mimo_fwd / mimo_bwd_fwd / mimo_bwd_bwd in this process actually ran, decided at launch
// (the pointers' alignment included, which mimo_kernel_infos cannot see): "mimo_fwd: sm90 wgmma, mimo_bwd_fwd: ...,
// mimo_bwd_bwd: mma.sync (wgmma path refused: <reason>)"; a kernel not launched yet is left out. For receipts.
std::string mimo_observed_paths();

}  // namespace megacpp::mimo
