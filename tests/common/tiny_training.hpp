// tiny_training.hpp — a corpus and a recipe small enough that a whole training run takes a fraction
// of a second on the CPU backend; shared by the train, export and distributed tests.
#pragma once
#include <string>
#include <vector>

#include "engine/config/recipe.hpp"
#include "engine/receipts/receipt.hpp"
#include "engine/train/trainer.hpp"

namespace megacpp::test {

// `files` C++-like headers under root/src (the train/val split by path hash needs ≥ 2 files).
std::string make_cpp_corpus(const std::string& root, int files = 12);

// A 2-layer MD model (hidden 32, vocab 258) on root/src, data in root/data, receipts in root/runs.
// `train_yaml` is the recipe's whole `train:` section body, e.g. "  mbs: 2\n  seq_len: 32\n".
Recipe tiny_training_recipe(const std::string& root, const std::string& train_yaml,
                            const std::vector<std::string>& extra_sets = {});

// Runs the training loop quietly in this process: world 0 is the single-rank path (no communicator),
// world ≥ 1 that many in-process ranks (rank 0 keeps the receipt). A run that returns 0 gets its receipt
// finished as ok (the loop itself finishes failed and interrupted runs).
struct TrainRun {
  int code = -1;
  nlohmann::json doc;          // the whole receipt
  nlohmann::json tr;           // its training section
  std::string run_dir, status;
  std::vector<double> losses;  // the per-step series
};
TrainRun train_in_process(const Recipe& r, TrainOptions o = {}, int world = 0);

}  // namespace megacpp::test
