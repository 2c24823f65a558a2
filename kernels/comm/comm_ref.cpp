// comm_ref.cpp — geometry, float64 reference and bandwidth factors of the comm family (see comm_ref.hpp).
#include "kernels/comm/comm_ref.hpp"

#include <cmath>
#include <stdexcept>

namespace megacpp::comm {

const char* coll_name(Coll c) {
  switch (c) {
    case Coll::AllReduce: return "allreduce";
    case Coll::AllGather: return "allgather";
    case Coll::ReduceScatter: return "reducescatter";
    case Coll::AllToAll: return "alltoall";
  }
  return "?";
}

Coll parse_coll(const std::string& n) {
  for (Coll c : {Coll::AllReduce, Coll::AllGather, Coll::ReduceScatter, Coll::AllToAll})
    if (n == coll_name(c)) return c;
  throw std::invalid_argument("comm: collective '" + n + "' not supported (supported: allreduce, allgather, reducescatter, alltoall)");
}

const char* dtype_name(DType t) { return t == DType::F32 ? "f32" : "bf16"; }

DType parse_dtype(const std::string& n) {
  if (n == "f32" || n == "fp32" || n == "float32") return DType::F32;
  if (n == "bf16" || n == "bfloat16") return DType::BF16;
  throw std::invalid_argument("comm: dtype '" + n + "' not supported (supported: bf16, f32)");
}

std::size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

Geometry geometry(Coll c, int64_t bytes, int gpus, DType t) {
  if (gpus < 1) throw std::invalid_argument("comm: gpus=" + std::to_string(gpus) + " not supported (at least 1)");
  const int64_t unit = static_cast<int64_t>(dtype_size(t)) * gpus;
  if (bytes <= 0 || bytes % unit != 0)
    throw std::invalid_argument(std::string("comm: ") + coll_name(c) + " bytes=" + std::to_string(bytes) +
                                " not supported: must be a positive multiple of dtype size × gpus = " +
                                std::to_string(dtype_size(t)) + " × " + std::to_string(gpus) + " = " + std::to_string(unit) +
                                " (every rank's block must be whole " + dtype_name(t) + " elements)");
  Geometry g;
  g.gpus = gpus;
  const int64_t n = bytes / static_cast<int64_t>(dtype_size(t));
  g.block_elems = n / gpus;
  switch (c) {
    case Coll::AllReduce: g.send_elems = g.recv_elems = n; break;
    case Coll::AllGather: g.send_elems = g.block_elems, g.recv_elems = n; break;
    case Coll::ReduceScatter: g.send_elems = n, g.recv_elems = g.block_elems; break;
    case Coll::AllToAll: g.send_elems = g.recv_elems = n; break;
  }
  return g;
}

double bus_factor(Coll c, int gpus) {
  const double G = gpus;
  return c == Coll::AllReduce ? 2.0 * (G - 1) / G : (G - 1) / G;
}

std::vector<std::vector<double>> reference(Coll c, const Geometry& g, const std::vector<std::vector<double>>& in) {
  const int G = g.gpus;
  if (static_cast<int>(in.size()) != G) throw std::invalid_argument("comm::reference: one input per GPU expected");
  for (const auto& v : in)
    if (static_cast<int64_t>(v.size()) != g.send_elems) throw std::invalid_argument("comm::reference: input size != send_elems");
  std::vector<std::vector<double>> out(G, std::vector<double>(static_cast<std::size_t>(g.recv_elems)));
  const int64_t B = g.block_elems;
  switch (c) {
    case Coll::AllReduce:
    case Coll::ReduceScatter: {
      std::vector<double> sum(static_cast<std::size_t>(g.send_elems), 0.0);
      for (int r = 0; r < G; ++r)
        for (int64_t i = 0; i < g.send_elems; ++i) sum[i] += in[r][i];
      for (int r = 0; r < G; ++r)
        for (int64_t i = 0; i < g.recv_elems; ++i) out[r][i] = sum[(c == Coll::AllReduce ? 0 : r * B) + i];
      break;
    }
    case Coll::AllGather:
      for (int r = 0; r < G; ++r)
        for (int s = 0; s < G; ++s)
          for (int64_t i = 0; i < B; ++i) out[r][s * B + i] = in[s][i];
      break;
    case Coll::AllToAll:
      // Block j of rank s's send buffer goes to block s of rank j's receive buffer.
      for (int s = 0; s < G; ++s)
        for (int j = 0; j < G; ++j)
          for (int64_t i = 0; i < B; ++i) out[j][s * B + i] = in[s][j * B + i];
      break;
  }
  return out;
}

double tolerance(Coll c, int gpus, DType t) {
  const bool reduces = c == Coll::AllReduce || c == Coll::ReduceScatter;
  if (!reduces || gpus == 1) return 1e-12;
  const double u = t == DType::F32 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -8);
  return 2.0 * (gpus - 1) * u + 1e-12;
}

}  // namespace megacpp::comm
