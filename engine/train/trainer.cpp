#include "engine/train/trainer.hpp"

#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/data/corpus.hpp"
#include "engine/data/loader.hpp"
#include "engine/data/unigram.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/model/model.hpp"
#include "engine/plan/plan.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/device_model.hpp"
#include "engine/train/goodput.hpp"
#include "engine/train/optimizer.hpp"
#include "kernels/common/gpu_device.hpp"

namespace megacpp {

namespace fs = std::filesystem;

namespace {
volatile std::sig_atomic_t g_interrupt = 0;
void on_signal(int) { g_interrupt = 1; }

double peak_rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

std::string human(double x) {
  char b[32];
  if (x >= 1e6) std::snprintf(b, sizeof b, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(b, sizeof b, "%.1fk", x / 1e3);
  else std::snprintf(b, sizeof b, "%.0f", x);
  return b;
}

nlohmann::json read_json_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// RUN_DIR | checkpoint dir | "latest" (newest run dir of this recipe under the receipts base).
std::string resolve_resume(const std::string& what, const Recipe& r, const std::string& base) {
  fs::path p(what);
  if (what == "latest") {
    std::vector<fs::path> runs;
    if (fs::is_directory(base))
      for (const auto& e : fs::directory_iterator(base)) {
        const std::string n = e.path().filename().string();
        if (e.is_directory() && n.find("-train-" + r.name) != std::string::npos &&
            !list_checkpoints((e.path() / "checkpoints").string()).empty())
          runs.push_back(e.path());
      }
    if (runs.empty()) throw std::runtime_error("--resume latest: no run of recipe '" + r.name + "' with a checkpoint under " + base);
    std::sort(runs.begin(), runs.end());
    p = runs.back();
  }
  if (fs::exists(p / "manifest.json")) return p.string();  // a checkpoint directory
  if (fs::is_directory(p / "checkpoints")) return latest_valid_checkpoint((p / "checkpoints").string());
  throw std::runtime_error("--resume " + what + ": neither a run directory with checkpoints/ nor a checkpoint directory");
}
// Requested vs observed for every choice the backend makes (a fallback is recorded, never silent).
void record_backend_features(const Recipe& r, RunReceipt& rc, bool cuda, const std::string& cuda_refusal) {
  const auto& t = r.train;
  rc.record_feature("device", t.device, cuda ? "cuda" : "cpu", cuda ? "" : cuda_refusal);
  rc.record_feature("precision", t.precision, cuda ? "bf16" : "fp32",
                    cuda || t.precision == "fp32" ? "" : "the CPU reference backend computes in fp32");
  const bool fr = r.features.fused_residual;
  rc.record_feature("fused_residual", fr, cuda,
                    cuda ? (fr ? "" : "the CUDA backend always fuses the residual add into the next RMSNorm")
                         : (fr ? "the CPU reference backend runs residual add and RMSNorm as two loops" : ""));
  if (r.layers.uses(BlockKind::Attention))
    rc.record_feature("attention_backend", r.features.attention_backend, cuda ? "per layer" : "cpu-reference",
                      cuda ? "the backend each attention layer ran (and any fallback with its reason) is in training.cuda.blocks"
                           : "the CPU training backend runs the float64 attention reference (cuDNN/native are CUDA backends)");
  if (r.layers.uses(BlockKind::Moe))
    rc.record_feature("fused_moe", r.features.fused_moe, cuda ? "per layer" : "cpu-reference",
                      cuda ? "the dispatch path each MoE layer ran is in training.cuda.blocks"
                           : "the CPU training backend runs the float64 MoE reference (both dispatch paths are CUDA)");
  if (r.layers.uses(BlockKind::Mamba))
    rc.record_feature("psiv_cache", r.features.psiv_cache, cuda ? r.features.psiv_cache : false,
                      !cuda && r.features.psiv_cache ? "the PsiV cache is a CUDA-kernel feature; the CPU reference recomputes" : "");
  if (!t.recompute.empty())
    rc.record_feature("recompute", t.recompute, cuda ? nlohmann::json(t.recompute) : nlohmann::json::array(),
                      cuda ? "" : "activation recomputation is a CUDA-backend feature (device memory); the CPU backend saves every block's activations");
}
}  // namespace

void install_training_signal_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}
bool training_interrupt_requested() { return g_interrupt != 0; }
void request_training_interrupt() { g_interrupt = 1; }

int run_training(const Recipe& r, const TrainOptions& opt, RunReceipt& rc) {
  GoodputTracker gp;
  const auto& t = r.train;
  auto& tr = rc.training();
  tr = nlohmann::json::object();
  // ---- device and precision: requested vs observed, never silent ----
  // cuda: the CUDA backend or a clear error. auto: the CUDA backend when there is a GPU and bf16
  // precision, and the model builds there (a block refuses what it cannot do, e.g. a TP/EP layout);
  // otherwise the CPU reference backend, the reason recorded. Several ranks: on any communicator (NCCL,
  // one process per GPU; or in-process ranks sharing a GPU in tests); the ranks agree (below): if any
  // rank cannot run on CUDA, all fall back (auto) or all fail (cuda), naming that rank and its reason.
  bool use_cuda = false;
  std::string cuda_refusal;
  if (t.device == "cuda") {
    if (t.precision != "bf16")
      throw ConfigError(mark_of(r, "train.precision"), "train.precision", "cuda-precision", t.precision,
                        "bf16 with train.device=cuda (the CUDA backend keeps fp32 master weights and computes in bf16); "
                        "fp32 runs on train.device=cpu");
    use_cuda = true;
  } else if (t.device == "auto") {
    if (!gpu_available()) cuda_refusal = "no GPU: " + gpu_runtime().why_not;
    else if (t.precision != "bf16") cuda_refusal = "train.precision=" + t.precision + ": the CUDA backend computes in bf16";
    else use_cuda = true;  // unless the model does not build there (recorded below)
  }
  // ---- data parallelism (comm == nullptr: the single-rank path) ----
  Communicator* comm = opt.comm && opt.comm->world() > 1 ? opt.comm : nullptr;
  const int rank = comm ? comm->rank() : 0;
  const bool lead = rank == 0;  // writes the receipt, the metrics.jsonl series, the replicated checkpoint
  const bool zero = comm && r.parallel.zero >= 1;
  if (comm) verify_same_config(*comm, r.config_sha256);
  // ---- tensor/expert parallelism (docs/launch.md): rank = dp_index·tp + tp_index (TP innermost, within a
  // node); dp = world / tp. EP is carved out of the DP ranks (Megatron): an EP group is `ep` consecutive DP
  // indices of one TP index; dense parameters are replicated over all dp ranks, expert parameters over the
  // dp/ep ranks of the same EP index (the expert-data-parallel group). Expert FFNs are split over TP too. ----
  const int64_t tp = r.parallel.tp, ep = r.parallel.ep;
  const bool mpar = tp > 1 || ep > 1;
  int64_t dp_idx = rank;  // this rank's index among the data-parallel replicas
  std::unique_ptr<Communicator> tp_comm, dp_comm, ep_comm, edp_comm;
  ModelParallel mp;
  if (mpar) {
    const int64_t w = comm ? comm->world() : 1;
    if (w % tp != 0 || (w / tp) % ep != 0)
      throw std::runtime_error("parallel.tp=" + std::to_string(tp) + ", parallel.ep=" + std::to_string(ep) + " with " +
                               std::to_string(w) + " rank(s): the world size must be a multiple of tp, and ep must divide "
                               "dp = world/tp (EP groups are carved out of the data-parallel ranks); launch tp·ep·k ranks");
    if (zero)
      throw std::runtime_error("parallel.zero=1 with parallel.tp=" + std::to_string(tp) + ", parallel.ep=" + std::to_string(ep) +
                               ": ZeRO-1 is implemented for pure data parallelism only (set zero: 0, or tp: 1 and ep: 1)");
    const int64_t dpn = w / tp, ti = rank % tp, di = rank / tp;
    dp_idx = di;
    tp_comm = comm->split(static_cast<int>(di), static_cast<int>(ti));
    dp_comm = comm->split(static_cast<int>(ti), static_cast<int>(di));
    ep_comm = comm->split(static_cast<int>(ti * (dpn / ep) + di / ep), static_cast<int>(di % ep));
    edp_comm = comm->split(static_cast<int>(ti * ep + di % ep), static_cast<int>(di / ep));
    mp.tp = tp_comm.get(), mp.tp_rank = static_cast<int>(ti), mp.tp_size = static_cast<int>(tp);
    mp.ep = ep_comm.get(), mp.ep_rank = static_cast<int>(di % ep), mp.ep_size = static_cast<int>(ep);
  }
  Communicator* dpc = mpar ? dp_comm.get() : comm;  // the data-parallel group (losses, dense gradients)
  if (!comm && r.parallel.zero >= 1)
    rc.record_feature("zero", r.parallel.zero, 0, "one rank: there is nothing to shard the optimizer state over");
  const int64_t world = comm ? comm->world() : 1, dp = world / tp;
  if (t.global_batch % (t.mbs * dp) != 0)
    throw std::runtime_error("train.global_batch must be a multiple of mbs·dp (global_batch " + std::to_string(t.global_batch) +
                             ", mbs " + std::to_string(t.mbs) + ", dp " + std::to_string(dp) + ")");
  // Every rank knows rank 0's run directory (checkpoints, per-rank metrics).
  const std::string shared_run_dir = comm ? broadcast_string(*comm, lead ? rc.run_dir() : std::string(), 0) : std::string();
  auto run_dir = [&]() -> std::string { return comm ? shared_run_dir : rc.run_dir(); };
  const int64_t n_micro = t.global_batch / (t.mbs * dp);
  const int64_t tokens_per_step = t.global_batch * t.seq_len;

  // ---- initialization: model and optimizer ----
  std::unique_ptr<Model<float>> model;
  std::unique_ptr<AdamW<float>> adam;
  std::unique_ptr<DeviceModel> gpu;  // the CUDA backend (parameters, gradients and AdamW state on the GPU)
  Plan plan;
  {
    BadputTimer bt(gp, Badput::initialization);
    plan = make_plan(r, PlanOptions{world, 0});
    if (use_cuda) {
      try {
        gpu = make_cuda_model(r, t.mbs, t.seq_len, static_cast<uint64_t>(t.seed), mp);
      } catch (const std::exception& e) {
        if (t.device == "cuda" && !comm) throw;
        cuda_refusal = std::string("the model does not build on the CUDA backend: ") + e.what();
        use_cuda = false;
      }
    }
    if (comm && t.device != "cpu") {  // the ranks agree: the first rank that cannot run on CUDA decides for all
      const double mine = use_cuda ? 0.0 : 1.0;
      std::vector<double> all(static_cast<std::size_t>(comm->world()));
      comm->all_gather(&mine, all.data(), 1);
      int first = -1;
      for (int q = 0; q < comm->world() && first < 0; ++q)
        if (all[static_cast<std::size_t>(q)] > 0) first = q;
      if (first >= 0) {
        const std::string why = broadcast_string(*comm, rank == first ? cuda_refusal : std::string(), first);
        cuda_refusal = "rank " + std::to_string(first) + " of " + std::to_string(comm->world()) + ": " + why;
        gpu.reset();
        use_cuda = false;
        if (t.device == "cuda") throw std::runtime_error("train.device=cuda: " + cuda_refusal);
      }
    }
    if (!use_cuda && t.device == "auto" && !cuda_refusal.empty() && lead)
      std::fprintf(stderr, "train.device=auto: %s; running on the CPU reference backend\n", cuda_refusal.c_str());
    try {
      if (!use_cuda) {
        model = std::make_unique<Model<float>>(r, t.mbs, t.seq_len, mp);  // mp: this rank's TP/EP shard (or none)
        model->init_params(static_cast<uint64_t>(t.seed));
        adam = std::make_unique<AdamW<float>>(t, model->params().numel());
      }
    } catch (const std::bad_alloc&) {
      // Out of memory: say how much the recipe needs instead of dying with std::bad_alloc.
      char msg[512];
      std::snprintf(msg, sizeof msg,
                    "out of memory building the model and optimizer: %.3f B parameters (fp32 weights, grads and AdamW "
                    "state on the CPU backend: %.1f GiB); `megacpp plan %s` estimates %.1f GiB per rank on a GPU. "
                    "Reduce model size, mbs or seq_len.",
                    static_cast<double>(plan.total_params) * 1e-9, static_cast<double>(plan.total_params) * 16.0 / 1073741824.0,
                    r.path.c_str(), plan.memory.total() / 1073741824.0);
      throw std::runtime_error(msg);
    }
  }
  record_backend_features(r, rc, use_cuda, cuda_refusal);
  // ZeRO-1 geometry: the flat buffer of N elements is cut into `world` shards of S (the last padded).
  const int64_t N = gpu ? gpu->numel() : model->params().numel();
  const int64_t S = zero ? (N + world - 1) / world : N;
  const int64_t lo = zero ? std::min(N, rank * S) : 0, hi = zero ? std::min(N, lo + S) : N;
  std::vector<float> gpad, gshard, ppad, pshard;
  // The CUDA backend's data-parallel reduction: on the device (pure DP: buckets overlapped with the last
  // micro-batch's backward, or ZeRO-1), or host-staged per TP/EP group (below) with tp/ep.
  const bool dev_dp = gpu && comm && !mpar;
  if (dev_dp) {
    DeviceModel::DataParallel d;
    d.comm = comm, d.zero = zero, d.overlap = r.parallel.overlap_grad_reduce;
    d.bucket_elems = static_cast<std::size_t>(std::max<int64_t>(1, opt.bucket_elems));
    gpu->set_data_parallel(d);
  }
  if (zero && !gpu) {
    adam = std::make_unique<AdamW<float>>(t, S);  // this rank's shard of m and v only
    gpad.assign(static_cast<std::size_t>(S * world), 0.f), ppad.assign(static_cast<std::size_t>(S * world), 0.f);
    gshard.assign(static_cast<std::size_t>(S), 0.f), pshard.assign(static_cast<std::size_t>(S), 0.f);
  }
  if (comm) {
    tr["distributed"] = {{"world", world}, {"dp", dp}, {"tp", tp}, {"ep", ep}, {"zero", zero ? 1 : 0}, {"communicator", comm->kind()},
                         {"bucket_elems", opt.bucket_elems},
                         {"data", "rank k takes micro-batches k·m … k·m+m-1 of the step's global batch (loader.batch(step, "
                                  "global micro, 0, 1)): the global batch is the same for every DP size"}};
    if (mpar)
      tr["distributed"]["layout"] = "rank = dp_index*tp + tp_index; EP groups: ep consecutive dp indices; this rank: dp_index " +
                                    std::to_string(dp_idx) + ", tp_index " + std::to_string(rank % tp) + ", ep_index " +
                                    std::to_string(dp_idx % ep);
    if (mpar)
      tr["distributed"]["data"] = "data-parallel replica k (dp_index) takes micro-batches k·m … k·m+m-1 of the step's global "
                                  "batch; the TP ranks of a replica take the same ones";
    if (mpar && tp > 1 && r.layers.uses(BlockKind::Moe))
      tr["distributed"]["expert_tp"] = tp;  // E's FFNs are split over TP like the dense MLP
    tr["distributed"]["overlap_grad_reduce"] = dev_dp && !zero && r.parallel.overlap_grad_reduce;
    if (!gpu)
      tr["distributed"]["grad_reduction"] = "CPU backend: host buffers reduced after the backward (not overlapped)";
    else if (mpar)
      tr["distributed"]["grad_reduction"] =
          "CUDA backend, host-staged: the fp32 gradients are downloaded into the host layout, reduced per group (TP-partial "
          "over TP, dense over DP, experts over the expert-data-parallel group) and their norm computed there (as the CPU "
          "path), then uploaded with the clip scale from that norm (not overlapped)";
    else if (zero)
      tr["distributed"]["grad_reduction"] =
          "CUDA backend, ZeRO-1 on the device: reduce-scatter of the fp32 gradients into this rank's shard after the "
          "backward (not overlapped), grad norm over the shards, AdamW on the shard (m, v shard-sized), all-gather of the "
          "updated fp32 master shard and its bf16 copy";
    else if (r.parallel.overlap_grad_reduce)
      tr["distributed"]["grad_reduction"] =
          "CUDA backend: per-layer buckets of the fp32 gradients all-reduced during the last micro-batch's backward, on a "
          "communication thread that waits on a CUDA event per layer; the step waits only for what is left";
    else
      tr["distributed"]["grad_reduction"] =
          "CUDA backend: the same per-layer buckets all-reduced after the backward (parallel.overlap_grad_reduce: false)";
    if (lead) rc.set_parallel({{"world", world}, {"tp", tp}, {"ep", ep}, {"dp", dp}, {"zero", zero ? 1 : 0}});
  }
  const double step_flops_per_token = plan.step_flops_per_token;
  const std::string gpu_name = gpu_runtime().gpus.empty() ? "" : gpu_runtime().gpus.front().name;
  tr["backend"] = gpu ? "cuda" : "cpu";
  tr["params"] = N;
  tr["layers"] = gpu ? gpu->layer_names() : model->layer_names();
  tr["step_flops_per_token"] = step_flops_per_token;
  tr["tokens_per_step"] = tokens_per_step;
  tr["micro_batches_per_step"] = n_micro;

  // ---- training prep: data and (optionally) a checkpoint restore ----
  std::unique_ptr<data::TokenLoader> train_loader, val_loader;
  double unigram_h = 0, unigram_val = 0;
  int64_t start_step = 0, tokens_seen = 0;
  double best_val = -1;
  {
    BadputTimer bt(gp, Badput::training_prep);
    if (comm && !lead) comm->barrier();  // rank 0 prepares (or validates) the data cache first
    const data::PreparedData pd = data::ensure_data(r.data);
    if (comm && lead) comm->barrier();
    tr["data"] = {{"dir", pd.dir}, {"reused_cache", pd.reused}, {"prepare_s", pd.seconds}};
    train_loader = std::make_unique<data::TokenLoader>(pd.dir, "train", t.seq_len, t.mbs, static_cast<uint64_t>(t.seed));
    val_loader = std::make_unique<data::TokenLoader>(pd.dir, "val", t.seq_len, t.mbs, static_cast<uint64_t>(t.seed));
    if (train_loader->vocab_size() > r.model.vocab)
      throw ConfigError(mark_of(r, "model.vocab"), "model.vocab", "vocab-too-small",
                        std::to_string(r.model.vocab), ">= the tokenizer's vocabulary (" + std::to_string(train_loader->vocab_size()) + ")");
    unigram_h = data::unigram_entropy_nats(pd.dir, "train");
    unigram_val = data::unigram_val_cross_entropy_nats(pd.dir);
    tr["unigram_entropy_train_nats"] = unigram_h;
    tr["unigram_val_cross_entropy_nats"] = unigram_val;
    tr["train_tokens"] = train_loader->tokens();
    tr["val_tokens"] = val_loader->tokens();
    if (!opt.resume.empty()) {
      const std::string base = fs::path(run_dir()).parent_path().string();
      const std::string ck = resolve_resume(opt.resume, r, base);
      CheckpointData c = load_checkpoint(ck);
      if (mpar) {  // checkpoints hold the full (tp = ep = 1) layout: keep this rank's shards (any TP/EP/DP size wrote it)
        const auto& lp = gpu ? gpu->host_layout() : model->params();
        const auto nf = static_cast<std::size_t>(full_numel(lp));
        if (c.params.size() != nf || c.adam_m.size() != nf || c.adam_v.size() != nf)
          throw std::runtime_error("checkpoint " + ck + " holds " + std::to_string(c.params.size()) + " parameters and " +
                                   std::to_string(c.adam_m.size()) + " optimizer elements; this recipe's full model has " +
                                   std::to_string(nf));
        for (auto* v : {&c.params, &c.adam_m, &c.adam_v}) {
          std::vector<float> loc(lp.data.size(), 0.f);
          shard_from_full(lp, v->data(), loc.data());
          v->swap(loc);
        }
      }
      auto& ps = gpu ? gpu->host_layout() : model->params();
      if (c.params.size() != ps.data.size())
        throw std::runtime_error("checkpoint " + ck + " holds " + std::to_string(c.params.size()) +
                                 " parameters; this recipe's model has " + std::to_string(ps.data.size()));
      ps.data = c.params;
      if (comm && (c.adam_m.size() != ps.data.size() || c.adam_v.size() != ps.data.size()))
        throw std::runtime_error("checkpoint " + ck + ": optimizer state of " + std::to_string(c.adam_m.size()) + " elements for " +
                                 std::to_string(ps.data.size()) + " parameters");
      if (gpu) {
        if (c.adam_m.size() != ps.data.size() || c.adam_v.size() != ps.data.size())
          throw std::runtime_error("checkpoint " + ck + ": optimizer state of " + std::to_string(c.adam_m.size()) +
                                   " elements for " + std::to_string(ps.data.size()) + " parameters");
        if (zero) {  // ZeRO-1 on the device: this rank's slice of the full m and v (whatever DP size wrote them)
          std::vector<float> ms(static_cast<std::size_t>(S), 0.f), vs(static_cast<std::size_t>(S), 0.f);
          std::copy(c.adam_m.begin() + lo, c.adam_m.begin() + hi, ms.begin());
          std::copy(c.adam_v.begin() + lo, c.adam_v.begin() + hi, vs.begin());
          gpu->upload(c.params, &ms, &vs);
        } else {
          gpu->upload(c.params, &c.adam_m, &c.adam_v);
        }
      } else if (zero) {  // re-shard: this rank's slice of the full m and v (whatever DP size wrote them)
        adam->m.assign(static_cast<std::size_t>(S), 0.f), adam->v.assign(static_cast<std::size_t>(S), 0.f);
        std::copy(c.adam_m.begin() + lo, c.adam_m.begin() + hi, adam->m.begin());
        std::copy(c.adam_v.begin() + lo, c.adam_v.begin() + hi, adam->v.begin());
      } else {
        adam->m = c.adam_m;
        adam->v = c.adam_v;
      }
      if (c.state.extra.contains("dp")) tr["resumed_from_dp"] = c.state.extra["dp"];
      start_step = c.state.step;
      tokens_seen = c.state.tokens_seen;
      best_val = c.state.best_val_loss;
      tr["resumed_from"] = ck;
      tr["resumed_at_step"] = start_step;
      if (c.state.config_sha256 != r.config_sha256)
        tr["resume_config_changed"] = "the resolved config differs from the checkpoint's (e.g. train.steps changed)";
      // Wasted progress: steps the interrupted run completed after this checkpoint.
      const fs::path prev = fs::path(ck).parent_path().parent_path() / "receipt.json";
      if (fs::exists(prev)) {
        try {
          const auto pj = read_json_file(prev);
          const int64_t done = pj.at("training").value("steps_completed", start_step);
          const double ideal = pj.at("training").at("goodput").value("ideal_step_s", 0.0);
          const double wasted = static_cast<double>(std::max<int64_t>(0, done - start_step)) * ideal;
          gp.add(Badput::wasted_progress_from_disruption, wasted);
          tr["wasted_steps"] = std::max<int64_t>(0, done - start_step);
        } catch (const std::exception&) {
          tr["wasted_steps"] = "unknown (previous receipt unreadable)";
        }
      }
    }
  }

  // ---- the loop ----
  if (!comm) train_loader->start_prefetch(start_step, n_micro, 0, static_cast<int>(world));
  // DP: rank k's micro-batch mi is the global micro-batch k·n_micro + mi of the step (DP-size invariant).
  auto dp_batch = [&](int64_t s, int64_t mi, data::Batch& b) {
    const auto w0 = std::chrono::steady_clock::now();
    b.step = s, b.micro = dp_idx * n_micro + mi;  // TP ranks of one replica read the same micro-batches
    b.tokens.resize(static_cast<std::size_t>(train_loader->batch_elems()));
    train_loader->batch(s, b.micro, 0, 1, b.tokens);
    b.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  };
  // Gradient reduction: plain DP all-reduces the flat grad buffer in fixed buckets; ZeRO-1
  // reduce-scatters it into this rank's shard. The backward already scaled by 1/(global tokens), so the
  // sum over ranks is the token mean over all ranks.
  auto mp_grad_norm = [&](const ParamStore<float>& ps) {  // TP/EP: each tensor counted once — shards summed over their group
    double rep = 0, tps = 0, eps = 0, both = 0;
    for (std::size_t i = 0; i < ps.specs.size(); ++i) {
      const ParamSpec& sp = ps.specs[i];
      const float* gi = ps.grads.data() + sp.offset;
      double ss = 0;
      for (int64_t k = 0; k < sp.numel; ++k) ss += static_cast<double>(gi[k]) * gi[k];
      for (const auto& rg : sp.tp_replicated) {  // held by every TP rank: counted once
        double sr = 0;
        for (int64_t k = rg.first; k < rg.first + rg.second; ++k) sr += static_cast<double>(gi[k]) * gi[k];
        ss -= sr, rep += sr;
      }
      (sp.shard == ShardGroup::tp ? tps : sp.shard == ShardGroup::ep ? eps : sp.shard == ShardGroup::tp_ep ? both : rep) += ss;
    }
    if (tp > 1) {
      double tb[2] = {tps, both};
      tp_comm->all_reduce_sum(tb, 2);
      tps = tb[0], both = tb[1];
    }
    if (ep > 1) {
      double eb[2] = {eps, both};
      ep_comm->all_reduce_sum(eb, 2);
      eps = eb[0], both = eb[1];
    }
    return std::sqrt(rep + tps + eps + both);
  };
  double staged_norm = 0;  // CUDA + TP/EP: the norm computed on the host-staged gradients
  auto reduce_grads = [&]() {
    if (dev_dp) return gpu->finish_grad_reduction();
    if (gpu && !mpar) return gpu->all_reduce_grads(*comm, static_cast<std::size_t>(std::max<int64_t>(1, opt.bucket_elems)));
    if (zero) {
      auto& g = model->params().grads;
      std::copy(g.begin(), g.end(), gpad.begin());
      comm->reduce_scatter_sum(gpad.data(), gshard.data(), static_cast<std::size_t>(S));
    } else if (mpar) {  // TP/EP, per tensor: TP-partial gradients over TP; then dense over dp, experts over dp/ep
      // CUDA: host-staged — the device gradients into the host layout, the CPU path's reduction and norm, back up.
      auto& ps = gpu ? gpu->host_layout() : model->params();
      if (gpu) gpu->download_grads(ps.grads);
      tp_reduce_partial_grads(ps, mp);  // replicated tensors (and ranges) whose TP gradients are partial sums
      for (std::size_t i = 0; i < ps.specs.size(); ++i) {
        const ParamSpec& sp = ps.specs[i];
        float* gi = ps.grad(static_cast<int>(i));
        const auto n = static_cast<std::size_t>(sp.numel);
        const bool expert = sp.shard == ShardGroup::ep || sp.shard == ShardGroup::tp_ep;
        Communicator* c = expert ? edp_comm.get() : dp_comm.get();
        if (c->world() > 1) c->all_reduce_sum(gi, n);
      }
      if (gpu) {
        staged_norm = mp_grad_norm(ps);
        gpu->upload_grads(ps.grads);
        gpu->set_grad_norm(staged_norm);
      }
    } else {
      auto& g = model->params().grads;
      const auto B = static_cast<std::size_t>(std::max<int64_t>(1, opt.bucket_elems));
      for (std::size_t off = 0; off < g.size(); off += B) comm->all_reduce_sum(g.data() + off, std::min(B, g.size() - off));
    }
  };
  auto zero_grad_norm = [&]() {
    double ss = 0;
    for (int64_t k = 0; k < hi - lo; ++k) ss += static_cast<double>(gshard[static_cast<std::size_t>(k)]) * gshard[static_cast<std::size_t>(k)];
    comm->all_reduce_sum(&ss, 1);
    return std::sqrt(ss);
  };
  auto gather_params = [&]() {  // ZeRO-1: every rank's updated shard to every rank
    auto& p = model->params().data;
    std::fill(pshard.begin(), pshard.end(), 0.f);
    std::copy(p.begin() + lo, p.begin() + hi, pshard.begin());
    comm->all_gather(pshard.data(), ppad.data(), static_cast<std::size_t>(S));
    std::copy(ppad.begin(), ppad.begin() + N, p.begin());
  };
  std::unique_ptr<LineStream> rank_metrics;  // DP: metrics-rank<k>.jsonl of every rank
  if (comm) rank_metrics = std::make_unique<LineStream>(run_dir() + "/metrics-rank" + std::to_string(rank) + ".jsonl");
  std::vector<double> step_times;  // DP: this rank's step times (for rank 0's receipt)
  // DP: this rank's communication inside the steps: all collectives' seconds, exposed, overlapped, the
  // communication thread's collective seconds and the training thread's waits for it.
  double step_comm_s = 0, step_exposed_s = 0, step_overlapped_s = 0, step_thread_s = 0, step_wait_s = 0;
  nlohmann::json series = nlohmann::json::array();
  nlohmann::json checkpoints = nlohmann::json::array();
  const std::string ckpt_dir = run_dir() + "/checkpoints";
  int64_t bad_in_a_row = 0, bad_total = 0, step = start_step;
  int64_t completed = start_step;  // optimizer steps done: what evaluations and checkpoints are labelled with
  double last_loss = NAN, last_val = NAN;
  auto evaluate = [&]() {
    BadputTimer bt(gp, Badput::eval);
    double sum = 0, n = 0;
    // DP: the eval batches are split over the data-parallel replicas (TP ranks of a replica share them);
    // under EP a replica with no batch left in the last round runs one anyway (discarded): its EP group's
    // all-to-alls need every member.
    const int64_t per = comm ? dp : 1, rounds = (t.eval_batches + per - 1) / per;
    for (int64_t k = 0; k < rounds; ++k) {
      const int64_t i = k * per + (comm ? dp_idx : 0);
      if (i >= t.eval_batches) {
        if (ep > 1) {
          const auto toks = val_loader->eval_batch(0);
          if (gpu) gpu->forward_loss(toks.data(), t.mbs);
          else model->forward_loss(toks.data(), t.mbs);
        }
        continue;
      }
      const auto toks = val_loader->eval_batch(i);
      sum += gpu ? gpu->forward_loss(toks.data(), t.mbs) : model->forward_loss(toks.data(), t.mbs);
      n += static_cast<double>(t.mbs * t.seq_len);
    }
    if (comm) {
      double sn[2] = {sum, n};
      dpc->all_reduce_sum(sn, 2);
      sum = sn[0], n = sn[1];
    }
    last_val = sum / n;
    if (best_val < 0 || last_val < best_val) best_val = last_val;
    if (lead) rc.metrics().append(nlohmann::json{{"step", completed}, {"val_loss", last_val}}.dump());
    if (!opt.quiet && lead) std::printf("step %lld | val loss %.4f (unigram baseline %.4f)\n", (long long)completed, last_val, unigram_val);
  };
  auto checkpoint = [&]() {
    BadputTimer bt(gp, Badput::checkpoint_save);
    CheckpointData c;
    c.state = {completed, tokens_seen, best_val, r.config_sha256, {{"recipe", r.name}, {"dtype", "fp32"}}};
    std::string d;
    if (gpu && (!comm || (!zero && !mpar))) {  // data-parallel replicas are identical: rank 0 writes
      if (comm) c.state.extra["dp"] = dp;
      if (lead) {
        gpu->download(c.params, c.adam_m, c.adam_v);
        c.state.extra["dtype"] = "fp32 master weights of the CUDA backend";
        d = save_checkpoint(ckpt_dir, c, t.keep_checkpoints);
      }
      if (comm) comm->barrier();  // published before any rank goes on
    } else if (!comm) {
      c.params = model->params().data;
      c.adam_m = adam->m;
      c.adam_v = adam->v;
      d = save_checkpoint(ckpt_dir, c, t.keep_checkpoints);
    } else {
      // CUDA (ZeRO-1 or TP/EP): every rank's device state in the host layout (m, v: its ZeRO shard), then
      // exactly what the CPU path writes.
      std::vector<float> hp, hm, hv;
      if (gpu) {
        gpu->download(hp, hm, hv);
        c.state.extra["dtype"] = "fp32 master weights of the CUDA backend";
      }
      const std::vector<float>& P = gpu ? hp : model->params().data;
      const std::vector<float>& Mo = gpu ? hm : adam->m;
      const std::vector<float>& Vo = gpu ? hv : adam->v;
      c.state.extra["dp"] = dp;
      if (mpar) c.state.extra["tp"] = tp, c.state.extra["ep"] = ep;
      if (!zero) {  // replicated: rank 0 writes everything (under TP/EP gathered to the full tp = ep = 1 layout)
        std::vector<float> fp, fm, fv;
        if (mpar) {
          const auto& lp = gpu ? gpu->host_layout() : model->params();
          const auto nf = static_cast<std::size_t>(full_numel(lp));
          fp.resize(nf), fm.resize(nf), fv.resize(nf);
          gather_full(lp, mp, P.data(), fp.data());
          gather_full(lp, mp, Mo.data(), fm.data());
          gather_full(lp, mp, Vo.data(), fv.data());
        }
        if (lead) {
          c.params = mpar ? std::move(fp) : P;
          c.adam_m = mpar ? std::move(fm) : Mo;
          c.adam_v = mpar ? std::move(fv) : Vo;
          d = save_checkpoint(ckpt_dir, c, t.keep_checkpoints);
        }
      } else {  // rank 0 writes the params; every rank its optimizer shard, into the same unpublished dir
        c.state.extra["zero"] = {{"world", world}, {"shard", S}, {"numel", N}};
        auto shards = [&](const std::string& tmp) {
          write_zero_shard(tmp, rank, static_cast<int>(world), Mo, Vo);
          comm->barrier();  // every shard is in place
        };
        if (lead) {
          c.params = P;
          d = save_checkpoint(ckpt_dir, c, t.keep_checkpoints, [&](const std::string& tmp) {
            broadcast_string(*comm, tmp, 0);
            shards(tmp);
            for (int64_t q = 0; q < world; ++q) {
              char rd[32];
              std::snprintf(rd, sizeof rd, "rank-%05lld", static_cast<long long>(q));
              if (!fs::exists(fs::path(tmp) / "zero" / rd / "COMPLETE"))
                throw std::runtime_error("checkpoint: the ZeRO shard of rank " + std::to_string(q) + " was not written");
            }
          });
        } else {
          shards(broadcast_string(*comm, std::string(), 0));
        }
      }
      comm->barrier();  // published before any rank goes on
    }
    if (!lead) return;
    checkpoints.push_back({{"step", completed}, {"dir", d}});
    tr["checkpoints"] = checkpoints;
    rc.write();  // the receipt follows the run: a crash after this still has everything so far
  };
  nlohmann::json block_ms = nlohmann::json::object();  // CUDA: per-letter forward/backward ms over the run
  double peak_device_mib = 0;
  auto finish_receipt = [&]() {
    tr["steps_completed"] = completed;
    tr["tokens_seen"] = tokens_seen;
    tr["final_train_loss"] = std::isfinite(last_loss) ? nlohmann::json(last_loss) : nlohmann::json(nullptr);
    tr["final_val_loss"] = std::isfinite(last_val) ? nlohmann::json(last_val) : nlohmann::json(nullptr);
    tr["best_val_loss"] = best_val >= 0 ? nlohmann::json(best_val) : nlohmann::json(nullptr);
    tr["bad_steps"] = bad_total;
    tr["series"] = series;
    tr["peak_rss_mib"] = peak_rss_mib();
    if (gpu) {
      nlohmann::json cj = gpu->record();
      cj["memory"] = gpu->memory();
      cj["memory"]["peak_device_used_mib"] = peak_device_mib;
      // Per-letter forward/backward milliseconds over the whole run (CUDA events around every block).
      cj["time_ms"] = block_ms;
      tr["cuda"] = cj;
    }
    tr["data_wait_s"] = train_loader->total_wait_s();
    tr["goodput"] = gp.to_json();
    if (comm) {  // per-rank step times and communication per collective type, gathered for rank 0's receipt
      constexpr std::size_t K = static_cast<std::size_t>(CollKind::kCount);
      auto st = comm->stats();  // before the gather below
      for (Communicator* sc : {tp_comm.get(), dp_comm.get(), ep_comm.get(), edp_comm.get()})  // TP/EP sub-groups
        if (sc)
          for (std::size_t k = 0; k < st.size(); ++k)
            st[k].calls += sc->stats()[k].calls, st[k].seconds += sc->stats()[k].seconds, st[k].bytes += sc->stats()[k].bytes;
      std::vector<double> mine(step_times);
      mine.push_back(step_comm_s), mine.push_back(step_exposed_s), mine.push_back(step_overlapped_s);
      mine.push_back(step_thread_s), mine.push_back(step_wait_s);
      for (const auto& x : st) mine.push_back(static_cast<double>(x.calls)), mine.push_back(x.seconds), mine.push_back(static_cast<double>(x.bytes));
      std::vector<double> all(mine.size() * static_cast<std::size_t>(world));
      comm->all_gather(mine.data(), all.data(), mine.size());
      nlohmann::json per_rank = nlohmann::json::array();
      double comm_total = 0, step_comm_max = 0, exposed_max = 0, overlapped_max = 0;
      for (int64_t q = 0; q < world; ++q) {
        const double* row = all.data() + static_cast<std::size_t>(q) * mine.size();
        const std::size_t ns = step_times.size();
        nlohmann::json ms = nlohmann::json::array(), cj = nlohmann::json::object();
        double sum = 0, mx = 0, cs = 0;
        for (std::size_t i = 0; i < ns; ++i) ms.push_back(row[i] * 1e3), sum += row[i], mx = std::max(mx, row[i]);
        const double q_step_comm = row[ns], q_exposed = row[ns + 1], q_overlapped = row[ns + 2], q_thread = row[ns + 3],
                     q_wait = row[ns + 4];
        step_comm_max = std::max(step_comm_max, q_step_comm), exposed_max = std::max(exposed_max, q_exposed);
        overlapped_max = std::max(overlapped_max, q_overlapped);
        for (std::size_t k = 0; k < K; ++k) {
          const double* e = row + ns + 5 + 3 * k;
          if (e[0] > 0) cj[coll_name(static_cast<CollKind>(k))] = {{"calls", e[0]}, {"seconds", e[1]}, {"bytes", e[2]}}, cs += e[1];
        }
        comm_total = std::max(comm_total, cs);
        per_rank.push_back({{"rank", q}, {"step_ms", ms}, {"mean_step_ms", ns ? 1e3 * sum / static_cast<double>(ns) : 0.0},
                            {"max_step_ms", 1e3 * mx}, {"comm", cj}, {"comm_s", cs}, {"step_comm_s", q_step_comm},
                            {"exposed_comm_s", q_exposed}, {"overlapped_comm_s", q_overlapped},
                            {"comm_thread_s", q_thread}, {"comm_wait_s", q_wait}});
      }
      tr["distributed"]["per_rank"] = per_rank;
      // Inside the steps, the largest over the ranks: exposed = the training thread blocked on communication
      // (its own collectives + its waits for the communication thread); overlapped = the communication
      // thread's collective seconds not waited for. The CPU backend (and the host-staged TP/EP path) reduce
      // after the backward: all of it is exposed. comm_s counts every collective of the run (evaluation,
      // checkpoints, setup included).
      tr["distributed"]["comm_s"] = comm_total;
      tr["distributed"]["step_comm_s"] = step_comm_max;
      tr["distributed"]["exposed_comm_s"] = exposed_max;
      tr["distributed"]["overlapped_comm_s"] = overlapped_max;
    }
  };
  const double peak = dense_bf16_peak_tflops(gpu_name);
  const auto t_loop = std::chrono::steady_clock::now();
  data::Batch b;  // reused by every micro-batch: no allocation in the step loop
  for (; step < t.steps; ++step) {
    const double lr = learning_rate(t, step);
    if (gpu) gpu->zero_grad();
    else model->params().zero_grad();
    double loss_sum = 0, wait = 0;
    // Communication seconds so far over every group (the step's: everything up to the optimizer step,
    // the TP/EP collectives inside the forward/backward included).
    auto comm_seconds = [&]() {
      double x = 0;
      for (Communicator* sc : {comm, tp_comm.get(), dp_comm.get(), ep_comm.get(), edp_comm.get()})
        if (sc)
          for (const auto& y : sc->stats()) x += y.seconds;
      return x;
    };
    const double comm_s0 = comm ? comm_seconds() : 0.0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t mi = 0; mi < n_micro; ++mi) {
      if (comm) dp_batch(step, mi, b);
      else train_loader->next(b);
      if (dev_dp && mi + 1 == n_micro) gpu->mark_last_micro();  // its backward starts the bucket reduction
      wait += b.wait_s;
      // Token-weighted: every token of the step counts equally, whatever micro-batch it is in.
      const double scale = 1.0 / static_cast<double>(tokens_per_step);
      loss_sum += gpu ? gpu->forward_backward(b.tokens.data(), t.mbs, scale) : model->forward_backward(b.tokens.data(), t.mbs, scale);
    }
    const double local_loss_sum = loss_sum;
    if (comm) {
      reduce_grads();
      dpc->all_reduce_sum(&loss_sum, 1);  // TP ranks of a replica hold the same loss: sum over replicas only
    }
    const double loss = loss_sum / static_cast<double>(tokens_per_step);
    const AuxLosses aux = gpu ? gpu->aux_losses() : model->aux_losses();
    const double gnorm = gpu ? (mpar ? staged_norm : gpu->grad_norm())
                             : zero ? zero_grad_norm() : mpar ? mp_grad_norm(model->params()) : AdamW<float>::grad_norm(model->params());
    const bool bad = !std::isfinite(loss) || !std::isfinite(gnorm);
    if (bad) {
      ++bad_in_a_row, ++bad_total;
      if (lead) std::fprintf(stderr, "step %lld: non-finite %s; step skipped (%lld in a row, limit %lld)\n", (long long)step,
                   std::isfinite(loss) ? "gradient" : "loss", (long long)bad_in_a_row, (long long)t.max_bad_steps);
      if (bad_in_a_row >= t.max_bad_steps) {
        finish_receipt();
        if (lead) rc.finish_failed("stopped after " + std::to_string(bad_in_a_row) + " consecutive non-finite steps", "bad-steps");
        return 1;
      }
    } else {
      bad_in_a_row = 0;
      if (gpu) {
        gpu->optimizer_step(lr, step);
      } else if (zero) {
        adam->step_shard(model->params(), gshard.data(), lo, hi, lr, gnorm, step);
        gather_params();
      } else {
        adam->step(model->params(), lr, gnorm, step);
      }
    }
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double step_s = std::max(1e-9, total_s - wait);
    gp.add(Badput::data_loading_sync, wait);
    gp.add_step(step_s);
    tokens_seen += tokens_per_step;
    last_loss = loss;
    const double tps = static_cast<double>(tokens_per_step) / total_s;
    const double tflops = step_flops_per_token * tps * 1e-12;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_loop).count();
    const double eta = elapsed / static_cast<double>(step + 1 - start_step) * static_cast<double>(t.steps - step - 1);
    // Memory: the GPU's (cudaMemGetInfo: ours plus the libraries') on CUDA, the process's peak RSS on the CPU.
    const double rss = gpu ? gpu->memory().value("device_used_mib", 0.0) : peak_rss_mib();
    nlohmann::json point = {{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens", tokens_seen},
                            {"ms", total_s * 1e3}, {"tokens_per_s", tps}, {"tflops", tflops},
                            {"mfu", peak > 0 ? nlohmann::json(tflops / peak) : nlohmann::json(nullptr)},
                            {"peak_mem_mib", rss}, {"data_wait_ms", wait * 1e3}, {"skipped", bad}};
    if (r.layers.uses(BlockKind::Moe)) {
      // Router statistics of the last micro-batch, summed over the MoE layers.
      const auto& tpe = aux.tokens_per_expert;
      double mean = 0, var = 0;
      for (auto c : tpe) mean += static_cast<double>(c);
      mean /= std::max<std::size_t>(1, tpe.size());
      for (auto c : tpe) var += (static_cast<double>(c) - mean) * (static_cast<double>(c) - mean);
      point["aux_loss"] = aux.aux;
      point["z_loss"] = aux.z;
      point["tokens_per_expert"] = {{"min", tpe.empty() ? 0 : *std::min_element(tpe.begin(), tpe.end())},
                                    {"max", tpe.empty() ? 0 : *std::max_element(tpe.begin(), tpe.end())},
                                    {"std", std::sqrt(var / std::max<std::size_t>(1, tpe.size()))}};
      if (r.model.moe.capacity_factor > 0) point["dropped_frac"] = aux.dropped_frac;
      tr["aux_loss"] = aux.aux;
      tr["z_loss"] = aux.z;
    }
    if (comm) {
      // Exposed communication: the time the training thread was blocked on communication — the step's
      // collectives it ran itself plus its wait for the communication thread (which includes that
      // thread's staging copies on a host communicator). Overlapped: the communication thread's
      // collective seconds the training thread did not wait for (max(0, thread − wait)).
      const double comm_s1 = comm_seconds();
      const DeviceModel::DpTimes dt = dev_dp ? gpu->take_dp_times() : DeviceModel::DpTimes{};
      const double exposed = std::max(0.0, (comm_s1 - comm_s0) - dt.async_comm_s) + dt.wait_s;
      const double overlapped = std::max(0.0, dt.async_comm_s - dt.wait_s);
      step_comm_s += comm_s1 - comm_s0, step_exposed_s += exposed, step_overlapped_s += overlapped;
      step_thread_s += dt.async_comm_s, step_wait_s += dt.wait_s;
      step_times.push_back(step_s);
      rank_metrics->append(nlohmann::json{{"rank", rank}, {"step", step + 1}, {"loss", loss},
                                          {"local_loss", local_loss_sum / static_cast<double>(n_micro * t.mbs * t.seq_len)},
                                          {"ms", total_s * 1e3}, {"comm_ms", (comm_s1 - comm_s0) * 1e3},
                                          {"exposed_comm_ms", exposed * 1e3}, {"data_wait_ms", wait * 1e3},
                                          {"grad_norm", gnorm}, {"skipped", bad}}.dump());
    }
    if (gpu) {
      const nlohmann::json times = gpu->take_block_times();  // (not a temporary in the range-for: C++20 lifetime)
      for (const auto& [k, v] : times.items()) block_ms[k] = block_ms.value(k, 0.0) + v.get<double>();
      peak_device_mib = std::max(peak_device_mib, rss);
    }
    series.push_back(point);
    if (lead) rc.metrics().append(point.dump());
    if (!opt.quiet && lead && ((step + 1) % t.log_every == 0 || step + 1 == t.steps)) {
      char mfu[16];
      if (peak > 0) std::snprintf(mfu, sizeof mfu, "%.1f%%", 100 * tflops / peak);
      else std::snprintf(mfu, sizeof mfu, "n/a");
      char auxs[64] = "";
      if (r.layers.uses(BlockKind::Moe)) std::snprintf(auxs, sizeof auxs, " | aux %.4f z %.4f", aux.aux, aux.z);
      std::printf("step %5lld/%lld | loss %.4f%s | lr %.2e | norm %.3f | %7.1f ms | %s tok/s | %.3f TFLOP/s | MFU %s | mem %.0f MiB | eta %.0fs\n",
                  (long long)(step + 1), (long long)t.steps, loss, auxs, lr, gnorm, total_s * 1e3, human(tps).c_str(), tflops,
                  mfu, rss, eta);
      std::fflush(stdout);
    }
    const bool last = step + 1 == t.steps;
    completed = step + 1;
    if (t.eval_every > 0 && completed % t.eval_every == 0 && !last) evaluate();
    if (t.checkpoint_every > 0 && completed % t.checkpoint_every == 0 && !last) checkpoint();
    if (opt.interrupt_after_step == step + 1) request_training_interrupt();
    if (opt.fail_rank == rank && opt.fail_after_step == step + 1)
      throw std::runtime_error("injected failure after step " + std::to_string(step + 1) + " (TrainOptions::fail_after_step)");
    bool stop_now = training_interrupt_requested();
    if (comm) {  // every rank stops at the same step
      double f = stop_now ? 1 : 0;
      comm->all_reduce_sum(&f, 1);
      stop_now = f > 0;
    }
    if (stop_now && !last) {
      g_interrupt = 0;
      checkpoint();
      train_loader->stop_prefetch();
      finish_receipt();
      if (!lead) return 130;
      rc.finish_interrupted("interrupted by signal after step " + std::to_string(completed) + "; checkpoint written");
      std::fprintf(stderr, "interrupted: checkpoint at step %lld written; resume with --resume %s\n", (long long)completed,
                   rc.run_dir().c_str());
      return 130;
    }
  }
  train_loader->stop_prefetch();
  if (completed > start_step || t.steps == 0) {
    evaluate();
    checkpoint();
  }
  finish_receipt();
  if (!opt.quiet && lead)
    std::printf("done: %lld steps, train loss %.4f, val loss %.4f (unigram baseline %.4f), goodput %.1f%%\n",
                (long long)step, last_loss, last_val, unigram_val, 100.0 * gp.to_json()["goodput"].get<double>());
  return 0;
}

}  // namespace megacpp
