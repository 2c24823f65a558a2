// validate.hpp — the geometry rules of a recipe (run after every file and --set is applied).
// Rules apply to the blocks the pattern actually uses. Each failure is a ConfigError naming the key
// whose value breaks the rule (or the nearest key that was set), the rule and the expected value.
//
//   pattern            letters A M E D R and '|'; tiled to depth without '|', exactly depth with it
//   mamba-heads        H = hidden*expand/head_dim must be an integer; an explicit heads must equal it
//                      (the seeds' author-config rule: refuse, never override)
//   mamba-groups       H % ngroups == 0
//   mimo-rank          mimo_rank in {1,2,4,8}
//   chunk-size         chunk_size in {8,16,32,64}; seq-len-chunk: seq_len % chunk_size == 0
//   state-dim-even     state_dim even
//   gqa-heads          attention heads % kv_heads == 0
//   tp-divides         tp divides attention heads and kv_heads, Mamba heads and groups, M2RNN heads,
//                      dense ffn_hidden and expert ffn_hidden
//   ep-divides         ep divides experts
//   top-k              1 <= top_k <= experts
//   dt-range           dt_min <= dt_max
//   global-batch       global_batch % mbs == 0
#pragma once
#include "engine/config/recipe.hpp"

namespace megacpp {

// Throws ConfigError on the first broken rule; fills derived values (mamba.heads, m2rnn.heads,
// mlp.ffn_hidden when 0) and r.layers.
void validate_recipe(Recipe& r);

// Derived geometry used by plan and the model.
int64_t mamba_d_inner(const ModelConfig& m);  // expand*hidden
int64_t mamba_heads(const ModelConfig& m);    // d_inner / head_dim (validated)
int64_t mamba_n_angles(const MambaConfig& m); // floor_even(state_dim*rope_fraction)/2

}  // namespace megacpp
