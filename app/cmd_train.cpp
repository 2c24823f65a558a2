// megacpp train RECIPE — load and validate the recipe, then run the training loop (engine/train).
#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/config/recipe_loader.hpp"
#include "engine/train/trainer.hpp"

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
  cmd->add_option("--nproc-per-node", o->nproc, "Start N local worker processes (distributed training)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", o->quiet, "No per-step log lines");
  cmd->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("train", inv, [&](RunReceipt& rc) -> int {
      const Recipe r = load_recipe(o->recipe, o->sets);
      rc.set_recipe(r);
      if (!inv.receipts_dir.empty()) rc.set_location(inv.receipts_dir, r.name);
      if (o->nproc > 1) {
        const char* msg = "megacpp train --nproc-per-node > 1: distributed training has not landed in this build yet";
        std::fprintf(stderr, "%s\n", msg);
        rc.finish_failed(msg, "not-available");
        return kUnavailable;
      }
      install_training_signal_handlers();
      TrainOptions to;
      to.resume = o->resume;
      to.quiet = o->quiet;
      return run_training(r, to, rc);
    });
  });
}

}  // namespace megacpp::app
