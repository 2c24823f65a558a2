// prepare.hpp — source files -> token shards + manifest (`megacpp data prepare` and the cache).
// Each usable file is one document, BOS + tokens + EOS. Its split is a pure function of its relative
// path (SHA-256 of the path -> a fraction in [0,1); < val_fraction -> val), so adding or removing
// other files never moves a file between train and val. Output is deterministic: the same inputs give
// byte-identical shards and manifest.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/data/manifest.hpp"
#include "engine/data/tokenizer.hpp"

namespace megacpp::data {

inline constexpr uint64_t kDefaultShardTokens = uint64_t{16} << 20;  // 16M tokens = 32 MiB per shard

struct PrepareStats {
  Manifest manifest;
  std::string out_dir;
  double seconds = 0;
  uint64_t stale_shards_removed = 0;  // shards of an earlier preparation that the new manifest does not list
};
nlohmann::json to_json(const PrepareStats& s);

// The split fraction of a relative path: the first 8 bytes of sha256(rel) as a big-endian integer / 2^64.
double split_fraction(const std::string& rel_path);

// Prepares `out_dir` (created if needed): walks `inputs` (see source_walk.hpp), skips binary (NUL
// byte), empty and unreadable files, splits by path hash (when there are >= 2 usable files and
// val_fraction > 0, val and train are each made non-empty by moving the file nearest the threshold),
// writes shards of at most `shard_tokens` tokens (train-00000.tok, ..., val-00000.tok, ...), then the
// manifest, then removes shards of an earlier preparation that are no longer listed. The old manifest
// is removed first, so an interrupted run leaves an unprepared (not a mismatched) directory.
// `source` is recorded in the manifest ("dir" or "libstdcxx"). Throws DataError (no usable files,
// missing input) or std::invalid_argument (bad val_fraction / shard_tokens / tokenizer vocab).
PrepareStats prepare_data(const std::vector<std::string>& inputs, const std::vector<std::string>& include_globs,
                          const std::string& out_dir, const Tokenizer& tokenizer, double val_fraction,
                          uint64_t shard_tokens = kDefaultShardTokens, const std::string& source = "dir");

}  // namespace megacpp::data
