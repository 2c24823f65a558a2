#include "engine/receipts/receipt.hpp"

#include <unistd.h>

#include <filesystem>

#include "engine/runtime/host_info.hpp"

namespace megacpp {

RunReceipt::RunReceipt(std::string command, std::vector<std::string> argv) {
  char cwd[4096] = {0};
  if (!getcwd(cwd, sizeof cwd - 1)) cwd[0] = 0;
  doc_ = {{"schema", kReceiptSchema},
          {"command", command},
          {"argv", argv},
          {"cwd", cwd},
          {"pid", static_cast<int>(getpid())},
          {"megacpp", build_info_json()},
          {"host", host_info_json()},
          {"recipe", nullptr},
          {"parallel", {{"world", 1}, {"tp", 1}, {"ep", 1}, {"dp", 1}}},
          {"features", nlohmann::json::object()},
          {"status", "running"},
          {"error", nullptr},
          {"start_time", utc_now_iso()},
          {"end_time", nullptr},
          {"result", nlohmann::json::object()}};
  run_name_ = command;
}

void RunReceipt::set_location(const std::string& base_dir, const std::string& run_name) {
  if (!base_dir.empty()) base_dir_ = base_dir;
  if (!run_name.empty()) run_name_ = run_name;
}

void RunReceipt::set_recipe(const Recipe& r) {
  doc_["recipe"] = to_json(r);
  set_location(r.receipts.dir, r.name);
  doc_["parallel"] = {{"world", 1}, {"tp", r.parallel.tp}, {"ep", r.parallel.ep}, {"dp", 1}, {"zero", r.parallel.zero}};
}

void RunReceipt::record_feature(const std::string& name, const nlohmann::json& requested,
                                const nlohmann::json& observed, const std::string& reason) {
  doc_["features"][name] = {{"requested", requested}, {"observed", observed}, {"reason", reason}};
}

const std::string& RunReceipt::run_dir() {
  if (run_dir_.empty()) {
    namespace fs = std::filesystem;
    const std::string command = doc_["command"].get<std::string>();
    std::string stem = utc_now_compact() + "-" + command + (run_name_ != command ? "-" + run_name_ : "");
    fs::path dir = fs::path(base_dir_) / stem;
    for (int i = 2; fs::exists(dir); ++i) dir = fs::path(base_dir_) / (stem + "-" + std::to_string(i));
    fs::create_directories(dir);
    run_dir_ = dir.string();
    doc_["run_dir"] = run_dir_;
  }
  return run_dir_;
}

LineStream& RunReceipt::metrics() {
  if (!metrics_) {
    metrics_ = std::make_unique<LineStream>(run_dir() + "/metrics.jsonl");
    doc_["metrics_stream"] = metrics_->path();
  }
  return *metrics_;
}

void RunReceipt::write() {
  const std::string path = receipt_path();
  write_file_atomic(path, doc_.dump(2) + "\n");
}

void RunReceipt::finish(const std::string& status) {
  status_ = status;
  doc_["status"] = status;
  doc_["end_time"] = utc_now_iso();
  write();
}

void RunReceipt::finish_ok() { finish("ok"); }

void RunReceipt::finish_failed(const std::string& error, const std::string& error_kind) {
  doc_["error"] = {{"kind", error_kind}, {"message", error}};
  finish("failed");
}

void RunReceipt::finish_interrupted(const std::string& why) {
  doc_["error"] = {{"kind", "interrupted"}, {"message", why}};
  finish("interrupted");
}

std::vector<std::string> receipt_schema_problems(const nlohmann::json& r) {
  std::vector<std::string> p;
  auto need = [&](const char* key, nlohmann::json::value_t t) {
    if (!r.contains(key)) p.push_back(std::string("missing '") + key + "'");
    else if (r[key].type() != t) p.push_back(std::string("'") + key + "' has the wrong type");
  };
  using V = nlohmann::json::value_t;
  if (!r.is_object()) return {"receipt is not a JSON object"};
  need("schema", V::string);
  if (r.contains("schema") && r["schema"] != kReceiptSchema) p.push_back("schema is not megacpp.receipt/1");
  need("command", V::string);
  need("argv", V::array);
  need("megacpp", V::object);
  need("host", V::object);
  need("parallel", V::object);
  need("features", V::object);
  need("status", V::string);
  need("start_time", V::string);
  need("result", V::object);
  if (!r.contains("end_time")) p.push_back("missing 'end_time'");
  if (!r.contains("recipe")) p.push_back("missing 'recipe'");
  if (!r.contains("error")) p.push_back("missing 'error'");
  if (r.contains("status") && r["status"].is_string()) {
    const auto s = r["status"].get<std::string>();
    if (s != "ok" && s != "failed" && s != "interrupted" && s != "running") p.push_back("status '" + s + "' unknown");
    if ((s == "failed" || s == "interrupted") && (!r.contains("error") || !r["error"].is_object()))
      p.push_back("a failed/interrupted receipt must carry an error object");
  }
  if (r.contains("host") && r["host"].is_object()) {
    for (const char* k : {"hostname", "gpu"})
      if (!r["host"].contains(k)) p.push_back(std::string("host.") + k + " missing");
  }
  return p;
}

}  // namespace megacpp
