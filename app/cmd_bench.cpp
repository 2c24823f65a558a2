// megacpp bench --kernel NAME — time one registered op (kernels/registry): median ms over CUDA-event
// runs after warm-up, TFLOP/s and GB/s by formula, % of the GPU's peak, registers, smem, occupancy;
// a correctness check against the float64 reference at a small shape first (--no-check skips it).
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "app/cli_common.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/registry/op_registry.hpp"

namespace megacpp::app {

namespace {
// Measured on the device (docs/perf): H100 bf16 dense GEMM ~780 TFLOP/s, copy ~3.0 TB/s.
constexpr double kMeasuredPeakTflops = 780.0;
constexpr double kMeasuredPeakTBs = 3.0;
}  // namespace

void add_bench_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string kernel, dump;
    bool json = false, list = false, no_check = false, psiv = false;
    std::string backend, moe_path;
    std::vector<std::string> extra_flags;
    int warmup = 5, iters = 20;
    std::map<std::string, int64_t> values;
    std::map<std::string, CLI::Option*> given;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "Time one kernel: ms, TFLOP/s, GB/s, registers, smem, occupancy");
  cmd->add_option("--kernel", o->kernel, "Op name (see --list)");
  cmd->add_flag("--list", o->list, "List the registered ops and their shape parameters");
  cmd->add_flag("--json", o->json, "Print the result as JSON");
  cmd->add_option("--dump", o->dump, "Write inputs, outputs and gradients as .npy files into DIR");
  cmd->add_option("--warmup", o->warmup, "Warm-up runs")->check(CLI::NonNegativeNumber);
  cmd->add_option("--iters", o->iters, "Timed runs (median reported; at least 20 recommended)")->check(CLI::PositiveNumber);
  cmd->add_flag("--no-check", o->no_check, "Skip the correctness check against the reference");
  cmd->add_flag("--psiv-cache", o->psiv, "Mamba-3 MIMO: save PsiV in the forward and load it in the backward");
  cmd->add_option("--backend", o->backend, "Backend for ops that have several (e.g. attention: auto|cudnn|native)");
  cmd->add_option("--moe-path", o->moe_path, "MoE dispatch path: standard|fused");
  cmd->add_option("--flag", o->extra_flags, "Any op flag as KEY=VALUE (see --list; repeatable)");
  // Every shape parameter of every registered op becomes an option --<name>.
  std::set<std::string> seen;
  for (const auto& op : op_registry().all())
    for (const auto& p : op.params)
      if (seen.insert(p.name).second) {
        o->values[p.name] = p.default_value;
        // --kv_heads is also --kv-heads (the spelling users of Megatron/torch CLIs expect).
        std::string names = "--" + p.name;
        std::string dashed = p.name;
        std::replace(dashed.begin(), dashed.end(), '_', '-');
        if (dashed != p.name) names += ",--" + dashed;
        o->given[p.name] = cmd->add_option(names, o->values[p.name], p.help);
      }
  cmd->callback([o, &inv, &exit_code] {
    if (o->list || o->kernel.empty()) {
      for (const auto& op : op_registry().all()) {
        std::printf("%-16s %s%s\n   shape:", op.name.c_str(), op.summary.c_str(), op.needs_gpu ? " [GPU]" : "");
        for (const auto& p : op.params) std::printf(" --%s %lld", p.name.c_str(), static_cast<long long>(p.default_value));
        if (!op.flags.empty()) {
          std::printf("\n   flags:");
          for (const auto& f : op.flags) std::printf(" %s", f.c_str());
        }
        std::printf("\n");
      }
      if (op_registry().all().empty()) std::printf("no kernels are registered in this build\n");
      exit_code = o->kernel.empty() && !o->list ? kUnavailable : kOk;
      return;
    }
    exit_code = run_with_receipt("bench", inv, [&](RunReceipt& rc) {
      rc.set_location(inv.receipts_dir, o->kernel);
      const OpDef* op = op_registry().find(o->kernel);
      if (!op) {
        std::string names;
        for (const auto& n : op_registry().names()) names += " " + n;
        throw std::invalid_argument("unknown kernel '" + o->kernel + "'; registered:" + (names.empty() ? " (none)" : names));
      }
      std::map<std::string, int64_t> overrides;
      for (const auto& [name, opt] : o->given)
        if (opt->count() > 0) overrides[name] = o->values[name];
      const OpShape shape = resolve_shape(*op, overrides);
      OpOptions oo;
      oo.warmup = o->warmup;
      oo.iters = o->iters;
      oo.dump_dir = o->dump;
      if (o->psiv) oo.flags["psiv-cache"] = "true";
      if (!o->backend.empty()) oo.flags["backend"] = o->backend;
      if (!o->moe_path.empty()) oo.flags["moe-path"] = o->moe_path;
      for (const auto& kv : o->extra_flags) {
        const auto eq = kv.find('=');
        const std::string k = kv.substr(0, eq);
        if (eq == std::string::npos || std::find(op->flags.begin(), op->flags.end(), k) == op->flags.end()) {
          std::string known;
          for (const auto& f : op->flags) known += " " + f;
          throw std::invalid_argument("--flag " + kv + ": op " + op->name + " takes KEY=VALUE with KEY one of:" +
                                      (known.empty() ? " (none)" : known));
        }
        oo.flags[k] = kv.substr(eq + 1);
      }
      for (const auto& [k, v] : oo.flags)
        if (std::find(op->flags.begin(), op->flags.end(), k) == op->flags.end())
          throw std::invalid_argument("op " + op->name + " does not take the option for '" + k + "'");
      rc.result()["kernel"] = op->name;
      rc.result()["shape"] = shape;
      rc.result()["flags"] = oo.flags;
      if (op->needs_gpu && !gpu_available())
        throw std::runtime_error("bench " + op->name + " needs a GPU: " + gpu_runtime().why_not);
      if (!op->bench) throw std::runtime_error("op " + op->name + " has no benchmark");
      if (!o->no_check) {
        const auto shapes = op->test_shapes();
        if (!shapes.empty()) {
          const CheckResult c = op->check(shapes.front(), 20261123, oo);
          nlohmann::json tj = nlohmann::json::array();
          for (const auto& t : c.tensors) tj.push_back(to_json(t));
          rc.result()["check"] = {{"shape", shapes.front()}, {"pass", c.pass()}, {"tensors", tj}, {"note", c.note}};
          std::fprintf(stderr, "check [%s]: %s\n%s", shape_to_string(shapes.front()).c_str(),
                       c.pass() ? "pass" : "FAIL", format_metric_table(c.tensors).c_str());
          if (!c.pass()) throw std::runtime_error("correctness check failed; not timing a wrong kernel");
        }
      }
      const BenchResult b = op->bench(shape, oo);
      const double s = b.median_ms * 1e-3;
      const double tflops = s > 0 ? b.flops_executed / s * 1e-12 : 0;
      const double tflops_model = s > 0 ? b.flops_model / s * 1e-12 : 0;
      const double gbs = s > 0 ? b.bytes / s * 1e-9 : 0;
      const std::string gpu = gpu_runtime().gpus.empty() ? "" : gpu_runtime().gpus.front().name;
      nlohmann::json res = {{"median_ms", b.median_ms}, {"min_ms", b.min_ms}, {"max_ms", b.max_ms}, {"runs", b.runs},
                            {"flops_executed", b.flops_executed}, {"flops_model", b.flops_model}, {"bytes", b.bytes},
                            {"tflops_executed", tflops}, {"tflops_model", tflops_model}, {"gb_per_s", gbs},
                            {"pct_measured_peak_tflops", 100.0 * tflops / kMeasuredPeakTflops},
                            {"pct_measured_peak_bw", 100.0 * gbs / (kMeasuredPeakTBs * 1e3)},
                            {"gpu", gpu}, {"kernels", b.kernels}, {"extra", b.extra}, {"note", b.note}};
      rc.result()["timing"] = res;
      if (o->json) {
        std::printf("%s\n", rc.result().dump(2).c_str());
      } else {
        std::printf("%s [%s] on %s\n", op->name.c_str(), shape_to_string(shape).c_str(), gpu.c_str());
        std::printf("  median %.4f ms (min %.4f, max %.4f, %d runs)\n", b.median_ms, b.min_ms, b.max_ms, b.runs);
        std::printf("  %.1f TFLOP/s executed-work (%.1f%% of measured %.0f), %.1f TFLOP/s model, %.0f GB/s (%.1f%% of %.1f TB/s)\n",
                    tflops, 100 * tflops / kMeasuredPeakTflops, kMeasuredPeakTflops, tflops_model, gbs,
                    100 * gbs / (kMeasuredPeakTBs * 1e3), kMeasuredPeakTBs);
        for (const auto& k : b.kernels)
          std::printf("  %-22s regs %3d  smem %6lld+%-6lld B  local %lld B  blocks/SM %d  occupancy %.1f%%\n",
                      k.value("name", std::string("?")).c_str(), k.value("registers", 0),
                      static_cast<long long>(k.value("static_smem", 0)), static_cast<long long>(k.value("dynamic_smem", 0)),
                      static_cast<long long>(k.value("local_bytes", 0)), k.value("max_blocks_per_sm", 0),
                      100.0 * k.value("occupancy", 0.0));
        if (!b.extra.empty()) std::printf("  %s\n", b.extra.dump().c_str());
        if (!b.note.empty()) std::printf("  note: %s\n", b.note.c_str());
      }
      return kOk;
    });
  });
}

}  // namespace megacpp::app
