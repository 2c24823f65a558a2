// unigram.hpp — the baseline a language model has to beat: a model that ignores context and
// predicts every token with its frequency in the training split scores, on that split, a loss equal
// to the entropy of the frequency distribution. The acceptance test of `megacpp train` compares the
// validation loss to unigram_entropy_nats(dir, "train"). All values are in nats (natural log), like
// the training loss.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace megacpp::data {

// -sum p log p over the non-zero counts, p = count / total; 0 for no tokens.
double entropy_nats(std::span<const uint64_t> counts);
// Cross-entropy of `eval` under the distribution of `model` with add-one smoothing (so a token
// never seen in `model` costs a finite amount): what a unigram model fitted to one split scores on
// the other. Both spans have the vocabulary's length.
double cross_entropy_nats(std::span<const uint64_t> model, std::span<const uint64_t> eval);

// Entropy of the token frequencies of `split` of a prepared data dir (shards validated first).
double unigram_entropy_nats(const std::string& data_dir, const std::string& split = "train");
// The loss the train-split unigram model (add-one smoothed) gets on the val split.
double unigram_val_cross_entropy_nats(const std::string& data_dir);

}  // namespace megacpp::data
