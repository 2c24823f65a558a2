// mimo_gpu_run.hpp — host helpers that run the MIMO CUDA kernels on MimoInputs (used by ops_mimo.cpp's check and
// by tests/kernels/mimo/test_mimo_gpu.cpp). In CPU-only builds the functions throw std::runtime_error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/metrics.hpp"
#include "kernels/mimo/mimo_ref.hpp"

namespace megacpp::mimo {

// Round the inputs to what the GPU receives: q,k,v,z,trap to bf16 values, everything else to float.
void round_inputs_for_gpu(MimoInputs& in);
// A fresh random dout (B,S,H,P), bf16-rounded.
std::vector<double> make_random_dout(const MimoShape& s, uint64_t seed);

struct GpuRunResult {
  std::vector<double> out;  // (B,S,H,P)
  MimoGrads grads;          // dnorm_weight empty
  std::string note;
  // the wgmma / mma.sync choice of mimo_fwd, mimo_bwd_fwd, mimo_bwd_bwd: predicted from the dims (mimo_kernel_infos,
  // what bench receipts report) and made at launch (mimo_observed_paths); the tests require them equal
  std::string paths_predicted, paths_observed;
};
// Forward (optionally writing the PsiV cache) then the whole backward (reading it), all outputs poisoned first.
GpuRunResult mimo_gpu_run(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout, bool psiv_cache);

// Gate metrics: out (stable_max_rel < 0.01) and the 14 gradients (< 0.02, bad_frac < 0.05).
std::vector<TensorMetric> mimo_compare_forward(const std::vector<double>& ours, const std::vector<double>& ref);
std::vector<TensorMetric> mimo_compare_grads(const MimoGrads& ours, const MimoGrads& ref);

}  // namespace megacpp::mimo
