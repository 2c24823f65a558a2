#include "engine/config/validate.hpp"

#include <string>

namespace megacpp {

int64_t mamba_d_inner(const ModelConfig& m) { return m.mamba.expand * m.hidden; }
int64_t mamba_heads(const ModelConfig& m) { return mamba_d_inner(m) / m.mamba.head_dim; }
int64_t mamba_n_angles(const MambaConfig& m) {
  const auto rot = static_cast<int64_t>(static_cast<double>(m.state_dim) * m.rope_fraction);
  return (rot - rot % 2) / 2;
}

namespace {

std::string s(int64_t v) { return std::to_string(v); }
bool was_set(const Recipe& r, const std::string& k) { return r.marks.count(k) > 0; }

[[noreturn]] void fail(const Recipe& r, const std::string& key, const std::string& rule, const std::string& got,
                       const std::string& expected) {
  throw ConfigError(mark_of(r, key), key, rule, got, expected);
}

void check_tp(const Recipe& r, const std::string& key, int64_t value, const std::string& what) {
  const int64_t tp = r.parallel.tp;
  if (value % tp != 0) {
    // Point at whichever of the two keys the user set last in the recipe: parallel.tp usually.
    const std::string k = was_set(r, "parallel.tp") ? "parallel.tp" : key;
    fail(r, k, "tp-divides", "tp=" + s(tp) + " does not divide " + what + "=" + s(value),
         "tp to divide " + what + " (" + key + ")");
  }
}

}  // namespace

void validate_recipe(Recipe& r) {
  ModelConfig& m = r.model;
  // Pattern.
  PatternProblem p;
  if (!expand_pattern(m.pattern, m.depth, r.layers, p)) {
    SourceMark w = mark_of(r, "model.pattern");
    // Point at the offending character when the pattern is a plain scalar on one line.
    if (w.line > 0 && p.rule == "bad-pattern-letter") w.column += p.offset;
    const std::string key = p.rule == "depth-mismatch" && !was_set(r, "model.pattern") ? "model.depth" : "model.pattern";
    throw ConfigError(p.rule == "depth-mismatch" ? mark_of(r, key) : w, key, p.rule, p.got, p.expected);
  }
  const ExpandedPattern& L = r.layers;
  const bool uses_a = L.uses(BlockKind::Attention), uses_m = L.uses(BlockKind::Mamba),
             uses_e = L.uses(BlockKind::Moe), uses_d = L.uses(BlockKind::Dense), uses_r = L.uses(BlockKind::M2rnn);

  if (r.train.global_batch % r.train.mbs != 0)
    fail(r, "train.global_batch", "global-batch", s(r.train.global_batch) + " sequences with mbs=" + s(r.train.mbs),
         "global_batch to be a multiple of mbs");

  if (uses_a) {
    const auto& a = m.attention;
    if (a.heads % a.kv_heads != 0)
      fail(r, "model.attention.kv_heads", "gqa-heads", "heads=" + s(a.heads) + ", kv_heads=" + s(a.kv_heads),
           "kv_heads to divide heads");
    if (a.head_dim % 2 != 0 && a.rope)
      fail(r, "model.attention.head_dim", "rope-head-dim-even", s(a.head_dim), "an even head_dim when rope is on");
    check_tp(r, "model.attention.heads", a.heads, "attention heads");
    check_tp(r, "model.attention.kv_heads", a.kv_heads, "attention kv_heads");
  }

  if (uses_m) {
    auto& mb = m.mamba;
    const int64_t d_inner = mamba_d_inner(m);
    if (d_inner % mb.head_dim != 0) {
      const std::string key = was_set(r, "model.mamba.head_dim") ? "model.mamba.head_dim" : "model.hidden";
      fail(r, key, "mamba-heads", "hidden*expand/head_dim = " + s(d_inner) + "/" + s(mb.head_dim) + " is not an integer",
           "head_dim to divide hidden*expand=" + s(d_inner));
    }
    const int64_t H = d_inner / mb.head_dim;
    if (was_set(r, "model.mamba.heads") && mb.heads != H)
      fail(r, "model.mamba.heads", "mamba-heads", s(mb.heads),
           s(H) + " (= hidden*expand/head_dim = " + s(m.hidden) + "*" + s(mb.expand) + "/" + s(mb.head_dim) +
               "; an explicit heads must equal it, it is never overridden)");
    mb.heads = H;
    if (H % mb.ngroups != 0)
      fail(r, "model.mamba.ngroups", "mamba-groups", "ngroups=" + s(mb.ngroups) + " with heads=" + s(H),
           "ngroups to divide the Mamba heads (" + s(H) + ")");
    if (mb.mimo_rank != 1 && mb.mimo_rank != 2 && mb.mimo_rank != 4 && mb.mimo_rank != 8)
      fail(r, "model.mamba.mimo_rank", "mimo-rank", s(mb.mimo_rank), "one of 1, 2, 4, 8");
    if (mb.chunk_size != 8 && mb.chunk_size != 16 && mb.chunk_size != 32 && mb.chunk_size != 64)
      fail(r, "model.mamba.chunk_size", "chunk-size", s(mb.chunk_size), "one of 8, 16, 32, 64");
    if (r.train.seq_len % mb.chunk_size != 0)
      fail(r, "train.seq_len", "seq-len-chunk", "seq_len=" + s(r.train.seq_len) + " with chunk_size=" + s(mb.chunk_size),
           "seq_len to be a multiple of model.mamba.chunk_size");
    if (mb.state_dim % 2 != 0)
      fail(r, "model.mamba.state_dim", "state-dim-even", s(mb.state_dim), "an even state_dim");
    if (mb.rope_fraction != 0.5 && mb.rope_fraction != 1.0)
      fail(r, "model.mamba.rope_fraction", "rope-fraction", std::to_string(mb.rope_fraction), "0.5 or 1.0");
    if (mb.dt_min > mb.dt_max)
      fail(r, "model.mamba.dt_min", "dt-range", "dt_min > dt_max", "dt_min <= dt_max");
    check_tp(r, "model.mamba.heads", H, "Mamba heads");
    check_tp(r, "model.mamba.ngroups", mb.ngroups, "Mamba groups");
  }

  if (uses_e) {
    const auto& e = m.moe;
    if (e.top_k > e.experts)
      fail(r, "model.moe.top_k", "top-k", "top_k=" + s(e.top_k) + " with experts=" + s(e.experts),
           "top_k <= experts");
    if (e.experts % r.parallel.ep != 0)
      fail(r, was_set(r, "parallel.ep") ? "parallel.ep" : "model.moe.experts", "ep-divides",
           "ep=" + s(r.parallel.ep) + " does not divide experts=" + s(e.experts), "ep to divide model.moe.experts");
    check_tp(r, "model.moe.ffn_hidden", e.ffn_hidden, "expert ffn_hidden");
    if (e.shared_expert_hidden > 0) check_tp(r, "model.moe.shared_expert_hidden", e.shared_expert_hidden, "shared expert ffn_hidden");
  } else if (r.parallel.ep > 1) {
    fail(r, "parallel.ep", "ep-without-moe", "ep=" + s(r.parallel.ep), "ep=1 when the pattern has no E layer");
  }

  if (uses_d) {
    if (m.mlp.ffn_hidden == 0) m.mlp.ffn_hidden = 4 * m.hidden;
    check_tp(r, "model.mlp.ffn_hidden", m.mlp.ffn_hidden, "dense ffn_hidden");
  }

  if (uses_r) {
    auto& rr = m.m2rnn;
    if (!was_set(r, "model.m2rnn.heads")) {
      rr.heads = m.hidden / (rr.key_dim + rr.value_dim);
      if (rr.heads < 1)
        fail(r, "model.hidden", "m2rnn-heads", "hidden=" + s(m.hidden) + " < key_dim+value_dim",
             "hidden >= key_dim+value_dim, or an explicit model.m2rnn.heads");
    }
    check_tp(r, "model.m2rnn.heads", rr.heads, "M2RNN heads");
  }
}

}  // namespace megacpp
