#include "tests/common/tiny_training.hpp"

#include <filesystem>
#include <fstream>

#include "engine/config/recipe_loader.hpp"
#include "engine/dist/communicator.hpp"

namespace megacpp::test {

std::string make_cpp_corpus(const std::string& root, int files) {
  const std::string src = root + "/src";
  if (std::filesystem::exists(src)) return src;
  std::filesystem::create_directories(src);
  for (int f = 0; f < files; ++f) {
    std::ofstream out(src + "/file" + std::to_string(f) + ".hpp");
    out << "#pragma once\nnamespace demo {\n";
    for (int i = 0; i < 60; ++i)
      out << "template <typename T> inline T add_" << (f * 60 + i) % 17 << "(T a, T b) { return a + b * " << i % 5
          << "; }\n";
    out << "}  // namespace demo\n";
  }
  return src;
}

Recipe tiny_training_recipe(const std::string& root, const std::string& train_yaml,
                            const std::vector<std::string>& extra_sets) {
  const std::string src = make_cpp_corpus(root);
  std::ofstream(root + "/r.yaml") << "model:\n  vocab: 258\n  hidden: 32\n  depth: 2\n  pattern: MD\n"
                                     "  mamba:\n    head_dim: 32\n    state_dim: 16\n    mimo_rank: 2\n    chunk_size: 16\n"
                                     "  mlp:\n    ffn_hidden: 64\n"
                                  << "train:\n" << train_yaml << "data:\n  source: dir\n  inputs: [" << src
                                  << "]\n  dir: " << root << "/data\n";
  std::vector<std::string> sets = {"receipts.dir=" + root + "/runs"};
  sets.insert(sets.end(), extra_sets.begin(), extra_sets.end());
  return load_recipe(root + "/r.yaml", sets);
}

TrainRun train_in_process(const Recipe& r, TrainOptions o, int world) {
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r);
  o.quiet = true;
  TrainRun out;
  if (world == 0) {
    out.code = run_training(r, o, rc);
  } else {
    run_ranks(world, [&](Communicator& c) {
      TrainOptions mine = o;
      mine.comm = &c;
      if (c.rank() == 0) {
        out.code = run_training(r, mine, rc);
      } else {
        RunReceipt shadow("train", {});  // never written: rank 0 keeps the run's receipt
        run_training(r, mine, shadow);
      }
    });
  }
  if (out.code == 0) rc.finish_ok();
  out.doc = rc.doc();
  out.tr = rc.training();
  out.run_dir = rc.run_dir();
  out.status = rc.status();
  for (const auto& p : out.tr["series"]) out.losses.push_back(p["loss"].get<double>());
  return out;
}

}  // namespace megacpp::test
