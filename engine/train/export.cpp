#include "engine/train/export.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "engine/config/recipe_loader.hpp"
#include "engine/model/model.hpp"
#include "engine/receipts/atomic_file.hpp"
#include "engine/train/checkpoint.hpp"

namespace megacpp {

namespace fs = std::filesystem;

ExportResult export_safetensors(const std::string& run_dir_in, const std::string& out_dir_in) {
  fs::path run_dir(run_dir_in), ckpt;
  if (fs::exists(run_dir / "manifest.json")) {  // a checkpoint directory: its run is two levels up
    ckpt = run_dir;
    run_dir = run_dir.parent_path().parent_path();
  }
  const fs::path receipt_path = run_dir / "receipt.json";
  if (!fs::exists(receipt_path)) throw std::runtime_error("export: " + receipt_path.string() + " not found (not a run directory)");
  std::ifstream in(receipt_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto receipt = nlohmann::json::parse(ss.str());
  if (receipt.value("command", "") != "train" || !receipt["recipe"].is_object())
    throw std::runtime_error("export: " + receipt_path.string() + " is not the receipt of a training run");
  if (ckpt.empty()) ckpt = latest_valid_checkpoint((run_dir / "checkpoints").string());
  const CheckpointData c = load_checkpoint(ckpt.string());

  // Rebuild the model's parameter table from the same recipe and overrides.
  const auto& rj = receipt["recipe"];
  const Recipe r = load_recipe(rj.at("path").get<std::string>(), rj.at("overrides").get<std::vector<std::string>>());
  if (r.config_sha256 != c.state.config_sha256 && !receipt["training"].contains("resume_config_changed"))
    throw std::runtime_error("export: the recipe " + r.path + " now resolves to config " + r.config_sha256.substr(0, 12) +
                             " but the checkpoint was written with " + c.state.config_sha256.substr(0, 12) +
                             " (was the recipe edited since the run?)");
  const Model<float> model(r, 1, r.train.seq_len);
  const auto& ps = model.params();
  if (static_cast<std::size_t>(ps.numel()) != c.params.size())
    throw std::runtime_error("export: checkpoint holds " + std::to_string(c.params.size()) + " values, the recipe's model " +
                             std::to_string(ps.numel()));

  nlohmann::ordered_json header;
  int64_t offset = 0, params = 0;
  for (const auto& s : ps.specs) {
    const int64_t bytes = s.numel * 4;
    header[s.name] = {{"dtype", "F32"}, {"shape", s.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    params += s.numel;
  }
  header["__metadata__"] = {{"format", "pt"}, {"producer", "megacpp"}, {"recipe", r.name},
                            {"step", std::to_string(c.state.step)}, {"config_sha256", c.state.config_sha256}};
  std::string hj = header.dump();
  hj.append((8 - hj.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  const uint64_t n = hj.size();
  for (int i = 0; i < 8; ++i) file[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  file += hj;
  file.reserve(file.size() + static_cast<std::size_t>(offset));
  for (const auto& s : ps.specs)
    file.append(reinterpret_cast<const char*>(c.params.data() + s.offset), static_cast<std::size_t>(s.numel) * 4);

  const fs::path out = out_dir_in.empty() ? run_dir / "export" : fs::path(out_dir_in);
  ExportResult res;
  res.checkpoint = ckpt.string();
  res.weights_path = (out / "model.safetensors").string();
  res.config_path = (out / "config.json").string();
  res.tensors = static_cast<int64_t>(ps.specs.size());
  res.params = params;
  write_file_atomic(res.weights_path, file);
  nlohmann::json cfg = to_json(r);
  cfg["checkpoint"] = res.checkpoint;
  cfg["step"] = c.state.step;
  cfg["parameters"] = params;
  cfg["layers"] = model.layer_names();
  write_file_atomic(res.config_path, cfg.dump(2) + "\n");
  return res;
}

}  // namespace megacpp
