// pattern.hpp — hybrid layer patterns (the Megatron/nanochat hybrid-pattern semantics of the seeds).
//   A attention · M Mamba-3 MIMO mixer · E MoE FFN · D dense MLP · R M²RNN recurrent layer
//   '|' separates pipeline stages.
// Without '|' the pattern is tiled to `depth` (AEMEAEMEAEMR over 52 → 13 A, 13 M, 22 E, 4 R);
// with '|' its letters must number exactly `depth`. Each letter is one layer (one pre-norm block).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp {

enum class BlockKind { Attention, Mamba, Moe, Dense, M2rnn };
inline constexpr std::array<char, 5> kBlockLetters = {'A', 'M', 'E', 'D', 'R'};

const char* block_name(BlockKind k);  // "attention", "mamba3_mimo", ...
char block_letter(BlockKind k);
bool block_from_letter(char c, BlockKind& out);

struct ExpandedPattern {
  std::vector<BlockKind> layers;   // one per layer, length == depth
  std::vector<int> stage_of_layer; // pipeline stage index per layer (all 0 without '|')
  int stages = 1;
  int64_t count(BlockKind k) const;
  bool uses(BlockKind k) const { return count(k) > 0; }
  std::string letters() const;     // the expanded string, e.g. "AEMEAEMEAEMRAEME..."
};

// Problems are reported as (rule, 0-based character offset in the pattern, detail); the caller
// turns them into ConfigError with file/line/column.
struct PatternProblem {
  std::string rule;      // "bad-pattern-letter" | "depth-mismatch" | "empty-pattern" | "empty-stage"
  int offset = 0;
  std::string got, expected;
};

// Returns false and fills `problem` when the pattern is invalid for `depth`.
bool expand_pattern(const std::string& pattern, int64_t depth, ExpandedPattern& out, PatternProblem& problem);

}  // namespace megacpp
