// mimo_bench_main.cpp — small driver for the device script: runs the registered mimo ops' bench() at given shapes
// (no megacpp binary needed). Usage: mimo_bench B S H G N P R chunk [psiv 0|1] [op ...]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/common/gpu_device.hpp"
#include "kernels/registry/op_registry.hpp"

namespace megacpp {
void register_mimo_ops(OpRegistry& r);
}

int main(int argc, char** argv) {
  using namespace megacpp;
  if (argc < 9) {
    std::fprintf(stderr, "usage: mimo_bench B S H G N P R chunk [psiv] [ops...]\n");
    return 2;
  }
  OpRegistry reg;
  register_mimo_ops(reg);
  OpShape s;
  const char* names[8] = {"B", "S", "H", "G", "N", "P", "R", "chunk"};
  for (int i = 0; i < 8; ++i) s[names[i]] = std::atoll(argv[1 + i]);
  OpOptions o;
  o.iters = 20;
  o.warmup = 5;
  if (argc > 9) o.flags["psiv-cache"] = argv[9];
  std::vector<std::string> ops;
  for (int i = 10; i < argc; ++i) ops.push_back(argv[i]);
  if (ops.empty()) ops = {"mimo_fwd", "mimo_bwd_fwd", "mimo_bwd_bwd"};
  const std::string gpu = gpu_available() ? gpu_runtime().gpus[0].name : "none";
  const double peak = dense_bf16_peak_tflops(gpu);
  try {
    for (const auto& n : ops) {
      const OpDef* op = reg.find(n);
      if (!op) throw std::runtime_error("unknown op " + n);
      const BenchResult b = op->bench(s, o);
      const double tf = b.flops_executed / (b.median_ms * 1e-3) / 1e12;
      const double tm = b.flops_model / (b.median_ms * 1e-3) / 1e12;
      std::printf("BENCH | %-13s | %s psiv=%s | median %.3f ms (min %.3f max %.3f, n=%d) | exec %.1f TFLOP/s (%.0f%% of %.0f) | model %.1f TFLOP/s | %.0f GB/s | %s\n",
                  n.c_str(), shape_to_string(s).c_str(), o.flag("psiv-cache", "0").c_str(), b.median_ms, b.min_ms,
                  b.max_ms, b.runs, tf, 100 * tf / peak, peak, tm, b.bytes / (b.median_ms * 1e-3) / 1e9,
                  b.extra.dump().c_str());
      if (n == ops.front())
        for (const auto& k : b.kernels) std::printf("KERNEL | %s\n", k.dump().c_str());
    }
  } catch (const std::exception& e) {
    std::printf("BENCH ERROR: %s\n", e.what());
    return 1;
  }
  return 0;
}
