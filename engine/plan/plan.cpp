// plan.cpp — what a recipe costs before it runs: the expanded layers, parameters (total, active,
// per rank), model FLOPs per token, and an estimate of memory per rank.
//
// The block definitions are the ones the engine builds (docs/params.md); the FLOP formulas are
// written out in docs/flops.md. Parameter and FLOP counts are exact for those definitions; the
// memory figures are estimates (saved-activation counts in the Megatron style, a fixed workspace).
#include "engine/plan/plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "engine/config/validate.hpp"
#include "kernels/common/gpu_device.hpp"

namespace megacpp {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kGiB = 1024.0 * kMiB;
constexpr double kUsableFraction = 0.92;   // leave 8% headroom for fragmentation, NCCL, CUDA context
constexpr double kDefaultGpuGiB = 80.0;    // no option and no GPU detected
constexpr double kWorkspaceFixed = 512.0 * kMiB;  // cuBLAS/cuDNN workspaces, comm buffers, allocator slack
constexpr int64_t kCeChunkTokens = 2048;   // chunked cross-entropy: logits of this many tokens at a time
constexpr int64_t kM2rnnCheckpointEvery = 64;  // M²RNN saves its fp32 state every 64 tokens

int64_t cdiv(int64_t a, int64_t b) { return b <= 0 ? a : (a + b - 1) / b; }

enum class Shard { Replicated, Tp };

// The cost of one layer of one block kind.
struct LayerCost {
  int64_t params = 0;          // total parameters of one layer, incl. its pre-norm
  int64_t active = 0;          // parameters touched per token
  double fwd_flops = 0;        // forward model FLOPs per token (at train.seq_len)
  int64_t rank_dense = 0;      // parameters of this layer held by one rank, replicated over dp
  int64_t rank_expert = 0;     // routed-expert parameters held by one rank, replicated over expert-dp
  double act_bytes = 0;        // saved activation bytes per token (one micro-batch token) on one rank

  void add(int64_t n, Shard s, int64_t tp) {
    params += n;
    active += n;
    rank_dense += s == Shard::Tp ? cdiv(n, tp) : n;
  }
};

// Saved intermediate widths (in units of ffn) of one MLP for backward: relu2 and gelu keep the
// pre-activation and the activation (2), swiglu keeps gate, up and their product (3).
int64_t saved_mult(const std::string& act) { return act == "swiglu" ? 3 : 2; }
// Weight matrices of one MLP in units of hidden·ffn: swiglu has gate, up, down (3); relu2/gelu up, down (2).
int64_t weight_mult(const std::string& act) { return act == "swiglu" ? 3 : 2; }

LayerCost layer_cost(const Recipe& r, BlockKind k, int64_t tp, int64_t ep) {
  const ModelConfig& m = r.model;
  const int64_t h = m.hidden, S = r.train.seq_len;
  const double dtp = static_cast<double>(tp);
  LayerCost c;
  c.add(h, Shard::Replicated, tp);  // pre-norm RMSNorm weight
  switch (k) {
    case BlockKind::Attention: {
      const auto& a = m.attention;
      const int64_t qkv = h * (a.heads + 2 * a.kv_heads) * a.head_dim;
      const int64_t out = a.heads * a.head_dim * h;
      c.add(qkv, Shard::Tp, tp);
      c.add(out, Shard::Tp, tp);
      c.fwd_flops = 2.0 * static_cast<double>(qkv + out) +
                    2.0 * static_cast<double>(a.heads * a.head_dim) * static_cast<double>(S);
      // norm input (h) + qkv + attention output + LSE (fp32, one per head)
      c.act_bytes = 2.0 * (static_cast<double>(h) +
                           static_cast<double>((a.heads + 2 * a.kv_heads) * a.head_dim + a.heads * a.head_dim) / dtp) +
                    4.0 * static_cast<double>(a.heads) / dtp;
      break;
    }
    case BlockKind::Mamba: {
      const auto& mb = m.mamba;
      const int64_t di = mamba_d_inner(m), H = mamba_heads(m), G = mb.ngroups, R = mb.mimo_rank, N = mb.state_dim,
                    P = mb.head_dim, L = mb.chunk_size, Na = mamba_n_angles(mb);
      const int64_t in_cols = 2 * di + 2 * G * R * N + 3 * H;  // [z, x, B, C, dd_dt, dd_A, trap]
      const int64_t in_proj = h * in_cols, angle_proj = h * Na, out_proj = di * h;
      c.add(in_proj, Shard::Tp, tp);
      c.add(angle_proj, Shard::Replicated, tp);  // replicated: all heads rotate with identical angles
      c.add(out_proj, Shard::Tp, tp);
      c.add(H, Shard::Tp, tp);                   // dt_bias
      c.add(2 * H * R * N, Shard::Tp, tp);       // B_bias, C_bias
      c.add(2 * N, Shard::Replicated, tp);       // B_norm, C_norm weights
      c.add(3 * H * R * P, Shard::Tp, tp);       // Ψ, Ζ, Φ
      c.add(H, Shard::Tp, tp);                   // D
      if (mb.outproj_norm) c.add(di, Shard::Tp, tp);
      const double scan = static_cast<double>(H) *
                          static_cast<double>((L + 1) * R * R * (N + P) + 4 * R * N * P);
      c.fwd_flops = 2.0 * static_cast<double>(in_proj + angle_proj + out_proj) + scan;
      // norm input (h) + in_proj output + scan output (d_inner) + normed B and C
      c.act_bytes = 2.0 * (static_cast<double>(h) +
                           static_cast<double>(in_cols + di + 2 * G * R * N) / dtp);
      break;
    }
    case BlockKind::Moe: {
      const auto& e = m.moe;
      const int64_t router = h * e.experts;
      const int64_t expert = weight_mult(e.activation) * h * e.ffn_hidden;
      const int64_t shared = e.shared_expert_hidden > 0 ? weight_mult(e.shared_activation) * h * e.shared_expert_hidden : 0;
      c.add(router, Shard::Replicated, tp);
      c.add(shared, Shard::Tp, tp);
      c.params += e.experts * expert;
      c.active += e.top_k * expert;
      c.rank_expert = (e.experts / ep) * cdiv(expert, tp);
      c.fwd_flops = 2.0 * static_cast<double>(router) + 2.0 * static_cast<double>(e.top_k * expert) +
                    2.0 * static_cast<double>(shared);
      // norm input (h) + per routed row: dispatched input (h) + ffn intermediates; shared expert
      // intermediates; router probabilities (fp32). EP moves rows between ranks but a rank still
      // processes top_k rows per local token on average, so routed rows are not divided by ep.
      c.act_bytes = 2.0 * static_cast<double>(h) +
                    static_cast<double>(e.top_k) * 2.0 *
                        (static_cast<double>(h) + static_cast<double>(saved_mult(e.activation) * e.ffn_hidden) / dtp) +
                    (e.shared_expert_hidden > 0
                         ? 2.0 * static_cast<double>(saved_mult(e.shared_activation) * e.shared_expert_hidden) / dtp
                         : 0.0) +
                    4.0 * static_cast<double>(e.experts);
      break;
    }
    case BlockKind::Dense: {
      const auto& d = m.mlp;
      const int64_t w = weight_mult(d.activation) * h * d.ffn_hidden;
      c.add(w, Shard::Tp, tp);
      c.fwd_flops = 2.0 * static_cast<double>(w);
      c.act_bytes = 2.0 * (static_cast<double>(h) + static_cast<double>(saved_mult(d.activation) * d.ffn_hidden) / dtp);
      break;
    }
    case BlockKind::M2rnn: {
      const auto& q = m.m2rnn;
      const int64_t N = q.heads, K = q.key_dim, V = q.value_dim, w = q.conv_width;
      const int64_t C = 2 * K + N * V;  // conv channels [q | k | v] with Nq = Nk = 1
      const int64_t w_in = h * (C + N + N * V), w_out = N * V * h;
      c.add(w_in, Shard::Tp, tp);
      c.add(C * w, Shard::Tp, tp);      // depthwise conv
      c.add(N, Shard::Tp, tp);          // A_log
      c.add(N, Shard::Tp, tp);          // dt_bias
      c.add(N * V * V, Shard::Tp, tp);  // W (state weight)
      c.add(N * V, Shard::Tp, tp);      // D
      c.add(N * V, Shard::Tp, tp);      // γ (output RMSNorm over N·V)
      c.add(w_out, Shard::Tp, tp);
      const double NKV = static_cast<double>(N * K * V);
      c.fwd_flops = 2.0 * static_cast<double>(w_in + w_out) + 2.0 * NKV * static_cast<double>(V) + 2.0 * NKV + NKV +
                    2.0 * static_cast<double>(C * w);
      // norm input (h) + projection + conv output; fp32 state checkpoints every 64 tokens
      c.act_bytes = 2.0 * (static_cast<double>(h) + static_cast<double>((C + N + N * V) + C) / dtp) +
                    4.0 * NKV / (static_cast<double>(kM2rnnCheckpointEvery) * dtp);
      break;
    }
  }
  return c;
}

std::string grp(int64_t v) {  // 1234567 -> "1,234,567"
  std::string s = std::to_string(v < 0 ? -v : v), o;
  int n = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (n && n % 3 == 0) o.push_back(',');
    o.push_back(*it);
    ++n;
  }
  if (v < 0) o.push_back('-');
  return {o.rbegin(), o.rend()};
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string human_count(double v) {  // 4.6e9 -> "4.600 B"
  if (v >= 1e9) return fmt("%.3f B", v / 1e9);
  if (v >= 1e6) return fmt("%.2f M", v / 1e6);
  if (v >= 1e3) return fmt("%.2f K", v / 1e3);
  return fmt("%.0f", v);
}

std::string human_flops(double v) {  // per token
  if (v >= 1e12) return fmt("%.3f TFLOP", v / 1e12);
  if (v >= 1e9) return fmt("%.3f GFLOP", v / 1e9);
  if (v >= 1e6) return fmt("%.3f MFLOP", v / 1e6);
  return fmt("%.0f FLOP", v);
}

std::string gib(double bytes) {  // GiB, or MiB below 1 GiB
  return bytes >= kGiB || bytes == 0 ? fmt("%.2f GiB", bytes / kGiB) : fmt("%.2f MiB", bytes / kMiB);
}

std::string pad(std::string s, size_t w, bool right = false) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

}  // namespace

Plan make_plan(const Recipe& r, const PlanOptions& opt) {
  const ModelConfig& m = r.model;
  Plan p;
  p.layers = r.layers.layers;
  p.tp = std::max<int64_t>(1, r.parallel.tp);
  p.ep = std::max<int64_t>(1, r.parallel.ep);
  p.world = std::max<int64_t>(1, opt.world);

  // Layout: dp = world / tp (data-parallel degree of the dense part); the ep ranks of an expert
  // group are carved out of dp, so the routed experts are replicated over world / (tp·ep) ranks.
  if (p.world % p.tp != 0)
    p.notes.push_back("world " + std::to_string(p.world) + " not divisible by tp " + std::to_string(p.tp) +
                      "; this layout cannot run");
  else if (p.world % (p.tp * p.ep) != 0)
    p.notes.push_back("world " + std::to_string(p.world) + " not divisible by tp·ep = " + std::to_string(p.tp * p.ep) +
                      " (tp " + std::to_string(p.tp) + " x ep " + std::to_string(p.ep) + "); this layout cannot run");
  p.dp = std::max<int64_t>(1, p.world / p.tp);
  const int64_t expert_dp = std::max<int64_t>(1, p.world / (p.tp * p.ep));

  const int64_t h = m.hidden, V = m.vocab;
  const int64_t T = r.train.mbs * r.train.seq_len;  // tokens of one micro-batch
  int64_t rank_dense = 0, rank_expert = 0;
  double act_per_token = 0;

  for (char letter : kBlockLetters) {
    BlockKind k;
    block_from_letter(letter, k);
    const int64_t n = static_cast<int64_t>(std::count(p.layers.begin(), p.layers.end(), k));
    if (n == 0) continue;
    const LayerCost c = layer_cost(r, k, p.tp, p.ep);
    BlockParams b;
    b.kind = k;
    b.layers = n;
    b.params_per_layer = c.params;
    b.active_per_layer = c.active;
    b.fwd_flops_per_token_per_layer = c.fwd_flops;
    p.blocks.push_back(b);
    p.total_params += n * c.params;
    p.active_params += n * c.active;
    p.fwd_flops_per_token += static_cast<double>(n) * c.fwd_flops;
    rank_dense += n * c.rank_dense;
    rank_expert += n * c.rank_expert;
    act_per_token += static_cast<double>(n) * c.act_bytes;
  }

  p.embedding_params = V * h;
  p.lm_head_params = m.tie_embeddings ? 0 : V * h;
  p.final_norm_params = h;
  const int64_t outer = p.embedding_params + p.lm_head_params + p.final_norm_params;
  p.total_params += outer;
  p.active_params += outer;
  p.fwd_flops_per_token += 2.0 * static_cast<double>(h) * static_cast<double>(V);  // LM head (tied or not)
  p.step_flops_per_token = 3.0 * p.fwd_flops_per_token;
  p.tokens_per_step = static_cast<double>(r.train.global_batch) * static_cast<double>(r.train.seq_len);

  rank_dense += cdiv(p.embedding_params, p.tp) + cdiv(p.lm_head_params, p.tp) + p.final_norm_params;
  p.params_per_rank = rank_dense + rank_expert;

  // Memory per rank (estimate).
  MemoryEstimate& mem = p.memory;
  const double ppr = static_cast<double>(p.params_per_rank);
  mem.weights = 2.0 * ppr;
  mem.grads = 4.0 * ppr;  // the CUDA backend accumulates gradients in fp32 (engine/cuda/cuda_model.cpp)
  const double sharded = r.parallel.zero >= 1
                             ? static_cast<double>(rank_dense) / static_cast<double>(p.dp) +
                                   static_cast<double>(rank_expert) / static_cast<double>(expert_dp)
                             : ppr;
  mem.master = 4.0 * sharded;
  mem.optimizer = 8.0 * sharded;
  act_per_token += 2.0 * static_cast<double>(h);  // final-norm input
  mem.activations = static_cast<double>(T) * act_per_token;
  if (r.features.psiv_cache && r.layers.uses(BlockKind::Mamba)) {
    const auto& mb = m.mamba;
    const double per_layer = static_cast<double>(T) * static_cast<double>(mamba_heads(m) / p.tp) *
                             static_cast<double>(mb.mimo_rank * mb.head_dim) * 2.0;
    mem.psiv_cache = per_layer * static_cast<double>(r.layers.count(BlockKind::Mamba));
  }
  // fixed workspace + one chunk of fp32 logits and their gradient (vocab-parallel: V/tp columns)
  mem.workspace = kWorkspaceFixed + static_cast<double>(std::min(T, kCeChunkTokens)) *
                                        static_cast<double>(cdiv(V, p.tp)) * 4.0 * 2.0;

  std::string gpu_src;
  if (opt.gpu_mem_gib > 0) {
    p.gpu_mem_gib = opt.gpu_mem_gib;
    gpu_src = "from --gpu-mem";
  } else {
    const GpuRuntime& rt = gpu_runtime();
    if (rt.available && !rt.gpus.empty() && rt.gpus[0].memory_gib > 0) {
      p.gpu_mem_gib = rt.gpus[0].memory_gib;
      gpu_src = "detected " + rt.gpus[0].name;
    } else {
      p.gpu_mem_gib = kDefaultGpuGiB;
      gpu_src = "default (no GPU detected" + (rt.why_not.empty() ? std::string() : ": " + rt.why_not) + ")";
    }
  }
  p.notes.push_back("gpu memory " + fmt("%.1f GiB", p.gpu_mem_gib) + " " + gpu_src);
  const double usable = kUsableFraction * p.gpu_mem_gib * kGiB;
  const bool layout_ok = p.world % (p.tp * p.ep) == 0;
  p.fits = layout_ok && mem.total() <= usable;
  if (!layout_ok)
    p.notes.push_back("cannot run on world " + std::to_string(p.world) + ": the memory estimate assumes the recipe's tp " +
                      std::to_string(p.tp) + " x ep " + std::to_string(p.ep) +
                      " layout; plan again with a world that is a multiple of " + std::to_string(p.tp * p.ep));
  if (mem.total() > usable)
    p.notes.push_back("does not fit: estimated " + gib(mem.total()) + " per rank > " +
                      fmt("%.0f%%", kUsableFraction * 100) + " of " + fmt("%.1f GiB", p.gpu_mem_gib) + " = " +
                      gib(usable) + " (try a larger world with parallel.zero=1, more tp/ep, or a smaller train.mbs)");
  return p;
}

nlohmann::json to_json(const Plan& p) {
  nlohmann::json layers = nlohmann::json::array();
  std::string letters;
  for (auto k : p.layers) letters.push_back(block_letter(k));
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : p.blocks)
    blocks.push_back({{"kind", block_name(b.kind)},
                      {"letter", std::string(1, block_letter(b.kind))},
                      {"layers", b.layers},
                      {"params_per_layer", b.params_per_layer},
                      {"active_per_layer", b.active_per_layer},
                      {"params", b.layers * b.params_per_layer},
                      {"active", b.layers * b.active_per_layer},
                      {"fwd_flops_per_token_per_layer", b.fwd_flops_per_token_per_layer},
                      {"fwd_flops_per_token", static_cast<double>(b.layers) * b.fwd_flops_per_token_per_layer}});
  const auto& mm = p.memory;
  return {{"layers", letters},
          {"depth", p.layers.size()},
          {"blocks", blocks},
          {"params",
           {{"embedding", p.embedding_params},
            {"lm_head", p.lm_head_params},
            {"final_norm", p.final_norm_params},
            {"total", p.total_params},
            {"active", p.active_params},
            {"per_rank", p.params_per_rank}}},
          {"flops",
           {{"fwd_per_token", p.fwd_flops_per_token},
            {"step_per_token", p.step_flops_per_token},
            {"tokens_per_step", p.tokens_per_step},
            {"per_step", p.step_flops_per_token * p.tokens_per_step},
            {"convention", "model FLOPs, 2 per multiply-add; step = 3 x forward; no recompute (docs/flops.md)"}}},
          {"layout", {{"world", p.world}, {"tp", p.tp}, {"ep", p.ep}, {"dp", p.dp},
                      {"expert_dp", std::max<int64_t>(1, p.world / (p.tp * p.ep))}}},
          {"memory_bytes_per_rank",
           {{"estimate", true},
            {"weights", mm.weights},
            {"grads", mm.grads},
            {"master", mm.master},
            {"optimizer", mm.optimizer},
            {"activations", mm.activations},
            {"psiv_cache", mm.psiv_cache},
            {"workspace", mm.workspace},
            {"total", mm.total()}}},
          {"layout_valid", p.world % (p.tp * p.ep) == 0},
          {"gpu_mem_gib", p.gpu_mem_gib},
          {"usable_fraction", kUsableFraction},
          {"fits", p.fits},
          {"notes", p.notes}};
}

std::string format_plan(const Recipe& r, const Plan& p) {
  std::ostringstream o;
  const ModelConfig& m = r.model;
  o << "plan: " << (r.name.empty() ? std::string("recipe") : r.name);
  if (!r.path.empty()) o << " (" << r.path << ")";
  o << "\n";
  o << "  counts of parameters and FLOPs are exact for the block definitions in docs/params.md and docs/flops.md;\n"
       "  memory figures are estimates.\n\n";

  // ---- layer table: every layer, runs of one kind compressed to "i-j" ----
  o << "layers: " << p.layers.size() << " (pattern " << m.pattern;
  if (r.layers.stages > 1) o << ", " << r.layers.stages << " pipeline stages";
  o << ")\n";
  {
    struct Run { size_t a, b; BlockKind k; int stage; };
    std::vector<Run> runs;
    const bool have_stages = r.layers.stage_of_layer.size() == p.layers.size();
    for (size_t i = 0; i < p.layers.size(); ++i) {
      const int st = have_stages ? r.layers.stage_of_layer[i] : 0;
      if (!runs.empty() && runs.back().k == p.layers[i] && runs.back().stage == st && runs.back().b + 1 == i)
        runs.back().b = i;
      else
        runs.push_back({i, i, p.layers[i], st});
    }
    constexpr int kPerLine = 4;
    int col = 0, stage = -1;
    for (const auto& run : runs) {
      if (r.layers.stages > 1 && run.stage != stage) {
        if (col) o << "\n";
        col = 0;
        stage = run.stage;
        o << "  stage " << stage << ":\n";
      }
      std::string idx = run.a == run.b ? std::to_string(run.a) : std::to_string(run.a) + "-" + std::to_string(run.b);
      std::string e = pad(idx, 6, true) + " " + block_letter(run.k) + " " + block_name(run.k);
      if (run.b > run.a) e += " x" + std::to_string(run.b - run.a + 1);
      if (col == 0) o << " ";
      o << pad(e, 26);
      if (++col == kPerLine) {
        o << "\n";
        col = 0;
      }
    }
    if (col) o << "\n";
    o << "  counts:";
    for (const auto& b : p.blocks) o << " " << b.layers << " " << block_letter(b.kind);
    o << "\n\n";
  }

  // ---- parameters ----
  o << "parameters                 layers     per layer            total   active per token\n";
  for (const auto& b : p.blocks) {
    std::string name = std::string(1, block_letter(b.kind)) + " " + block_name(b.kind);
    o << "  " << pad(name, 22) << pad(std::to_string(b.layers), 8, true) << pad(grp(b.params_per_layer), 14, true)
      << pad(grp(b.layers * b.params_per_layer), 17, true) << pad(grp(b.layers * b.active_per_layer), 19, true) << "\n";
  }
  o << "  " << pad("embedding", 44) << pad(grp(p.embedding_params), 17, true) << pad(grp(p.embedding_params), 19, true)
    << "\n";
  o << "  " << pad(m.tie_embeddings ? "lm head (tied)" : "lm head", 44) << pad(grp(p.lm_head_params), 17, true)
    << pad(grp(p.lm_head_params), 19, true) << "\n";
  o << "  " << pad("final norm", 44) << pad(grp(p.final_norm_params), 17, true)
    << pad(grp(p.final_norm_params), 19, true) << "\n";
  o << "  " << pad("total", 44) << pad(grp(p.total_params), 17, true) << pad(grp(p.active_params), 19, true) << "\n";
  o << "  total " << human_count(static_cast<double>(p.total_params)) << ", active per token "
    << human_count(static_cast<double>(p.active_params))
    << " (active = all non-expert parameters + router + top_k routed experts + shared expert; embedding and head included)\n";
  o << "  without embedding and head: total "
    << human_count(static_cast<double>(p.total_params - p.embedding_params - p.lm_head_params)) << ", active "
    << human_count(static_cast<double>(p.active_params - p.embedding_params - p.lm_head_params)) << "\n\n";

  // ---- FLOPs ----
  o << "FLOPs per token (model FLOPs, 2 per multiply-add, forward at seq_len " << r.train.seq_len
    << "; formulas in docs/flops.md)\n";
  for (const auto& b : p.blocks) {
    std::string name = std::string(1, block_letter(b.kind)) + " " + block_name(b.kind);
    o << "  " << pad(name, 22) << pad(std::to_string(b.layers), 8, true) << " x "
      << pad(human_flops(b.fwd_flops_per_token_per_layer), 16, true) << " = "
      << pad(human_flops(static_cast<double>(b.layers) * b.fwd_flops_per_token_per_layer), 16, true) << "\n";
  }
  const double head_flops = 2.0 * static_cast<double>(m.hidden) * static_cast<double>(m.vocab);
  o << "  " << pad("lm head", 30) << "   " << pad("", 16) << " = " << pad(human_flops(head_flops), 16, true) << "\n";
  o << "  forward            " << human_flops(p.fwd_flops_per_token) << "/token  ("
    << grp(static_cast<int64_t>(std::llround(p.fwd_flops_per_token))) << ")\n";
  o << "  training step      " << human_flops(p.step_flops_per_token) << "/token  (3 x forward; no recompute counted)\n";
  o << "  tokens per step    " << grp(static_cast<int64_t>(p.tokens_per_step)) << " = global_batch "
    << r.train.global_batch << " x seq_len " << r.train.seq_len << "\n";
  o << "  FLOPs per step     " << fmt("%.4g", p.step_flops_per_token * p.tokens_per_step) << "\n\n";

  // ---- memory ----
  const int64_t edp = std::max<int64_t>(1, p.world / (p.tp * p.ep));
  o << "memory per rank (ESTIMATE) — layout world " << p.world << ": tp " << p.tp << ", ep " << p.ep << ", dp " << p.dp
    << " (expert-dp " << edp << "), zero " << r.parallel.zero << "\n";
  o << "  parameters on this rank  " << grp(p.params_per_rank) << " (" << human_count(static_cast<double>(p.params_per_rank))
    << ")\n";
  const auto& mm = p.memory;
  const std::string zs = r.parallel.zero >= 1 ? ", ZeRO-1 sharded" : "";
  auto row = [&](const std::string& what, double bytes) {
    o << "  " << pad(what, 58) << pad(gib(bytes), 12, true) << "\n";
  };
  row("weights (bf16, 2 B/param)", mm.weights);
  row("gradients (fp32, 4 B/param)", mm.grads);
  row("master weights (fp32, 4 B/param" + zs + ")", mm.master);
  row("AdamW m, v (fp32, 8 B/param" + zs + ")", mm.optimizer);
  row("activations (mbs " + std::to_string(r.train.mbs) + " x seq " + std::to_string(r.train.seq_len) + ", bf16)",
      mm.activations);
  {
    // per-block activation breakdown
    for (const auto& b : p.blocks) {
      const LayerCost c = layer_cost(r, b.kind, p.tp, p.ep);
      const double bytes = static_cast<double>(b.layers) * c.act_bytes * static_cast<double>(r.train.mbs * r.train.seq_len);
      o << "    " << pad(std::string(1, block_letter(b.kind)) + " " + block_name(b.kind) + " (" +
                           grp(static_cast<int64_t>(std::llround(c.act_bytes))) + " B/token/layer)", 56)
        << pad(gib(bytes), 12, true) << "\n";
    }
  }
  row(std::string("PsiV cache") + (r.features.psiv_cache ? "" : " (features.psiv_cache off)"), mm.psiv_cache);
  row("workspace (512 MiB + chunked-CE logits buffer)", mm.workspace);
  row("total", mm.total());
  const double usable = kUsableFraction * p.gpu_mem_gib * kGiB;
  o << "  GPU memory " << fmt("%.1f GiB", p.gpu_mem_gib) << "; usable " << fmt("%.0f%%", kUsableFraction * 100)
    << " (8% headroom for fragmentation, NCCL and the CUDA context) = " << gib(usable) << "\n";
  const bool layout_ok = p.world % (p.tp * p.ep) == 0;
  const bool mem_ok = mm.total() <= usable;
  if (!layout_ok)
    o << "CANNOT RUN: world " << p.world << " is not a multiple of tp x ep = " << p.tp * p.ep << " (estimate for that layout: "
      << gib(mm.total()) << " per rank " << (mem_ok ? "<=" : ">") << " " << gib(usable) << " usable); use --world "
      << p.tp * p.ep << " or a multiple\n";
  else if (p.fits)
    o << "FITS: estimated " << gib(mm.total()) << " per rank <= " << gib(usable) << " usable of "
      << fmt("%.1f GiB", p.gpu_mem_gib) << "\n";
  else
    o << "DOES NOT FIT: estimated " << gib(mm.total()) << " per rank > " << gib(usable) << " usable of "
      << fmt("%.1f GiB", p.gpu_mem_gib) << "\n";
  if (!p.notes.empty()) {
    o << "notes:\n";
    for (const auto& n : p.notes) o << "  - " << n << "\n";
  }
  // no trailing blanks on any line
  std::string out = o.str(), clean;
  clean.reserve(out.size());
  size_t start = 0;
  while (start < out.size()) {
    size_t nl = out.find('\n', start);
    if (nl == std::string::npos) nl = out.size();
    size_t end = nl;
    while (end > start && out[end - 1] == ' ') --end;
    clean.append(out, start, end - start);
    if (nl < out.size()) clean.push_back('\n');
    start = nl + 1;
  }
  return clean;
}

}  // namespace megacpp
