// attention_cudnn.cpp — cuDNN backend-API composite SDPA graphs (see attention_cudnn.hpp).
// Uses only descriptors and attributes that exist in cuDNN 9.0–9.19 (built against 9.19 headers here,
// run against 9.14 on the GPU machine). The deprecated-but-working OPERATIONGRAPH_HANDLE /
// EXECUTION_PLAN_HANDLE attributes are the 9.14 way to bind a handle.
#include "kernels/attention/attention_cudnn.hpp"

#include <cuda_runtime.h>
#include <cudnn.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include "kernels/common/cuda_check.hpp"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace megacpp::attn {

nlohmann::json CudnnPlanInfo::to_json() const {
  return {{"ok", ok},
          {"direction", direction},
          {"error", error},
          {"engine_global_index", engine_global_index},
          {"knobs", knobs},
          {"notes", notes},
          {"engine_configs", engine_configs},
          {"config_index", config_index},
          {"refused", refused},
          {"cudnn_workspace_bytes", cudnn_workspace_bytes},
          {"total_workspace_bytes", total_workspace_bytes},
          {"build_ms", build_ms},
          {"cache_hit", cache_hit},
          {"cudnn_version", cudnn_version}};
}

size_t cudnn_runtime_version() { return cudnnGetVersion(); }

namespace {

struct CudnnError : std::runtime_error {
  cudnnStatus_t status;
  CudnnError(const std::string& what, cudnnStatus_t s) : std::runtime_error(what), status(s) {}
};

std::string last_error() {
  char buf[1024] = {0};
  cudnnGetLastErrorString(buf, sizeof buf);
  return buf;
}

void ck(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS) {
    const std::string le = last_error();
    throw CudnnError(std::string(what) + ": " + cudnnGetErrorString(st) + (le.empty() ? "" : " (" + le + ")"), st);
  }
}

// RAII descriptor.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t t) { ck(cudnnBackendCreateDescriptor(t, &d_), "create descriptor"); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc(Desc&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  cudnnBackendDescriptor_t get() const { return d_; }
  void set(cudnnBackendAttributeName_t n, cudnnBackendAttributeType_t t, int64_t count, const void* v,
           const char* what = "set attribute") {
    ck(cudnnBackendSetAttribute(d_, n, t, count, v), what);
  }
  void set_desc(cudnnBackendAttributeName_t n, const Desc& o) {
    cudnnBackendDescriptor_t x = o.get();
    set(n, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "set descriptor attribute");
  }
  void finalize(const char* what) { ck(cudnnBackendFinalize(d_), what); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims = std::vector<int64_t>;

// The graph under construction: owns every descriptor.
struct Graph {
  std::vector<std::unique_ptr<Desc>> tensors, ops, aux;
  int64_t next_virtual_uid = 1000;

  Desc& tensor(int64_t uid, cudnnDataType_t dt, const Dims& dims, const Dims& strides, bool is_virtual,
               bool by_value = false) {
    auto d = std::make_unique<Desc>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    d->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    d->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(dims.size()), dims.data());
    d->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(strides.size()), strides.data());
    d->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    int64_t align = 16;
    d->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    bool v = is_virtual;
    d->set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v);
    if (by_value) {
      bool bv = true;
      d->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv);
    }
    d->finalize("finalize tensor");
    tensors.push_back(std::move(d));
    return *tensors.back();
  }
  Desc& virt(cudnnDataType_t dt, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual_uid++, dt, dims, strides, true);
  }
  Desc& scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  void matmul(const Desc& a, const Desc& b, const Desc& c) {
    auto md = std::make_unique<Desc>(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t ct = CUDNN_DATA_FLOAT;
    md->set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ct);
    md->finalize("finalize matmul desc");
    auto op = std::make_unique<Desc>(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op->set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    op->set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    op->set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    op->set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, *md);
    op->finalize("finalize matmul op");
    aux.push_back(std::move(md));
    ops.push_back(std::move(op));
  }
  // y = mode(x [, b [, t]]); axis >= 0 only for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc* t, const Desc& y,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    auto pd = std::make_unique<Desc>(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pd->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    pd->set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) pd->set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    pd->finalize("finalize pointwise desc");
    auto op = std::make_unique<Desc>(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, *pd);
    op->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) op->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    if (t) op->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t);
    op->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    op->finalize("finalize pointwise op");
    aux.push_back(std::move(pd));
    ops.push_back(std::move(op));
  }
  void reduction(cudnnReduceTensorOp_t red, const Desc& x, const Desc& y) {
    auto rd = std::make_unique<Desc>(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    rd->set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &red);
    cudnnDataType_t ct = CUDNN_DATA_FLOAT;
    rd->set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ct);
    rd->finalize("finalize reduction desc");
    auto op = std::make_unique<Desc>(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op->set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    op->set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    op->set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, *rd);
    op->finalize("finalize reduction op");
    aux.push_back(std::move(rd));
    ops.push_back(std::move(op));
  }
  void reshape(const Desc& x, const Desc& y) {
    auto op = std::make_unique<Desc>(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op->set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    op->set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    op->finalize("finalize reshape op");
    ops.push_back(std::move(op));
  }
  // Causal mask subgraph: keep (row >= col) ? x : -inf.
  const Desc& causal_mask(const Desc& x, const Desc& neg_inf, const Dims& sd, const Dims& ss) {
    Desc& row = virt(CUDNN_DATA_INT32, sd, ss);
    Desc& col = virt(CUDNN_DATA_INT32, sd, ss);
    Desc& keep = virt(CUDNN_DATA_BOOLEAN, sd, ss);
    Desc& y = virt(CUDNN_DATA_FLOAT, sd, ss);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, row, CUDNN_DATA_FLOAT, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, col, CUDNN_DATA_FLOAT, 3);
    pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, &neg_inf, &keep, y);
    return y;
  }
};

// Unique ids of the non-virtual tensors.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kDO, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum, kOne
};

struct Plan {
  CudnnPlanInfo info;
  std::unique_ptr<Desc> plan;
  size_t dq_accum_offset = 0, softmax_sum_offset = 0, cudnn_ws_offset = 0;
};

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

cudnnHandle_t handle() {
  // One handle per thread (plans are bound to it); the device is the current one at first use.
  thread_local struct H {
    cudnnHandle_t h = nullptr;
    H() { ck(cudnnCreate(&h), "cudnnCreate"); }
    ~H() {
      if (h) cudnnDestroy(h);
    }
  } hh;
  return hh.h;
}

struct Layout {
  int64_t B, H, Hk, S, D;
  Dims q_dims() const { return {B, H, S, D}; }
  Dims q_str() const { return {S * H * D, D, H * D, 1}; }
  Dims kt_dims() const { return {B, Hk, D, S}; }
  Dims kt_str() const { return {S * Hk * D, D, 1, Hk * D}; }
  Dims kv_dims() const { return {B, Hk, S, D}; }
  Dims kv_str() const { return {S * Hk * D, D, Hk * D, 1}; }
  Dims s_dims() const { return {B, H, S, S}; }
  Dims s_str() const { return {H * S * S, S * S, S, 1}; }
  Dims st_dims() const { return {B, H, S, S}; }            // transposed score view [b,h,skv,sq]
  Dims st_str() const { return {H * S * S, S * S, 1, S}; }
  Dims r_dims() const { return {B, H, S, 1}; }
  Dims r_str() const { return {H * S, S, 1, 1}; }
};

void build_fwd(Graph& g, const Layout& L) {
  Desc& Q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& Kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, L.kt_dims(), L.kt_str(), false);
  Desc& V = g.tensor(kV, CUDNN_DATA_BFLOAT16, L.kv_dims(), L.kv_str(), false);
  Desc& O = g.tensor(kO, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& Stats = g.tensor(kStats, CUDNN_DATA_FLOAT, L.r_dims(), L.r_str(), false);
  Desc& scale = g.scalar(kScale);
  Desc& neg_inf = g.scalar(kNegInf);
  const Dims sd = L.s_dims(), ss = L.s_str(), rd = L.r_dims(), rs = L.r_str();

  Desc& s0 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(Q, Kt, s0);
  Desc& s1 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, s0, &scale, nullptr, s1);
  const Desc& s2 = g.causal_mask(s1, neg_inf, sd, ss);
  Desc& m = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s2, m);
  Desc& s3 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, s2, &m, nullptr, s3);
  Desc& e = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, nullptr, e);
  Desc& l = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, l);
  Desc& lnl = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.pointwise(CUDNN_POINTWISE_LOG, l, nullptr, nullptr, lnl);
  g.pointwise(CUDNN_POINTWISE_ADD, m, &lnl, nullptr, Stats);
  Desc& p = g.virt(CUDNN_DATA_BFLOAT16, sd, ss);  // bmm2's A operand must be the I/O type
  g.pointwise(CUDNN_POINTWISE_DIV, e, &l, nullptr, p);
  g.matmul(p, V, O);
}

void build_bwd(Graph& g, const Layout& L) {
  Desc& Q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& Kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, L.kt_dims(), L.kt_str(), false);
  Desc& Vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, L.kt_dims(), L.kt_str(), false);
  Desc& O = g.tensor(kO, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& dO = g.tensor(kDO, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& Stats = g.tensor(kStats, CUDNN_DATA_FLOAT, L.r_dims(), L.r_str(), false);
  Desc& dQ = g.tensor(kDQ, CUDNN_DATA_BFLOAT16, L.q_dims(), L.q_str(), false);
  Desc& dK = g.tensor(kDK, CUDNN_DATA_BFLOAT16, L.kv_dims(), L.kv_str(), false);
  Desc& dV = g.tensor(kDV, CUDNN_DATA_BFLOAT16, L.kv_dims(), L.kv_str(), false);
  Desc& scale = g.scalar(kScale);
  Desc& neg_inf = g.scalar(kNegInf);
  Desc& one = g.scalar(kOne);
  const Dims sd = L.s_dims(), ss = L.s_str(), rd = L.r_dims(), rs = L.r_str();
  const bool gqa = L.H != L.Hk;

  // softmax_sum = rowsum(dO * O) * 1
  Desc& t1 = g.virt(CUDNN_DATA_FLOAT, L.q_dims(), {L.H * L.S * L.D, L.S * L.D, L.H * L.D, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, dO, &O, nullptr, t1);
  Desc& t2 = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, t1, t2);
  Desc& ssum = g.tensor(kSoftmaxSum, CUDNN_DATA_FLOAT, rd, rs, false);
  g.pointwise(CUDNN_POINTWISE_MUL, t2, &one, nullptr, ssum);

  // P = exp(mask(S * scale - Stats))
  Desc& s0 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(Q, Kt, s0);
  Desc& s1 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, s0, &scale, nullptr, s1);
  Desc& s2 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, s1, &Stats, nullptr, s2);
  const Desc& s3 = g.causal_mask(s2, neg_inf, sd, ss);
  Desc& P = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, nullptr, P);

  // dV = P^T dO
  Desc& Pt = g.virt(CUDNN_DATA_BFLOAT16, L.st_dims(), L.st_str());
  g.reshape(P, Pt);
  if (!gqa) {
    g.matmul(Pt, dO, dV);
  } else {
    Desc& dVf = g.virt(CUDNN_DATA_BFLOAT16, {L.B, L.H, L.S, L.D}, {L.H * L.S * L.D, L.S * L.D, L.D, 1});
    g.matmul(Pt, dO, dVf);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dVf, dV);
  }

  // dS = P * (dO V^T - softmax_sum) * scale
  Desc& dP = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(dO, Vt, dP);
  Desc& d1 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, dP, &ssum, nullptr, d1);
  Desc& d2 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, d1, &P, nullptr, d2);
  Desc& dS = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, d2, &scale, nullptr, dS);

  // dK = dS^T Q
  Desc& dSt = g.virt(CUDNN_DATA_BFLOAT16, L.st_dims(), L.st_str());
  g.reshape(dS, dSt);
  if (!gqa) {
    g.matmul(dSt, Q, dK);
  } else {
    Desc& dKf = g.virt(CUDNN_DATA_BFLOAT16, {L.B, L.H, L.S, L.D}, {L.H * L.S * L.D, L.S * L.D, L.D, 1});
    g.matmul(dSt, Q, dKf);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dKf, dK);
  }

  // dQ = identity(dQ_accum = dS K)
  Desc& Kn = g.virt(CUDNN_DATA_FLOAT, L.kv_dims(), L.kv_str());
  g.reshape(Kt, Kn);
  Desc& dQa = g.tensor(kDQAccum, CUDNN_DATA_FLOAT, L.q_dims(), {L.H * L.S * L.D, L.S * L.D, L.D, 1}, false);
  g.matmul(dS, Kn, dQa);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dQa, nullptr, nullptr, dQ);
}

std::string status_name(cudnnStatus_t st) { return cudnnGetErrorString(st); }

// Graph -> heuristics (mode A) -> first config that finalizes. Fills info; returns the plan descriptor.
std::unique_ptr<Desc> make_plan(Graph& g, CudnnPlanInfo& info) {
  cudnnHandle_t h = handle();
  Desc opg(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  opg.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
  std::vector<cudnnBackendDescriptor_t> ops;
  for (auto& o : g.ops) ops.push_back(o->get());
  opg.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()), ops.data());
  opg.finalize("finalize operation graph");

  Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, opg);
  cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  heur.finalize("finalize heuristics");
  int64_t n = 0;
  ck(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                              nullptr),
     "heuristics result count");
  info.engine_configs = static_cast<int>(n);
  if (n <= 0) throw CudnnError("heuristics mode A returned 0 engine configs (graph not matched by any engine)",
                               CUDNN_STATUS_NOT_SUPPORTED);
  std::vector<std::unique_ptr<Desc>> cfgs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < n; ++i) {
    cfgs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw.push_back(cfgs.back()->get());
  }
  int64_t got = 0;
  ck(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got,
                              raw.data()),
     "heuristics results");
  for (int64_t i = 0; i < got; ++i) {
    auto plan = std::make_unique<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    plan->set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *cfgs[static_cast<size_t>(i)]);
    const cudnnStatus_t st = cudnnBackendFinalize(plan->get());
    if (st != CUDNN_STATUS_SUCCESS) {
      const std::string le = last_error();
      info.refused.push_back("cfg#" + std::to_string(i) + ": " + status_name(st) + (le.empty() ? "" : " " + le));
      continue;
    }
    info.config_index = static_cast<int>(i);
    int64_t ws = 0, cnt = 0;
    ck(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, &ws),
       "plan workspace size");
    info.cudnn_workspace_bytes = static_cast<size_t>(ws);
    // Introspection: engine global index, knobs, notes.
    Desc eng(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    cudnnBackendDescriptor_t e = eng.get();
    if (cudnnBackendGetAttribute(raw[static_cast<size_t>(i)], CUDNN_ATTR_ENGINECFG_ENGINE,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cnt, &e) == CUDNN_STATUS_SUCCESS) {
      int64_t gi = -1;
      if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &cnt, &gi) ==
          CUDNN_STATUS_SUCCESS)
        info.engine_global_index = gi;
      cudnnBackendNumericalNote_t nn[16];
      int64_t nnc = 0;
      if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, 16, &nnc, nn) ==
          CUDNN_STATUS_SUCCESS)
        for (int64_t k = 0; k < nnc; ++k) {
          switch (nn[k]) {
            case CUDNN_NUMERICAL_NOTE_TENSOR_CORE: info.notes.push_back("TENSOR_CORE"); break;
            case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: info.notes.push_back("DOWN_CONVERT_INPUTS"); break;
            case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: info.notes.push_back("REDUCED_PRECISION_REDUCTION"); break;
            case CUDNN_NUMERICAL_NOTE_FFT: info.notes.push_back("FFT"); break;
            case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: info.notes.push_back("NONDETERMINISTIC"); break;
            default: info.notes.push_back("numerical_note_" + std::to_string(static_cast<int>(nn[k])));
          }
        }
      cudnnBackendBehaviorNote_t bn[16];
      int64_t bnc = 0;
      if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, 16, &bnc, bn) ==
          CUDNN_STATUS_SUCCESS)
        for (int64_t k = 0; k < bnc; ++k)
          info.notes.push_back(bn[k] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION ? std::string("RUNTIME_COMPILATION")
                               : static_cast<int>(bn[k]) == 3  // SUPPORTS_CUDA_GRAPH_NATIVE_API (9.5+)
                                   ? std::string("SUPPORTS_CUDA_GRAPH_NATIVE_API")
                                   : "behavior_note_" + std::to_string(static_cast<int>(bn[k])));
    }
    std::vector<std::unique_ptr<Desc>> kc;
    std::vector<cudnnBackendDescriptor_t> kraw;
    for (int k = 0; k < 32; ++k) {
      kc.push_back(std::make_unique<Desc>(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
      kraw.push_back(kc.back()->get());
    }
    int64_t nk = 0;
    if (cudnnBackendGetAttribute(raw[static_cast<size_t>(i)], CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 32, &nk, kraw.data()) == CUDNN_STATUS_SUCCESS) {
      for (int64_t k = 0; k < nk; ++k) {
        cudnnBackendKnobType_t kt{};
        int64_t kv = 0;
        cudnnBackendGetAttribute(kraw[static_cast<size_t>(k)], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                                 CUDNN_TYPE_KNOB_TYPE, 1, &cnt, &kt);
        cudnnBackendGetAttribute(kraw[static_cast<size_t>(k)], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1,
                                 &cnt, &kv);
        if (!info.knobs.empty()) info.knobs += ",";
        // "k<cudnnBackendKnobType_t>=<value>"; 24 is CUDNN_KNOB_TYPE_KERNEL_CFG.
        info.knobs += (static_cast<int>(kt) == 24 ? std::string("KERNEL_CFG") : "k" + std::to_string(static_cast<int>(kt))) +
                      "=" + std::to_string(kv);
      }
    }
    return plan;
  }
  std::string all;
  for (auto& r : info.refused) all += (all.empty() ? "" : "; ") + r;
  throw CudnnError("no engine config of " + std::to_string(got) + " finalized: " + all, CUDNN_STATUS_NOT_SUPPORTED);
}

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int>;  // dir,B,H,Hk,S,D,device
std::mutex g_mu;
std::map<Key, std::shared_ptr<Plan>>& cache() {
  static std::map<Key, std::shared_ptr<Plan>> c;
  return c;
}

std::shared_ptr<Plan> get_plan(const AttnShape& s, bool bwd) {
  int dev = 0;
  MEGACPP_CUDA_CHECK(cudaGetDevice(&dev));
  const Key key{bwd ? 1 : 0, s.B, s.H, s.Hk, s.S, s.D, dev};
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = cache().find(key);
  if (it != cache().end()) return it->second;
  auto p = std::make_shared<Plan>();
  p->info.direction = bwd ? "bwd" : "fwd";
  p->info.cudnn_version = cudnnGetVersion();
  const std::string pre = cudnn_static_unsupported_reason(s);
  if (!pre.empty()) {
    p->info.error = pre;
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      Graph g;
      const Layout L{s.B, s.H, s.Hk, s.S, s.D};
      if (bwd) build_bwd(g, L);
      else build_fwd(g, L);
      p->plan = make_plan(g, p->info);
      p->info.ok = true;
    } catch (const CudnnError& e) {
      p->info.error = e.what();
    }
    p->info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  if (p->info.ok) {
    if (bwd) {
      const size_t dqa = static_cast<size_t>(s.B * s.H * s.S * s.D) * 4;
      const size_t ssum = static_cast<size_t>(s.B * s.H * s.S) * 4;
      p->dq_accum_offset = 0;
      p->softmax_sum_offset = align_up(dqa);
      p->cudnn_ws_offset = p->softmax_sum_offset + align_up(ssum);
    }
    p->info.total_workspace_bytes = p->cudnn_ws_offset + p->info.cudnn_workspace_bytes;
  }
  cache()[key] = p;
  return p;
}

CudnnPlanInfo info_of(const std::shared_ptr<Plan>& p, bool first) {
  CudnnPlanInfo i = p->info;
  i.cache_hit = !first;
  return i;
}

void execute(const Plan& p, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs, void* ws,
             size_t ws_bytes, void* stream) {
  if (!p.info.ok) throw std::runtime_error("cudnn attention: no plan: " + p.info.error);
  if (ws_bytes < p.info.total_workspace_bytes || (p.info.total_workspace_bytes && !ws))
    throw std::invalid_argument("cudnn attention: workspace of " + std::to_string(ws_bytes) + " bytes < needed " +
                                std::to_string(p.info.total_workspace_bytes));
  cudnnHandle_t h = handle();
  ck(cudnnSetStream(h, static_cast<cudaStream_t>(stream)), "cudnnSetStream");
  Desc vp(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  vp.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data());
  vp.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()), ptrs.data());
  void* cws = p.info.cudnn_workspace_bytes ? static_cast<char*>(ws) + p.cudnn_ws_offset : nullptr;
  vp.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &cws);
  vp.finalize("finalize variant pack");
  ck(cudnnBackendExecute(h, p.plan->get(), vp.get()), "cudnnBackendExecute");
}

}  // namespace

std::string cudnn_static_unsupported_reason(const AttnShape& s) {
  if (const char* off = std::getenv("MEGACPP_ATTN_DISABLE_CUDNN"); off && std::string(off) == "1")
    return "cudnn: disabled by MEGACPP_ATTN_DISABLE_CUDNN=1";
  if (s.D % 8 != 0 || s.D > 256)
    return "cudnn: head_dim=" + std::to_string(s.D) + " not supported (multiple of 8, <= 256)";
  if (s.H % s.Hk != 0) return "cudnn: heads % kv_heads != 0";
  if (s.S % 128 != 0)
    return "cudnn: S=" + std::to_string(s.S) +
           " not a multiple of 128 (cuDNN <= 9.15 backward needs a padding-mask workaround there; not built)";
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return "cudnn: no CUDA device";
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (major < 8) return "cudnn: SDPA needs sm_80 or newer (device is sm_" + std::to_string(major) + "x)";
  const size_t v = cudnnGetVersion();
  if (v == 91000 || v == 91001) return "cudnn: 9.10.0/9.10.1 have known bf16 SDPA bugs";
  return "";
}

CudnnPlanInfo cudnn_fwd_plan(const AttnShape& s) {
  bool first = false;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    int dev = 0;
    cudaGetDevice(&dev);
    first = cache().find(Key{0, s.B, s.H, s.Hk, s.S, s.D, dev}) == cache().end();
  }
  return info_of(get_plan(s, false), first);
}
CudnnPlanInfo cudnn_bwd_plan(const AttnShape& s) {
  bool first = false;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    int dev = 0;
    cudaGetDevice(&dev);
    first = cache().find(Key{1, s.B, s.H, s.Hk, s.S, s.D, dev}) == cache().end();
  }
  return info_of(get_plan(s, true), first);
}

void cudnn_fwd(const AttnShape& s, const AttnFwdArgs& a, void* ws, size_t ws_bytes, void* stream) {
  auto p = get_plan(s, false);
  float scale = effective_scale(s, a.scale);
  float neg_inf = -std::numeric_limits<float>::infinity();
  execute(*p, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
          {const_cast<void*>(a.q), const_cast<void*>(a.k), const_cast<void*>(a.v), a.o, a.lse, &scale, &neg_inf}, ws,
          ws_bytes, stream);
}

void cudnn_bwd(const AttnShape& s, const AttnBwdArgs& a, void* ws, size_t ws_bytes, void* stream) {
  auto p = get_plan(s, true);
  float scale = effective_scale(s, a.scale);
  float neg_inf = -std::numeric_limits<float>::infinity();
  float one = 1.0f;
  if (!p->info.ok) throw std::runtime_error("cudnn attention: no plan: " + p->info.error);
  char* w = static_cast<char*>(ws);
  execute(*p, {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum, kScale, kNegInf, kOne},
          {const_cast<void*>(a.q), const_cast<void*>(a.k), const_cast<void*>(a.v), const_cast<void*>(a.o),
           const_cast<void*>(a.dout), const_cast<float*>(a.lse), a.dq, a.dk, a.dv, w + p->softmax_sum_offset,
           w + p->dq_accum_offset, &scale, &neg_inf, &one},
          ws, ws_bytes, stream);
}

void cudnn_clear_plan_cache() {
  std::lock_guard<std::mutex> lk(g_mu);
  cache().clear();
}

}  // namespace megacpp::attn
