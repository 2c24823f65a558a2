// megacpp export: the safetensors file parses by the format's rules (8-byte header size, JSON header,
// contiguous data offsets) and every tensor holds exactly the checkpoint's values.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/config/recipe_loader.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/export.hpp"
#include "engine/train/trainer.hpp"
#include "tests/common/test_paths.hpp"
#include "tests/common/tiny_training.hpp"

namespace megacpp {
namespace {

namespace fs = std::filesystem;

TEST(Export, SafetensorsHoldTheCheckpointWeights) {
  const auto root = test::scratch_dir("export");
  const Recipe r = test::tiny_training_recipe(root, "  mbs: 2\n  seq_len: 32\n  global_batch: 2\n  steps: 2\n  precision: fp32\n");
  RunReceipt rc("train", {"test"});
  rc.set_recipe(r);
  TrainOptions o;
  o.quiet = true;
  ASSERT_EQ(run_training(r, o, rc), 0);
  rc.finish_ok();

  const ExportResult e = export_safetensors(rc.run_dir(), "");
  const CheckpointData c = load_checkpoint(e.checkpoint);
  std::ifstream in(e.weights_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string file = ss.str();
  ASSERT_GT(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[static_cast<std::size_t>(i)]);
  ASSERT_EQ(n % 8, 0u);
  const auto header = nlohmann::ordered_json::parse(file.substr(8, n));  // keep the file's tensor order
  const char* data = file.data() + 8 + n;
  int64_t expect_offset = 0, tensors = 0;
  std::vector<float> all;
  for (const auto& [name, t] : header.items()) {
    if (name == "__metadata__") continue;
    ++tensors;
    EXPECT_EQ(t["dtype"], "F32") << name;
    const int64_t b = t["data_offsets"][0], en = t["data_offsets"][1];
    EXPECT_EQ(b, expect_offset) << name << ": tensors must be contiguous";
    int64_t numel = 1;
    for (auto d : t["shape"]) numel *= d.get<int64_t>();
    EXPECT_EQ(en - b, numel * 4) << name;
    std::vector<float> v(static_cast<std::size_t>(numel));
    std::memcpy(v.data(), data + b, static_cast<std::size_t>(en - b));
    all.insert(all.end(), v.begin(), v.end());
    expect_offset = en;
  }
  EXPECT_EQ(static_cast<uint64_t>(expect_offset), file.size() - 8 - n);
  EXPECT_EQ(tensors, e.tensors);
  EXPECT_EQ(header["__metadata__"]["step"], "2");
  // The exported values are the checkpoint's parameters without the 16-element alignment padding.
  std::vector<float> packed;
  ASSERT_TRUE(header.contains("embedding"));
  EXPECT_EQ(header["embedding"]["shape"], (std::vector<int64_t>{258, 32}));
  for (std::size_t i = 0; i < 258 * 32; ++i) EXPECT_EQ(all[i], c.params[i]);
  EXPECT_EQ(static_cast<int64_t>(all.size()), e.params);
  EXPECT_TRUE(fs::exists(e.config_path));
}

}  // namespace
}  // namespace megacpp
