// megacpp data prepare|inspect — tokenised shards for training (engine/data, issue 4).
//   prepare: C++ sources -> DATA_DIR/{train,val}-NNNNN.tok + manifest.json; the receipt holds the stats.
//   inspect: the manifest summary, every shard re-verified (size, checksum, token range, manifest
//            agreement), and the unigram baseline; exit 1 if any shard is bad.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/cli_common.hpp"
#include "engine/data/data_error.hpp"
#include "engine/data/manifest.hpp"
#include "engine/data/prepare.hpp"
#include "engine/data/shard.hpp"
#include "engine/data/tokenizer.hpp"
#include "engine/data/unigram.hpp"

namespace megacpp::app {

namespace {

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

void print_summary(const data::Manifest& m) {
  std::printf("tokenizer   %s (vocab %d, bos %d, eos %d)\n", m.tokenizer.c_str(), m.vocab_size, m.bos, m.eos);
  std::printf("sources     %s (%s)\n", join(m.sources, ", ").c_str(), m.source.c_str());
  std::printf("include     %s\n", join(m.include, ",").c_str());
  std::printf("files       %llu used of %llu matched (skipped: %llu binary, %llu empty, %llu unreadable, "
              "%llu not regular)\n",
              (unsigned long long)m.files.used, (unsigned long long)m.files.seen,
              (unsigned long long)m.files.skipped_binary, (unsigned long long)m.files.skipped_empty,
              (unsigned long long)m.files.skipped_unreadable, (unsigned long long)m.files.skipped_not_regular);
  for (const char* name : {"train", "val"}) {
    const auto& s = m.split(name);
    std::printf("%-5s       %llu tokens, %llu documents, %llu bytes, %zu shard(s)\n", name,
                (unsigned long long)s.tokens, (unsigned long long)s.documents, (unsigned long long)s.bytes,
                s.shards.size());
  }
}

}  // namespace

void add_data_command(CLI::App& app, Invocation& inv, int& exit_code) {
  struct Opts {
    std::vector<std::string> inputs, include;
    std::string out, tokenizer = "byte", inspect_dir;
    double val_fraction = 0.02;
    uint64_t shard_tokens = data::kDefaultShardTokens;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("data", "Prepare and inspect training data");
  cmd->require_subcommand(1);

  auto* prep = cmd->add_subcommand("prepare", "Tokenise C++ sources into shards + manifest");
  prep->add_option("--input", o->inputs, "Input directories (walked recursively)")->required();
  prep->add_option("--include", o->include, "Glob patterns of files to include, matched against the file name "
                                            "and the relative path (comma-separated or repeated; default *)");
  prep->add_option("--out", o->out, "Output data directory")->required();
  prep->add_option("--val-fraction", o->val_fraction, "Fraction of files held out for validation (by path hash)")
      ->check(CLI::Range(0.0, 0.5));
  prep->add_option("--tokenizer", o->tokenizer, "Tokenizer (byte)");
  prep->add_option("--shard-tokens", o->shard_tokens, "At most this many tokens per shard")->check(CLI::PositiveNumber);
  prep->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("data", inv, [&](RunReceipt& rc) {
      rc.set_location("", "prepare");
      const auto tok = data::make_tokenizer(o->tokenizer);
      const data::PrepareStats st =
          data::prepare_data(o->inputs, o->include, o->out, *tok, o->val_fraction, o->shard_tokens, "dir");
      rc.result() = data::to_json(st);
      print_summary(st.manifest);
      std::printf("wrote       %s in %.2f s\n", data::manifest_path(o->out).c_str(), st.seconds);
      return kOk;
    });
  });

  auto* insp = cmd->add_subcommand("inspect", "Summarise a data directory and verify every shard");
  insp->add_option("data_dir", o->inspect_dir, "Prepared data directory")->required();
  insp->callback([o, &inv, &exit_code] {
    exit_code = run_with_receipt("data", inv, [&](RunReceipt& rc) {
      rc.set_location("", "inspect");
      const data::Manifest m = data::read_manifest(o->inspect_dir);
      print_summary(m);
      nlohmann::json problems = nlohmann::json::array(), shards = nlohmann::json::array();
      for (const char* name : {"train", "val"})
        for (const auto& e : m.split(name).shards) {
          const std::string path = (std::filesystem::path(o->inspect_dir) / e.file).string();
          std::string verdict = "ok";
          try {
            const data::ShardHeader h = data::check_shard_file(path);
            if (h.tokens != e.tokens || h.sha256 != e.sha256 || static_cast<int32_t>(h.vocab_size) != m.vocab_size)
              verdict = path + ": does not match the manifest (tokens " + std::to_string(h.tokens) + " vs " +
                        std::to_string(e.tokens) + ", sha256 " + h.sha256 + " vs " + e.sha256 + ")";
          } catch (const std::exception& ex) {
            verdict = ex.what();
          }
          std::printf("  %-18s %12llu tokens  %s\n", e.file.c_str(), (unsigned long long)e.tokens,
                      verdict == "ok" ? "ok" : ("BAD: " + verdict).c_str());
          shards.push_back({{"file", e.file}, {"split", name}, {"tokens", e.tokens}, {"ok", verdict == "ok"}});
          if (verdict != "ok") problems.push_back(verdict);
        }
      rc.result() = {{"data_dir", o->inspect_dir}, {"manifest", data::to_json(m)}, {"shards", shards},
                     {"problems", problems}};
      if (!problems.empty()) {
        rc.finish_failed(std::to_string(problems.size()) + " bad shard(s); first: " + problems[0].get<std::string>(),
                         "bad-data");
        std::fprintf(stderr, "megacpp data inspect: %zu bad shard(s)\n", problems.size());
        return kFailed;
      }
      const double h = data::unigram_entropy_nats(o->inspect_dir, "train");
      rc.result()["unigram_entropy_nats"] = h;
      std::printf("unigram     train entropy %.4f nats/token (the loss to beat)\n", h);
      if (m.val.tokens > 0) {
        const double ce = data::unigram_val_cross_entropy_nats(o->inspect_dir);
        rc.result()["unigram_val_cross_entropy_nats"] = ce;
        std::printf("            train-unigram on val %.4f nats/token\n", ce);
      }
      std::printf("all %zu shard(s) verified\n", shards.size());
      return kOk;
    });
  });
}

}  // namespace megacpp::app
