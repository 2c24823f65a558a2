// checkpoint.hpp — training checkpoints: weights (fp32 master on the CPU backend), AdamW m and v,
// the step, tokens seen, the data position (the loader is a pure function of seed and step, so the
// step is the position), RNG seed, best validation loss and the resolved config.
//
// Layout: <run_dir>/checkpoints/step-00000123/{params.bin, adam_m.bin, adam_v.bin, state.json, manifest.json}
// Atomic: everything is written into a hidden temporary directory, each file fsync'ed, then the
// directory is renamed into place and the parent fsync'ed — a killed writer never leaves a
// half-visible checkpoint. manifest.json carries the sha256 of every file; load verifies them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace megacpp {

struct CheckpointState {
  int64_t step = 0;          // optimizer steps completed
  int64_t tokens_seen = 0;
  double best_val_loss = -1; // < 0: none yet
  std::string config_sha256;
  nlohmann::json extra = nlohmann::json::object();  // param names/shapes, dtype, recipe
};

struct CheckpointData {
  CheckpointState state;
  std::vector<float> params, adam_m, adam_v;
};

// Writes step-<step> under `dir` (created), then keeps only the newest `keep` checkpoints.
// Returns the checkpoint directory.
// `before_publish` (optional) runs with the temporary directory after its files are written and
// before it is renamed into place: data-parallel ranks write their ZeRO shards into it then.
std::string save_checkpoint(const std::string& dir, const CheckpointData& c, int64_t keep,
                            const std::function<void(const std::string& tmp_dir)>& before_publish = {});
// ZeRO-1 (parallel.zero: 1): rank `rank` of `world` holds AdamW m and v of the flat parameter range
// [rank·shard, rank·shard + shard) (zero-padded past the end). write_zero_shard writes them as
// <ckpt>/zero/rank-RRRRR/{adam_m.bin, adam_v.bin, manifest.json, COMPLETE}: temporary directory,
// fsync, rename, the COMPLETE marker last. A checkpoint whose state.extra.zero = {world, shard, numel}
// has empty adam_*.bin at the top; load_checkpoint verifies every shard (marker and checksums) and
// returns the concatenated full-length m and v, so a resumed run can use any DP size (re-shard on load).
void write_zero_shard(const std::string& ckpt_dir, int rank, int world, const std::vector<float>& m, const std::vector<float>& v);
// Loads and verifies one checkpoint directory; throws std::runtime_error naming the bad file.
CheckpointData load_checkpoint(const std::string& ckpt_dir);
// Checkpoint directories under `dir`, newest first.
std::vector<std::string> list_checkpoints(const std::string& dir);
// The newest checkpoint under `dir` that verifies; if the newest fails, throws an error that names
// it, says why, and offers the previous valid one.
std::string latest_valid_checkpoint(const std::string& dir);

}  // namespace megacpp
