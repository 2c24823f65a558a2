// recipe.hpp — the typed, validated configuration that a YAML recipe resolves to.
// Every field has a default here; recipe_loader.cpp maps YAML keys onto these fields and
// validate.cpp enforces the geometry rules. `to_json` gives the fully resolved config that goes
// into receipts and checkpoints.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config/config_error.hpp"
#include "engine/config/pattern.hpp"

namespace megacpp {

struct AttentionConfig {
  int64_t heads = 8;
  int64_t kv_heads = 8;
  int64_t head_dim = 64;
  double rope_theta = 10000.0;
  bool rope = true;  // false: no positional encoding
};

struct MambaConfig {
  int64_t heads = 0;  // 0 = derive H = hidden*expand/head_dim; explicit must equal it (refused otherwise)
  int64_t head_dim = 64;
  int64_t state_dim = 128;
  int64_t expand = 2;
  int64_t ngroups = 1;
  int64_t mimo_rank = 4;
  int64_t chunk_size = 16;
  double rope_fraction = 0.5;
  double dt_min = 0.001;
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  double a_floor = 1e-4;
  std::string a_activation = "softplus";  // softplus | heavy_tail
  bool outproj_norm = false;              // fused output RMSNorm inside the scan epilogue
};

struct MoeConfig {
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t ffn_hidden = 512;
  int64_t shared_expert_hidden = 0;  // 0 = no shared expert
  std::string activation = "relu2";          // relu2 | swiglu (routed experts)
  std::string shared_activation = "swiglu";  // relu2 | swiglu
  std::string score = "softmax";             // softmax | sigmoid
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  double capacity_factor = 0.0;  // 0 = dropless
};

struct MlpConfig {
  int64_t ffn_hidden = 0;  // 0 = 4*hidden (the Megatron default)
  std::string activation = "swiglu";  // swiglu | relu2 | gelu
};

struct M2rnnConfig {
  int64_t heads = 0;  // 0 = hidden / (key_dim + value_dim)
  int64_t key_dim = 64;
  int64_t value_dim = 16;
  int64_t conv_width = 4;
  std::string grad_clip = "off";  // state-gradient clipping: off | kernel | total
};

struct ModelConfig {
  int64_t vocab = 256 + 2;
  int64_t hidden = 256;
  int64_t depth = 4;
  std::string pattern = "MD";
  bool tie_embeddings = false;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  AttentionConfig attention;
  MambaConfig mamba;
  MoeConfig moe;
  MlpConfig mlp;
  M2rnnConfig m2rnn;
};

struct TrainConfig {
  int64_t mbs = 1;
  int64_t seq_len = 256;
  int64_t global_batch = 1;  // sequences per optimizer step
  int64_t steps = 100;
  double lr = 3e-4;
  double min_lr = 0.0;
  std::string schedule = "cosine";  // cosine | constant | wsd
  int64_t warmup = 0;
  double decay_fraction = 0.2;      // wsd: final fraction of steps spent decaying
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;                // global grad-norm clip; 0 = off
  int64_t seed = 1234;
  std::string precision = "bf16";   // bf16 | fp32
  int64_t eval_every = 0;           // 0 = only at the end
  int64_t eval_batches = 4;
  int64_t checkpoint_every = 0;     // 0 = only at the end
  int64_t keep_checkpoints = 3;
  int64_t max_bad_steps = 5;
  bool deterministic = false;
  std::string device = "auto";      // auto | cpu | cuda
  std::vector<std::string> recompute;  // block letters to recompute in backward
  int64_t log_every = 1;
};

struct ParallelConfig {
  int64_t tp = 1;
  int64_t ep = 1;
  int64_t zero = 0;  // 0 | 1
  double timeout_s = 600;
  // CUDA backend, pure data parallelism: reduce the gradient buckets during the last micro-batch's
  // backward (true), or after it (false). Same buckets, same order: the result is bit-identical.
  bool overlap_grad_reduce = true;
};

struct DataConfig {
  std::string source = "libstdcxx";  // libstdcxx (embedded default corpus) | dir
  std::vector<std::string> inputs;   // for source: dir
  std::vector<std::string> include = {"*"};
  std::string dir = "data_cache/libstdcxx";  // prepared shards
  double val_fraction = 0.02;
  std::string tokenizer = "byte";
};

struct FeaturesConfig {
  bool psiv_cache = false;
  std::string fused_moe = "fused";  // fused | standard  (true/false accepted as fused/standard)
  bool fused_residual = true;
  std::string attention_backend = "auto";  // auto | cudnn | native
};

struct ReceiptsConfig {
  std::string dir;  // empty = runs/<UTC time>-<command>-<recipe>/
};

struct Recipe {
  std::string name;                 // file stem, e.g. "nam56r"
  std::string path;                 // the recipe file given by the user
  std::vector<std::string> files;   // path and every file it extends, base last
  std::string sha256;               // of the concatenated bytes of `files` (in order)
  std::vector<std::string> overrides;  // --set key=value, in order
  std::string config_sha256;        // of the resolved config JSON (ranks compare it before training)
  std::map<std::string, SourceMark> marks;  // key path -> where its value was last set
  ExpandedPattern layers;           // model.pattern expanded to model.depth
  ModelConfig model;
  TrainConfig train;
  ParallelConfig parallel;
  DataConfig data;
  FeaturesConfig features;
  ReceiptsConfig receipts;
};

// The fully resolved config (derived values filled in), as it goes into receipts and checkpoints.
nlohmann::json to_json(const Recipe& r);
// Where key `path` was set, or the nearest ancestor section that was, or the recipe file itself.
SourceMark mark_of(const Recipe& r, const std::string& path);

}  // namespace megacpp
