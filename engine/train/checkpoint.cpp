#include "engine/train/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "engine/receipts/atomic_file.hpp"
#include "engine/receipts/sha256.hpp"

namespace megacpp {

namespace fs = std::filesystem;

namespace {
void write_synced(const fs::path& p, const std::string& bytes) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("checkpoint: cannot create " + p.string());
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      ::close(fd);
      throw std::runtime_error("checkpoint: write failed for " + p.string());
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw std::runtime_error("checkpoint: fsync failed for " + p.string());
}

void fsync_dir(const fs::path& d) {
  const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) ::fsync(fd), ::close(fd);
}

std::string floats_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("checkpoint " + p.parent_path().string() + ": missing file " + p.filename().string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<float> floats_from(const std::string& b, const fs::path& p) {
  if (b.size() % sizeof(float)) throw std::runtime_error("checkpoint: " + p.string() + " has a partial element");
  std::vector<float> v(b.size() / sizeof(float));
  std::copy(b.data(), b.data() + b.size(), reinterpret_cast<char*>(v.data()));
  return v;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}
}  // namespace

std::string save_checkpoint(const std::string& dir, const CheckpointData& c, int64_t keep,
                            const std::function<void(const std::string& tmp_dir)>& before_publish) {
  fs::create_directories(dir);
  const fs::path final_dir = fs::path(dir) / step_name(c.state.step);
  const fs::path tmp = fs::path(dir) / ("." + step_name(c.state.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const std::vector<std::pair<std::string, std::string>> files = {
      {"params.bin", floats_bytes(c.params)}, {"adam_m.bin", floats_bytes(c.adam_m)}, {"adam_v.bin", floats_bytes(c.adam_v)}};
  nlohmann::json manifest = {{"format", "megacpp.checkpoint/1"}, {"files", nlohmann::json::object()}};
  for (const auto& [name, bytes] : files) {
    write_synced(tmp / name, bytes);
    manifest["files"][name] = {{"bytes", bytes.size()}, {"sha256", sha256_hex(bytes)}};
  }
  const nlohmann::json state = {{"step", c.state.step},
                                {"tokens_seen", c.state.tokens_seen},
                                {"best_val_loss", c.state.best_val_loss},
                                {"config_sha256", c.state.config_sha256},
                                {"extra", c.state.extra}};
  const std::string sj = state.dump(2);
  write_synced(tmp / "state.json", sj);
  manifest["files"]["state.json"] = {{"bytes", sj.size()}, {"sha256", sha256_hex(sj)}};
  write_synced(tmp / "manifest.json", manifest.dump(2));
  if (before_publish) before_publish(tmp.string());
  fsync_dir(tmp);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);  // re-saving the same step (e.g. final == periodic)
  fs::rename(tmp, final_dir);
  fsync_dir(dir);
  const auto all = list_checkpoints(dir);
  for (std::size_t i = static_cast<std::size_t>(std::max<int64_t>(keep, 1)); i < all.size(); ++i) fs::remove_all(all[i]);
  return final_dir.string();
}

namespace {
std::string rank_dir_name(int rank) {
  char b[32];
  std::snprintf(b, sizeof b, "rank-%05d", rank);
  return b;
}
}  // namespace

void write_zero_shard(const std::string& ckpt_dir, int rank, int world, const std::vector<float>& m, const std::vector<float>& v) {
  const fs::path zdir = fs::path(ckpt_dir) / "zero";
  fs::create_directories(zdir);
  const fs::path final_dir = zdir / rank_dir_name(rank);
  const fs::path tmp = zdir / ("." + rank_dir_name(rank) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  nlohmann::json manifest = {{"format", "megacpp.zero-shard/1"}, {"rank", rank}, {"world", world}, {"files", nlohmann::json::object()}};
  for (const auto& [name, vec] : {std::pair<std::string, const std::vector<float>*>{"adam_m.bin", &m}, {"adam_v.bin", &v}}) {
    const std::string bytes = floats_bytes(*vec);
    write_synced(tmp / name, bytes);
    manifest["files"][name] = {{"bytes", bytes.size()}, {"sha256", sha256_hex(bytes)}};
  }
  write_synced(tmp / "manifest.json", manifest.dump(2));
  write_synced(tmp / "COMPLETE", "ok\n");
  fsync_dir(tmp);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  fsync_dir(zdir);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0) out.push_back(e.path().string());
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

CheckpointData load_checkpoint(const std::string& ckpt_dir) {
  const fs::path d(ckpt_dir);
  const std::string mtext = read_all(d / "manifest.json");
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(mtext);
  } catch (const std::exception&) {
    throw std::runtime_error("checkpoint " + ckpt_dir + ": manifest.json is not valid JSON");
  }
  std::map<std::string, std::string> bytes;
  for (const auto& [name, info] : manifest.at("files").items()) {
    bytes[name] = read_all(d / name);
    const std::string got = sha256_hex(bytes[name]);
    if (bytes[name].size() != info.at("bytes").get<std::size_t>() || got != info.at("sha256").get<std::string>())
      throw std::runtime_error("checkpoint " + ckpt_dir + ": " + name + " fails its checksum (expected sha256 " +
                               info.at("sha256").get<std::string>() + ", " + std::to_string(info.at("bytes").get<std::size_t>()) +
                               " bytes; found " + got + ", " + std::to_string(bytes[name].size()) + " bytes)");
  }
  for (const char* need : {"params.bin", "adam_m.bin", "adam_v.bin", "state.json"})
    if (!bytes.count(need)) throw std::runtime_error("checkpoint " + ckpt_dir + ": manifest lacks " + std::string(need));
  CheckpointData c;
  const auto st = nlohmann::json::parse(bytes["state.json"]);
  c.state.step = st.at("step");
  c.state.tokens_seen = st.at("tokens_seen");
  c.state.best_val_loss = st.at("best_val_loss");
  c.state.config_sha256 = st.at("config_sha256");
  c.state.extra = st.at("extra");
  c.params = floats_from(bytes["params.bin"], d / "params.bin");
  c.adam_m = floats_from(bytes["adam_m.bin"], d / "adam_m.bin");
  c.adam_v = floats_from(bytes["adam_v.bin"], d / "adam_v.bin");
  if (c.state.extra.contains("zero")) {  // ZeRO-1 shards: verify each, concatenate in rank order
    const auto& z = c.state.extra["zero"];
    const int world = z.at("world").get<int>();
    const auto numel = z.at("numel").get<std::size_t>();
    c.adam_m.clear(), c.adam_v.clear();
    for (int q = 0; q < world; ++q) {
      const fs::path rd = d / "zero" / rank_dir_name(q);
      if (!fs::exists(rd / "COMPLETE"))
        throw std::runtime_error("checkpoint " + ckpt_dir + ": the ZeRO optimizer shard of rank " + std::to_string(q) + " of " +
                                 std::to_string(world) + " is missing or incomplete (no " + (rd / "COMPLETE").string() + ")");
      const auto zm = nlohmann::json::parse(read_all(rd / "manifest.json"));
      for (const char* name : {"adam_m.bin", "adam_v.bin"}) {
        const std::string b = read_all(rd / name);
        const auto& info = zm.at("files").at(name);
        if (b.size() != info.at("bytes").get<std::size_t>() || sha256_hex(b) != info.at("sha256").get<std::string>())
          throw std::runtime_error("checkpoint " + ckpt_dir + ": ZeRO shard " + (rd / name).string() + " fails its checksum");
        auto v = floats_from(b, rd / name);
        auto& dst = std::string(name) == "adam_m.bin" ? c.adam_m : c.adam_v;
        dst.insert(dst.end(), v.begin(), v.end());
      }
    }
    if (c.adam_m.size() < numel || c.adam_v.size() < numel)
      throw std::runtime_error("checkpoint " + ckpt_dir + ": ZeRO shards hold " + std::to_string(c.adam_m.size()) +
                               " optimizer elements, the parameters " + std::to_string(numel));
    c.adam_m.resize(numel), c.adam_v.resize(numel);
  }
  return c;
}

std::string latest_valid_checkpoint(const std::string& dir) {
  const auto all = list_checkpoints(dir);
  if (all.empty()) throw std::runtime_error("no checkpoint under " + dir);
  try {
    load_checkpoint(all.front());
    return all.front();
  } catch (const std::exception& e) {
    std::string offer = "no earlier checkpoint verifies either";
    for (std::size_t i = 1; i < all.size(); ++i) {
      try {
        load_checkpoint(all[i]);
        offer = "the previous checkpoint " + all[i] + " verifies: resume from it with --resume " + all[i];
        break;
      } catch (const std::exception&) {
      }
    }
    throw std::runtime_error(std::string(e.what()) + "; refusing to resume from it — " + offer);
  }
}

}  // namespace megacpp
