#include "app/cli_common.hpp"

#include <cstdio>

#include "engine/config/config_error.hpp"

namespace megacpp::app {

int run_with_receipt(const std::string& command, const Invocation& inv,
                     const std::function<int(RunReceipt&)>& body) {
  RunReceipt rc(command, inv.argv);
  if (!inv.receipts_dir.empty()) rc.set_location(inv.receipts_dir, "");
  int code = kOk;
  try {
    code = body(rc);
    if (rc.status() == "running") {
      if (code == kOk) rc.finish_ok();
      else if (code == kInterrupted) rc.finish_interrupted("interrupted");
      else rc.finish_failed("exit code " + std::to_string(code), code == kUnavailable ? "not-available" : "error");
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "megacpp %s: %s\n", command.c_str(), e.what());
    rc.doc()["error_detail"] = {{"file", e.where().file}, {"line", e.where().line}, {"column", e.where().column},
                                {"key", e.key()}, {"rule", e.rule()}, {"got", e.got()}, {"expected", e.expected()}};
    rc.finish_failed(e.what(), "config");
    code = kFailed;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "megacpp %s: error: %s\n", command.c_str(), e.what());
    rc.finish_failed(e.what(), "error");
    code = kFailed;
  }
  std::fprintf(stderr, "receipt: %s\n", rc.receipt_path().c_str());
  return code;
}

}  // namespace megacpp::app
