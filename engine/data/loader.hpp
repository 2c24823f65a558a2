// loader.hpp — training and validation batches from a prepared data directory.
//
// The shards of one split are memory-mapped and validated once when the loader opens (magic,
// version, size, checksum, token range, and agreement with the manifest); afterwards a batch is a
// few memcpy's. The split is one virtual token stream (shards concatenated, documents separated by
// BOS/EOS); a window is seq_len+1 consecutive tokens of it (inputs = [0, seq_len), targets = [1,
// seq_len]) and may cross a shard boundary.
//
// batch(step, micro, rank, world) is a pure function of (seed, step, micro, rank, world): the window
// starts come from a counter-based hash, so a resumed run gets exactly the batches it would have got,
// and each data-parallel rank draws from its own contiguous 1/world slice of the window starts
// (disjoint streams, up to the seq_len tokens where neighbouring slices meet).
// eval_batch(i) is fixed held-out windows: a low-discrepancy sequence over the split that does not
// depend on the seed, so validation losses compare across runs.
//
// The prefetch thread (start_prefetch / next) builds the following batches in order while the step
// runs; next() reports how long it blocked (data_loading_sync badput).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/data/manifest.hpp"
#include "engine/data/mapped_file.hpp"
#include "engine/data/prefetch.hpp"

namespace megacpp::data {

struct Batch {
  int64_t step = 0, micro = 0;
  std::vector<int32_t> tokens;  // [mbs x (seq_len+1)], row-major
  double wait_s = 0;            // how long next() blocked for it
};

class TokenLoader {
 public:
  // Opens `split` ("train" | "val") of `data_dir`. Throws DataError (naming the file) on a missing or
  // bad manifest, a corrupt/truncated shard, or a split with fewer than seq_len+1 tokens.
  TokenLoader(const std::string& data_dir, const std::string& split, int64_t seq_len, int64_t mbs, uint64_t seed);
  ~TokenLoader();
  TokenLoader(const TokenLoader&) = delete;  // the prefetch thread points at this object
  TokenLoader& operator=(const TokenLoader&) = delete;

  int64_t seq_len() const { return seq_len_; }
  int64_t mbs() const { return mbs_; }
  int64_t window() const { return seq_len_ + 1; }
  int64_t batch_elems() const { return mbs_ * (seq_len_ + 1); }  // int32 elements of one batch
  uint64_t tokens() const { return total_; }                       // tokens in the split
  const Manifest& manifest() const { return manifest_; }
  const std::string& split() const { return split_; }
  int32_t vocab_size() const { return manifest_.vocab_size; }

  // Training batch: fills out[0 .. batch_elems()) (throws std::invalid_argument if out is smaller).
  void batch(int64_t step, int64_t micro, int rank, int world, std::span<int32_t> out) const;
  std::vector<int32_t> batch(int64_t step, int64_t micro, int rank, int world) const;
  // Where row `row` of that batch starts in the split's token stream.
  uint64_t window_start(int64_t step, int64_t micro, int rank, int world, int64_t row) const;

  // Held-out batch i (i = 0 .. eval_batches-1 in the training loop); independent of seed and rank.
  void eval_batch(int64_t i, std::span<int32_t> out) const;
  std::vector<int32_t> eval_batch(int64_t i) const;
  uint64_t eval_window_start(int64_t i, int64_t row) const;

  // Background prefetch of the batches (first_step, 0), (first_step, 1), ..., (first_step,
  // micro_per_step-1), (first_step+1, 0), ...; at most `depth` ready ahead. Restarting replaces the
  // previous stream (e.g. after a resume).
  void start_prefetch(int64_t first_step, int64_t micro_per_step, int rank, int world, int depth = 4);
  // The next batch of the stream, equal to batch(step, micro, rank, world). Reuses b.tokens' buffer.
  void next(Batch& b);
  Batch next();
  void stop_prefetch();
  double total_wait_s() const { return total_wait_s_; }  // summed over next() calls

  // Copies tokens [start, start+n) of the split's stream as int32 (may cross shards).
  void copy_tokens(uint64_t start, uint64_t n, int32_t* out) const;
  // Count of every token id over the split (size vocab_size()).
  std::vector<uint64_t> token_counts() const;

 private:
  std::string dir_, split_;
  int64_t seq_len_, mbs_;
  uint64_t seed_;
  Manifest manifest_;
  std::vector<MappedFile> shards_;
  std::vector<uint64_t> offsets_;  // first token of each shard in the stream; offsets_.back() == total_
  uint64_t total_ = 0;
  // prefetch stream
  int64_t pf_first_step_ = 0, pf_micro_per_step_ = 1;
  int pf_rank_ = 0, pf_world_ = 1;
  double total_wait_s_ = 0;
  std::unique_ptr<Prefetcher> prefetch_;  // last: destroyed first
};

}  // namespace megacpp::data
