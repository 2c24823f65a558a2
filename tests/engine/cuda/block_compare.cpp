#include "tests/engine/cuda/block_compare.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

#include "engine/config/recipe_loader.hpp"
#include "engine/cuda/device_block.hpp"
#include "engine/model/block.hpp"
#include "engine/model/model.hpp"
#include "kernels/common/cuda_check.hpp"
#include "kernels/common/device_array.hpp"
#include "kernels/common/host_rng.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp::test {

bool BlockCompare::pass() const {
  for (const auto& m : metrics)
    if (!m.pass()) return false;
  return !metrics.empty();
}
std::string BlockCompare::table() const { return format_metric_table(metrics); }

Recipe block_test_recipe(const std::string& name, const std::string& model_yaml) {
  const std::string dir = scratch_dir("block-" + name);
  std::ofstream(dir + "/r.yaml") << model_yaml;
  return load_recipe(dir + "/r.yaml");
}

namespace {

std::vector<double> random_bf16(std::size_t n, double scale, HostRng& rng) {
  std::vector<double> v(n);
  for (auto& x : v) x = round_to_bf16(scale * rng.normal());
  return v;
}

std::vector<uint16_t> bits(const std::vector<double>& v) { return to_bf16_bits(v); }

std::vector<double> download_bf16(const __nv_bfloat16* p, std::size_t n) {
  std::vector<uint16_t> h(n);
  MEGACPP_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  return from_bf16_bits(h);
}

}  // namespace

BlockCompare compare_device_block(const Recipe& r, BlockKind kind, const BlockCompareOptions& o) {
  const int64_t B = o.B, S = o.S, C = r.model.hidden, M = B * S;
  const std::string prefix = "layers.0.";
  // CPU twin in float64, initialised exactly as the model initialises it (a one-layer model of the
  // same letter provides the values), then perturbed and rounded to bf16.
  ParamStore<double> ps;
  auto cpu = make_block<double>(kind, r, ps, prefix, M);
  ps.finalize();
  cpu->bind(ps);
  {
    Recipe r1 = r;
    Model<double> init_model(r1, 1, r.model.mamba.chunk_size);
    init_model.init_params(o.seed);
    const auto& src = init_model.params();
    for (std::size_t i = 0; i < ps.specs.size(); ++i) {
      const int j = src.find(ps.specs[i].name);
      if (j < 0) throw std::runtime_error("block_compare: " + ps.specs[i].name + " not in the one-layer model");
      std::memcpy(ps.param(static_cast<int>(i)), const_cast<ParamStore<double>&>(src).param(j),
                  static_cast<std::size_t>(ps.specs[i].numel) * sizeof(double));
    }
  }
  HostRng rng(o.seed * 7919 + 17);
  for (auto& s : ps.specs)
    for (int64_t i = 0; i < s.numel; ++i) {
      double& p = ps.data[static_cast<std::size_t>(s.offset + i)];
      if (!s.decay) p += 0.2 * (rng.uniform() - 0.5);  // no trivially-zero gradients at symmetric inits
      p = round_to_bf16(p);
    }
  // Gradient buffers start at a known random value: the backward must ACCUMULATE onto it.
  std::vector<double> g0(static_cast<std::size_t>(ps.numel()));
  for (auto& g : g0) g = static_cast<float>(0.01 * rng.normal());
  ps.grads = g0;
  const auto x = random_bf16(static_cast<std::size_t>(M * C), o.x_scale, rng);
  const auto dy = random_bf16(static_cast<std::size_t>(M * C), o.dy_scale, rng);
  std::vector<double> y_ref(x.size()), dx_ref(x.size());
  cpu->forward(x.data(), y_ref.data(), B, S);
  cpu->backward(dy.data(), dx_ref.data(), B, S);

  // The device side: the same layout in fp32 (what the CUDA model builds from its host ParamStore<float>).
  ParamStore<float> layout;
  for (const auto& s : ps.specs) layout.add(s.name, s.shape, s.init, s.decay, s.init_value);
  layout.finalize();
  const auto n = static_cast<std::size_t>(ps.numel());
  std::vector<float> master(n), grad0(n);
  std::vector<double> master_d(n);
  for (std::size_t i = 0; i < n; ++i) master[i] = static_cast<float>(ps.data[i]), master_d[i] = ps.data[i], grad0[i] = static_cast<float>(g0[i]);
  DeviceArray<float> d_master(master), d_grad(n);
  DeviceArray<uint16_t> d_shadow(bits(master_d));
  cuda_backend::DeviceParams dp;
  dp.layout = &layout;
  dp.master = d_master.get();
  dp.shadow = reinterpret_cast<cuda_backend::bf16*>(d_shadow.get());
  dp.grad = d_grad.get();
  cuda_backend::DeviceArena arena;
  cuda_backend::BlockBuild bb;
  bb.recipe = &r, bb.params = &dp, bb.arena = &arena, bb.prefix = prefix, bb.max_tokens = M, bb.seq_len = S;
  auto dev = cuda_backend::make_device_block(kind, bb);
  arena.commit();
  DeviceArray<uint16_t> d_x(bits(x)), d_dy(bits(dy)), d_y(x.size()), d_dx(x.size());
  cudaStream_t st = nullptr;
  MEGACPP_CUDA_CHECK(cudaStreamCreate(&st));
  auto run = [&](std::vector<double>& y, std::vector<double>& dx, std::vector<float>& g) {
    d_grad.upload(grad0);
    MEGACPP_CUDA_CHECK(cudaMemset(d_y.get(), 0xFF, x.size() * 2));   // poison: bf16 NaN
    MEGACPP_CUDA_CHECK(cudaMemset(d_dx.get(), 0xFF, x.size() * 2));
    auto* bx = reinterpret_cast<const cuda_backend::bf16*>(d_x.get());
    auto* by = reinterpret_cast<cuda_backend::bf16*>(d_y.get());
    dev->forward(bx, by, B, S, st);
    dev->backward(reinterpret_cast<const cuda_backend::bf16*>(d_dy.get()), reinterpret_cast<cuda_backend::bf16*>(d_dx.get()),
                  B, S, st);
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(st));
    MEGACPP_CUDA_CHECK(cudaGetLastError());
    y = download_bf16(by, x.size());
    dx = download_bf16(reinterpret_cast<cuda_backend::bf16*>(d_dx.get()), x.size());
    g = d_grad.download();
  };
  std::vector<double> y, dx, y2, dx2;
  std::vector<float> g, g2;
  run(y, dx, g);
  run(y2, dx2, g2);  // again: a result that moves between identical runs is a race
  MEGACPP_CUDA_CHECK(cudaStreamDestroy(st));

  BlockCompare out;
  out.metrics.push_back(compare_tensors("y", y, y_ref, o.tol_y, o.tol_bad_frac));
  out.metrics.push_back(compare_tensors("dx", dx, dx_ref, o.tol_dx, o.tol_bad_frac));
  for (const auto& s : ps.specs) {
    std::vector<double> ours(static_cast<std::size_t>(s.numel)), ref(static_cast<std::size_t>(s.numel));
    for (int64_t i = 0; i < s.numel; ++i) {
      const auto k = static_cast<std::size_t>(s.offset + i);
      ours[static_cast<std::size_t>(i)] = static_cast<double>(g[k]) - static_cast<double>(grad0[k]);
      ref[static_cast<std::size_t>(i)] = ps.grads[k] - g0[k];
    }
    out.metrics.push_back(compare_tensors("grad " + s.name.substr(prefix.size()), ours, ref, o.tol_grad, o.tol_bad_frac));
  }
  // Determinism: the second run must be bitwise identical.
  std::size_t moved = 0;
  for (std::size_t i = 0; i < y.size(); ++i) moved += (y[i] != y2[i]) + (dx[i] != dx2[i]);
  for (std::size_t i = 0; i < g.size(); ++i) moved += std::memcmp(&g[i], &g2[i], sizeof(float)) != 0;
  TensorMetric det;
  det.name = "rerun (bitwise)";
  det.count = y.size() * 2 + g.size();
  det.bad_frac = static_cast<double>(moved) / static_cast<double>(det.count);
  det.tol_rel = 1, det.tol_bad_frac = 1e-300;  // passes only when nothing moved
  out.metrics.push_back(det);
  return out;
}

}  // namespace megacpp::test
