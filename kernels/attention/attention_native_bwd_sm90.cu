// attention_native_bwd_sm90.cu — causal GQA flash-attention backward for Hopper (sm_90a) with warpgroup MMA,
// deterministic (every output element written by exactly one CTA, no atomics).
//
// Math (layouts in attention.hpp; c = scale*log2e, L = lse*log2e, Dv = rowsum(dO*O) from attn_bwd_pre):
//   P = exp2(S*c - L), S = Q K^T (causal), dP = dO V^T, dS = P (dP - Dv), dV = P^T dO, dK = scale dS^T Q,
//   dQ = scale dS K.
// Two kernels (7 matmul-equivalents; the dQ kernel recomputes S and dP — the price of determinism without
// float atomics), each CTA = two consumer warpgroups (256 threads), operands in 128B-swizzled smem
// (kernels/common/wgmma_sm90.cuh), tiles double-buffered with cp.async, fence.proxy.async before publishing:
//  1. dK/dV: one CTA per (128 keys, b, kv head); loops over the H/Hk query heads of the group and over the
//     64-row query blocks at/after the diagonal. Warpgroup w owns keys 64w..64w+63 and keeps dK, dV (64 x D
//     fp32) in registers. Per query block: S^T = K Q^T and dP^T = V dO^T (wgmma, A and B from smem,
//     m64n64k16), P^T and dS^T in registers, packed to bf16 A fragments: dV += P^T dO, dK += dS^T Q (wgmma
//     with A from registers, B = the same Q / dO tiles read MN-major).
//  2. dQ: one CTA per (128 query rows, b, h); loops over 64-key blocks up to the diagonal; warpgroup w owns
//     rows 64w..64w+63: S = Q K^T, dP = dO V^T (smem x smem), dS in registers, dQ += dS K (registers x smem).
// Resources (sm_90a, ptxas -v; SASS HGMMA only, no HMMA/LDSM), 256 threads:
//   dK/dV: smem K,V 128 x D + 2 x (Q, dO 64 x D, lse, Dv 64) + 1 KB align = 130 KB (D=128) / 66 KB (D=64);
//          254 / 186 regs, no spill, 1 CTA/SM.
//   dQ:    smem Q, dO 128 x D + 2 x (K, V 64 x D) + 1 KB = 129 KB / 65 KB; 187 / 139 regs, no spill, 1 CTA/SM;
//          config 1 at D=64: capped at 128 regs for 2 CTAs/SM (ptxas: 20 B spill; faster in S3-3, not default).
// Limits (checked by the caller): D in {64,128}, S % 128 == 0, B*H <= 65535.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "kernels/attention/attention_native_sm90.cuh"
#include "kernels/attention/attention_native_sm90.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/gpu_timing.hpp"

namespace megacpp::attn {
namespace {
using namespace megacpp::wgmma;
using namespace megacpp::attn::sm90;

constexpr int kThreads = 256;
constexpr int kKvBlk = 128, kQBlk = 64;     // dK/dV kernel: keys per CTA, query rows per iteration
constexpr int kQBlkDq = 128, kKvBlkDq = 64;  // dQ kernel: query rows per CTA, keys per iteration

struct Sm90BwdParams {
  const __nv_bfloat16 *q, *k, *v, *dout;
  const float *lse, *dvec;
  __nv_bfloat16 *dq, *dk, *dv;
  int S, H, Hk;
  float scale, scale_log2;
};

// 64 fp32 values (global, 16-byte aligned) -> smem, 16 threads starting at `t0`.
__device__ __forceinline__ void load_row64(uint32_t s, const float* g, int tid, int t0) {
  const int i = tid - t0;
  if (i >= 0 && i < 16) cp_async16(s + 16 * i, g + 4 * i);
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) attn_bwd_dkdv_sm90_kernel(Sm90BwdParams p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sbase = (smem_addr(smem_raw) + 1023u) & ~1023u;
  constexpr uint32_t kTileKV = kKvBlk * D * 2, kTileQ = kQBlk * D * 2;
  const uint32_t sK = sbase, sV = sK + kTileKV, sQ0 = sV + kTileKV, sdO0 = sQ0 + 2 * kTileQ;
  const uint32_t sLD0 = sdO0 + 2 * kTileQ;  // [2][lse 64 | Dv 64] fp32
  const float* sLDf = reinterpret_cast<const float*>(smem_raw + (sLD0 - smem_addr(smem_raw)));

  const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
  const int k0 = blockIdx.x * kKvBlk;  // low kv blocks have the most work: launched first
  const int bhk = blockIdx.y, b = bhk / p.Hk, hk = bhk % p.Hk;
  const int G = p.H / p.Hk;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const int64_t kvoff = (static_cast<int64_t>(b) * p.S + k0) * ldk + hk * D;
  const int qb0 = k0 / kQBlk, nqb = p.S / kQBlk - qb0;
  const int n_it = G * nqb;

  auto load_q_tile = [&](int it, int buf) {
    const int hh = it / nqb, qb = qb0 + it % nqb, h = hk * G + hh;
    const int64_t qoff = (static_cast<int64_t>(b) * p.S + qb * kQBlk) * ldq + h * D;
    load_tile_sw128<kQBlk, D, kThreads>(sQ0 + buf * kTileQ, p.q + qoff, ldq, tid);
    load_tile_sw128<kQBlk, D, kThreads>(sdO0 + buf * kTileQ, p.dout + qoff, ldq, tid);
    const int64_t loff = (static_cast<int64_t>(b) * p.H + h) * p.S + qb * kQBlk;
    load_row64(sLD0 + buf * 512, p.lse + loff, tid, 0);
    load_row64(sLD0 + buf * 512 + 256, p.dvec + loff, tid, 32);
  };

  load_tile_sw128<kKvBlk, D, kThreads>(sK, p.k + kvoff, ldk, tid);
  load_tile_sw128<kKvBlk, D, kThreads>(sV, p.v + kvoff, ldk, tid);
  load_q_tile(0, 0);
  cp_async_commit();

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;
  const int kw0 = k0 + 64 * wg;                                   // first key of this warpgroup
  const int key_a = kw0 + 16 * (wtid >> 5) + ((wtid & 31) >> 2);  // this thread's two key rows
  const int key_b = key_a + 8;
  const int cq = 2 * (wtid & 3);

  for (int it = 0; it < n_it; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_it) load_q_tile(it + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const int q0 = (qb0 + it % nqb) * kQBlk;
    if (q0 + kQBlk - 1 >= kw0) {  // warpgroup-uniform: some query of the block sees some key of this WG
      const uint32_t q_s = sQ0 + buf * kTileQ, do_s = sdO0 + buf * kTileQ;
      const float* lrow = sLDf + buf * 128;
      const float* drow = lrow + 64;
      float st[kQBlk / 2], dpt[kQBlk / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        mma_ss_kk<kQBlk>(st, desc_kmajor<kKvBlk>(sK, 64 * wg, kk), desc_kmajor<kQBlk>(q_s, 0, kk), kk > 0);
        mma_ss_kk<kQBlk>(dpt, desc_kmajor<kKvBlk>(sV, 64 * wg, kk), desc_kmajor<kQBlk>(do_s, 0, kk), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(st);
      reg_fence(dpt);
      const bool diag = q0 < kw0 + 63;  // some query of the block precedes some key of this WG: mask
      uint32_t pa[kQBlk / 16][4], sa[kQBlk / 16][4];
#pragma unroll
      for (int kk = 0; kk < kQBlk / 16; ++kk) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = 8 * kk + 2 * jj;
          const int col = 8 * (i >> 2) + cq;  // query column (relative) of st[i]; st[i+1] is col+1
          const float2 L = *reinterpret_cast<const float2*>(lrow + col);
          const float2 Dd = *reinterpret_cast<const float2*>(drow + col);
          float p0 = fast_exp2(fmaf(st[i], p.scale_log2, -L.x * kLog2e));
          float p1 = fast_exp2(fmaf(st[i + 1], p.scale_log2, -L.y * kLog2e));
          if (diag) {
            const int key = (jj & 1) ? key_b : key_a;
            if (key > q0 + col) p0 = 0.f;
            if (key > q0 + col + 1) p1 = 0.f;
          }
          pa[kk][jj] = pack_bf16(p0, p1);
          sa[kk][jj] = pack_bf16(p0 * (dpt[i] - Dd.x), p1 * (dpt[i + 1] - Dd.y));
        }
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kQBlk / 16; ++kk) {
        mma_rs_mn<D>(dv, pa[kk], desc_mnmajor<kQBlk>(do_s, kk));
        mma_rs_mn<D>(dk, sa[kk], desc_mnmajor<kQBlk>(q_s, kk));
      }
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dv);
      reg_fence(dk);
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration loads into it
  }

  __nv_bfloat16* dkg = p.dk + (static_cast<int64_t>(b) * p.S) * ldk + hk * D;
  __nv_bfloat16* dvg = p.dv + (static_cast<int64_t>(b) * p.S) * ldk + hk * D;
#pragma unroll
  for (int i = 0; i < D / 2; i += 4) {
    const int c = 2 * i + cq;
    *reinterpret_cast<uint32_t*>(dkg + key_a * ldk + c) = pack_bf16(dk[i] * p.scale, dk[i + 1] * p.scale);
    *reinterpret_cast<uint32_t*>(dkg + key_b * ldk + c) = pack_bf16(dk[i + 2] * p.scale, dk[i + 3] * p.scale);
    *reinterpret_cast<uint32_t*>(dvg + key_a * ldk + c) = pack_bf16(dv[i], dv[i + 1]);
    *reinterpret_cast<uint32_t*>(dvg + key_b * ldk + c) = pack_bf16(dv[i + 2], dv[i + 3]);
  }
}

// MINB = CTAs per SM the registers are capped for (2: <= 128 registers, D=64 only).
template <int D, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) attn_bwd_dq_sm90_kernel(Sm90BwdParams p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t sbase = (smem_addr(smem_raw) + 1023u) & ~1023u;
  constexpr uint32_t kTileQ = kQBlkDq * D * 2, kTileKV = kKvBlkDq * D * 2;
  const uint32_t sQ = sbase, sdO = sQ + kTileQ, sK0 = sdO + kTileQ, sV0 = sK0 + 2 * kTileKV;

  const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
  const int qblk = gridDim.x - 1 - blockIdx.x;  // heaviest (last) query blocks first
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int q0 = qblk * kQBlkDq;
  const int64_t ldq = static_cast<int64_t>(p.H) * D, ldk = static_cast<int64_t>(p.Hk) * D;
  const int64_t qoff = (static_cast<int64_t>(b) * p.S + q0) * ldq + h * D;
  const __nv_bfloat16* kg = p.k + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const __nv_bfloat16* vg = p.v + static_cast<int64_t>(b) * p.S * ldk + hk * D;
  const int n_tiles = (q0 + kQBlkDq - 1) / kKvBlkDq + 1;

  load_tile_sw128<kQBlkDq, D, kThreads>(sQ, p.q + qoff, ldq, tid);
  load_tile_sw128<kQBlkDq, D, kThreads>(sdO, p.dout + qoff, ldq, tid);
  load_tile_sw128<kKvBlkDq, D, kThreads>(sK0, kg, ldk, tid);
  load_tile_sw128<kKvBlkDq, D, kThreads>(sV0, vg, ldk, tid);
  cp_async_commit();

  const int wrow0 = q0 + 64 * wg;
  const int row_a = wrow0 + 16 * (wtid >> 5) + ((wtid & 31) >> 2), row_b = row_a + 8;
  const int cq = 2 * (wtid & 3);
  const int64_t lrow = static_cast<int64_t>(bh) * p.S;
  const float la = p.lse[lrow + row_a] * kLog2e, lb = p.lse[lrow + row_b] * kLog2e;
  const float da = p.dvec[lrow + row_a], db = p.dvec[lrow + row_b];

  float dq[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      const int64_t off = static_cast<int64_t>(j + 1) * kKvBlkDq * ldk;
      load_tile_sw128<kKvBlkDq, D, kThreads>(sK0 + (buf ^ 1) * kTileKV, kg + off, ldk, tid);
      load_tile_sw128<kKvBlkDq, D, kThreads>(sV0 + (buf ^ 1) * kTileKV, vg + off, ldk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const int kv0 = j * kKvBlkDq;
    if (kv0 <= wrow0 + 63) {  // warpgroup-uniform
      const uint32_t k_s = sK0 + buf * kTileKV, v_s = sV0 + buf * kTileKV;
      float s[kKvBlkDq / 2], dp[kKvBlkDq / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        mma_ss_kk<kKvBlkDq>(s, desc_kmajor<kQBlkDq>(sQ, 64 * wg, kk), desc_kmajor<kKvBlkDq>(k_s, 0, kk), kk > 0);
        mma_ss_kk<kKvBlkDq>(dp, desc_kmajor<kQBlkDq>(sdO, 64 * wg, kk), desc_kmajor<kKvBlkDq>(v_s, 0, kk), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(s);
      reg_fence(dp);
      const bool diag = kv0 + kKvBlkDq - 1 > wrow0;
      uint32_t sa[kKvBlkDq / 16][4];
#pragma unroll
      for (int kk = 0; kk < kKvBlkDq / 16; ++kk) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = 8 * kk + 2 * jj;
          const int c = kv0 + 8 * (i >> 2) + cq;
          const bool rb = jj & 1;
          float p0 = fast_exp2(fmaf(s[i], p.scale_log2, -(rb ? lb : la)));
          float p1 = fast_exp2(fmaf(s[i + 1], p.scale_log2, -(rb ? lb : la)));
          if (diag) {
            const int row = rb ? row_b : row_a;
            if (c > row) p0 = 0.f;
            if (c + 1 > row) p1 = 0.f;
          }
          const float dd = rb ? db : da;
          sa[kk][jj] = pack_bf16(p0 * (dp[i] - dd), p1 * (dp[i + 1] - dd));
        }
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKvBlkDq / 16; ++kk) mma_rs_mn<D>(dq, sa[kk], desc_mnmajor<kKvBlkDq>(k_s, kk));
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dq);
    }
    __syncthreads();
  }

  __nv_bfloat16* dqg = p.dq + (static_cast<int64_t>(b) * p.S) * ldq + h * D;
#pragma unroll
  for (int i = 0; i < D / 2; i += 4) {
    const int c = 2 * i + cq;
    *reinterpret_cast<uint32_t*>(dqg + row_a * ldq + c) = pack_bf16(dq[i] * p.scale, dq[i + 1] * p.scale);
    *reinterpret_cast<uint32_t*>(dqg + row_b * ldq + c) = pack_bf16(dq[i + 2] * p.scale, dq[i + 3] * p.scale);
  }
}

template <int D>
constexpr size_t dkdv_smem() {
  return static_cast<size_t>(2 * kKvBlk * D + 4 * kQBlk * D) * 2 + 2 * 2 * kQBlk * 4 + 1024;
}
template <int D>
constexpr size_t dq_smem() {
  return static_cast<size_t>(2 * kQBlkDq * D + 4 * kKvBlkDq * D) * 2 + 1024;
}

template <int D, int DQ_MINB>
void launch(const AttnShape& s, const Sm90BwdParams& bp, cudaStream_t st, int parts) {
  if (parts & 2) {
    auto kern = attn_bwd_dkdv_sm90_kernel<D>;
    MEGACPP_CUDA_CHECK(
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dkdv_smem<D>())));
    dim3 grid(static_cast<unsigned>(s.S / kKvBlk), static_cast<unsigned>(s.B * s.Hk));
    kern<<<grid, kThreads, dkdv_smem<D>(), st>>>(bp);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
  if (parts & 4) {
    auto kern = attn_bwd_dq_sm90_kernel<D, DQ_MINB>;
    MEGACPP_CUDA_CHECK(
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dq_smem<D>())));
    dim3 grid(static_cast<unsigned>(s.S / kQBlkDq), static_cast<unsigned>(s.B * s.H));
    kern<<<grid, kThreads, dq_smem<D>(), st>>>(bp);
    MEGACPP_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

// Configs: 0 (default); 1 = at D=64 the dQ kernel with registers capped for 2 CTAs/SM (D=128: as 0).
void native_bwd_sm90(const AttnShape& s, const AttnBwdArgs& a, const float* dvec, void* stream, int parts, int cfg) {
  const float sc = effective_scale(s, a.scale);
  const Sm90BwdParams bp{static_cast<const __nv_bfloat16*>(a.q),  static_cast<const __nv_bfloat16*>(a.k),
                         static_cast<const __nv_bfloat16*>(a.v),  static_cast<const __nv_bfloat16*>(a.dout),
                         a.lse, dvec, static_cast<__nv_bfloat16*>(a.dq), static_cast<__nv_bfloat16*>(a.dk),
                         static_cast<__nv_bfloat16*>(a.dv), static_cast<int>(s.S), static_cast<int>(s.H),
                         static_cast<int>(s.Hk), sc, sc * kLog2e};
  auto st = static_cast<cudaStream_t>(stream);
  if (s.D == 128) launch<128, 1>(s, bp, st, parts);
  else if (cfg == 1) launch<64, 2>(s, bp, st, parts);
  else launch<64, 1>(s, bp, st, parts);
}

std::string native_bwd_sm90_report(int64_t D) {
  nlohmann::json j = nlohmann::json::array();
  if (D == 128) {
    j.push_back(to_json(kernel_resources("attn_bwd_dkdv_sm90<128>", (const void*)attn_bwd_dkdv_sm90_kernel<128>,
                                         kThreads, static_cast<int>(dkdv_smem<128>()))));
    j.push_back(to_json(kernel_resources("attn_bwd_dq_sm90<128>", (const void*)attn_bwd_dq_sm90_kernel<128, 1>,
                                         kThreads, static_cast<int>(dq_smem<128>()))));
  } else {
    j.push_back(to_json(kernel_resources("attn_bwd_dkdv_sm90<64>", (const void*)attn_bwd_dkdv_sm90_kernel<64>,
                                         kThreads, static_cast<int>(dkdv_smem<64>()))));
    j.push_back(to_json(kernel_resources("attn_bwd_dq_sm90<64>", (const void*)attn_bwd_dq_sm90_kernel<64, 1>,
                                         kThreads, static_cast<int>(dq_smem<64>()))));
    j.push_back(to_json(kernel_resources("attn_bwd_dq_sm90<64,2 CTAs/SM>", (const void*)attn_bwd_dq_sm90_kernel<64, 2>,
                                         kThreads, static_cast<int>(dq_smem<64>()))));
  }
  return j.dump();
}

}  // namespace megacpp::attn
