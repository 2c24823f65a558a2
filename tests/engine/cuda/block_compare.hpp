// block_compare.hpp — one CUDA block (engine/cuda) against its CPU twin (engine/model) in float64.
//
// Builds the letter's CPU block (Block<double>) and its DeviceBlock from the same recipe and the same
// parameters: random weights (N(0, init_std)), the non-decay parameters (norm weights, biases, Mamba
// scalars) jittered around their init so that no gradient is trivially zero; all rounded to bf16 so
// both sides see identical weights. Fresh random x and dy (bf16-rounded), GPU outputs and gradients
// poisoned (NaN) first. Compares y, dx and every parameter gradient of the block.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/config/pattern.hpp"
#include "engine/config/recipe.hpp"
#include "kernels/common/metrics.hpp"

namespace megacpp::test {

struct BlockCompareOptions {
  int64_t B = 2, S = 128;
  uint64_t seed = 1;
  double x_scale = 1.0;      // x ~ N(0, x_scale²) (the model feeds RMS-normalised activations: ~1)
  double dy_scale = 1.0;
  double tol_y = 0.02, tol_dx = 0.03, tol_grad = 0.03, tol_bad_frac = 0.01;
};

struct BlockCompare {
  std::vector<TensorMetric> metrics;  // "y", "dx", then "grad <param name>" per parameter of the block
  bool pass() const;
  std::string table() const;          // format_metric_table(metrics)
};

// A one-letter recipe: load_recipe(yaml) with model.pattern = letter; the caller chooses the shapes.
Recipe block_test_recipe(const std::string& name, const std::string& model_yaml);

BlockCompare compare_device_block(const Recipe& r, BlockKind kind, const BlockCompareOptions& o = {});

}  // namespace megacpp::test
