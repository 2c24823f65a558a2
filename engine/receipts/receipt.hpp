// receipt.hpp — every run of every subcommand writes one JSON receipt, on success and on failure,
// atomically, plus a JSONL metrics stream for long runs. Schema "megacpp.receipt/1", documented in
// docs/receipts.md.
//
//   RunReceipt rc("plan", argv);
//   rc.set_recipe(recipe);            // names the run dir runs/<UTC>-plan-nam56r/
//   rc.result()["params"] = ...;      // command-specific section
//   rc.finish_ok();                   // or finish_failed(error) — both write the receipt
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config/recipe.hpp"
#include "engine/receipts/atomic_file.hpp"

namespace megacpp {

inline constexpr const char* kReceiptSchema = "megacpp.receipt/1";

class RunReceipt {
 public:
  RunReceipt(std::string command, std::vector<std::string> argv);

  // Where the run directory goes: `base_dir` (receipts.dir or --receipts-dir; default "runs") and
  // the name used in the directory (recipe name, or kernel name for bench). Call before write().
  void set_location(const std::string& base_dir, const std::string& run_name);
  void set_recipe(const Recipe& r);  // recipe section + location from receipts.dir
  void set_parallel(const nlohmann::json& p) { doc_["parallel"] = p; }
  // A feature or backend as requested vs as it really ran; `reason` says why they differ.
  void record_feature(const std::string& name, const nlohmann::json& requested, const nlohmann::json& observed,
                      const std::string& reason = "");
  nlohmann::json& result() { return doc_["result"]; }
  nlohmann::json& training() { return doc_["training"]; }
  nlohmann::json& doc() { return doc_; }

  void finish_ok();
  void finish_failed(const std::string& error, const std::string& error_kind = "error");
  void finish_interrupted(const std::string& why);
  // Writes the receipt now (atomically). May be called many times (e.g. after each checkpoint).
  void write();

  const std::string& run_dir();  // creates it on first use
  std::string receipt_path() { return run_dir() + "/receipt.json"; }
  LineStream& metrics();         // run_dir/metrics.jsonl, opened on first use
  const std::string& status() const { return status_; }

 private:
  void finish(const std::string& status);
  nlohmann::json doc_;
  std::string base_dir_ = "runs", run_name_, run_dir_, status_ = "running";
  std::unique_ptr<LineStream> metrics_;
};

// Checks that a parsed receipt has every required field with the right type; returns the list of
// problems (empty = valid). Used by tests and by tools that read receipts.
std::vector<std::string> receipt_schema_problems(const nlohmann::json& receipt);

}  // namespace megacpp
