// attention_native_fwd_sm90.cu — causal GQA flash-attention forward for Hopper (sm_90a) with warpgroup MMA.
//
// Math (layouts in attention.hpp): s = scale q k^T, causal (key <= query), online softmax in the exp2 domain
// (scale*log2e folded in), o = softmax(s) v, lse = ln sum exp(s) saved as fp32 (B,H,S) for the backward.
// One CTA = BR = 128 query rows of one (b, h) = two consumer warpgroups of 64 rows (256 threads), the last
// (heaviest, causal) query blocks launched first. Per kv tile of BC keys (128 or 64, see native_fwd_sm90):
//   S (64 x BC fp32, registers)  = Q_wg (smem, K-major) . K_j^T (smem, K-major)   wgmma m64nBCk16, D/16 steps
//   online softmax in registers (quad shuffles), O *= alpha, P = bf16(exp2(S*c - m))  (P stays in registers:
//   the accumulator layout is the A-fragment layout)
//   O (64 x D fp32, registers)   += P (registers) . V_j (smem, MN-major, transpose-B)  wgmma m64nDk16, BC/16 steps
// K/V tiles: cp.async by all 256 threads into 128B-swizzled smem (kernels/common/wgmma_sm90.cuh), 2 or 3 stages
// (tile j+1 loads while tile j computes), fence.proxy.async before the barrier that publishes a tile to wgmma.
// Causal: tiles after the block's last row are never loaded, a warpgroup skips tiles after its own rows,
// element masks only on tiles that cross the warpgroup's diagonal.
// Resources (ptxas -v, sm_90a, no spills, no local memory; SASS: HGMMA only, no HMMA/LDSM), 256 threads:
//   <D=128, BC=128, 1 CTA/SM, 3 stages>  238 regs, smem Q 32 KB + 3 x (K,V) 96 KB + 1 KB align = 225 KB
//   <D=128, BC=128, 1 CTA/SM, 2 stages>  238 regs, 161 KB     <D=128, BC=64, 1 CTA/SM, 2 stages>  162 regs, 97 KB
//   <D=64,  BC=64, 2 CTAs/SM, 2 stages>  118 regs, 49 KB      <D=64, BC=64, 2 CTAs/SM, 3 stages>  120 regs, 65 KB
//   <D=64,  BC=128, 1 CTA/SM, 2 stages>  178 regs, 81 KB
// Limits (checked by the caller): D in {64,128}, S % 128 == 0, B*H <= 65535, 16-byte aligned BSHD tensors.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "kernels/attention/attention_native_sm90.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/gpu_timing.hpp"
#include "kernels/attention/attention_native_sm90.cuh"

namespace megacpp::attn {
namespace {
using namespace megacpp::wgmma;
using namespace megacpp::attn::sm90;

constexpr int kBR = 128, kThreads = 256;

struct Sm90FwdParams {
  const __nv_bfloat16 *q, *k, *v;
  __nv_bfloat16* o;
  float* lse;
  int S, H, Hk;
  float scale_log2;
};

// BC = keys per tile; MINB = CTAs per SM the registers are capped for (2: <= 128 regs); STAGES = K/V smem
// buffers: 2 needs a barrier at the end of every iteration (the next load overwrites the tile just read),
// 3 does not (the buffer loaded at iteration j was last read at j-2, and every thread passed iteration j-1's
// barrier only after all threads finished j-2), so the two warpgroups may drift apart by up to one tile.
template <int D, int BC, int MINB, int STAGES>
__global__ void __launch_bounds__(kThreads, MINB) attn_fwd_sm90_kernel(Sm90FwdParams p) {
  static_assert(STAGES == 2 || STAGES == 3, "2 or 3 K/V stages");
  constexpr int kBC = BC;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sbase = (smem_addr(smem_raw) + 1023u) & ~1023u;
  constexpr uint32_t kTileQ = kBR * D * 2, kTileKV = kBC * D * 2;
  const uint32_t sQ = sbase, sK0 = sQ + kTileQ, sV0 = sK0 + STAGES * kTileKV;  // K[STAGES], V[STAGES]

  const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
  const int qblk = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int q0 = qblk * kBR;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const __nv_bfloat16* qg = p.q + (static_cast<int64_t>(b) * p.S + q0) * ldq + h * D;
  const __nv_bfloat16* kg = p.k + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const __nv_bfloat16* vg = p.v + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const int n_tiles = (q0 + kBR - 1) / kBC + 1;

  load_tile_sw128<kBR, D, kThreads>(sQ, qg, ldq, tid);
  load_tile_sw128<kBC, D, kThreads>(sK0, kg, ldk, tid);
  load_tile_sw128<kBC, D, kThreads>(sV0, vg, ldk, tid);
  cp_async_commit();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  const int wrow0 = q0 + 64 * wg;                                   // first row of this warpgroup
  const int row_a = wrow0 + 16 * (wtid >> 5) + ((wtid & 31) >> 2);  // this thread's two rows
  const int row_b = row_a + 8;
  const int cq = 2 * (wtid & 3);  // column of d[0] inside an 8-column tile

  int buf = 0;  // = j % STAGES
  for (int j = 0; j < n_tiles; ++j) {
    const int nbuf = buf + 1 == STAGES ? 0 : buf + 1;
    if (j + 1 < n_tiles) {
      const int64_t off = static_cast<int64_t>(j + 1) * kBC * ldk;
      load_tile_sw128<kBC, D, kThreads>(sK0 + nbuf * kTileKV, kg + off, ldk, tid);
      load_tile_sw128<kBC, D, kThreads>(sV0 + nbuf * kTileKV, vg + off, ldk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const int kv0 = j * kBC;
    if (kv0 <= wrow0 + 63) {  // warpgroup-uniform: some key of the tile is visible to some row of this WG
      const uint32_t k_s = sK0 + buf * kTileKV, v_s = sV0 + buf * kTileKV;
      float s[kBC / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) mma_ss_kk<kBC>(s, desc_kmajor<kBR>(sQ, 64 * wg, kk), desc_kmajor<kBC>(k_s, 0, kk), kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(s);
      if (kv0 + kBC - 1 > wrow0) {  // tile crosses this warpgroup's diagonal: element mask
#pragma unroll
        for (int i = 0; i < kBC / 2; ++i) {
          const int c = kv0 + 8 * (i >> 2) + cq + (i & 1);
          if (c > (((i >> 1) & 1) ? row_b : row_a)) s[i] = -INFINITY;
        }
      }
      float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
      for (int i = 0; i < kBC / 2; i += 4) {
        mx[0] = fmaxf(mx[0], fmaxf(s[i], s[i + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[i + 2], s[i + 3]));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      }
      // Key 0 (tile 0) and key q0 (the diagonal tile) are visible to every row: mx is finite here.
      const float alpha0 = fast_exp2((m_r[0] - mx[0]) * p.scale_log2);
      const float alpha1 = fast_exp2((m_r[1] - mx[1]) * p.scale_log2);
      m_r[0] = mx[0];
      m_r[1] = mx[1];
      const float mb0 = mx[0] * p.scale_log2, mb1 = mx[1] * p.scale_log2;
      float ls0 = 0.f, ls1 = 0.f;
      uint32_t pf[kBC / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBC / 16; ++kk) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = 8 * kk + 2 * jj;
          const float mb = (jj & 1) ? mb1 : mb0;
          const float e0 = fast_exp2(fmaf(s[i], p.scale_log2, -mb));
          const float e1 = fast_exp2(fmaf(s[i + 1], p.scale_log2, -mb));
          if (jj & 1) ls1 += e0 + e1;
          else ls0 += e0 + e1;
          pf[kk][jj] = pack_bf16(e0, e1);
        }
      }
      l_r[0] = l_r[0] * alpha0 + ls0;
      l_r[1] = l_r[1] * alpha1 + ls1;
#pragma unroll
      for (int i = 0; i < D / 2; i += 4) {
        o[i] *= alpha0;
        o[i + 1] *= alpha0;
        o[i + 2] *= alpha1;
        o[i + 3] *= alpha1;
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBC / 16; ++kk) mma_rs_mn<D>(o, pf[kk], desc_mnmajor<kBC>(v_s, kk));
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(o);
    }
    if constexpr (STAGES == 2) __syncthreads();  // everyone is done with `buf` before the next load into it
    buf = nbuf;
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
  }
  const float inv0 = 1.f / l_r[0], inv1 = 1.f / l_r[1];
  __nv_bfloat16* og = p.o + (static_cast<int64_t>(b) * p.S) * ldq + h * D;
#pragma unroll
  for (int i = 0; i < D / 2; i += 4) {
    const int c = 2 * i + cq;  // 8 * (i >> 2) + cq
    *reinterpret_cast<uint32_t*>(og + row_a * ldq + c) = pack_bf16(o[i] * inv0, o[i + 1] * inv0);
    *reinterpret_cast<uint32_t*>(og + row_b * ldq + c) = pack_bf16(o[i + 2] * inv1, o[i + 3] * inv1);
  }
  if ((wtid & 3) == 0) {
    float* lg = p.lse + static_cast<int64_t>(bh) * p.S;
    lg[row_a] = (m_r[0] * p.scale_log2 + __log2f(l_r[0])) * kLn2;
    lg[row_b] = (m_r[1] * p.scale_log2 + __log2f(l_r[1])) * kLn2;
  }
}

template <int D, int BC, int STAGES>
constexpr size_t fwd_smem_bytes() {
  return static_cast<size_t>(kBR * D + 2 * STAGES * BC * D) * 2 + 1024;
}

template <int D, int BC, int MINB, int STAGES = 2>
void launch(const AttnShape& s, const Sm90FwdParams& fp, cudaStream_t st) {
  constexpr size_t smem = fwd_smem_bytes<D, BC, STAGES>();
  auto kern = attn_fwd_sm90_kernel<D, BC, MINB, STAGES>;
  MEGACPP_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  dim3 grid(static_cast<unsigned>(s.S / kBR), static_cast<unsigned>(s.B * s.H));
  kern<<<grid, kThreads, smem, st>>>(fp);
  MEGACPP_CUDA_CHECK_LAUNCH();
}

template <int D, int BC, int MINB, int STAGES = 2>
nlohmann::json report() {
  return to_json(kernel_resources("attn_fwd_sm90<" + std::to_string(D) + "," + std::to_string(BC) + "," +
                                      std::to_string(MINB) + "," + std::to_string(STAGES) + ">",
                                  (const void*)attn_fwd_sm90_kernel<D, BC, MINB, STAGES>, kThreads,
                                  static_cast<int>(fwd_smem_bytes<D, BC, STAGES>())));
}

}  // namespace

// Configs (defaults chosen from H100 measurements, docs/perf/attention.md, session 3 calls 2 and 3):
//   D=128: 0 = 128 keys per tile, 1 CTA/SM, 3 K/V stages (no end-of-iteration barrier; 225 KB smem);
//          1 = 64 keys per tile, 2 stages;  2 = config 0 with 2 stages (6-20% slower in call 3).
//   D=64:  0 = 64 keys per tile, registers capped for 2 CTAs/SM, 2 stages (the second CTA's matmuls overlap
//          the first one's softmax; +25-40% over config 1);  1 = 128 keys per tile, 1 CTA/SM;
//          2 = config 0 with 3 stages (within noise of config 0 in call 3).
void native_fwd_sm90(const AttnShape& s, const AttnFwdArgs& a, void* stream, int cfg) {
  const Sm90FwdParams fp{static_cast<const __nv_bfloat16*>(a.q), static_cast<const __nv_bfloat16*>(a.k),
                         static_cast<const __nv_bfloat16*>(a.v), static_cast<__nv_bfloat16*>(a.o), a.lse,
                         static_cast<int>(s.S), static_cast<int>(s.H), static_cast<int>(s.Hk),
                         effective_scale(s, a.scale) * kLog2e};
  auto st = static_cast<cudaStream_t>(stream);
  if (s.D == 128) {
    if (cfg == 1) launch<128, 64, 1>(s, fp, st);
    else if (cfg == 2) launch<128, 128, 1, 2>(s, fp, st);
    else launch<128, 128, 1, 3>(s, fp, st);
  } else {
    if (cfg == 1) launch<64, 128, 1>(s, fp, st);
    else if (cfg == 2) launch<64, 64, 2, 3>(s, fp, st);
    else launch<64, 64, 2>(s, fp, st);
  }
}

std::string native_fwd_sm90_report(int64_t D) {
  nlohmann::json j = nlohmann::json::array();
  if (D == 128) {
    j.push_back(report<128, 128, 1, 3>());
    j.push_back(report<128, 64, 1>());
    j.push_back(report<128, 128, 1, 2>());
  } else {
    j.push_back(report<64, 64, 2>());
    j.push_back(report<64, 128, 1>());
    j.push_back(report<64, 64, 2, 3>());
  }
  return j.dump();
}

}  // namespace megacpp::attn
