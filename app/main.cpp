// megacpp — train and benchmark hybrid language models for C++ code.
// This file only wires the subcommands together; each lives in its own cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "app/cli_common.hpp"
#include "engine/runtime/crash_report.hpp"
#include "engine/runtime/host_info.hpp"

int main(int argc, char** argv) {
  using namespace megacpp::app;
  megacpp::install_crash_handler();  // a crash names itself (signal, rank, backtrace) instead of dying silently
  CLI::App app{"megacpp: train and benchmark hybrid (A/M/E/D/R) language models for C++ code", "megacpp"};
  app.require_subcommand(0, 1);
  app.fallthrough();  // --receipts-dir may follow the subcommand
  bool show_version = false;
  app.add_flag("--version", show_version, "Print the version, git commit and CUDA/cuBLAS/cuDNN/NCCL versions");
  Invocation inv;
  inv.argv.assign(argv, argv + argc);
  app.add_option("--receipts-dir", inv.receipts_dir, "Directory for run receipts (default: recipe receipts.dir, else runs/)");
  int exit_code = kOk;
  add_train_command(app, inv, exit_code);
  add_bench_command(app, inv, exit_code);
  add_sweep_command(app, inv, exit_code);
  add_plan_command(app, inv, exit_code);
  add_data_command(app, inv, exit_code);
  add_export_command(app, inv, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kUnavailable;
  }
  if (show_version) {
    std::fputs(megacpp::version_text().c_str(), stdout);
    return kOk;
  }
  if (app.get_subcommands().empty()) {
    std::fputs(app.help().c_str(), stdout);
    return kUnavailable;
  }
  return exit_code;
}
