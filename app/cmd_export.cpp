// megacpp export RUN_DIR --format safetensors — the weights of a training run for other tools.
#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/train/export.hpp"

namespace megacpp::app {

void add_export_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string run, format = "safetensors", out;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("export", "Export a training run's weights (safetensors + JSON config)");
  cmd->add_option("run", o->run, "Run directory (or a checkpoint directory inside one)")->required();
  cmd->add_option("--format", o->format, "Output format")->check(CLI::IsMember({"safetensors"}));
  cmd->add_option("--out", o->out, "Output directory (default RUN_DIR/export)");
  cmd->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("export", inv, [&](RunReceipt& rc) {
      rc.set_location(inv.receipts_dir, "export");
      const ExportResult e = export_safetensors(o->run, o->out);
      rc.result() = {{"checkpoint", e.checkpoint}, {"weights", e.weights_path}, {"config", e.config_path},
                     {"tensors", e.tensors}, {"parameters", e.params}, {"format", o->format}};
      std::printf("exported %lld tensors (%lld parameters) from %s\n  %s\n  %s\n", (long long)e.tensors,
                  (long long)e.params, e.checkpoint.c_str(), e.weights_path.c_str(), e.config_path.c_str());
      return kOk;
    });
  });
}

}  // namespace megacpp::app
