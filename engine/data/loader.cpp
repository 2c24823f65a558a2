// loader.cpp — mapping and validating a split, hashing (seed, step, micro, rank, row) to windows,
// copying windows out of the mapped shards, and feeding the prefetch thread.
#include "engine/data/loader.hpp"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "engine/data/data_error.hpp"
#include "engine/data/shard.hpp"

namespace megacpp::data {

namespace {

// splitmix64's finaliser: a bijective, well-mixed 64-bit hash.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// floor(h / 2^64 * n): an unbiased-enough map of a 64-bit hash onto [0, n).
uint64_t scale(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace

TokenLoader::TokenLoader(const std::string& data_dir, const std::string& split, int64_t seq_len, int64_t mbs,
                         uint64_t seed)
    : dir_(data_dir), split_(split), seq_len_(seq_len), mbs_(mbs), seed_(seed) {
  if (seq_len < 1 || mbs < 1)
    throw std::invalid_argument("TokenLoader: seq_len and mbs must be positive (got " + std::to_string(seq_len) + ", " +
                                std::to_string(mbs) + ")");
  manifest_ = read_manifest(data_dir);
  const SplitInfo& info = manifest_.split(split);
  offsets_.push_back(0);
  for (const auto& e : info.shards) {
    const std::string path = (std::filesystem::path(data_dir) / e.file).string();
    MappedFile f(path);
    const ShardHeader h = validate_shard(path, f.data(), f.size());
    if (h.tokens != e.tokens || h.sha256 != e.sha256 || static_cast<int32_t>(h.vocab_size) != manifest_.vocab_size)
      throw DataError(path, "does not match " + manifest_path(data_dir) + ": the shard has " + std::to_string(h.tokens) +
                                " tokens, vocab " + std::to_string(h.vocab_size) + ", sha256 " + h.sha256 +
                                "; the manifest lists " + std::to_string(e.tokens) + " tokens, vocab " +
                                std::to_string(manifest_.vocab_size) + ", sha256 " + e.sha256 +
                                " (re-run megacpp data prepare)");
    shards_.push_back(std::move(f));
    total_ += h.tokens;
    offsets_.push_back(total_);
  }
  if (total_ != info.tokens)
    throw DataError(manifest_path(data_dir), "split '" + split + "' lists " + std::to_string(info.tokens) +
                                                 " tokens but its shards hold " + std::to_string(total_));
  if (total_ < static_cast<uint64_t>(window()))
    throw DataError(data_dir, "split '" + split + "' has " + std::to_string(total_) +
                                  " tokens, fewer than one window of seq_len+1 = " + std::to_string(window()) +
                                  (total_ == 0 ? " (it is empty: more input files or a larger val_fraction)" : ""));
}

TokenLoader::~TokenLoader() { stop_prefetch(); }

void TokenLoader::copy_tokens(uint64_t start, uint64_t n, int32_t* out) const {
  if (start + n > total_ || start + n < start)
    throw std::out_of_range("token range [" + std::to_string(start) + ", +" + std::to_string(n) + ") beyond the " +
                            std::to_string(total_) + "-token split");
  std::size_t s = static_cast<std::size_t>(std::upper_bound(offsets_.begin(), offsets_.end(), start) - offsets_.begin()) - 1;
  while (n > 0) {
    const uint64_t in_shard = start - offsets_[s];
    const uint64_t take = std::min<uint64_t>(n, offsets_[s + 1] - start);
    const uint8_t* p = shards_[s].data() + kShardHeaderBytes + 2 * in_shard;
    for (uint64_t i = 0; i < take; ++i) out[i] = load_le16(p + 2 * i);
    out += take;
    start += take;
    n -= take;
    ++s;
  }
}

uint64_t TokenLoader::window_start(int64_t step, int64_t micro, int rank, int world, int64_t row) const {
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("TokenLoader: rank " + std::to_string(rank) + " outside world " + std::to_string(world));
  const uint64_t starts = total_ - static_cast<uint64_t>(window()) + 1;  // valid window starts [0, starts)
  uint64_t lo = 0, count = starts;
  if (world > 1 && starts >= static_cast<uint64_t>(world)) {  // this rank's slice
    lo = static_cast<uint64_t>((static_cast<unsigned __int128>(starts) * rank) / world);
    const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(starts) * (rank + 1)) / world);
    count = hi - lo;
  }
  uint64_t h = mix64(seed_ ^ 0x6d65676163707064ull);  // "megacppd"
  h = mix64(h ^ static_cast<uint64_t>(world));
  h = mix64(h ^ static_cast<uint64_t>(rank));
  h = mix64(h ^ static_cast<uint64_t>(step));
  h = mix64(h ^ static_cast<uint64_t>(micro));
  h = mix64(h ^ static_cast<uint64_t>(row));
  return lo + scale(h, count);
}

void TokenLoader::batch(int64_t step, int64_t micro, int rank, int world, std::span<int32_t> out) const {
  if (out.size() < static_cast<std::size_t>(batch_elems()))
    throw std::invalid_argument("TokenLoader::batch: buffer of " + std::to_string(out.size()) + " elements, need " +
                                std::to_string(batch_elems()));
  for (int64_t r = 0; r < mbs_; ++r)
    copy_tokens(window_start(step, micro, rank, world, r), static_cast<uint64_t>(window()), out.data() + r * window());
}

std::vector<int32_t> TokenLoader::batch(int64_t step, int64_t micro, int rank, int world) const {
  std::vector<int32_t> v(static_cast<std::size_t>(batch_elems()));
  batch(step, micro, rank, world, v);
  return v;
}

uint64_t TokenLoader::eval_window_start(int64_t i, int64_t row) const {
  // Weyl sequence k * (golden ratio) mod 1: every prefix of the held-out windows is spread evenly
  // over the split, whatever eval_batches is.
  const uint64_t k = static_cast<uint64_t>(i) * static_cast<uint64_t>(mbs_) + static_cast<uint64_t>(row);
  const uint64_t frac = (k + 1) * 0x9E3779B97F4A7C15ull;
  return scale(frac, total_ - static_cast<uint64_t>(window()) + 1);
}

void TokenLoader::eval_batch(int64_t i, std::span<int32_t> out) const {
  if (out.size() < static_cast<std::size_t>(batch_elems()))
    throw std::invalid_argument("TokenLoader::eval_batch: buffer of " + std::to_string(out.size()) +
                                " elements, need " + std::to_string(batch_elems()));
  for (int64_t r = 0; r < mbs_; ++r)
    copy_tokens(eval_window_start(i, r), static_cast<uint64_t>(window()), out.data() + r * window());
}

std::vector<int32_t> TokenLoader::eval_batch(int64_t i) const {
  std::vector<int32_t> v(static_cast<std::size_t>(batch_elems()));
  eval_batch(i, v);
  return v;
}

void TokenLoader::start_prefetch(int64_t first_step, int64_t micro_per_step, int rank, int world, int depth) {
  if (micro_per_step < 1) throw std::invalid_argument("start_prefetch: micro_per_step must be positive");
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("start_prefetch: rank " + std::to_string(rank) + " outside world " + std::to_string(world));
  stop_prefetch();
  pf_first_step_ = first_step;
  pf_micro_per_step_ = micro_per_step;
  pf_rank_ = rank;
  pf_world_ = world;
  prefetch_ = std::make_unique<Prefetcher>(
      [this, first_step, micro_per_step, rank, world](int64_t k, std::vector<int32_t>& buf) {
        buf.resize(static_cast<std::size_t>(batch_elems()));
        batch(first_step + k / micro_per_step, k % micro_per_step, rank, world, buf);
      },
      depth);
}

void TokenLoader::next(Batch& b) {
  if (!prefetch_) throw std::logic_error("TokenLoader::next: start_prefetch was not called");
  const int64_t k = prefetch_->taken();
  b.wait_s = prefetch_->take(b.tokens);
  b.step = pf_first_step_ + k / pf_micro_per_step_;
  b.micro = k % pf_micro_per_step_;
  total_wait_s_ += b.wait_s;
}

Batch TokenLoader::next() {
  Batch b;
  next(b);
  return b;
}

void TokenLoader::stop_prefetch() { prefetch_.reset(); }

std::vector<uint64_t> TokenLoader::token_counts() const {
  std::vector<uint64_t> counts(static_cast<std::size_t>(manifest_.vocab_size), 0);
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    const uint8_t* p = shards_[s].data() + kShardHeaderBytes;
    const uint64_t n = offsets_[s + 1] - offsets_[s];
    for (uint64_t i = 0; i < n; ++i) ++counts[load_le16(p + 2 * i)];  // validated < vocab at open
  }
  return counts;
}

}  // namespace megacpp::data
