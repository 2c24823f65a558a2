#include "engine/config/pattern.hpp"

namespace megacpp {

const char* block_name(BlockKind k) {
  switch (k) {
    case BlockKind::Attention: return "attention";
    case BlockKind::Mamba: return "mamba3_mimo";
    case BlockKind::Moe: return "moe";
    case BlockKind::Dense: return "dense_mlp";
    case BlockKind::M2rnn: return "m2rnn";
  }
  return "?";
}

char block_letter(BlockKind k) {
  switch (k) {
    case BlockKind::Attention: return 'A';
    case BlockKind::Mamba: return 'M';
    case BlockKind::Moe: return 'E';
    case BlockKind::Dense: return 'D';
    case BlockKind::M2rnn: return 'R';
  }
  return '?';
}

bool block_from_letter(char c, BlockKind& out) {
  switch (c) {
    case 'A': out = BlockKind::Attention; return true;
    case 'M': out = BlockKind::Mamba; return true;
    case 'E': out = BlockKind::Moe; return true;
    case 'D': out = BlockKind::Dense; return true;
    case 'R': out = BlockKind::M2rnn; return true;
    default: return false;
  }
}

int64_t ExpandedPattern::count(BlockKind k) const {
  int64_t n = 0;
  for (auto l : layers) n += (l == k);
  return n;
}

std::string ExpandedPattern::letters() const {
  std::string s;
  for (auto l : layers) s += block_letter(l);
  return s;
}

bool expand_pattern(const std::string& pattern, int64_t depth, ExpandedPattern& out, PatternProblem& problem) {
  out = {};
  std::vector<BlockKind> letters;
  std::vector<int> stage;
  int cur_stage = 0;
  bool has_bar = false;
  int letters_in_stage = 0;
  for (int i = 0; i < static_cast<int>(pattern.size()); ++i) {
    const char c = pattern[static_cast<std::size_t>(i)];
    if (c == '|') {
      if (letters_in_stage == 0) {
        problem = {"empty-stage", i, "'|' with no layer before it", "at least one letter in every pipeline stage"};
        return false;
      }
      has_bar = true;
      ++cur_stage;
      letters_in_stage = 0;
      continue;
    }
    BlockKind k;
    if (!block_from_letter(c, k)) {
      problem = {"bad-pattern-letter", i, std::string("'") + c + "'",
                 "letters A (attention), M (Mamba-3), E (MoE), D (dense MLP), R (M2RNN) and '|'"};
      return false;
    }
    letters.push_back(k);
    stage.push_back(cur_stage);
    ++letters_in_stage;
  }
  if (letters.empty()) {
    problem = {"empty-pattern", 0, "an empty pattern", "at least one of A, M, E, D, R"};
    return false;
  }
  if (has_bar && letters_in_stage == 0) {
    problem = {"empty-stage", static_cast<int>(pattern.size()) - 1, "a trailing '|'",
               "at least one letter in every pipeline stage"};
    return false;
  }
  if (has_bar) {
    if (static_cast<int64_t>(letters.size()) != depth) {
      problem = {"depth-mismatch", 0, std::to_string(letters.size()) + " layers in a staged pattern",
                 "exactly depth=" + std::to_string(depth) + " letters when the pattern has '|'"};
      return false;
    }
    out.layers = letters;
    out.stage_of_layer = stage;
    out.stages = cur_stage + 1;
    return true;
  }
  for (int64_t i = 0; i < depth; ++i) {
    out.layers.push_back(letters[static_cast<std::size_t>(i) % letters.size()]);
    out.stage_of_layer.push_back(0);
  }
  out.stages = 1;
  return true;
}

}  // namespace megacpp
