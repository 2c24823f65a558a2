// parallel.hpp — tensor and expert parallelism of the CPU reference model (issue 8).
//
// A Model built with a ModelParallel holds, for every parameter, this rank's shard of the tensor of
// the same name in the tp = ep = 1 model (same names, same order; ParamSpec says which part:
// shard group, rows of dim 0, a column range of the flattened rest). Megatron-style layout:
//   TP  column-parallel (output rows split) → local compute → row-parallel (input columns split) →
//       all-reduce of the output over TP in forward; all-reduce of the block's dx over TP in backward
//       (the f/g conjugate pair). Replicated parameters whose gradient is computed from sharded
//       activations (Mamba angle_proj, B_norm, C_norm) carry tp_grad_partial: their gradient is
//       all-reduced over TP before the data-parallel reduction. Norm weights of the layers see the
//       full, identical dx on every TP rank: their gradient is complete and is not reduced over TP.
//   EP  the routed experts of an E layer are split over the EP group (experts [q·E/ep, (q+1)·E/ep) on
//       EP rank q); tokens go to the rank owning their expert and back with all-to-all.
// Initialisation makes the sharded model equal to the sharded tp = ep = 1 model (the full model is
// initialised from the seed and each rank takes its shard); gather_full/shard_from_full convert between
// a rank's flat buffers and the full (tp = ep = 1) layout, which is what checkpoints store.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/dist/communicator.hpp"
#include "engine/model/params.hpp"

namespace megacpp {

struct ModelParallel {
  Communicator* tp = nullptr;  // this rank's TP group (nullptr or size 1: no TP)
  int tp_rank = 0, tp_size = 1;
  Communicator* ep = nullptr;  // this rank's EP group
  int ep_rank = 0, ep_size = 1;
  bool active() const { return tp_size > 1 || ep_size > 1; }
};

inline int tp_size(const ModelParallel* mp) { return mp ? mp->tp_size : 1; }
inline int tp_rank(const ModelParallel* mp) { return mp ? mp->tp_rank : 0; }
inline int ep_size(const ModelParallel* mp) { return mp ? mp->ep_size : 1; }
inline int ep_rank(const ModelParallel* mp) { return mp ? mp->ep_rank : 0; }

// buf ← Σ over the TP group (no-op without TP).
template <typename T>
void tp_all_reduce(const ModelParallel* mp, T* buf, std::size_t n) {
  if (mp && mp->tp_size > 1) mp->tp->all_reduce_sum(buf, n);
}

// Shard descriptors (call right after ParamStore::add with the LOCAL shape).
template <typename T>
void shard_rows(ParamStore<T>& ps, int idx, ShardGroup g, std::vector<int64_t> full_shape,
                std::vector<std::pair<int64_t, int64_t>> rows);
template <typename T>
void shard_cols(ParamStore<T>& ps, int idx, std::vector<int64_t> full_shape, int64_t col_lo, int64_t col_n);
// The general form: ranges `outer` of dim 0 (empty: none), `rows` of the next dim (empty: all), columns
// [col_lo, col_lo + col_n) of the rest (col_n -1: all).
template <typename T>
void shard_general(ParamStore<T>& ps, int idx, ShardGroup g, std::vector<int64_t> full_shape,
                   std::vector<std::pair<int64_t, int64_t>> outer, std::vector<std::pair<int64_t, int64_t>> rows,
                   int64_t col_lo = 0, int64_t col_n = -1);

// Elements of the full (tp = ep = 1) flat buffer of this store's parameter list (same 16-element
// alignment as ParamStore), and the offset of parameter i in it.
template <typename T>
int64_t full_numel(const ParamStore<T>& ps);
template <typename T>
std::vector<int64_t> full_offsets(const ParamStore<T>& ps);
// local ← this rank's shards of `full` (full layout; padding ignored).
template <typename T>
void shard_from_full(const ParamStore<T>& ps, const T* full, T* local);
// All-reduces over TP the gradients that are partial sums there: whole tensors with tp_grad_partial and
// the tp_replicated ranges of sharded ones (one packed all-reduce). The trainer calls it before the
// data-parallel reduction.
template <typename T>
void tp_reduce_partial_grads(ParamStore<T>& ps, const ModelParallel& mp);
// full ← the whole tensors assembled from every rank's shards (collective over mp.tp and mp.ep; every
// rank gets the result). `full` has full_numel(ps) elements; padding is zero.
template <typename T>
void gather_full(const ParamStore<T>& ps, const ModelParallel& mp, const T* local, T* full);

}  // namespace megacpp
