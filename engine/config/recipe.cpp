#include "engine/config/recipe.hpp"

namespace megacpp {

nlohmann::json to_json(const Recipe& r) {
  const auto& m = r.model;
  nlohmann::json model = {
      {"vocab", m.vocab}, {"hidden", m.hidden}, {"depth", m.depth}, {"pattern", m.pattern},
      {"expanded_pattern", r.layers.letters()}, {"tie_embeddings", m.tie_embeddings}, {"norm_eps", m.norm_eps},
      {"init_std", m.init_std},
      {"attention", {{"heads", m.attention.heads}, {"kv_heads", m.attention.kv_heads}, {"head_dim", m.attention.head_dim},
                     {"rope_theta", m.attention.rope_theta}, {"rope", m.attention.rope}}},
      {"mamba", {{"heads", m.mamba.heads}, {"head_dim", m.mamba.head_dim}, {"state_dim", m.mamba.state_dim},
                 {"expand", m.mamba.expand}, {"ngroups", m.mamba.ngroups}, {"mimo_rank", m.mamba.mimo_rank},
                 {"chunk_size", m.mamba.chunk_size}, {"rope_fraction", m.mamba.rope_fraction},
                 {"dt_min", m.mamba.dt_min}, {"dt_max", m.mamba.dt_max}, {"dt_init_floor", m.mamba.dt_init_floor},
                 {"a_floor", m.mamba.a_floor}, {"a_activation", m.mamba.a_activation},
                 {"outproj_norm", m.mamba.outproj_norm}}},
      {"moe", {{"experts", m.moe.experts}, {"top_k", m.moe.top_k}, {"ffn_hidden", m.moe.ffn_hidden},
               {"shared_expert_hidden", m.moe.shared_expert_hidden}, {"activation", m.moe.activation},
               {"shared_activation", m.moe.shared_activation}, {"score", m.moe.score},
               {"aux_loss_coef", m.moe.aux_loss_coef}, {"z_loss_coef", m.moe.z_loss_coef},
               {"capacity_factor", m.moe.capacity_factor}}},
      {"mlp", {{"ffn_hidden", m.mlp.ffn_hidden}, {"activation", m.mlp.activation}}},
      {"m2rnn", {{"heads", m.m2rnn.heads}, {"key_dim", m.m2rnn.key_dim}, {"value_dim", m.m2rnn.value_dim},
                 {"conv_width", m.m2rnn.conv_width}, {"grad_clip", m.m2rnn.grad_clip}}}};
  const auto& t = r.train;
  nlohmann::json train = {
      {"mbs", t.mbs}, {"seq_len", t.seq_len}, {"global_batch", t.global_batch}, {"steps", t.steps}, {"lr", t.lr},
      {"min_lr", t.min_lr}, {"schedule", t.schedule}, {"warmup", t.warmup}, {"decay_fraction", t.decay_fraction},
      {"weight_decay", t.weight_decay}, {"beta1", t.beta1}, {"beta2", t.beta2}, {"eps", t.eps}, {"clip", t.clip},
      {"seed", t.seed}, {"precision", t.precision}, {"eval_every", t.eval_every}, {"eval_batches", t.eval_batches},
      {"checkpoint_every", t.checkpoint_every}, {"keep_checkpoints", t.keep_checkpoints},
      {"max_bad_steps", t.max_bad_steps}, {"deterministic", t.deterministic}, {"device", t.device},
      {"recompute", t.recompute}, {"log_every", t.log_every}};
  nlohmann::json config = {
      {"model", model},
      {"train", train},
      {"parallel", {{"tp", r.parallel.tp}, {"ep", r.parallel.ep}, {"zero", r.parallel.zero}, {"timeout_s", r.parallel.timeout_s},
                    {"overlap_grad_reduce", r.parallel.overlap_grad_reduce}}},
      {"data", {{"source", r.data.source}, {"inputs", r.data.inputs}, {"include", r.data.include}, {"dir", r.data.dir},
                {"val_fraction", r.data.val_fraction}, {"tokenizer", r.data.tokenizer}}},
      {"features", {{"psiv_cache", r.features.psiv_cache}, {"fused_moe", r.features.fused_moe},
                    {"fused_residual", r.features.fused_residual}, {"attention_backend", r.features.attention_backend}}},
      {"receipts", {{"dir", r.receipts.dir}}}};
  return {{"name", r.name}, {"path", r.path}, {"files", r.files}, {"sha256", r.sha256},
          {"overrides", r.overrides}, {"config_sha256", r.config_sha256}, {"config", config}};
}

SourceMark mark_of(const Recipe& r, const std::string& path) {
  std::string p = path;
  while (true) {
    auto it = r.marks.find(p);
    if (it != r.marks.end()) return it->second;
    const auto dot = p.rfind('.');
    if (dot == std::string::npos) break;
    p = p.substr(0, dot);
  }
  if (auto it = r.marks.find(p); it != r.marks.end()) return it->second;
  return SourceMark{r.path, 1, 1};
}

}  // namespace megacpp
