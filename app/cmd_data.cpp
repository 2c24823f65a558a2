// megacpp data prepare — tokenised shards for training (issue 4). Not landed yet: exits 2.
#include <cstdio>

#include "app/cli_common.hpp"

namespace megacpp::app {

void add_data_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::vector<std::string> inputs, include;
    std::string out;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("data", "Prepare training data");
  cmd->require_subcommand(1);
  auto* prep = cmd->add_subcommand("prepare", "Tokenise C++ sources into shards");
  prep->add_option("--input", o->inputs, "Input directories")->required();
  prep->add_option("--include", o->include, "Glob patterns of files to include");
  prep->add_option("--out", o->out, "Output data directory")->required();
  prep->callback([&inv, &exit_code] {
    exit_code = run_with_receipt("data", inv, [&](RunReceipt& rc) {
      const char* msg = "megacpp data prepare: the data pipeline has not landed in this build yet; nothing was written";
      std::fprintf(stderr, "%s\n", msg);
      rc.finish_failed(msg, "not-available");
      return kUnavailable;
    });
  });
}

}  // namespace megacpp::app
