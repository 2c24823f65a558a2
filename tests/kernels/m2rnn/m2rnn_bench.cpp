// m2rnn_bench.cpp — stand-alone timing of the M²RNN scan kernels through the same OpDef bench functions
// that `megacpp bench --kernel m2rnn_fwd|m2rnn_bwd` uses (for the device script, which builds only this
// family). Usage: m2rnn_bench [--iters N] [--warmup N] [--json FILE] [B S heads [key_dim]] ...
// Without shapes: the MegaCpp shape (2, 4096, 44, 64) and the paper's 7B / 400M layer shapes.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/common/gpu_device.hpp"
#include "kernels/m2rnn/m2rnn_ops.hpp"

int main(int argc, char** argv) {
  using namespace megacpp;
  if (!gpu_available()) {
    std::printf("m2rnn_bench: no GPU (%s)\n", gpu_runtime().why_not.c_str());
    return 0;
  }
  OpOptions opt;
  opt.warmup = 10;
  opt.iters = 30;
  std::string json_path;
  std::vector<std::vector<int>> shapes;
  std::vector<int> cur;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      opt.iters = std::atoi(argv[++i]);
    } else if (a == "--warmup" && i + 1 < argc) {
      opt.warmup = std::atoi(argv[++i]);
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      cur.push_back(std::atoi(argv[i]));
      if (cur.size() == 4) shapes.push_back(cur), cur.clear();
    }
  }
  if (cur.size() == 3) cur.push_back(64), shapes.push_back(cur);
  if (shapes.empty())
    shapes = {{2, 4096, 44, 64}, {4, 4096, 132, 64}, {8, 4096, 84, 64}, {1, 4096, 44, 64}, {2, 4096, 44, 32}};
  std::printf("GPU: %s\n", gpu_runtime().gpus[0].name.c_str());
  std::printf("%-24s %10s %10s %10s %12s %12s %9s %9s\n", "shape B,S,N,K", "fwd_ms", "fwd_inf_ms", "bwd_ms",
              "fwd_tok/s", "bwd_tok/s", "fwd_ns/st", "bwd_ns/st");
  nlohmann::json all = nlohmann::json::array();
  for (std::size_t si = 0; si < shapes.size(); ++si)
  for (const char* variant : {"0", "1"}) {
    if (si > 0 && variant[0] == '1') continue;  // the baseline only at the first shape
    const auto& s = shapes[si];
    const OpShape sh = {{"B", s[0]}, {"S", s[1]}, {"heads", s[2]}, {"key_dim", s[3]}, {"value_dim", 16}};
    opt.flags["variant"] = variant;
    const BenchResult f = m2rnn::bench_fwd(sh, opt);
    const BenchResult b = m2rnn::bench_bwd(sh, opt);
    char name[64];
    std::snprintf(name, sizeof name, "%d,%d,%d,%d v%s", s[0], s[1], s[2], s[3], variant[0] == '0' ? "2" : "1");
    std::printf("%-24s %10.4f %10.4f %10.4f %12.4g %12.4g %9.1f %9.1f\n", name, f.median_ms,
                f.extra["fwd_inference_no_checkpoints_ms"].get<double>(), b.median_ms,
                f.extra["tokens_per_s"].get<double>(), b.extra["tokens_per_s"].get<double>(),
                f.median_ms * 1e6 / s[1], b.median_ms * 1e6 / s[1]);
    for (const auto* r : {&f, &b})
      all.push_back({{"shape", name}, {"op", r == &f ? "m2rnn_fwd" : "m2rnn_bwd"}, {"median_ms", r->median_ms},
                     {"min_ms", r->min_ms}, {"max_ms", r->max_ms}, {"runs", r->runs}, {"flops_model", r->flops_model},
                     {"flops_executed", r->flops_executed}, {"bytes", r->bytes}, {"kernels", r->kernels},
                     {"extra", r->extra}, {"note", r->note}});
  }
  std::printf("speed bar at B=2,S=4096,N=44 (authors' Triton on H200: fwd 3.8 ms, bwd 11.5 ms; need <= 1.27 / 3.83 ms)\n");
  if (!json_path.empty()) std::ofstream(json_path) << all.dump(2) << "\n";
  std::printf("%s\n", all.dump(1).substr(0, 3000).c_str());
  return 0;
}
