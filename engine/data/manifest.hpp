// manifest.hpp — DATA_DIR/manifest.json: what a prepared data directory holds (shards per split with
// token counts and checksums) and how it was made (tokenizer, source dirs, include globs, file
// counts). The loader trusts nothing but the manifest and the shards it lists; the cache logic
// compares a manifest with the config to decide whether to re-prepare. Written atomically, last,
// after every shard: a directory without a manifest is not prepared. Deterministic: no timestamps,
// so preparing the same inputs twice gives byte-identical manifests.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp::data {

inline constexpr const char* kManifestSchema = "megacpp.data/1";
inline constexpr const char* kManifestFile = "manifest.json";

struct ShardEntry {
  std::string file;  // relative to the data dir, e.g. "train-00000.tok"
  uint64_t tokens = 0;
  std::string sha256;  // of the token bytes, as in the shard header
};

struct SplitInfo {
  uint64_t tokens = 0;
  uint64_t documents = 0;  // files
  uint64_t bytes = 0;      // source bytes
  std::vector<ShardEntry> shards;
};

struct FileCounts {
  uint64_t seen = 0;               // regular files under the inputs that matched the include globs
  uint64_t used = 0;               // tokenised (train + val documents)
  uint64_t skipped_binary = 0;     // contained a NUL byte
  uint64_t skipped_empty = 0;
  uint64_t skipped_unreadable = 0;
  uint64_t skipped_not_regular = 0;  // symlinks, devices, sockets, ... (not followed)
};

struct Manifest {
  std::string schema = kManifestSchema;
  uint32_t shard_format_version = 1;
  std::string tokenizer;  // Tokenizer::name()
  int32_t vocab_size = 0, bos = 0, eos = 0;
  std::string source;                // "libstdcxx" | "dir"
  std::vector<std::string> sources;  // absolute input paths, in the order given
  std::vector<std::string> include;  // include globs
  double val_fraction = 0;
  uint64_t shard_tokens = 0;  // at most this many tokens per shard
  FileCounts files;
  SplitInfo train, val;

  // "train" | "val"; anything else throws std::invalid_argument.
  const SplitInfo& split(const std::string& name) const;
  SplitInfo& split(const std::string& name);
};

nlohmann::json to_json(const Manifest& m);
// Throws DataError naming `path` when a field is missing or of the wrong type.
Manifest manifest_from_json(const nlohmann::json& j, const std::string& path);

std::string manifest_path(const std::string& data_dir);
void write_manifest(const std::string& data_dir, const Manifest& m);  // atomic
// Throws DataError: no manifest ("not a prepared data directory: run megacpp data prepare"), bad JSON, bad schema.
Manifest read_manifest(const std::string& data_dir);

}  // namespace megacpp::data
