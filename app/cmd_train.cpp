// megacpp train RECIPE — load and validate the recipe, then run the training loop (engine/train).
#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/config/recipe_loader.hpp"
#include "engine/dist/bootstrap.hpp"
#include "engine/dist/communicator.hpp"
#include "engine/train/trainer.hpp"
#include "kernels/common/gpu_device.hpp"

namespace megacpp::app {

void add_train_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string recipe, resume;
    std::vector<std::string> sets;
    int nproc = 1;
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("train", "Train a model from a recipe (1 GPU, N GPUs, N nodes; CPU for tiny runs)");
  cmd->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  cmd->add_option("--set", o->sets, "Override a recipe key: --set train.steps=100 (repeatable)");
  cmd->add_option("--resume", o->resume, "Resume from RUN_DIR, a checkpoint directory, or 'latest'");
  cmd->add_option("--nproc-per-node", o->nproc,
                  "Data-parallel ranks on this node. CPU backend: N in-process ranks (threads of this process, "
                  "in-process communicator; see docs/launch.md). Multi-process launches (torchrun-style env, srun, "
                  "mpirun) go through the NCCL bootstrap and need GPUs")
      ->check(CLI::PositiveNumber);
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
        const auto comm = bootstrap_nccl(env, r.config_sha256, r.parallel.timeout_s);
        to.comm = comm.get();
        to.quiet = o->quiet || env.rank > 0;
        return run_training(r, to, rc);
      }
      if (o->nproc > 1) {
        // CPU in-process mode: N ranks are N threads of this process, each running the CPU backend.
        if (r.train.device == "cuda")
          return refuse("--nproc-per-node with train.device=cuda: in-process ranks run the CPU reference backend "
                        "(train.device=cpu or auto); several GPUs run one process each (torchrun-style, srun or "
                        "mpirun: docs/launch.md)");
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
