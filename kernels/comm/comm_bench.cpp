// comm_bench.cpp — NCCL collectives over G GPUs from one process (see comm_bench.hpp). Host code only: the
// kernels are NCCL's. Resource budget: NCCL's own channels (no kernel of ours); 2·bytes of device memory per
// GPU for send and recv (allreduce, alltoall), bytes + bytes/G (allgather, reducescatter).
#include "kernels/comm/comm_bench.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/common/cuda_check.hpp"

namespace megacpp::comm {
namespace {

void nccl_ok(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) {
    const char* last = ncclGetLastError(nullptr);
    throw std::runtime_error(std::string("comm: ") + what + " failed: " + ncclGetErrorString(r) +
                             (last && *last ? std::string(" (") + last + ")" : std::string()));
  }
}
ncclDataType_t nt(DType t) { return t == DType::F32 ? ncclFloat32 : ncclBfloat16; }
ncclComm_t C(void* p) { return static_cast<ncclComm_t>(p); }
cudaStream_t S(void* p) { return static_cast<cudaStream_t>(p); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

CommGroup::CommGroup(int gpus) {
  int visible = 0;
  MEGACPP_CUDA_CHECK(cudaGetDeviceCount(&visible));
  if (gpus < 0) throw std::invalid_argument("comm: gpus=" + std::to_string(gpus) + " not supported (0 = all visible, or 1.." + std::to_string(visible) + ")");
  const int G = gpus == 0 ? visible : gpus;
  if (G < 1 || G > visible)
    throw std::invalid_argument("comm: gpus=" + std::to_string(G) + " not supported: " + std::to_string(visible) +
                                " GPU(s) visible (0 = all visible)");
  for (int g = 0; g < G; ++g) devs_.push_back(g);
  std::vector<ncclComm_t> cs(static_cast<std::size_t>(G));
  nccl_ok(ncclCommInitAll(cs.data(), G, devs_.data()), "ncclCommInitAll");
  for (int g = 0; g < G; ++g) {
    comms_.push_back(cs[static_cast<std::size_t>(g)]);
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    cudaStream_t s = nullptr;
    MEGACPP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    streams_.push_back(s);
  }
  send_.assign(static_cast<std::size_t>(G), nullptr);
  recv_.assign(static_cast<std::size_t>(G), nullptr);
}

CommGroup::~CommGroup() {
  free_buffers();
  for (std::size_t g = 0; g < devs_.size(); ++g) {
    cudaSetDevice(devs_[g]);
    if (g < streams_.size() && streams_[g]) cudaStreamDestroy(S(streams_[g]));
    if (g < comms_.size() && comms_[g]) ncclCommDestroy(C(comms_[g]));
  }
}

void CommGroup::free_buffers() {
  for (std::size_t g = 0; g < devs_.size(); ++g) {
    cudaSetDevice(devs_[g]);
    if (g < send_.size() && send_[g]) cudaFree(send_[g]), send_[g] = nullptr;
    if (g < recv_.size() && recv_[g]) cudaFree(recv_[g]), recv_[g] = nullptr;
  }
}

std::string CommGroup::device_names() const {
  std::string s;
  for (int d : devs_) {
    cudaDeviceProp p{};
    MEGACPP_CUDA_CHECK(cudaGetDeviceProperties(&p, d));
    s += (s.empty() ? "" : ", ") + std::to_string(d) + ":" + p.name;
  }
  return s;
}

std::string CommGroup::nccl_version() const {
  int v = 0;
  ncclGetVersion(&v);
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

void CommGroup::prepare(Coll c, int64_t bytes, DType t) {
  const Geometry geo = comm::geometry(c, bytes, size(), t);  // validates before touching memory
  free_buffers();
  coll_ = c, dt_ = t, geo_ = geo;
  const std::size_t es = dtype_size(t);
  for (int g = 0; g < size(); ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaMalloc(&send_[g], static_cast<std::size_t>(geo_.send_elems) * es));
    MEGACPP_CUDA_CHECK(cudaMalloc(&recv_[g], static_cast<std::size_t>(geo_.recv_elems) * es));
  }
}

void CommGroup::upload_send(int g, const std::vector<unsigned char>& h) {
  const std::size_t n = static_cast<std::size_t>(geo_.send_elems) * dtype_size(dt_);
  if (h.size() != n) throw std::invalid_argument("comm: upload_send size mismatch");
  MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
  MEGACPP_CUDA_CHECK(cudaMemcpy(send_[g], h.data(), n, cudaMemcpyHostToDevice));
}

void CommGroup::fill_send_tiled(int g, const std::vector<unsigned char>& tile) {
  const std::size_t n = static_cast<std::size_t>(geo_.send_elems) * dtype_size(dt_);
  if (tile.empty() || tile.size() % dtype_size(dt_) != 0) throw std::invalid_argument("comm: fill_send_tiled: bad tile");
  MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
  for (std::size_t off = 0; off < n; off += tile.size())
    MEGACPP_CUDA_CHECK(cudaMemcpy(static_cast<char*>(send_[g]) + off, tile.data(), std::min(tile.size(), n - off),
                                  cudaMemcpyHostToDevice));
}

std::vector<unsigned char> CommGroup::download_recv(int g) const {
  std::vector<unsigned char> h(static_cast<std::size_t>(geo_.recv_elems) * dtype_size(dt_));
  MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
  MEGACPP_CUDA_CHECK(cudaMemcpy(h.data(), recv_[g], h.size(), cudaMemcpyDeviceToHost));
  return h;
}

std::vector<unsigned char> CommGroup::download_send(int g) const {
  std::vector<unsigned char> h(static_cast<std::size_t>(geo_.send_elems) * dtype_size(dt_));
  MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
  MEGACPP_CUDA_CHECK(cudaMemcpy(h.data(), send_[g], h.size(), cudaMemcpyDeviceToHost));
  return h;
}

void CommGroup::poison_recv() {
  for (int g = 0; g < size(); ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaMemset(recv_[g], 0xFF, static_cast<std::size_t>(geo_.recv_elems) * dtype_size(dt_)));
  }
  for (int g = 0; g < size(); ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

void CommGroup::launch() {
  const int G = size();
  const ncclDataType_t t = nt(dt_);
  const std::size_t es = dtype_size(dt_);
  nccl_ok(ncclGroupStart(), "ncclGroupStart");
  for (int g = 0; g < G; ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    ncclComm_t cm = C(comms_[g]);
    cudaStream_t st = S(streams_[g]);
    switch (coll_) {
      case Coll::AllReduce:
        nccl_ok(ncclAllReduce(send_[g], recv_[g], geo_.send_elems, t, ncclSum, cm, st), "ncclAllReduce");
        break;
      case Coll::AllGather:
        nccl_ok(ncclAllGather(send_[g], recv_[g], geo_.send_elems, t, cm, st), "ncclAllGather");
        break;
      case Coll::ReduceScatter:
        nccl_ok(ncclReduceScatter(send_[g], recv_[g], geo_.recv_elems, t, ncclSum, cm, st), "ncclReduceScatter");
        break;
      case Coll::AllToAll: {
        const std::size_t B = static_cast<std::size_t>(geo_.block_elems);
        for (int j = 0; j < G; ++j) {
          nccl_ok(ncclSend(static_cast<char*>(send_[g]) + j * B * es, B, t, j, cm, st), "ncclSend");
          nccl_ok(ncclRecv(static_cast<char*>(recv_[g]) + j * B * es, B, t, j, cm, st), "ncclRecv");
        }
        break;
      }
    }
  }
  nccl_ok(ncclGroupEnd(), "ncclGroupEnd");
}

void CommGroup::run_once() {
  launch();
  for (int g = 0; g < size(); ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(S(streams_[g])));
  }
}

CommTiming CommGroup::time(int warmup, int iters) {
  const int G = size();
  for (int i = 0; i < warmup; ++i) launch();
  for (int g = 0; g < G; ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(S(streams_[g])));
  }
  std::vector<cudaEvent_t> e0(static_cast<std::size_t>(G)), e1(static_cast<std::size_t>(G));
  for (int g = 0; g < G; ++g) {
    MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
    MEGACPP_CUDA_CHECK(cudaEventCreate(&e0[g]));
    MEGACPP_CUDA_CHECK(cudaEventCreate(&e1[g]));
  }
  std::vector<double> worst;
  std::vector<std::vector<double>> per(static_cast<std::size_t>(G));
  try {
    for (int it = 0; it < iters; ++it) {
      for (int g = 0; g < G; ++g) {
        MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
        MEGACPP_CUDA_CHECK(cudaEventRecord(e0[g], S(streams_[g])));
      }
      launch();
      for (int g = 0; g < G; ++g) {
        MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
        MEGACPP_CUDA_CHECK(cudaEventRecord(e1[g], S(streams_[g])));
      }
      double w = 0;
      for (int g = 0; g < G; ++g) {
        MEGACPP_CUDA_CHECK(cudaSetDevice(devs_[g]));
        MEGACPP_CUDA_CHECK(cudaEventSynchronize(e1[g]));
        float ms = 0;
        MEGACPP_CUDA_CHECK(cudaEventElapsedTime(&ms, e0[g], e1[g]));
        per[g].push_back(ms);
        w = std::max(w, static_cast<double>(ms));
      }
      worst.push_back(w);
    }
  } catch (...) {
    for (int g = 0; g < G; ++g) cudaEventDestroy(e0[g]), cudaEventDestroy(e1[g]);
    throw;
  }
  for (int g = 0; g < G; ++g) {
    cudaSetDevice(devs_[g]);
    cudaEventDestroy(e0[g]);
    cudaEventDestroy(e1[g]);
  }
  CommTiming t;
  t.runs = iters;
  t.median_ms = median(worst);
  t.min_ms = worst.empty() ? 0 : *std::min_element(worst.begin(), worst.end());
  t.max_ms = worst.empty() ? 0 : *std::max_element(worst.begin(), worst.end());
  for (int g = 0; g < G; ++g) t.per_gpu_median_ms.push_back(median(per[g]));
  return t;
}

}  // namespace megacpp::comm
