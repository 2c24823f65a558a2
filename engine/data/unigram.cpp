// unigram.cpp — token-frequency entropy and cross-entropy over prepared splits.
#include "engine/data/unigram.hpp"

#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "engine/data/manifest.hpp"
#include "engine/data/mapped_file.hpp"
#include "engine/data/shard.hpp"

namespace megacpp::data {

double entropy_nats(std::span<const uint64_t> counts) {
  long double total = 0;
  for (const uint64_t c : counts) total += c;
  if (total == 0) return 0.0;
  long double h = 0;
  for (const uint64_t c : counts)
    if (c > 0) {
      const long double p = c / total;
      h -= p * std::log(p);
    }
  return static_cast<double>(h);
}

double cross_entropy_nats(std::span<const uint64_t> model, std::span<const uint64_t> eval) {
  if (model.size() != eval.size()) throw std::invalid_argument("cross_entropy_nats: vocabularies differ in size");
  long double mt = 0, et = 0;
  for (const uint64_t c : model) mt += c;
  for (const uint64_t c : eval) et += c;
  if (et == 0) return 0.0;
  const long double denom = mt + static_cast<long double>(model.size());
  long double h = 0;
  for (std::size_t i = 0; i < eval.size(); ++i)
    if (eval[i] > 0) h -= (eval[i] / et) * std::log((model[i] + 1.0L) / denom);
  return static_cast<double>(h);
}

namespace {

std::vector<uint64_t> split_counts(const std::string& data_dir, const Manifest& m, const std::string& split) {
  std::vector<uint64_t> counts(static_cast<std::size_t>(m.vocab_size), 0);
  for (const auto& e : m.split(split).shards) {
    const std::string path = (std::filesystem::path(data_dir) / e.file).string();
    const MappedFile f(path);
    const ShardHeader h = validate_shard(path, f.data(), f.size());
    const uint8_t* p = f.data() + kShardHeaderBytes;
    for (uint64_t i = 0; i < h.tokens; ++i) {
      const uint16_t t = load_le16(p + 2 * i);
      if (t < counts.size()) ++counts[t];
    }
  }
  return counts;
}

}  // namespace

double unigram_entropy_nats(const std::string& data_dir, const std::string& split) {
  const Manifest m = read_manifest(data_dir);
  return entropy_nats(split_counts(data_dir, m, split));
}

double unigram_val_cross_entropy_nats(const std::string& data_dir) {
  const Manifest m = read_manifest(data_dir);
  return cross_entropy_nats(split_counts(data_dir, m, "train"), split_counts(data_dir, m, "val"));
}

}  // namespace megacpp::data
