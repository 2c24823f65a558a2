// megacpp plan RECIPE — layers, parameters, FLOPs and memory per rank (engine/plan).
#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/config/recipe_loader.hpp"
#include "engine/plan/plan.hpp"

namespace megacpp::app {

void add_plan_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string recipe;
    std::vector<std::string> sets;
    int64_t world = 0;  // 0 = the recipe's own layout, tp·ep
    double gpu_mem = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("plan", "Layers, parameters, FLOPs per token and memory per rank of a recipe");
  cmd->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  cmd->add_option("--set", o->sets, "Override a recipe key: --set train.seq_len=8192 (repeatable)");
  cmd->add_option("--world", o->world, "Number of ranks (GPUs) to plan for (default: tp·ep of the recipe)")->check(CLI::PositiveNumber);
  cmd->add_option("--gpu-mem", o->gpu_mem, "GPU memory per rank in GiB (default: detected GPU, else 80)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "Print the plan as JSON instead of the table");
  cmd->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("plan", inv, [&](RunReceipt& rc) {
      const Recipe r = load_recipe(o->recipe, o->sets);
      rc.set_recipe(r);
      if (!inv.receipts_dir.empty()) rc.set_location(inv.receipts_dir, r.name);
      PlanOptions po;
      po.world = o->world > 0 ? o->world : r.parallel.tp * r.parallel.ep;
      po.gpu_mem_gib = o->gpu_mem;
      const Plan p = make_plan(r, po);
      rc.result() = to_json(p);
      if (o->json) std::printf("%s\n", to_json(p).dump(2).c_str());
      else std::fputs(format_plan(r, p).c_str(), stdout);
      return kOk;
    });
  });
}

}  // namespace megacpp::app
