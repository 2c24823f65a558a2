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
#include "engine/model/model.hpp"
#include "engine/plan/plan.hpp"
#include "engine/train/checkpoint.hpp"
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
  std::string device = t.device;
  if (t.device == "cuda")
    throw std::runtime_error("train.device=cuda: the CUDA training backend has not landed in this build yet "
                             "(the CPU reference backend runs with train.device=cpu or auto)");
  rc.record_feature("device", t.device, "cpu",
                    t.device == "auto" ? (gpu_available() ? "the CUDA training backend has not landed yet; ran on the CPU reference backend"
                                                          : "no GPU: " + gpu_runtime().why_not)
                                       : "");
  rc.record_feature("precision", t.precision, "fp32",
                    t.precision == "fp32" ? "" : "the CPU reference backend computes in fp32");
  rc.record_feature("fused_residual", r.features.fused_residual, false,
                    r.features.fused_residual ? "the CPU reference backend runs residual add and RMSNorm as two loops" : "");
  if (r.layers.uses(BlockKind::Attention))
    rc.record_feature("attention_backend", r.features.attention_backend, "cpu-reference",
                      "the CPU training backend runs the float64 attention reference (cuDNN/native are CUDA backends)");
  if (r.layers.uses(BlockKind::Moe))
    rc.record_feature("fused_moe", r.features.fused_moe, "cpu-reference",
                      "the CPU training backend runs the float64 MoE reference (both dispatch paths are CUDA)");
  if (r.layers.uses(BlockKind::Mamba))
    rc.record_feature("psiv_cache", r.features.psiv_cache, false,
                      r.features.psiv_cache ? "the PsiV cache is a CUDA-kernel feature; the CPU reference recomputes" : "");
  if (!t.recompute.empty())
    rc.record_feature("recompute", t.recompute, nlohmann::json::array(), "activation recomputation is not implemented on the CPU backend");
  const int64_t world = 1, dp = 1;
  if (t.global_batch % (t.mbs * dp) != 0)
    throw std::runtime_error("train.global_batch must be a multiple of mbs·dp");
  const int64_t n_micro = t.global_batch / (t.mbs * dp);
  const int64_t tokens_per_step = t.global_batch * t.seq_len;

  // ---- initialization: model and optimizer ----
  std::unique_ptr<Model<float>> model;
  std::unique_ptr<AdamW<float>> adam;
  Plan plan;
  {
    BadputTimer bt(gp, Badput::initialization);
    model = std::make_unique<Model<float>>(r, t.mbs, t.seq_len);
    model->init_params(static_cast<uint64_t>(t.seed));
    adam = std::make_unique<AdamW<float>>(t, model->params().numel());
    plan = make_plan(r, PlanOptions{world, 0});
  }
  const double step_flops_per_token = plan.step_flops_per_token;
  const std::string gpu_name = gpu_runtime().gpus.empty() ? "" : gpu_runtime().gpus.front().name;
  tr["backend"] = "cpu";
  tr["params"] = model->params().numel();
  tr["layers"] = model->layer_names();
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
    const data::PreparedData pd = data::ensure_data(r.data);
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
      const std::string base = fs::path(rc.run_dir()).parent_path().string();
      const std::string ck = resolve_resume(opt.resume, r, base);
      const CheckpointData c = load_checkpoint(ck);
      auto& ps = model->params();
      if (c.params.size() != ps.data.size())
        throw std::runtime_error("checkpoint " + ck + " holds " + std::to_string(c.params.size()) +
                                 " parameters; this recipe's model has " + std::to_string(ps.data.size()));
      ps.data = c.params;
      adam->m = c.adam_m;
      adam->v = c.adam_v;
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
  train_loader->start_prefetch(start_step, n_micro, 0, static_cast<int>(world));
  nlohmann::json series = nlohmann::json::array();
  nlohmann::json checkpoints = nlohmann::json::array();
  const std::string ckpt_dir = rc.run_dir() + "/checkpoints";
  int64_t bad_in_a_row = 0, bad_total = 0, step = start_step;
  double last_loss = NAN, last_val = NAN;
  auto evaluate = [&]() {
    BadputTimer bt(gp, Badput::eval);
    double sum = 0, n = 0;
    for (int64_t i = 0; i < t.eval_batches; ++i) {
      const auto toks = val_loader->eval_batch(i);
      sum += model->forward_loss(toks.data(), t.mbs);
      n += static_cast<double>(t.mbs * t.seq_len);
    }
    last_val = sum / n;
    if (best_val < 0 || last_val < best_val) best_val = last_val;
    rc.metrics().append(nlohmann::json{{"step", step}, {"val_loss", last_val}}.dump());
    if (!opt.quiet) std::printf("step %lld | val loss %.4f (unigram baseline %.4f)\n", (long long)step, last_val, unigram_val);
  };
  auto checkpoint = [&]() {
    BadputTimer bt(gp, Badput::checkpoint_save);
    CheckpointData c;
    c.state = {step, tokens_seen, best_val, r.config_sha256, {{"recipe", r.name}, {"dtype", "fp32"}}};
    c.params = model->params().data;
    c.adam_m = adam->m;
    c.adam_v = adam->v;
    const std::string d = save_checkpoint(ckpt_dir, c, t.keep_checkpoints);
    checkpoints.push_back({{"step", step}, {"dir", d}});
    tr["checkpoints"] = checkpoints;
    rc.write();  // the receipt follows the run: a crash after this still has everything so far
  };
  auto finish_receipt = [&]() {
    tr["steps_completed"] = step;
    tr["tokens_seen"] = tokens_seen;
    tr["final_train_loss"] = std::isfinite(last_loss) ? nlohmann::json(last_loss) : nlohmann::json(nullptr);
    tr["final_val_loss"] = std::isfinite(last_val) ? nlohmann::json(last_val) : nlohmann::json(nullptr);
    tr["best_val_loss"] = best_val >= 0 ? nlohmann::json(best_val) : nlohmann::json(nullptr);
    tr["bad_steps"] = bad_total;
    tr["series"] = series;
    tr["peak_rss_mib"] = peak_rss_mib();
    tr["data_wait_s"] = train_loader->total_wait_s();
    tr["goodput"] = gp.to_json();
  };
  const double peak = dense_bf16_peak_tflops(gpu_name);
  const auto t_loop = std::chrono::steady_clock::now();
  for (; step < t.steps; ++step) {
    const double lr = learning_rate(t, step);
    model->params().zero_grad();
    double loss_sum = 0, wait = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t mi = 0; mi < n_micro; ++mi) {
      data::Batch b = train_loader->next();
      wait += b.wait_s;
      // Token-weighted: every token of the step counts equally, whatever micro-batch it is in.
      loss_sum += model->forward_backward(b.tokens.data(), t.mbs, 1.0 / static_cast<double>(tokens_per_step));
    }
    const double loss = loss_sum / static_cast<double>(tokens_per_step);
    const AuxLosses aux = model->aux_losses();
    const double gnorm = AdamW<float>::grad_norm(model->params());
    const bool bad = !std::isfinite(loss) || !std::isfinite(gnorm);
    if (bad) {
      ++bad_in_a_row, ++bad_total;
      std::fprintf(stderr, "step %lld: non-finite %s; step skipped (%lld in a row, limit %lld)\n", (long long)step,
                   std::isfinite(loss) ? "gradient" : "loss", (long long)bad_in_a_row, (long long)t.max_bad_steps);
      if (bad_in_a_row >= t.max_bad_steps) {
        finish_receipt();
        rc.finish_failed("stopped after " + std::to_string(bad_in_a_row) + " consecutive non-finite steps", "bad-steps");
        return 1;
      }
    } else {
      bad_in_a_row = 0;
      adam->step(model->params(), lr, gnorm, step);
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
    const double rss = peak_rss_mib();
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
    series.push_back(point);
    rc.metrics().append(point.dump());
    if (!opt.quiet && ((step + 1) % t.log_every == 0 || step + 1 == t.steps)) {
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
    const int64_t done = step + 1;
    if (t.eval_every > 0 && done % t.eval_every == 0 && !last) {
      ++step, evaluate(), --step;
    }
    if (t.checkpoint_every > 0 && done % t.checkpoint_every == 0 && !last) {
      ++step, checkpoint(), --step;
    }
    if (opt.interrupt_after_step == step + 1) request_training_interrupt();
    if (training_interrupt_requested() && !last) {
      g_interrupt = 0;
      ++step;
      checkpoint();
      train_loader->stop_prefetch();
      finish_receipt();
      rc.finish_interrupted("interrupted by signal after step " + std::to_string(step) + "; checkpoint written");
      std::fprintf(stderr, "interrupted: checkpoint at step %lld written; resume with --resume %s\n", (long long)step,
                   rc.run_dir().c_str());
      return 130;
    }
  }
  train_loader->stop_prefetch();
  if (step > start_step || t.steps == 0) {
    evaluate();
    checkpoint();
  }
  finish_receipt();
  if (!opt.quiet)
    std::printf("done: %lld steps, train loss %.4f, val loss %.4f (unigram baseline %.4f), goodput %.1f%%\n",
                (long long)step, last_loss, last_val, unigram_val, 100.0 * gp.to_json()["goodput"].get<double>());
  return 0;
}

}  // namespace megacpp
