// make_block — the one place that maps a pattern letter to its block implementation.
#include "engine/model/block.hpp"

#include <algorithm>
#include <stdexcept>

#include "engine/model/attention_block.hpp"
#include "engine/model/dense_mlp.hpp"
#include "engine/model/m2rnn_block.hpp"
#include "engine/model/moe_block.hpp"
#include "engine/model/mamba_mixer.hpp"

namespace megacpp {

void add_aux_losses(AuxLosses& sum, const AuxLosses& a) {
  sum.aux += a.aux, sum.z += a.z;
  if (sum.tokens_per_expert.empty()) sum.tokens_per_expert = a.tokens_per_expert;
  else
    for (std::size_t i = 0; i < a.tokens_per_expert.size() && i < sum.tokens_per_expert.size(); ++i)
      sum.tokens_per_expert[i] += a.tokens_per_expert[i];
  sum.dropped_frac = std::max(sum.dropped_frac, a.dropped_frac);
}

template <typename T>
std::unique_ptr<Block<T>> make_block(BlockKind kind, const Recipe& r, ParamStore<T>& ps, const std::string& prefix,
                                     int64_t max_tokens, const ModelParallel* mp) {
  switch (kind) {
    case BlockKind::Dense: return std::make_unique<DenseMlp<T>>(r, ps, prefix, max_tokens, mp);
    case BlockKind::Mamba: return std::make_unique<MambaMixer<T>>(r, ps, prefix, max_tokens, mp);
    case BlockKind::Attention: return std::make_unique<AttentionBlock<T>>(r, ps, prefix, max_tokens, mp);
    case BlockKind::M2rnn: return std::make_unique<M2rnnBlock<T>>(r, ps, prefix, max_tokens, mp);
    case BlockKind::Moe: return std::make_unique<MoeBlock<T>>(r, ps, prefix, max_tokens, mp);
    default: break;
  }
  throw std::runtime_error(std::string("block ") + block_letter(kind) + " (" + block_name(kind) +
                           ") not available yet in the training stack; model.pattern '" + r.model.pattern +
                           "' uses it (available letters: A, M, E, D, R)");
}

template std::unique_ptr<Block<float>> make_block(BlockKind, const Recipe&, ParamStore<float>&, const std::string&, int64_t,
                                                  const ModelParallel*);
template std::unique_ptr<Block<double>> make_block(BlockKind, const Recipe&, ParamStore<double>&, const std::string&, int64_t,
                                                   const ModelParallel*);

}  // namespace megacpp
