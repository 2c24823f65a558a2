// manifest.cpp — manifest.json to/from the Manifest struct, with clear errors on a bad file.
#include "engine/data/manifest.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "engine/data/data_error.hpp"
#include "engine/receipts/atomic_file.hpp"

namespace megacpp::data {

const SplitInfo& Manifest::split(const std::string& name) const {
  if (name == "train") return train;
  if (name == "val") return val;
  throw std::invalid_argument("unknown data split '" + name + "' (expected train or val)");
}

SplitInfo& Manifest::split(const std::string& name) {
  return const_cast<SplitInfo&>(static_cast<const Manifest&>(*this).split(name));
}

namespace {

nlohmann::json split_json(const SplitInfo& s) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& e : s.shards) shards.push_back({{"file", e.file}, {"tokens", e.tokens}, {"sha256", e.sha256}});
  return {{"tokens", s.tokens}, {"documents", s.documents}, {"bytes", s.bytes}, {"shards", shards}};
}

SplitInfo split_from(const nlohmann::json& j) {
  SplitInfo s;
  s.tokens = j.at("tokens").get<uint64_t>();
  s.documents = j.at("documents").get<uint64_t>();
  s.bytes = j.at("bytes").get<uint64_t>();
  for (const auto& e : j.at("shards"))
    s.shards.push_back({e.at("file").get<std::string>(), e.at("tokens").get<uint64_t>(), e.at("sha256").get<std::string>()});
  return s;
}

}  // namespace

nlohmann::json to_json(const Manifest& m) {
  return {{"schema", m.schema},
          {"shard_format_version", m.shard_format_version},
          {"tokenizer", {{"name", m.tokenizer}, {"vocab_size", m.vocab_size}, {"bos", m.bos}, {"eos", m.eos}}},
          {"source", m.source},
          {"sources", m.sources},
          {"include", m.include},
          {"val_fraction", m.val_fraction},
          {"shard_tokens", m.shard_tokens},
          {"files",
           {{"seen", m.files.seen},
            {"used", m.files.used},
            {"skipped_binary", m.files.skipped_binary},
            {"skipped_empty", m.files.skipped_empty},
            {"skipped_unreadable", m.files.skipped_unreadable},
            {"skipped_not_regular", m.files.skipped_not_regular}}},
          {"splits", {{"train", split_json(m.train)}, {"val", split_json(m.val)}}}};
}

Manifest manifest_from_json(const nlohmann::json& j, const std::string& path) {
  Manifest m;
  try {
    m.schema = j.at("schema").get<std::string>();
    if (m.schema != kManifestSchema)
      throw DataError(path, "unknown manifest schema '" + m.schema + "' (this build reads " + kManifestSchema + ")");
    m.shard_format_version = j.at("shard_format_version").get<uint32_t>();
    const auto& t = j.at("tokenizer");
    m.tokenizer = t.at("name").get<std::string>();
    m.vocab_size = t.at("vocab_size").get<int32_t>();
    m.bos = t.at("bos").get<int32_t>();
    m.eos = t.at("eos").get<int32_t>();
    m.source = j.at("source").get<std::string>();
    m.sources = j.at("sources").get<std::vector<std::string>>();
    m.include = j.at("include").get<std::vector<std::string>>();
    m.val_fraction = j.at("val_fraction").get<double>();
    m.shard_tokens = j.at("shard_tokens").get<uint64_t>();
    const auto& f = j.at("files");
    m.files.seen = f.at("seen").get<uint64_t>();
    m.files.used = f.at("used").get<uint64_t>();
    m.files.skipped_binary = f.at("skipped_binary").get<uint64_t>();
    m.files.skipped_empty = f.at("skipped_empty").get<uint64_t>();
    m.files.skipped_unreadable = f.at("skipped_unreadable").get<uint64_t>();
    m.files.skipped_not_regular = f.at("skipped_not_regular").get<uint64_t>();
    m.train = split_from(j.at("splits").at("train"));
    m.val = split_from(j.at("splits").at("val"));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(path, std::string("bad manifest: ") + e.what());
  }
  return m;
}

std::string manifest_path(const std::string& data_dir) {
  return (std::filesystem::path(data_dir) / kManifestFile).string();
}

void write_manifest(const std::string& data_dir, const Manifest& m) {
  write_file_atomic(manifest_path(data_dir), to_json(m).dump(2) + "\n");
}

Manifest read_manifest(const std::string& data_dir) {
  const std::string path = manifest_path(data_dir);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path))
      throw DataError(path, "no manifest: '" + data_dir + "' is not a prepared data directory (run megacpp data prepare)");
    throw DataError(path, "cannot read the manifest");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw DataError(path, std::string("bad manifest (not valid JSON): ") + e.what());
  }
  return manifest_from_json(j, path);
}

}  // namespace megacpp::data
