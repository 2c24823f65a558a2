// recipe_loader.cpp — the schema of every recipe key and the strict YAML walker.
// One table (kFields) lists each key path with its type, its rule and where it lives in Recipe;
// the walker applies files base-first, then --set overrides, recording where each value came from.
#include "engine/config/recipe_loader.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "engine/config/validate.hpp"
#include "engine/receipts/sha256.hpp"

namespace megacpp {

namespace {

enum class Type { Int, Double, Bool, String, StringList };

struct Field {
  std::string path;
  Type type;
  std::function<void*(Recipe&)> at;
  double lo = -INFINITY, hi = INFINITY;  // numeric range (inclusive)
  std::vector<std::string> choices;      // String / StringList elements
};

#define MC_FIELD(PATH, TYPE, MEMBER, LO, HI, ...) \
  Field { PATH, Type::TYPE, [](Recipe& r) -> void* { return &r.MEMBER; }, LO, HI, __VA_ARGS__ }
constexpr double kBig = 9.0e15;

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      // model
      MC_FIELD("model.vocab", Int, model.vocab, 2, 1 << 24, {}),
      MC_FIELD("model.hidden", Int, model.hidden, 1, 1 << 20, {}),
      MC_FIELD("model.depth", Int, model.depth, 1, 4096, {}),
      MC_FIELD("model.pattern", String, model.pattern, 0, 0, {}),
      MC_FIELD("model.tie_embeddings", Bool, model.tie_embeddings, 0, 0, {}),
      MC_FIELD("model.norm_eps", Double, model.norm_eps, 1e-12, 1e-1, {}),
      MC_FIELD("model.init_std", Double, model.init_std, 1e-6, 1.0, {}),
      MC_FIELD("model.attention.heads", Int, model.attention.heads, 1, 4096, {}),
      MC_FIELD("model.attention.kv_heads", Int, model.attention.kv_heads, 1, 4096, {}),
      MC_FIELD("model.attention.head_dim", Int, model.attention.head_dim, 2, 1024, {}),
      MC_FIELD("model.attention.rope_theta", Double, model.attention.rope_theta, 1.0, 1e12, {}),
      MC_FIELD("model.attention.rope", Bool, model.attention.rope, 0, 0, {}),
      MC_FIELD("model.mamba.heads", Int, model.mamba.heads, 1, 1 << 20, {}),
      MC_FIELD("model.mamba.head_dim", Int, model.mamba.head_dim, 1, 4096, {}),
      MC_FIELD("model.mamba.state_dim", Int, model.mamba.state_dim, 2, 4096, {}),
      MC_FIELD("model.mamba.expand", Int, model.mamba.expand, 1, 64, {}),
      MC_FIELD("model.mamba.ngroups", Int, model.mamba.ngroups, 1, 4096, {}),
      MC_FIELD("model.mamba.mimo_rank", Int, model.mamba.mimo_rank, 1, 64, {}),
      MC_FIELD("model.mamba.chunk_size", Int, model.mamba.chunk_size, 1, 4096, {}),
      MC_FIELD("model.mamba.rope_fraction", Double, model.mamba.rope_fraction, 0.5, 1.0, {}),
      MC_FIELD("model.mamba.dt_min", Double, model.mamba.dt_min, 1e-8, 10.0, {}),
      MC_FIELD("model.mamba.dt_max", Double, model.mamba.dt_max, 1e-8, 10.0, {}),
      MC_FIELD("model.mamba.dt_init_floor", Double, model.mamba.dt_init_floor, 0.0, 1.0, {}),
      MC_FIELD("model.mamba.a_floor", Double, model.mamba.a_floor, 0.0, 1.0, {}),
      MC_FIELD("model.mamba.a_activation", String, model.mamba.a_activation, 0, 0, {"softplus", "heavy_tail"}),
      MC_FIELD("model.mamba.outproj_norm", Bool, model.mamba.outproj_norm, 0, 0, {}),
      MC_FIELD("model.moe.experts", Int, model.moe.experts, 1, 1 << 16, {}),
      MC_FIELD("model.moe.top_k", Int, model.moe.top_k, 1, 1 << 16, {}),
      MC_FIELD("model.moe.ffn_hidden", Int, model.moe.ffn_hidden, 1, 1 << 20, {}),
      MC_FIELD("model.moe.shared_expert_hidden", Int, model.moe.shared_expert_hidden, 0, 1 << 20, {}),
      MC_FIELD("model.moe.activation", String, model.moe.activation, 0, 0, {"relu2", "swiglu"}),
      MC_FIELD("model.moe.shared_activation", String, model.moe.shared_activation, 0, 0, {"relu2", "swiglu"}),
      MC_FIELD("model.moe.score", String, model.moe.score, 0, 0, {"softmax", "sigmoid"}),
      MC_FIELD("model.moe.aux_loss_coef", Double, model.moe.aux_loss_coef, 0.0, 10.0, {}),
      MC_FIELD("model.moe.z_loss_coef", Double, model.moe.z_loss_coef, 0.0, 10.0, {}),
      MC_FIELD("model.moe.capacity_factor", Double, model.moe.capacity_factor, 0.0, 64.0, {}),
      MC_FIELD("model.mlp.ffn_hidden", Int, model.mlp.ffn_hidden, 1, 1 << 22, {}),
      MC_FIELD("model.mlp.activation", String, model.mlp.activation, 0, 0, {"swiglu", "relu2", "gelu"}),
      MC_FIELD("model.m2rnn.heads", Int, model.m2rnn.heads, 1, 1 << 16, {}),
      MC_FIELD("model.m2rnn.key_dim", Int, model.m2rnn.key_dim, 1, 1024, {}),
      MC_FIELD("model.m2rnn.value_dim", Int, model.m2rnn.value_dim, 1, 1024, {}),
      MC_FIELD("model.m2rnn.conv_width", Int, model.m2rnn.conv_width, 1, 64, {}),
      MC_FIELD("model.m2rnn.grad_clip", String, model.m2rnn.grad_clip, 0, 0, {"off", "kernel", "total"}),
      // train
      MC_FIELD("train.mbs", Int, train.mbs, 1, 1 << 20, {}),
      MC_FIELD("train.seq_len", Int, train.seq_len, 1, 1 << 24, {}),
      MC_FIELD("train.global_batch", Int, train.global_batch, 1, 1 << 24, {}),
      MC_FIELD("train.steps", Int, train.steps, 0, kBig, {}),
      MC_FIELD("train.lr", Double, train.lr, 0.0, 10.0, {}),
      MC_FIELD("train.min_lr", Double, train.min_lr, 0.0, 10.0, {}),
      MC_FIELD("train.schedule", String, train.schedule, 0, 0, {"cosine", "constant", "wsd"}),
      MC_FIELD("train.warmup", Int, train.warmup, 0, kBig, {}),
      MC_FIELD("train.decay_fraction", Double, train.decay_fraction, 0.0, 1.0, {}),
      MC_FIELD("train.weight_decay", Double, train.weight_decay, 0.0, 10.0, {}),
      MC_FIELD("train.beta1", Double, train.beta1, 0.0, 0.999999, {}),
      MC_FIELD("train.beta2", Double, train.beta2, 0.0, 0.999999, {}),
      MC_FIELD("train.eps", Double, train.eps, 1e-30, 1.0, {}),
      MC_FIELD("train.clip", Double, train.clip, 0.0, 1e9, {}),
      MC_FIELD("train.seed", Int, train.seed, 0, kBig, {}),
      MC_FIELD("train.precision", String, train.precision, 0, 0, {"bf16", "fp32"}),
      MC_FIELD("train.eval_every", Int, train.eval_every, 0, kBig, {}),
      MC_FIELD("train.eval_batches", Int, train.eval_batches, 1, 1 << 20, {}),
      MC_FIELD("train.checkpoint_every", Int, train.checkpoint_every, 0, kBig, {}),
      MC_FIELD("train.keep_checkpoints", Int, train.keep_checkpoints, 1, 1 << 20, {}),
      MC_FIELD("train.max_bad_steps", Int, train.max_bad_steps, 1, 1 << 20, {}),
      MC_FIELD("train.deterministic", Bool, train.deterministic, 0, 0, {}),
      MC_FIELD("train.device", String, train.device, 0, 0, {"auto", "cpu", "cuda"}),
      MC_FIELD("train.recompute", StringList, train.recompute, 0, 0, {"A", "M", "E", "D", "R"}),
      MC_FIELD("train.log_every", Int, train.log_every, 1, 1 << 20, {}),
      // parallel
      MC_FIELD("parallel.tp", Int, parallel.tp, 1, 1024, {}),
      MC_FIELD("parallel.ep", Int, parallel.ep, 1, 1 << 16, {}),
      MC_FIELD("parallel.zero", Int, parallel.zero, 0, 1, {}),
      MC_FIELD("parallel.timeout_s", Double, parallel.timeout_s, 1.0, 86400.0, {}),
      MC_FIELD("parallel.overlap_grad_reduce", Bool, parallel.overlap_grad_reduce, 0, 0, {}),
      // data
      MC_FIELD("data.source", String, data.source, 0, 0, {"libstdcxx", "dir"}),
      MC_FIELD("data.inputs", StringList, data.inputs, 0, 0, {}),
      MC_FIELD("data.include", StringList, data.include, 0, 0, {}),
      MC_FIELD("data.dir", String, data.dir, 0, 0, {}),
      MC_FIELD("data.val_fraction", Double, data.val_fraction, 0.0, 0.5, {}),
      MC_FIELD("data.tokenizer", String, data.tokenizer, 0, 0, {"byte"}),
      // features
      MC_FIELD("features.psiv_cache", Bool, features.psiv_cache, 0, 0, {}),
      MC_FIELD("features.fused_moe", String, features.fused_moe, 0, 0, {"fused", "standard", "true", "false"}),
      MC_FIELD("features.fused_residual", Bool, features.fused_residual, 0, 0, {}),
      MC_FIELD("features.attention_backend", String, features.attention_backend, 0, 0, {"auto", "cudnn", "native"}),
      // receipts
      MC_FIELD("receipts.dir", String, receipts.dir, 0, 0, {}),
  };
  return f;
}
#undef MC_FIELD

const char* type_name(Type t) {
  switch (t) {
    case Type::Int: return "an integer";
    case Type::Double: return "a number";
    case Type::Bool: return "true or false";
    case Type::String: return "a string";
    case Type::StringList: return "a list of strings";
  }
  return "?";
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

std::string fmt_num(double x) {
  std::ostringstream o;
  o << x;
  return o.str();
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

const Field* find_field(const std::string& path) {
  for (const auto& f : fields())
    if (f.path == path) return &f;
  return nullptr;
}

// Known direct children of a section path ("model", "model.mamba", "" for the top level).
std::vector<std::string> children_of(const std::string& section) {
  std::set<std::string> out;
  const std::string prefix = section.empty() ? "" : section + ".";
  for (const auto& f : fields()) {
    if (f.path.rfind(prefix, 0) != 0) continue;
    const std::string rest = f.path.substr(prefix.size());
    out.insert(rest.substr(0, rest.find('.')));
  }
  if (section.empty()) {
    out.insert("extends");
    out.insert("description");
  }
  return {out.begin(), out.end()};
}

bool is_section(const std::string& path) {
  const std::string prefix = path + ".";
  for (const auto& f : fields())
    if (f.path.rfind(prefix, 0) == 0) return true;
  return false;
}

SourceMark mark_from(const YAML::Node& n, const std::string& file) {
  const YAML::Mark m = n.Mark();
  return {file, m.line + 1, m.column + 1};
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsNull()) return "null";
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "?";
}

[[noreturn]] void unknown_key(const std::string& path, const std::string& section, const SourceMark& where) {
  const auto known = children_of(section);
  const std::string leaf = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
  std::string best;
  std::size_t best_d = 3;
  for (const auto& k : known) {
    const auto d = edit_distance(leaf, k);
    if (d < best_d) best_d = d, best = k;
  }
  std::string expected = "one of " + join(known, ", ");
  if (!best.empty()) expected = "'" + best + "' (did you mean it?) — " + expected;
  throw ConfigError(where, path, "unknown-key", "'" + leaf + "'", expected);
}

void set_value(Recipe& r, const Field& f, const YAML::Node& n, const SourceMark& where) {
  auto wrong_type = [&]() {
    throw ConfigError(where, f.path, "wrong-type", scalar_text(n), type_name(f.type));
  };
  auto check_range = [&](double x) {
    if (x < f.lo || x > f.hi)
      throw ConfigError(where, f.path, "out-of-range", fmt_num(x),
                        "a value in [" + fmt_num(f.lo) + ", " + fmt_num(f.hi) + "]");
  };
  auto check_choice = [&](const std::string& s) {
    if (!f.choices.empty() && std::find(f.choices.begin(), f.choices.end(), s) == f.choices.end())
      throw ConfigError(where, f.path, "not-allowed", "'" + s + "'", "one of " + join(f.choices, ", "));
  };
  switch (f.type) {
    case Type::Int: {
      if (!n.IsScalar()) wrong_type();
      const std::string& s = n.Scalar();
      int64_t v = 0;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec != std::errc() || p != s.data() + s.size()) wrong_type();
      check_range(static_cast<double>(v));
      *static_cast<int64_t*>(f.at(r)) = v;
      break;
    }
    case Type::Double: {
      if (!n.IsScalar()) wrong_type();
      const std::string& s = n.Scalar();
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) wrong_type();
      check_range(v);
      *static_cast<double*>(f.at(r)) = v;
      break;
    }
    case Type::Bool: {
      if (!n.IsScalar()) wrong_type();
      std::string s = n.Scalar();
      std::transform(s.begin(), s.end(), s.begin(), ::tolower);
      if (s == "true") *static_cast<bool*>(f.at(r)) = true;
      else if (s == "false") *static_cast<bool*>(f.at(r)) = false;
      else wrong_type();
      break;
    }
    case Type::String: {
      if (!n.IsScalar() || n.Scalar().empty()) wrong_type();
      check_choice(n.Scalar());
      std::string v = n.Scalar();
      if (f.path == "features.fused_moe") v = (v == "true" || v == "fused") ? "fused" : "standard";
      *static_cast<std::string*>(f.at(r)) = v;
      break;
    }
    case Type::StringList: {
      if (!n.IsSequence()) wrong_type();
      std::vector<std::string> v;
      for (const auto& e : n) {
        if (!e.IsScalar()) throw ConfigError(mark_from(e, where.file), f.path, "wrong-type", scalar_text(e), "a string");
        if (!f.choices.empty() && std::find(f.choices.begin(), f.choices.end(), e.Scalar()) == f.choices.end())
          throw ConfigError(mark_from(e, where.file), f.path, "not-allowed", "'" + e.Scalar() + "'",
                            "one of " + join(f.choices, ", "));
        v.push_back(e.Scalar());
      }
      *static_cast<std::vector<std::string>*>(f.at(r)) = v;
      break;
    }
  }
  r.marks[f.path] = where;
}

// Walk a mapping node under `section` ("" = top level) and apply every leaf.
void apply_map(Recipe& r, const YAML::Node& map, const std::string& section, const std::string& file) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node val = it->second;
    if (!key.IsScalar())
      throw ConfigError(mark_from(key, file), section, "wrong-type", scalar_text(key), "a plain key name");
    const std::string name = key.Scalar();
    const std::string path = section.empty() ? name : section + "." + name;
    if (section.empty() && (name == "extends" || name == "description")) continue;  // handled by the caller
    if (is_section(path)) {
      if (val.IsNull()) continue;  // an empty section keeps the defaults
      if (!val.IsMap()) throw ConfigError(mark_from(val, file), path, "wrong-type", scalar_text(val), "a mapping (section)");
      r.marks[path] = mark_from(key, file);
      apply_map(r, val, path, file);
      continue;
    }
    const Field* f = find_field(path);
    if (!f) unknown_key(path, section, mark_from(key, file));
    set_value(r, *f, val, mark_from(val, file));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void apply_file(Recipe& r, const std::string& path, std::vector<std::string>& chain, std::string& bytes,
                const SourceMark& included_from) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw ConfigError(included_from, included_from.line ? "extends" : "", "file-not-found", "'" + path + "'",
                      "an existing recipe file");
  const std::string canon = fs::weakly_canonical(path).string();
  if (std::find(chain.begin(), chain.end(), canon) != chain.end())
    throw ConfigError(included_from, "extends", "extends-cycle", "'" + path + "'", "a chain of recipes without cycles");
  chain.push_back(canon);
  const std::string text = read_file(path);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError({path, e.mark.line + 1, e.mark.column + 1}, "", "yaml-syntax", "'" + e.msg + "'",
                      "valid YAML");
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);  // an empty file is an empty recipe
  if (!root.IsMap())
    throw ConfigError(mark_from(root, path), "", "wrong-type", scalar_text(root), "a mapping of sections at the top level");
  if (const YAML::Node ext = root["extends"]) {
    if (!ext.IsScalar() || ext.Scalar().empty())
      throw ConfigError(mark_from(ext, path), "extends", "wrong-type", scalar_text(ext), "a recipe file name");
    fs::path base = ext.Scalar();
    if (base.is_relative()) base = fs::path(path).parent_path() / base;
    apply_file(r, base.lexically_normal().string(), chain, bytes, mark_from(ext, path));
  }
  if (const YAML::Node d = root["description"]; d && !d.IsScalar())
    throw ConfigError(mark_from(d, path), "description", "wrong-type", scalar_text(d), "a string");
  apply_map(r, root, "", path);
  r.files.insert(r.files.begin(), path);  // top file first, base last
  bytes = text + bytes;
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  Recipe r;
  r.path = path;
  r.name = std::filesystem::path(path).stem().string();
  std::vector<std::string> chain;
  std::string bytes;
  apply_file(r, path, chain, bytes, SourceMark{path, 0, 0});
  r.sha256 = sha256_hex(bytes);
  for (std::size_t i = 0; i < overrides.size(); ++i) {
    const std::string& o = overrides[i];
    const SourceMark where{"--set", static_cast<int>(i + 1), 1};
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      throw ConfigError(where, o, "bad-override", "'" + o + "'", "KEY=VALUE, e.g. train.lr=1e-3");
    const std::string key = o.substr(0, eq);
    const std::string value = o.substr(eq + 1);
    const Field* f = find_field(key);
    if (!f) {
      const auto dot = key.rfind('.');
      unknown_key(key, dot == std::string::npos ? "" : key.substr(0, dot), where);
    }
    YAML::Node node;
    try {
      node = YAML::Load(value);
    } catch (const YAML::ParserException& e) {
      throw ConfigError(where, key, "yaml-syntax", "'" + value + "'", "a YAML value");
    }
    set_value(r, *f, node, {"--set", static_cast<int>(i + 1), static_cast<int>(eq + 2)});
    r.overrides.push_back(o);
  }
  validate_recipe(r);  // geometry rules; fills derived values and the expanded pattern
  r.config_sha256 = sha256_hex(to_json(r)["config"].dump());
  return r;
}

std::vector<RecipeKeyInfo> recipe_keys() {
  std::vector<RecipeKeyInfo> out;
  for (const auto& f : fields()) {
    std::string rule;
    if (!f.choices.empty()) rule = "one of " + join(f.choices, ", ");
    else if (f.type == Type::Int || f.type == Type::Double) rule = "[" + fmt_num(f.lo) + ", " + fmt_num(f.hi) + "]";
    out.push_back({f.path, type_name(f.type), rule});
  }
  return out;
}

}  // namespace megacpp
