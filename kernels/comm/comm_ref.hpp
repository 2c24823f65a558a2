// comm_ref.hpp — the host side of the `comm` family: message geometry, the float64 reference of each
// collective, and nccl-tests' bandwidth conventions. Pure host code (built in CPU-only builds too).
//
// Message size `bytes` follows nccl-tests' "size" column (per rank):
//   allreduce      send = recv = bytes                      (every rank ends with the elementwise sum)
//   allgather      send = bytes/G, recv = bytes              (rank g's block lands at offset g·bytes/G everywhere)
//   reducescatter  send = bytes,   recv = bytes/G            (rank g keeps block g of the elementwise sum)
//   alltoall       send = recv = bytes, blocks of bytes/G    (block j of rank g goes to block g of rank j)
// algBw = bytes / time; busBw = algBw · factor with factor 2(G−1)/G (allreduce), (G−1)/G (allgather,
// reducescatter, alltoall): the per-GPU link traffic of the bandwidth-optimal (ring) algorithm, so busBw is
// comparable with a link's rate. With G = 1 every factor is 0: NCCL only copies locally (no link).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp::comm {

enum class Coll { AllReduce, AllGather, ReduceScatter, AllToAll };
enum class DType { F32, BF16 };

const char* coll_name(Coll c);
Coll parse_coll(const std::string& name);      // "allreduce" ... ; throws naming the supported ones
const char* dtype_name(DType t);
DType parse_dtype(const std::string& name);    // "f32" | "bf16"; throws "comm: dtype 'x' not supported (...)"
std::size_t dtype_size(DType t);

struct Geometry {
  int gpus = 1;
  int64_t send_elems = 0, recv_elems = 0;  // per GPU
  int64_t block_elems = 0;                 // bytes/G in elements (the per-rank block of gather/scatter/all-to-all)
};
// Validates: bytes > 0 and a multiple of dtype_size·G (every rank's block is whole elements); gpus ≥ 1.
// Throws std::invalid_argument naming the limit.
Geometry geometry(Coll c, int64_t bytes, int gpus, DType t);

// nccl-tests' busBw / algBw factor.
double bus_factor(Coll c, int gpus);

// The float64 reference: inputs[g] holds rank g's send buffer (send_elems values); returns every rank's
// expected receive buffer (recv_elems values). Sums in float64, in rank order.
std::vector<std::vector<double>> reference(Coll c, const Geometry& g, const std::vector<std::vector<double>>& inputs);

// Relative gate for reductions (stable_max_rel = max|ours−ref| / max|ref|): each output element passes
// through at most G−1 additions rounded to the wire type (unit roundoff u = 2^-24 for f32, 2^-8 for bf16),
// each adding at most u·|partial sum|; partial sums stay within about max|ref| for the symmetric random
// inputs used here, so the bound is (G−1)·u·max|ref|, doubled for margin. Data movement (allgather,
// alltoall) and G = 1 must be exact (gate 1e-12: any difference is at least one ulp).
double tolerance(Coll c, int gpus, DType t);

}  // namespace megacpp::comm
