// export.hpp — `megacpp export RUN_DIR --format safetensors`: the weights of a checkpoint as a
// safetensors file that PyTorch's safetensors loader reads, plus a JSON config.
//
// safetensors layout: 8-byte little-endian header size N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}
// (header padded with spaces to a multiple of 8), then the tensors' bytes back to back; offsets are
// relative to the end of the header. Tensor names are the engine's parameter names
// ("layers.3.mamba.in_proj"); shapes and layouts are the ones docs/params.md describes.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace megacpp {

struct ExportResult {
  std::string checkpoint;   // the checkpoint exported
  std::string weights_path; // <out>/model.safetensors
  std::string config_path;  // <out>/config.json
  int64_t tensors = 0, params = 0;
};

// `run_dir`: a training run directory (its receipt names the recipe) or a checkpoint inside one.
// The recipe is re-resolved from the receipt (same files and --set overrides) and must hash to the
// checkpoint's config_sha256; the newest checkpoint that verifies is used. Files are written atomically.
ExportResult export_safetensors(const std::string& run_dir, const std::string& out_dir);

}  // namespace megacpp
