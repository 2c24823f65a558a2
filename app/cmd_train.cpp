// megacpp train RECIPE — load and validate the recipe, then run the training loop (engine/train).
#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/config/recipe_loader.hpp"
#include "engine/dist/bootstrap.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/dist/local_workers.hpp"
#include "engine/train/trainer.hpp"
#include "kernels/common/gpu_device.hpp"

namespace megacpp::app {

void add_train_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string recipe, resume;
    std::vector<std::string> sets;
    int nproc = 1;
    std::string launch = "auto";
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("train", "Train a model from a recipe (1 GPU, N GPUs, N nodes; CPU for tiny runs)");
  cmd->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  cmd->add_option("--set", o->sets, "Override a recipe key: --set train.steps=100 (repeatable)");
  cmd->add_option("--resume", o->resume, "Resume from RUN_DIR, a checkpoint directory, or 'latest'");
  cmd->add_option("--nproc-per-node", o->nproc,
                  "Data-parallel ranks on this node (docs/launch.md): one worker process per GPU (like torchrun), or "
                  "N in-process ranks (threads of this process) on the CPU backend; --launch picks")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--launch", o->launch,
                  "How --nproc-per-node starts its ranks: processes (one per GPU, NCCL), threads (in-process "
                  "communicator; with the CUDA backend they share one GPU: tests and measurements), or auto "
                  "(processes when the run will be on GPUs and there are at least N, else threads)")
      ->check(CLI::IsMember({"auto", "processes", "threads"}));
  cmd->add_flag("--quiet", o->quiet, "No per-step log lines");
  cmd->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("train", inv, [&](RunReceipt& rc) -> int {
      const Recipe r = load_recipe(o->recipe, o->sets);
      rc.set_recipe(r);
      if (!inv.receipts_dir.empty()) rc.set_location(inv.receipts_dir, r.name);
      auto refuse = [&](const std::string& msg) {
        std::fprintf(stderr, "%s\n", msg.c_str());
        rc.finish_failed(msg, "not-available");
        return kUnavailable;
      };
      const LaunchEnv env = detect_launch_env();
      if (env.world > 1) {
        // Multi-process: one process per GPU, NCCL bootstrapped over TCP (engine/dist/bootstrap.hpp).
        const std::string where = env.launcher + " environment: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world);
        if (o->nproc > 1)
          return refuse("--nproc-per-node " + std::to_string(o->nproc) + " inside a multi-process launch (" + where +
                        "): use one or the other");
        if (!gpu_available())
          return refuse("multi-process training (" + where + ") needs GPUs and NCCL: no GPU here (" + gpu_runtime().why_not +
                        "); on the CPU use megacpp train --nproc-per-node N (in-process ranks)");
      }
      install_training_signal_handlers();
      TrainOptions to;
      to.resume = o->resume;
      to.quiet = o->quiet;
      if (env.world > 1) {
        // Data parallelism on the CUDA backend over NCCL (the trainer refuses the layouts it cannot run).
        // Rank 0 writes the run's receipt and checkpoints; every other rank keeps its own receipt in a
        // directory of its own (…-rank<k>), next to its metrics stream.
        if (env.rank > 0) rc.set_location("", r.name + "-rank" + std::to_string(env.rank));
        // The bootstrap's store stays up as a heartbeat: a collective that fails or times out names the
        // rank that died (or reported a failure), in this rank's error and so in rank 0's receipt.
        std::unique_ptr<Heartbeat> hb;
        const auto comm = bootstrap_nccl(env, r.config_sha256, r.parallel.timeout_s, &hb);
        to.comm = comm.get();
        to.quiet = o->quiet || env.rank > 0;
        try {
          return run_training(r, to, rc);
        } catch (const std::exception& e) {
          if (hb) hb->report_failure(e.what());
          throw;
        }
      }
      if (o->nproc > 1) {
        // processes: N workers of this executable, one per GPU, with the torchrun environment
        // (engine/dist/local_workers.hpp); they bootstrap NCCL themselves and rank 0 writes the run's receipt.
        // threads: N in-process ranks; with the CUDA backend they share this process's GPU.
        const int gpus = gpu_available() ? static_cast<int>(gpu_runtime().gpus.size()) : 0;
        const bool on_gpu = r.train.device == "cuda" || (r.train.device == "auto" && gpus > 0 && r.train.precision == "bf16");
        const std::string mode = o->launch != "auto" ? o->launch : on_gpu && gpus >= o->nproc ? "processes" : "threads";
        rc.doc()["launch"] = {{"nproc_per_node", o->nproc}, {"requested", o->launch}, {"observed", mode}, {"gpus", gpus}};
        if (mode == "processes") {
          if (gpus < o->nproc)
            return refuse("--nproc-per-node " + std::to_string(o->nproc) + " --launch processes: one process per GPU needs " +
                          std::to_string(o->nproc) + " GPUs, this node has " + std::to_string(gpus) +
                          " (use --launch threads for in-process ranks)");
          std::vector<std::string> argv;  // this command line without the launcher's own options
          for (std::size_t i = 0; i < inv.argv.size(); ++i) {
            const std::string& a = inv.argv[i];
            if (a == "--nproc-per-node" || a == "--launch") { ++i; continue; }
            if (a.rfind("--nproc-per-node=", 0) == 0 || a.rfind("--launch=", 0) == 0) continue;
            argv.push_back(a);
          }
          std::fprintf(stderr, "--nproc-per-node %d: starting %d worker processes (one per GPU, torchrun environment)\n",
                       o->nproc, o->nproc);
          const LocalLaunch l = launch_local_workers(o->nproc, argv, /*grace_s=*/r.parallel.timeout_s);
          std::fputs(l.summary.c_str(), stderr);
          nlohmann::json w = nlohmann::json::array();
          for (const auto& x : l.workers) w.push_back({{"rank", x.rank}, {"pid", x.pid}, {"exit_code", x.exit_code},
                                                        {"stopped_by_launcher", x.terminated_by_launcher}});
          rc.doc()["launch"]["workers"] = w;
          rc.doc()["launch"]["note"] = "this receipt is the launcher's; rank 0 of the workers writes the run's receipt";
          if (l.exit_code() != 0) {
            const std::string why = l.failed_rank >= 0
                                        ? "worker rank " + std::to_string(l.failed_rank) + " failed (exit " + std::to_string(l.exit_code()) + ")"
                                        : "interrupted (signal " + std::to_string(l.forwarded_signal) + " forwarded to the workers)";
            rc.finish_failed("--nproc-per-node " + std::to_string(o->nproc) + ": " + why + "\n" + l.summary);
            return l.exit_code();
          }
          return 0;
        }
        if (on_gpu)
          std::fprintf(stderr, "--nproc-per-node %d --launch threads: the in-process ranks share one GPU (tests and measurements)\n",
                       o->nproc);
        int code = 0;
        run_ranks(o->nproc, [&](Communicator& c) {
          TrainOptions mine = to;
          mine.comm = &c;
          if (c.rank() == 0) {
            code = run_training(r, mine, rc);
          } else {
            RunReceipt shadow("train", {});  // never written: rank 0 writes the run's receipt
            mine.quiet = true;
            run_training(r, mine, shadow);
          }
        }, r.parallel.timeout_s);
        return code;
      }
      return run_training(r, to, rc);
    });
  });
}

}  // namespace megacpp::app
