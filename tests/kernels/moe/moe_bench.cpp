// moe_bench — the `moe` op's bench() for several dispatch variants in one process (the device script uses
// it so that it need not build the whole megacpp executable; `megacpp bench --kernel moe` runs the same).
//   moe_bench [--variants standard,fused,fused-1s,fused-grouped,fused-serial,standard-serial] [--json FILE]
//             [--iters N] [--<param> V ...]
// fused = per-expert cublasGemmEx on 4 streams + side-stream overlap; fused-Ns: N expert streams;
// fused-grouped: cublasGemmGroupedBatchedEx; *-serial: one stream for everything.
#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/common/gpu_device.hpp"
#include "kernels/registry/op_registry.hpp"

namespace megacpp {
void register_moe_ops(OpRegistry& r);
}

int main(int argc, char** argv) {
  using namespace megacpp;
  OpRegistry reg;
  register_moe_ops(reg);
  const OpDef& op = *reg.find("moe");
  std::map<std::string, int64_t> over;
  std::string variants = "standard,fused,fused-1s,fused-grouped,fused-serial,standard-serial", json_path;
  int iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--variants") variants = v;
    else if (k == "--json") json_path = v;
    else if (k == "--iters") iters = std::stoi(v);
    else if (k.rfind("--", 0) == 0) over[k.substr(2)] = std::stoll(v);
  }
  if (!gpu_available()) {
    std::fprintf(stderr, "moe_bench: no GPU (%s)\n", gpu_runtime().why_not.c_str());
    return 2;
  }
  const OpShape shape = resolve_shape(op, over);
  nlohmann::json all = nlohmann::json::array();
  std::printf("GPU %s; shape %s\n", gpu_runtime().gpus[0].name.c_str(), shape_to_string(shape).c_str());
  std::printf("%-11s %8s %8s %9s %9s %8s %8s %8s %7s %7s %7s\n", "variant", "fwd_ms", "bwd_ms", "fwdGEMM", "bwdGEMM",
              "TF/s_f", "TF/s_b", "TF/s_fb", "out_f", "out_b", "out_fb");
  std::stringstream ss(variants);
  std::string v;
  while (std::getline(ss, v, ',')) {
    OpOptions o;
    o.iters = iters;
    const bool std_path = v.rfind("standard", 0) == 0;
    if (!std_path && v.rfind("fused", 0) != 0) {
      std::fprintf(stderr, "moe_bench: unknown variant %s\n", v.c_str());
      return 2;
    }
    o.flags["moe-path"] = std_path ? "standard" : "fused";
    o.flags["moe-gemm"] = v == "fused-grouped" ? "grouped" : "per-expert";
    o.flags["moe-overlap"] = v.find("serial") != std::string::npos ? "off" : "on";
    o.flags["moe-expert-streams"] = v.find("serial") != std::string::npos ? "1" : "4";
    if (v.size() > 7 && v.back() == 's' && v.rfind("fused-", 0) == 0 && std::isdigit((unsigned char)v[6]))
      o.flags["moe-expert-streams"] = v.substr(6, v.size() - 7);
    const BenchResult r = op.bench(shape, o);
    const auto& e = r.extra;
    std::printf("%-11s %8.3f %8.3f %9.3f %9.3f %8.1f %8.1f %8.1f %6.1f%% %6.1f%% %6.1f%%\n", v.c_str(),
                e["fwd_ms"].get<double>(), e["bwd_ms"].get<double>(), e["fwd_expert_gemm_ms"].get<double>(),
                e["bwd_expert_gemm_ms"].get<double>(), e["tflops_fwd"].get<double>(), e["tflops_bwd"].get<double>(),
                r.flops_model / (r.median_ms * 1e9), 100 * e["outside_gemm_share_fwd"].get<double>(),
                100 * e["outside_gemm_share_bwd"].get<double>(), 100 * e["outside_gemm_share_total"].get<double>());
    std::fflush(stdout);
    nlohmann::json j = {{"variant", v}, {"median_ms", r.median_ms}, {"flops_model", r.flops_model},
                        {"flops_executed", r.flops_executed}, {"bytes", r.bytes}, {"extra", r.extra}, {"note", r.note}};
    all.push_back(j);
    std::printf("  note: %s\n  tokens/expert: %s\n", r.note.c_str(), e["tokens_per_expert"].dump().c_str());
  }
  if (!json_path.empty()) std::ofstream(json_path) << all.dump(2) << "\n";
  return 0;
}
