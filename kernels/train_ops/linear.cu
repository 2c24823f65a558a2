// linear.cu — bf16 GEMMs of the training backend through cuBLASLt (cublasLtMatmul).
//
// Math: row-major D[m,n] = alpha·opA(A)·opB(B) + beta·D with bf16 A/B, fp32 compute (CUBLAS_COMPUTE_32F),
// D bf16 or fp32. Row-major D = A·B is column-major Dᵀ = Bᵀ·Aᵀ, so cuBLASLt gets (B, A) swapped with the
// row-major leading dimensions unchanged.
//   linear_fwd   : y[M,N]  = x[M,K]·W[N,K]ᵀ            (ta=0, tb=1, bf16 out)
//   linear_bwd_dx: dx[M,K] = dy[M,N]·W[N,K]            (ta=0, tb=0, bf16 out, beta 0 or 1)
//   linear_bwd_dw: dW[N,K] += dy[M,N]ᵀ·x[M,K]          (ta=1, tb=0, fp32 out, beta 1)
// Saved for backward: nothing beyond x (the caller keeps it). FLOPs 2·M·N·K per GEMM.
// Resources: cuBLASLt's kernels (HGMMA on sm_90); one 32 MiB workspace per process; plan cache keyed by
// the full GEMM description and the pointers' alignment (so a less aligned arena slice gets its own plan).
// A plan that needs workspace gets the process workspace on the first stream that used one, and a 32 MiB
// workspace of its own on any other stream (allocated on that stream's first such GEMM): several models
// in one process on concurrent streams (in-process ranks sharing a GPU) never share a workspace.
#include <cublasLt.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "kernels/train_ops/linear.hpp"
#include "kernels/train_ops/train_ops_device.cuh"

namespace megacpp::train_ops {
namespace {

#define TRAIN_OPS_LT_CHECK(call)                                                                          \
  do {                                                                                                    \
    const cublasStatus_t st_ = (call);                                                                    \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      throw std::runtime_error(std::string("cuBLASLt: " #call " failed with status ") + std::to_string(int(st_)) + \
                               " (" + cublasLtGetStatusString(st_) + ")");                                \
  } while (0)

constexpr std::size_t kWorkspaceBytes = 32u << 20;

int alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int>;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // cuBLASLt's (column-major) A, B, D
  cublasLtMatmulAlgo_t algo{};
  std::size_t ws = 0;
  std::string line;
};

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex mu;
  std::map<Key, Plan> plans;
  bool ws_claimed = false;
  cudaStream_t ws_stream = nullptr;            // the stream that uses `workspace`
  std::map<cudaStream_t, void*> stream_ws;     // the others' own workspaces
  std::vector<std::pair<Key, std::string>> order;
  LtContext() {
    TRAIN_OPS_LT_CHECK(cublasLtCreate(&handle));
    MEGACPP_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  }
  // Process-lifetime object: not destroyed (the CUDA context may be gone at static destruction).
};
LtContext& ctx() {
  static LtContext* c = new LtContext();
  return *c;
}

std::string algo_line(const GemmDesc& g, float beta, const cublasLtMatmulAlgo_t& algo, std::size_t ws) {
  int id = -1, tile = -1, stages = -1, splitk = -1, red = -1;
  std::size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red), &w);
  std::ostringstream os;
  os << "ta=" << g.ta << " tb=" << g.tb << " m=" << g.m << " n=" << g.n << " k=" << g.k
     << " out=" << (g.out == GemmOut::bf16 ? "bf16" : "f32") << " beta=" << beta << " -> algo " << id << " tile "
     << tile << " stages " << stages << " splitK " << splitk << " reduction " << red << " ws " << ws << " B";
  return os.str();
}

Plan make_plan(const GemmDesc& g, float beta, int al_a, int al_b, int al_d) {
  auto& c = ctx();
  Plan p;
  TRAIN_OPS_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt computes column-major D'[n,m] = op(A')·op(B') with A' = our B, B' = our A.
  const cublasOperation_t opa = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  TRAIN_OPS_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  TRAIN_OPS_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  // A' (our B): stored column-major as rows × cols = (tb ? k×n : n×k), ld = ldb.
  TRAIN_OPS_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, g.tb ? g.k : g.n, g.tb ? g.n : g.k, g.ldb));
  // B' (our A): (ta ? m×k : k×m), ld = lda.
  TRAIN_OPS_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, g.ta ? g.m : g.k, g.ta ? g.k : g.m, g.lda));
  TRAIN_OPS_LT_CHECK(cublasLtMatrixLayoutCreate(&p.d, g.out == GemmOut::bf16 ? CUDA_R_16BF : CUDA_R_32F, g.n, g.m, g.ldd));
  cublasLtMatmulPreference_t pref = nullptr;
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::size_t wsb = kWorkspaceBytes;
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
  const uint32_t aa = al_b, ab = al_a, ad = al_d;  // swapped like the operands
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof(ad)));
  TRAIN_OPS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof(ad)));
  cublasLtMatmulHeuristicResult_t res{};
  int n_res = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c.handle, p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &n_res);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || n_res == 0) {
    cublasLtMatmulDescDestroy(p.op);
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.d);
    throw std::runtime_error("cuBLASLt: no algorithm for GEMM " + algo_line(g, beta, res.algo, 0).substr(0, 80) +
                             " (status " + std::to_string(int(st)) + ", alignments A/B/D " + std::to_string(al_a) + "/" +
                             std::to_string(al_b) + "/" + std::to_string(al_d) + " B)");
  }
  p.algo = res.algo;
  p.ws = res.workspaceSize;
  p.line = algo_line(g, beta, p.algo, p.ws);
  return p;
}

}  // namespace

void gemm_rm(const GemmDesc& g, const bf16* A, const bf16* B, void* D, float alpha, float beta, cudaStream_t stream) {
  detail::require(g.m > 0 && g.n > 0 && g.k > 0, "gemm: m, n, k must be > 0");
  detail::require(g.lda >= (g.ta ? g.m : g.k) && g.ldb >= (g.tb ? g.k : g.n) && g.ldd >= g.n,
                  "gemm: leading dimension smaller than the row length");
  detail::require(A && B && D, "gemm: null pointer");
  const int al_a = alignment_of(A), al_b = alignment_of(B), al_d = alignment_of(D);
  detail::require(al_a >= 2 && al_b >= 2 && al_d >= (g.out == GemmOut::bf16 ? 2 : 4), "gemm: misaligned pointer");
  const Key key{g.ta, g.tb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, int(g.out), beta != 0.0f, al_a, al_b, al_d};
  auto& c = ctx();
  const Plan* p = nullptr;
  void* ws = c.workspace;
  {
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.plans.find(key);
    if (it == c.plans.end()) {
      it = c.plans.emplace(key, make_plan(g, beta, al_a, al_b, al_d)).first;
      c.order.emplace_back(key, it->second.line);
    }
    p = &it->second;
    if (p->ws > 0) {
      if (!c.ws_claimed) c.ws_claimed = true, c.ws_stream = stream;
      if (stream != c.ws_stream) {
        void*& w = c.stream_ws[stream];
        if (!w) MEGACPP_CUDA_CHECK(cudaMalloc(&w, kWorkspaceBytes));
        ws = w;
      }
    }
    // The launch stays under the lock: several host threads (in-process ranks) share the handle and the
    // cached descriptors, and a heuristic query of one never overlaps a matmul of another (an async
    // enqueue: the lock is held for microseconds).
    TRAIN_OPS_LT_CHECK(cublasLtMatmul(c.handle, p->op, &alpha, B, p->a, A, p->b, &beta, D, p->d, D, p->d, &p->algo,
                                      ws, kWorkspaceBytes, stream));
  }
}

std::vector<std::string> gemm_plans() {
  auto& c = ctx();
  std::lock_guard<std::mutex> lk(c.mu);
  std::vector<std::string> out;
  for (const auto& [k, line] : c.order) out.push_back(line);
  return out;
}

std::string gemm_plan_for(const GemmDesc& g, float beta) {
  auto& c = ctx();
  std::lock_guard<std::mutex> lk(c.mu);
  for (auto it = c.order.rbegin(); it != c.order.rend(); ++it) {
    const Key& k = it->first;
    if (std::get<0>(k) == g.ta && std::get<1>(k) == g.tb && std::get<2>(k) == g.m && std::get<3>(k) == g.n &&
        std::get<4>(k) == g.k && std::get<8>(k) == int(g.out) && std::get<9>(k) == (beta != 0.0f))
      return it->second;
  }
  return "";
}

void linear_fwd(const bf16* x, const bf16* W, bf16* y, int64_t M, int64_t K, int64_t N, cudaStream_t stream) {
  GemmDesc g{false, true, M, N, K, K, K, N, GemmOut::bf16};
  gemm_rm(g, x, W, y, 1.0f, 0.0f, stream);
}
void linear_bwd_dx(const bf16* dy, const bf16* W, bf16* dx, int64_t M, int64_t K, int64_t N, bool accumulate,
                   cudaStream_t stream) {
  GemmDesc g{false, false, M, K, N, N, K, K, GemmOut::bf16};
  gemm_rm(g, dy, W, dx, 1.0f, accumulate ? 1.0f : 0.0f, stream);
}
void linear_bwd_dw(const bf16* dy, const bf16* x, float* dW, int64_t M, int64_t K, int64_t N, cudaStream_t stream) {
  GemmDesc g{true, false, N, K, M, N, K, K, GemmOut::f32};
  gemm_rm(g, dy, x, dW, 1.0f, 1.0f, stream);
}

}  // namespace megacpp::train_ops
