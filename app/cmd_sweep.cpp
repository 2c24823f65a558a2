// megacpp sweep — the Mamba-3 MIMO correctness + speed table across shapes and chunk sizes.
// For each shape (N, P, R) × chunk: the correctness gate of op `mimo_all` against the float64
// reference at a size the CPU can afford, then timing of mimo_fwd and mimo_bwd_fwd + mimo_bwd_bwd at
// full size. Writes sweep.md and sweep.json next to the receipt. Default: the seeds' 11-shape table.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "app/cli_common.hpp"
#include "engine/receipts/atomic_file.hpp"
#include "kernels/common/gpu_device.hpp"
#include "kernels/registry/op_registry.hpp"

namespace megacpp::app {

namespace {
struct SweepShape {
  int64_t N, P, R, chunk;
};
// The seeds' table: (N, P, R, chunk).
const std::vector<SweepShape> kSeedShapes = {{16, 64, 4, 8},   {32, 64, 4, 16},  {64, 64, 4, 16},  {128, 64, 4, 16},
                                             {256, 64, 4, 8},  {64, 128, 4, 16}, {128, 32, 4, 16}, {128, 128, 4, 8},
                                             {128, 64, 8, 8},  {128, 64, 2, 32}, {128, 64, 1, 64}};

std::vector<int64_t> parse_int_list(const std::string& s, const std::string& what) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    std::size_t pos = 0;
    const long long v = std::stoll(item, &pos);
    if (pos != item.size() || v <= 0) throw std::invalid_argument(what + ": '" + item + "' is not a positive integer");
    out.push_back(v);
  }
  return out;
}

std::vector<SweepShape> read_shapes_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("sweep --shapes: cannot read " + path);
  std::vector<SweepShape> out;
  std::string line;
  int no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.empty() || line[0] == '#') continue;
    const auto v = parse_int_list(line, path + ":" + std::to_string(no));
    if (v.size() != 4) throw std::invalid_argument(path + ":" + std::to_string(no) + ": expected 'N,P,R,chunk'");
    out.push_back({v[0], v[1], v[2], v[3]});
  }
  return out;
}
}  // namespace

void add_sweep_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::string chunks, shapes = "seeds", ranks;
    int64_t B = 8, S = 8192, H = 16, G = 1, check_S = 0;
    int iters = 20;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("sweep", "Mamba-3 MIMO correctness + speed table across chunk sizes and shapes");
  cmd->add_option("--chunk-sizes", o->chunks, "Comma list of chunk sizes (default: each shape's own chunk)");
  cmd->add_option("--shapes", o->shapes, "'seeds' (the 11 seed shapes) or a FILE of 'N,P,R,chunk' lines");
  cmd->add_option("--ranks", o->ranks, "Comma list of MIMO ranks R to cross with the shapes");
  cmd->add_option("--B", o->B, "Batch for timing");
  cmd->add_option("--S", o->S, "Sequence length for timing");
  cmd->add_option("--H", o->H, "Heads");
  cmd->add_option("--G", o->G, "B/C groups");
  cmd->add_option("--check-S", o->check_S, "Sequence length of the correctness check (default 4 chunks, >= 64)");
  cmd->add_option("--iters", o->iters, "Timed runs per kernel");
  cmd->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("sweep", inv, [&](RunReceipt& rc) {
      rc.set_location(inv.receipts_dir, "mimo");
      const OpDef* all = op_registry().find("mimo_all");
      const OpDef* fwd = op_registry().find("mimo_fwd");
      const OpDef* bf = op_registry().find("mimo_bwd_fwd");
      const OpDef* bb = op_registry().find("mimo_bwd_bwd");
      if (!all || !fwd || !bf || !bb) {
        const char* msg = "sweep: the Mamba-3 MIMO ops (mimo_all, mimo_fwd, mimo_bwd_fwd, mimo_bwd_bwd) are not in this build";
        std::fprintf(stderr, "%s\n", msg);
        rc.finish_failed(msg, "not-available");
        return kUnavailable;
      }
      if (!gpu_available()) throw std::runtime_error("sweep needs a GPU: " + gpu_runtime().why_not);
      std::vector<SweepShape> base = o->shapes == "seeds" ? kSeedShapes : read_shapes_file(o->shapes);
      std::vector<SweepShape> shapes;
      const auto chunks = o->chunks.empty() ? std::vector<int64_t>{} : parse_int_list(o->chunks, "--chunk-sizes");
      const auto ranks = o->ranks.empty() ? std::vector<int64_t>{} : parse_int_list(o->ranks, "--ranks");
      for (const auto& s : base)
        for (int64_t R : ranks.empty() ? std::vector<int64_t>{s.R} : ranks)
          for (int64_t c : chunks.empty() ? std::vector<int64_t>{s.chunk} : chunks) shapes.push_back({s.N, s.P, R, c});
      nlohmann::json rows = nlohmann::json::array();
      std::string md = "| N | P | R | chunk | stable_max_rel (worst) | max_abs | bad_frac | check | fwd ms | bwd ms | TFLOP/s |\n"
                       "|---|---|---|---|---|---|---|---|---|---|---|\n";
      std::printf("%5s %4s %2s %5s  %10s %10s %8s %5s %9s %9s %8s\n", "N", "P", "R", "chunk", "rel", "max_abs",
                  "bad", "ok", "fwd_ms", "bwd_ms", "TFLOP/s");
      bool all_pass = true;
      for (const auto& s : shapes) {
        OpShape small = {{"B", 2}, {"S", o->check_S > 0 ? o->check_S : std::max<int64_t>(64, 4 * s.chunk)},
                         {"H", o->H}, {"G", o->G}, {"N", s.N}, {"P", s.P}, {"R", s.R}, {"chunk", s.chunk}};
        OpOptions oo;
        oo.iters = o->iters;
        const CheckResult c = all->check(small, 1000 + rows.size(), oo);
        double rel = 0, mabs = 0, bad = 0;
        for (const auto& t : c.tensors) rel = std::max(rel, t.stable_max_rel), mabs = std::max(mabs, t.max_abs),
                                        bad = std::max(bad, t.bad_frac);
        all_pass = all_pass && c.pass();
        OpShape full = small;
        full["B"] = o->B;
        full["S"] = o->S;
        const BenchResult f = fwd->bench(full, oo);
        const BenchResult b1 = bf->bench(full, oo);
        const BenchResult b2 = bb->bench(full, oo);
        const double bwd_ms = b1.median_ms + b2.median_ms;
        const double flops = f.flops_executed + b1.flops_executed + b2.flops_executed;
        const double tflops = flops / ((f.median_ms + bwd_ms) * 1e-3) * 1e-12;
        nlohmann::json tj = nlohmann::json::array();
        for (const auto& t : c.tensors) tj.push_back(to_json(t));
        rows.push_back({{"N", s.N}, {"P", s.P}, {"R", s.R}, {"chunk", s.chunk}, {"check_shape", small},
                        {"pass", c.pass()}, {"stable_max_rel", rel}, {"max_abs", mabs}, {"bad_frac", bad},
                        {"tensors", tj}, {"timing_shape", full}, {"fwd_ms", f.median_ms}, {"bwd_fwd_ms", b1.median_ms},
                        {"bwd_bwd_ms", b2.median_ms}, {"bwd_ms", bwd_ms}, {"tflops_executed", tflops}});
        char line[256];
        std::snprintf(line, sizeof line, "| %lld | %lld | %lld | %lld | %.4f | %.3g | %.4f | %s | %.3f | %.3f | %.1f |\n",
                      (long long)s.N, (long long)s.P, (long long)s.R, (long long)s.chunk, rel, mabs, bad,
                      c.pass() ? "pass" : "FAIL", f.median_ms, bwd_ms, tflops);
        md += line;
        std::printf("%5lld %4lld %2lld %5lld  %10.4f %10.3g %8.4f %5s %9.3f %9.3f %8.1f\n", (long long)s.N,
                    (long long)s.P, (long long)s.R, (long long)s.chunk, rel, mabs, bad, c.pass() ? "yes" : "NO",
                    f.median_ms, bwd_ms, tflops);
        std::fflush(stdout);
      }
      rc.result()["rows"] = rows;
      rc.result()["all_pass"] = all_pass;
      write_file_atomic(rc.run_dir() + "/sweep.md", md);
      write_file_atomic(rc.run_dir() + "/sweep.json", rows.dump(2));
      std::printf("table: %s/sweep.md\n", rc.run_dir().c_str());
      return all_pass ? kOk : kFailed;
    });
  });
}

}  // namespace megacpp::app
