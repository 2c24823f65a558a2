// ops_comm.cpp — ops `allreduce`, `allgather`, `reducescatter`, `alltoall`: NCCL collectives over G GPUs of
// this process (ncclCommInitAll, grouped calls, one stream per GPU; all-to-all = grouped send/recv).
//   megacpp bench --kernel allreduce --bytes N [--gpus G] [--flag dtype=bf16|f32]
// Shape: `bytes` = nccl-tests' message size per rank (comm_ref.hpp: allreduce the buffer, allgather the
// output, reducescatter the input, alltoall the send buffer), `gpus` (0 = every visible GPU).
// Flag `dtype` (bf16 | f32): the bench default is bf16; check() runs both when the flag is absent.
// check(): every GPU's send buffer gets fresh uniform(−1, 1) values from the host RNG (never zeros; rounded to
// bf16 for bf16, so the reference sees exactly what NCCL sees), receive buffers are poisoned (0xFF = NaN),
// one collective runs, and every GPU's output is compared with the float64 reference (sums in rank order);
// gates in comm_ref.hpp (exact for data movement and G = 1, (G−1)·u·2 relative for reductions); the send
// buffers must come back untouched (out of place).
// bench(): warm-up, then ≥ 20 timed runs with a CUDA event pair on every GPU's stream; the run's time is the
// slowest GPU's; median reported with algBw = bytes/time and busBw = algBw·factor (nccl-tests: 2(G−1)/G for
// allreduce, (G−1)/G otherwise), compared with NVLink 4's 450 GB/s per direction per GPU (H100/H200 SXM) when
// G > 1. G = 1 measures only NCCL's local copy: no link is crossed and busBw is 0 by convention.
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "kernels/comm/comm_ref.hpp"
#include "kernels/common/host_rng.hpp"
#include "kernels/registry/op_registry.hpp"

#if MEGACPP_WITH_CUDA
#include "kernels/comm/comm_bench.hpp"
#endif

namespace megacpp {
namespace {

using comm::Coll;
using comm::DType;

constexpr double kNvlink4GBps = 450.0;  // H100/H200 SXM: 18 NVLink 4 links × 25 GB/s, per direction per GPU

int64_t shape_get(const OpShape& s, const char* k, int64_t d) {
  auto it = s.find(k);
  return it == s.end() ? d : it->second;
}

#if MEGACPP_WITH_CUDA
// Host values (doubles already representable in the type) → raw element bytes, and back.
std::vector<unsigned char> to_bytes(const std::vector<double>& v, DType t) {
  std::vector<unsigned char> b(v.size() * comm::dtype_size(t));
  if (t == DType::F32) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      const float f = static_cast<float>(v[i]);
      std::memcpy(b.data() + 4 * i, &f, 4);
    }
  } else {
    for (std::size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = float_to_bf16_bits(static_cast<float>(v[i]));
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
  }
  return b;
}
std::vector<double> from_bytes(const std::vector<unsigned char>& b, DType t) {
  const std::size_t n = b.size() / comm::dtype_size(t);
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (t == DType::F32) {
      float f;
      std::memcpy(&f, b.data() + 4 * i, 4);
      v[i] = f;
    } else {
      uint16_t h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      v[i] = bf16_bits_to_float(h);
    }
  }
  return v;
}

// Fresh random inputs for every GPU: uniform(−1, 1), exactly representable in the wire type.
std::vector<double> random_input(int64_t n, uint64_t seed, int g, DType t) {
  std::vector<double> v = random_uniform(static_cast<std::size_t>(n), seed * 1000003ull + 7919ull * (g + 1) + (t == DType::F32 ? 1 : 2), -1.0, 1.0);
  if (t == DType::BF16) round_vector_to_bf16(v);
  else
    for (auto& x : v) x = static_cast<float>(x);
  return v;
}

CheckResult check_coll(Coll c, const OpShape& shape, uint64_t seed, const OpOptions& opt) {
  const int64_t bytes = shape_get(shape, "bytes", 13440);
  const int gpus = static_cast<int>(shape_get(shape, "gpus", 0));
  const std::string df = opt.flag("dtype");
  const std::vector<DType> dts = df.empty() ? std::vector<DType>{DType::F32, DType::BF16} : std::vector<DType>{comm::parse_dtype(df)};
  comm::CommGroup grp(gpus);
  const int G = grp.size();
  CheckResult res;
  std::ostringstream note;
  note << comm::coll_name(c) << " bytes=" << bytes << " on " << G << " GPU(s) [" << grp.device_names() << "], NCCL "
       << grp.nccl_version() << (G == 1 ? " (one GPU: a local copy, no link)" : "") << "; ";
  for (DType t : dts) {
    grp.prepare(c, bytes, t);
    const comm::Geometry& geo = grp.geometry();
    std::vector<std::vector<double>> in(static_cast<std::size_t>(G));
    for (int g = 0; g < G; ++g) {
      in[g] = random_input(geo.send_elems, seed, g, t);
      grp.upload_send(g, to_bytes(in[g], t));
    }
    grp.poison_recv();
    grp.run_once();
    const auto ref = comm::reference(c, geo, in);
    const double tol = comm::tolerance(c, G, t);
    std::vector<double> sent_now, sent_then;
    for (int g = 0; g < G; ++g) {
      const std::vector<double> out = from_bytes(grp.download_recv(g), t);
      res.tensors.push_back(compare_tensors(std::string(comm::dtype_name(t)) + ".gpu" + std::to_string(g) + ".recv", out, ref[g], tol));
      const std::vector<double> s = from_bytes(grp.download_send(g), t);
      sent_now.insert(sent_now.end(), s.begin(), s.end());
      sent_then.insert(sent_then.end(), in[g].begin(), in[g].end());
    }
    res.tensors.push_back(compare_tensors(std::string(comm::dtype_name(t)) + ".send_intact", sent_now, sent_then, 1e-12));
    note << comm::dtype_name(t) << ": send " << geo.send_elems << " recv " << geo.recv_elems << " elems/GPU, gate " << tol << "; ";
  }
  res.note = note.str();
  return res;
}

BenchResult bench_coll(Coll c, const OpShape& shape, const OpOptions& opt) {
  const int64_t bytes = shape_get(shape, "bytes", 64 << 20);
  const int gpus = static_cast<int>(shape_get(shape, "gpus", 0));
  const DType t = comm::parse_dtype(opt.flag("dtype", "bf16"));
  comm::CommGroup grp(gpus);
  const int G = grp.size();
  grp.prepare(c, bytes, t);
  const comm::Geometry& geo = grp.geometry();
  // Random values (never zeros, no NaN): a 1 MiB host-RNG tile per GPU, repeated over the buffer.
  for (int g = 0; g < G; ++g) {
    const int64_t tile = std::min<int64_t>(geo.send_elems, (1 << 20) / static_cast<int64_t>(comm::dtype_size(t)));
    grp.fill_send_tiled(g, to_bytes(random_input(tile, 20261123, g, t), t));
  }
  const int iters = std::max(20, opt.iters), warm = std::max(5, opt.warmup);
  const comm::CommTiming tm = grp.time(warm, iters);
  const double s = tm.median_ms * 1e-3;
  const double algbw = s > 0 ? static_cast<double>(bytes) / s * 1e-9 : 0;
  const double factor = comm::bus_factor(c, G);
  const double busbw = algbw * factor;
  const std::string names = grp.device_names();
  const bool nvlink4 = G > 1 && (names.find("H200") != std::string::npos ||
                                 (names.find("H100") != std::string::npos && names.find("PCIe") == std::string::npos));
  BenchResult r;
  r.median_ms = tm.median_ms;
  r.min_ms = tm.min_ms;
  r.max_ms = tm.max_ms;
  r.runs = tm.runs;
  r.bytes = static_cast<double>(bytes);  // so the printed GB/s is the algorithm bandwidth
  r.extra = {{"collective", comm::coll_name(c)},
             {"dtype", comm::dtype_name(t)},
             {"gpus", G},
             {"devices", names},
             {"nccl", grp.nccl_version()},
             {"bytes", bytes},
             {"send_elems_per_gpu", geo.send_elems},
             {"recv_elems_per_gpu", geo.recv_elems},
             {"algbw_GBps", algbw},
             {"bus_factor", factor},
             {"busbw_GBps", busbw},
             {"per_gpu_median_ms", tm.per_gpu_median_ms},
             {"link_nominal_GBps", nvlink4 ? nlohmann::json(kNvlink4GBps) : nlohmann::json(nullptr)},
             {"busbw_pct_of_link", nvlink4 ? nlohmann::json(100.0 * busbw / kNvlink4GBps) : nlohmann::json(nullptr)}};
  std::ostringstream note;
  note << comm::coll_name(c) << " " << comm::dtype_name(t) << " " << bytes << " B on " << G << " GPU(s), NCCL " << grp.nccl_version()
       << ": algBw " << algbw << " GB/s, busBw " << busbw << " GB/s (factor " << factor << ", nccl-tests convention); ";
  if (G == 1)
    note << "ONE GPU: NCCL only copies within the GPU's memory, no link is crossed, busBw is 0 by convention and the "
            "algBw above is a local-copy rate, not a link measurement";
  else if (nvlink4)
    note << "busBw is " << 100.0 * busbw / kNvlink4GBps << "% of NVLink 4's nominal 450 GB/s per direction per GPU";
  else
    note << "no nominal link rate known for these GPUs";
  note << "; the printed GB/s is algBw and its % refers to HBM, not the link";
  r.note = note.str();
  return r;
}
#endif

void add_coll(OpRegistry& reg, Coll c, const std::string& summary) {
  OpDef op;
  op.name = comm::coll_name(c);
  op.family = "comm";
  op.summary = summary;
  op.needs_gpu = true;
  op.params = {
      {"bytes", 64 << 20, "message size per rank in bytes (nccl-tests' size; multiple of dtype size × gpus)"},
      {"gpus", 0, "GPUs driven by this process (0: every visible GPU)"},
  };
  op.flags = {"dtype"};
  op.test_shapes = [] {
    // 13440 = 4·8·420 and 1008000 = 4·840·300: whole f32/bf16 blocks for any G in 1..8.
    return std::vector<OpShape>{{{"bytes", 13440}, {"gpus", 0}}, {{"bytes", 1008000}, {"gpus", 0}}};
  };
#if MEGACPP_WITH_CUDA
  op.check = [c](const OpShape& s, uint64_t seed, const OpOptions& o) { return check_coll(c, s, seed, o); };
  op.bench = [c](const OpShape& s, const OpOptions& o) { return bench_coll(c, s, o); };
#else
  op.check = [c](const OpShape& s, uint64_t, const OpOptions& o) {
    // Validate what can be validated without a GPU (bad dtype/bytes still name the limit), compare nothing.
    const DType t = comm::parse_dtype(o.flag("dtype", "bf16"));
    const int g = static_cast<int>(shape_get(s, "gpus", 0));
    comm::geometry(c, shape_get(s, "bytes", 13440), g > 0 ? g : 1, t);
    CheckResult r;
    r.note = std::string(comm::coll_name(c)) + ": CPU-only build, no NCCL path";
    return r;  // compares nothing: cannot pass, and the registry test skips GPU ops here
  };
#endif
  reg.add(std::move(op));
}

}  // namespace

void register_comm_ops(OpRegistry& r) {
  add_coll(r, Coll::AllReduce, "NCCL all-reduce (sum) over G GPUs of this process; algBw/busBw (nccl-tests); --flag dtype=bf16|f32");
  add_coll(r, Coll::AllGather, "NCCL all-gather over G GPUs; --bytes = gathered output size; --flag dtype=bf16|f32");
  add_coll(r, Coll::ReduceScatter, "NCCL reduce-scatter (sum) over G GPUs; --bytes = input size; --flag dtype=bf16|f32");
  add_coll(r, Coll::AllToAll, "NCCL all-to-all (grouped ncclSend/ncclRecv) over G GPUs; --bytes = send size; --flag dtype=bf16|f32");
}

}  // namespace megacpp
