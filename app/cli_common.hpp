// cli_common.hpp — what every subcommand shares: the receipt around the run and exit codes.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "engine/receipts/receipt.hpp"

namespace megacpp::app {

// Exit codes: 0 ok · 1 the run failed (bad recipe, kernel error, ...) · 2 usage error or an engine
// that has not landed yet · 130 interrupted.
enum ExitCode { kOk = 0, kFailed = 1, kUnavailable = 2, kInterrupted = 130 };

struct Invocation {
  std::vector<std::string> argv;  // the full command line, for receipts
  std::string receipts_dir;       // --receipts-dir (overrides the recipe's receipts.dir)
};

// Runs `body` with a receipt: any exception becomes status failed with its message (ConfigError
// keeps its file/line/key/rule), and the receipt is written in every case. Prints the receipt path.
int run_with_receipt(const std::string& command, const Invocation& inv,
                     const std::function<int(RunReceipt&)>& body);

// Subcommands (one file each).
void add_plan_command(CLI::App& app, Invocation& inv, int& exit_code);
void add_train_command(CLI::App& app, Invocation& inv, int& exit_code);
void add_bench_command(CLI::App& app, Invocation& inv, int& exit_code);
void add_sweep_command(CLI::App& app, Invocation& inv, int& exit_code);
void add_data_command(CLI::App& app, Invocation& inv, int& exit_code);
void add_export_command(CLI::App& app, Invocation& inv, int& exit_code);

}  // namespace megacpp::app
