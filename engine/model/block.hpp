// block.hpp — one pattern letter = one Block: it maps the pre-normed residual stream x [B·S, hidden]
// to y [B·S, hidden] (the layer adds y to the residual). Each block declares its parameters in the
// model's ParamStore, keeps what its backward needs, and accumulates its parameter gradients.
// Blocks whose implementation has not landed are refused by make_block with
// "block X not available yet".
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/recipe.hpp"
#include "engine/model/params.hpp"

namespace megacpp {

struct ModelParallel;  // engine/model/parallel.hpp

// Auxiliary losses a block adds to the objective (MoE load balancing and z-loss) and its router
// statistics, as of its last forward.
struct AuxLosses {
  double aux = 0, z = 0;
  std::vector<int64_t> tokens_per_expert;
  double dropped_frac = 0;
};

// sum += a over layers: aux and z added, tokens per expert added elementwise, the largest dropped fraction.
void add_aux_losses(AuxLosses& sum, const AuxLosses& a);

template <typename T>
class Block {
 public:
  virtual ~Block() = default;
  virtual const char* name() const = 0;
  // Called once after the ParamStore is finalised and initialised.
  virtual void bind(ParamStore<T>& ps) = 0;
  // x, y: [B, S, hidden] row-major. Saves activations for backward (sized at construction).
  virtual void forward(const T* x, T* y, int64_t B, int64_t S) = 0;
  // dy: [B,S,hidden] → dx (overwritten), parameter gradients accumulated into the ParamStore.
  virtual void backward(const T* dy, T* dx, int64_t B, int64_t S) = 0;
  // Forward FLOPs per token at sequence length S (for logs; docs/flops.md has the formulas).
  virtual double flops_per_token(int64_t S) const = 0;
  // Block-specific initialisation after the generic one (e.g. identity recurrent weights).
  virtual void init_params(uint64_t /*seed*/, int64_t /*n_layers*/) {}
  // Blocks with auxiliary losses: their gradient is scaled by `s` (so that micro-batches average).
  virtual void set_aux_scale(double /*s*/) {}
  virtual AuxLosses aux_losses() const { return {}; }
};

// Declares the block's parameters under `prefix` ("layers.3.") and returns it; throws
// std::runtime_error("block X not available yet ...") for letters whose block has not landed.
// `mp` (tensor/expert parallelism; nullptr: none) makes the block declare and compute this rank's shard.
template <typename T>
std::unique_ptr<Block<T>> make_block(BlockKind kind, const Recipe& r, ParamStore<T>& ps, const std::string& prefix,
                                     int64_t max_tokens, const ModelParallel* mp = nullptr);

}  // namespace megacpp
