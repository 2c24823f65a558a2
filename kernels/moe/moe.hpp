// moe.hpp — the MoE block on the GPU (bf16 weights and activations, fp32 accumulation and weight
// gradients), two dispatch paths that compute the function of moe_ref.hpp:
//   standard: route → permute → pad to equal per-expert batches → strided-batched GEMM → unpad → unpermute
//             → weighted combine
//   fused:    route → stable sort of the slots by expert → jagged GEMMs over the variable-size expert
//             batches (default: one cublasGemmEx per expert on its contiguous rows, experts over 4 streams;
//             option: cublasGemmGroupedBatchedEx) → combine fused into the gather back to token order
//             (y_t = ys_t + Σ_k w_k · o[row(t,k)], no float atomics anywhere)
//
// The dispatch is kept in stages that an expert-parallel all-to-all can later split across ranks:
//   route()   → per slot (t,k): expert, weight; per expert: count; per slot: row in the expert-sorted
//               buffer (slot_row) and its inverse (row_slot); offsets[e] = first row of expert e.
//               (an all-to-all would send the rows [offsets[e], offsets[e+1]) to the rank owning e)
//   experts   → FFNs on contiguous per-expert rows
//   combine() → gather by token.
// Tensors are raw device pointers with the shapes below (row-major); the object owns only workspace and
// what the backward needs (saved activations, routing).
//   x, y, dy, dx  [T,H] bf16
//   router [E,H], w1 [E,F1,H] (swiglu: F1 = 2F, gate rows first), w2 [E,H,F], s1 [2S,H], s2 [H,S]  bf16
//   gradients: same shapes, fp32, overwritten.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/moe/moe_ref.hpp"

namespace megacpp::moe {

enum class Path { Standard, Fused };
Path parse_path(const std::string& s);  // "standard" | "fused"; throws naming the choices
const char* path_name(Path p);

using bf16 = __nv_bfloat16;

struct MoeParamsDev {
  const bf16 *router = nullptr, *w1 = nullptr, *w2 = nullptr, *s1 = nullptr, *s2 = nullptr;
};
struct MoeGradsDev {
  float *router = nullptr, *w1 = nullptr, *w2 = nullptr, *s1 = nullptr, *s2 = nullptr;
};

struct MoeStepStats {
  RouterStats router;        // tokens per expert (before drops), min/max/std, dropped fraction
  double aux_loss = 0, z_loss = 0;
  int64_t kept_rows = 0;     // rows the experts computed (T·K minus drops)
  int64_t padded_rows = 0;   // standard path: E · Cmax (rows the batched GEMM computed); fused: kept_rows
  // Expert parallelism (MoeExpertParallel, size > 1): rows this rank's local experts computed for all EP
  // ranks (received), and rows this rank sent to other ranks' experts (its own rows excluded). 0 without EP.
  int64_t ep_recv_rows = 0, ep_sent_rows = 0;
};

// Expert parallelism (issue 8; the CPU contract is engine/model/parallel.hpp and moe_block.cpp):
// the object holds only experts [rank·E/size, (rank+1)·E/size) — w1/w2 and their gradients are then the
// LOCAL experts' tensors [E/size, F1, H], [E/size, H, F] — while routing (the replicated router, top-k,
// capacity, aux and z losses) stays over all E experts on this rank's own tokens. After routing, the
// expert-sorted rows of the experts of EP rank q (contiguous: rows [offsets[q·E/size], offsets[(q+1)·E/size]))
// go to q with one variable all-to-all (preceded by one of the per-expert kept counts), q runs them through
// its experts (one GEMM chain per (source rank, local expert) segment, weight gradients accumulated over
// the sources in source order: deterministic), and the outputs come back to the same sorted rows; the
// combine and everything after it are the single-rank code. Backward mirrors it (dO out, dX back).
// Fused path only (the standard path's padded batches are refused with an error naming the limit).
// all_to_all_v: blocking exchange of DEVICE bytes over the EP group (Communicator::all_to_all_v semantics);
// it must first order itself after `stream`'s work, and returns with `recv` written.
struct MoeExpertParallel {
  int size = 1, rank = 0;
  std::function<void(const void* send, const std::vector<std::size_t>& send_bytes,
                     const std::vector<std::size_t>& send_off, void* recv, const std::vector<std::size_t>& recv_bytes,
                     const std::vector<std::size_t>& recv_off, cudaStream_t stream)>
      all_to_all_v;
};

struct MoeGpuOptions {
  // Fused path's jagged GEMMs: false (default) = one cublasGemmEx per expert over its contiguous rows, the
  // experts spread over `expert_streams` streams (own cuBLAS handle each); true = one
  // cublasGemmGroupedBatchedEx call per GEMM (cuBLAS 13.1 refuses fp32 C there: the weight-gradient calls
  // then run per expert, and note() says so). Measured on H100: the grouped call is ~1.8× slower.
  bool grouped_gemm = false;
  int expert_streams = 4;  // 1..16
  // Run the memory-bound dispatch work (permute; combine/router backward) on a side stream beside the
  // shared-expert GEMMs (events order it; results are bitwise identical either way).
  bool overlap = true;
  // Expert parallelism (default: none). See MoeExpertParallel.
  MoeExpertParallel ep;
};

class MoeBlockGpu {
 public:
  MoeBlockGpu(const MoeConfig& c, Path path, cudaStream_t stream = nullptr, const MoeGpuOptions& opt = {});
  ~MoeBlockGpu();
  MoeBlockGpu(const MoeBlockGpu&) = delete;
  MoeBlockGpu& operator=(const MoeBlockGpu&) = delete;

  // y = MoE(x). Synchronises the host once on the per-expert counts (16 ints) after routing, while the
  // shared-expert GEMMs run. Keeps what backward needs.
  void forward(const bf16* x, const MoeParamsDev& p, bf16* y);
  // dx and all weight gradients of L = <dy,y> + s·(aux + z-loss), for the last forward's routing;
  // s = aux_grad_scale (the training loop weights the auxiliary terms like the micro-batch's tokens).
  void backward(const bf16* x, const MoeParamsDev& p, const bf16* dy, bf16* dx, const MoeGradsDev& g,
                double aux_grad_scale = 1.0);

  // Bench: replay only the expert GEMMs (routed + shared) of the last forward / backward, same pointers.
  void forward_expert_gemms_only(const bf16* x, const MoeParamsDev& p);
  void backward_expert_gemms_only(const bf16* x, const MoeParamsDev& p, const bf16* dy, const MoeGradsDev& g);

  const MoeStepStats& stats() const;
  const MoeConfig& config() const;
  Path path() const;
  std::string note() const;  // which GEMM entry points ran, anything refused

  // Routing of the last forward, downloaded (tests).
  std::vector<int32_t> download_experts() const;  // [T,K]
  std::vector<float> download_probs() const;      // [T,E]
  std::vector<float> download_weights() const;    // [T,K]

 private:
  struct Impl;
  std::unique_ptr<Impl> d_;
};

// Bench inputs: p[i] = scale · u, u ~ approx. N(0,1) from a counter hash (sum of 4 uniforms, rescaled);
// deterministic in (seed, i); never zero-filled.
void fill_random_bf16(bf16* p, size_t n, uint64_t seed, float scale, cudaStream_t stream = nullptr);

}  // namespace megacpp::moe
