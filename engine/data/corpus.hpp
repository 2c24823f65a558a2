// corpus.hpp — the recipe's `data` section -> a prepared data directory, prepared on first use and
// reused afterwards. `data.source: libstdcxx` is the embedded default corpus: the C++ standard
// library headers of the machine, /usr/include/c++/<highest version>, every file there (most have no
// extension). `data.source: dir` takes data.inputs with data.include globs.
#pragma once
#include <string>
#include <vector>

#include "engine/config/recipe.hpp"
#include "engine/data/manifest.hpp"

namespace megacpp::data {

// The highest numeric version directory under `root` ("12" beats "9"; "v1" and other non-numeric
// names are ignored). Throws DataError when `root` does not exist or holds no version directory.
std::string find_libstdcxx_dir(const std::string& root = "/usr/include/c++");

struct PreparedData {
  std::string dir;   // data.dir
  Manifest manifest;
  bool reused = false;  // true: the cache matched and nothing was prepared
  double seconds = 0;   // time spent preparing (0 when reused)
};

// The input dirs and globs a DataConfig stands for (libstdcxx -> {find_libstdcxx_dir()}, {"*"}).
// Throws DataError for source: dir without data.inputs, std::invalid_argument for an unknown source.
void resolve_sources(const DataConfig& cfg, std::vector<std::string>& inputs, std::vector<std::string>& include);

// True when the manifest in cfg.dir was made from the same sources, include globs, tokenizer and
// val_fraction, and every shard it lists exists with the right size. (Checksums are verified by the
// loader when it opens the shards.)
bool cache_matches(const DataConfig& cfg, const Manifest& m, std::string* why_not = nullptr);

// Prepares cfg.dir unless the cache matches; holds an exclusive lock on cfg.dir/.prepare.lock
// meanwhile, so ranks on one machine that call it together prepare once.
PreparedData ensure_data(const DataConfig& cfg);
// The name used in issue 4: the same as ensure_data (handles source: libstdcxx and source: dir).
inline PreparedData ensure_default_corpus(const DataConfig& cfg) { return ensure_data(cfg); }

}  // namespace megacpp::data
