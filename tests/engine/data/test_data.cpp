// Data pipeline: tokenizer, prepare (deterministic, split stable and disjoint), shard corruption is
// refused with the file named, loader determinism / range / prefetch / eval, unigram baseline.
// Everything runs on small temp trees; no test reads /usr/include.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/data/corpus.hpp"
#include "engine/data/data_error.hpp"
#include "engine/data/loader.hpp"
#include "engine/data/manifest.hpp"
#include "engine/data/prepare.hpp"
#include "engine/data/shard.hpp"
#include "engine/data/source_walk.hpp"
#include "engine/data/tokenizer.hpp"
#include "engine/data/unigram.hpp"
#include "tests/common/test_paths.hpp"

namespace megacpp::data {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small tree of fake C++ files; returns {relative path -> content} of the text files.
std::map<std::string, std::string> make_tree(const fs::path& root, int n = 24) {
  std::map<std::string, std::string> files;
  for (int i = 0; i < n; ++i) {
    const std::string rel = (i % 3 == 0 ? "bits/" : i % 3 == 1 ? "ext/pb/" : "") + std::string("file") +
                            std::to_string(i) + (i % 2 ? ".hpp" : "");
    std::string body = "// file " + std::to_string(i) + "\n#pragma once\nnamespace std {\n";
    for (int k = 0; k <= i; ++k) body += "  template <class T" + std::to_string(k) + "> struct s" + std::to_string(k) + ";\n";
    body += "}\n";
    write(root / rel, body);
    files[rel] = body;
  }
  write(root / "blob.bin", std::string("abc\0def", 7));  // binary: skipped
  write(root / "empty.h", "");                            // empty: skipped
  fs::create_symlink(root / "file0", root / "link0");     // symlink: skipped, never followed
  return files;
}

// Splits a token stream into documents (BOS ... EOS) and decodes them.
std::vector<std::string> documents(const std::vector<uint16_t>& toks) {
  std::vector<std::string> docs;
  std::string cur;
  bool in = false;
  for (const uint16_t t : toks) {
    if (t == ByteTokenizer::kBos) {
      EXPECT_FALSE(in);
      in = true;
      cur.clear();
    } else if (t == ByteTokenizer::kEos) {
      EXPECT_TRUE(in);
      in = false;
      docs.push_back(cur);
    } else {
      cur.push_back(static_cast<char>(t));
    }
  }
  EXPECT_FALSE(in);
  return docs;
}

std::vector<uint16_t> split_tokens(const fs::path& dir, const SplitInfo& s) {
  std::vector<uint16_t> all;
  for (const auto& e : s.shards) {
    const auto t = read_shard((dir / e.file).string());
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, ByteRoundTripAndSpecials) {
  const auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->bos(), 256);
  EXPECT_EQ(tok->eos(), 257);
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  all += "template <class T> struct vector;\n";
  const auto ids = tok->encode(all);
  ASSERT_EQ(ids.size(), all.size());
  for (int c = 0; c < 256; ++c) EXPECT_EQ(ids[c], c);
  EXPECT_EQ(tok->decode(ids), all);
  std::vector<int32_t> with_specials = {256, 'a', 'b', 257};
  EXPECT_EQ(tok->decode(with_specials), "ab");
  std::vector<int32_t> bad = {258};
  EXPECT_THROW(tok->decode(bad), std::invalid_argument);
  const std::string err = error_of([] { make_tokenizer("bpe"); });
  EXPECT_NE(err.find("bpe"), std::string::npos) << err;
  EXPECT_NE(err.find("byte"), std::string::npos) << err;
}

TEST(Prepare, DeterministicAndComplete) {
  const fs::path root = test::scratch_dir("data-det");
  const auto files = make_tree(root / "src");
  ByteTokenizer tok;
  const auto a = prepare_data({(root / "src").string()}, {}, (root / "a").string(), tok, 0.25, 100);
  const auto b = prepare_data({(root / "src").string()}, {}, (root / "b").string(), tok, 0.25, 100);
  EXPECT_EQ(slurp(root / "a/manifest.json"), slurp(root / "b/manifest.json"));
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(root / "a")) names.insert(e.path().filename().string());
  for (const auto& n : names) EXPECT_EQ(slurp(root / "a" / n), slurp(root / "b" / n)) << n;

  const Manifest& m = a.manifest;
  EXPECT_EQ(m.files.used, files.size());
  EXPECT_EQ(m.files.skipped_binary, 1u);
  EXPECT_EQ(m.files.skipped_empty, 1u);
  EXPECT_EQ(m.files.skipped_not_regular, 1u);
  EXPECT_GT(m.train.shards.size(), 1u);  // shard_tokens = 100 forces several shards
  uint64_t expect_tokens = 0;
  for (const auto& [rel, body] : files) expect_tokens += body.size() + 2;
  EXPECT_EQ(m.train.tokens + m.val.tokens, expect_tokens);
  for (const auto* s : {&m.train, &m.val})
    for (const auto& e : s->shards) {
      EXPECT_LE(e.tokens, 100u);
      EXPECT_EQ(check_shard_file((root / "a" / e.file).string()).sha256, e.sha256);
    }
  // The manifest round-trips through JSON.
  EXPECT_EQ(to_json(read_manifest((root / "a").string())), to_json(m));
}

TEST(Prepare, SplitIsStableDisjointAndByPathHash) {
  const fs::path root = test::scratch_dir("data-split");
  const auto files = make_tree(root / "src");
  ByteTokenizer tok;
  const double vf = 0.3;
  const auto st = prepare_data({(root / "src").string()}, {}, (root / "out").string(), tok, vf, 1000);
  const auto train = documents(split_tokens(root / "out", st.manifest.train));
  const auto val = documents(split_tokens(root / "out", st.manifest.val));
  ASSERT_FALSE(val.empty());
  ASSERT_FALSE(train.empty());
  std::multiset<std::string> seen(train.begin(), train.end());
  seen.insert(val.begin(), val.end());
  std::multiset<std::string> expect;
  for (const auto& [rel, body] : files) expect.insert(body);
  EXPECT_EQ(seen, expect);  // every file exactly once: disjoint and complete
  const std::set<std::string> val_set(val.begin(), val.end());
  for (const auto& [rel, body] : files)
    EXPECT_EQ(val_set.count(body) == 1, split_fraction(rel) < vf) << rel << " fraction " << split_fraction(rel);

  // Stable: the same tree elsewhere plus extra files splits the original files the same way.
  fs::copy(root / "src", root / "moved", fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  write(root / "moved/new/extra.hpp", "int extra;\n");
  const auto st2 = prepare_data({(root / "moved").string()}, {}, (root / "out2").string(), tok, vf, 1000);
  const auto val2 = documents(split_tokens(root / "out2", st2.manifest.val));
  std::set<std::string> val2_set(val2.begin(), val2.end());
  val2_set.erase("int extra;\n");
  EXPECT_EQ(val2_set, val_set);

  // Tiny val_fraction: val is still made non-empty with >= 2 files.
  const auto st3 = prepare_data({(root / "src").string()}, {}, (root / "out3").string(), tok, 1e-9, 1000);
  EXPECT_EQ(st3.manifest.val.documents, 1u);
  EXPECT_EQ(st3.manifest.train.documents, files.size() - 1);
}

TEST(Prepare, IncludeGlobsMatchNameOrRelativePath) {
  EXPECT_TRUE(include_matches({"*.hpp"}, "ext/pb/file1.hpp"));
  EXPECT_FALSE(include_matches({"*.hpp"}, "bits/file0"));
  EXPECT_TRUE(include_matches({"bits/*"}, "bits/file0"));
  EXPECT_TRUE(include_matches({"*"}, "anything/at/all"));
  EXPECT_EQ(normalize_globs({"*.h,*.hpp", "x"}), (std::vector<std::string>{"*.h", "*.hpp", "x"}));
  EXPECT_EQ(normalize_globs({}), (std::vector<std::string>{"*"}));

  const fs::path root = test::scratch_dir("data-glob");
  const auto files = make_tree(root / "src");
  ByteTokenizer tok;
  const auto st = prepare_data({(root / "src").string()}, {"*.hpp"}, (root / "out").string(), tok, 0.0, 1000);
  uint64_t hpp = 0;
  for (const auto& [rel, body] : files) hpp += rel.ends_with(".hpp");
  EXPECT_EQ(st.manifest.files.used, hpp);
  EXPECT_EQ(st.manifest.val.documents, 0u);  // val_fraction 0: no val
  const std::string err =
      error_of([&] { prepare_data({(root / "src").string()}, {"*.nothing"}, (root / "o2").string(), tok, 0.1, 1000); });
  EXPECT_NE(err.find("no usable text files"), std::string::npos) << err;
  const std::string err2 =
      error_of([&] { prepare_data({(root / "missing").string()}, {}, (root / "o3").string(), tok, 0.1, 1000); });
  EXPECT_NE(err2.find("does not exist"), std::string::npos) << err2;
}

TEST(Prepare, RepreparingRemovesStaleShards) {
  const fs::path root = test::scratch_dir("data-stale");
  make_tree(root / "src");
  ByteTokenizer tok;
  prepare_data({(root / "src").string()}, {}, (root / "out").string(), tok, 0.2, 50);
  const auto st = prepare_data({(root / "src").string()}, {}, (root / "out").string(), tok, 0.2, 100000);
  EXPECT_GT(st.stale_shards_removed, 0u);
  std::size_t tok_files = 0;
  for (const auto& e : fs::directory_iterator(root / "out")) tok_files += e.path().extension() == ".tok";
  EXPECT_EQ(tok_files, st.manifest.train.shards.size() + st.manifest.val.shards.size());
}

class BadShard : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir("data-bad");
    path_ = dir_ + "/train-00000.tok";
    std::vector<uint16_t> toks;
    for (int i = 0; i < 1000; ++i) toks.push_back(static_cast<uint16_t>(i % 258));
    write_shard(path_, toks, 258);
    bytes_ = slurp(path_);
  }
  std::string dir_, path_, bytes_;
};

TEST_F(BadShard, GoodShardReadsBack) {
  const auto t = read_shard(path_);
  ASSERT_EQ(t.size(), 1000u);
  EXPECT_EQ(t[259], 1);
  EXPECT_EQ(bytes_.size(), kShardHeaderBytes + 2000);
  EXPECT_EQ(bytes_.substr(0, 8), "MEGATOK1");
}

TEST_F(BadShard, FlippedByteIsAChecksumErrorNamingTheFile) {
  std::string b = bytes_;
  b[kShardHeaderBytes + 501] ^= 0x01;
  write(path_, b);
  const std::string err = error_of([&] { check_shard_file(path_); });
  EXPECT_NE(err.find(path_), std::string::npos) << err;
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  EXPECT_THROW(check_shard_file(path_), DataError);
}

TEST_F(BadShard, TruncatedSaysExpectedAndFound) {
  write(path_, bytes_.substr(0, bytes_.size() - 7));
  const std::string err = error_of([&] { check_shard_file(path_); });
  EXPECT_NE(err.find(path_), std::string::npos) << err;
  EXPECT_NE(err.find("truncated: expected " + std::to_string(bytes_.size()) + " bytes"), std::string::npos) << err;
  EXPECT_NE(err.find("found " + std::to_string(bytes_.size() - 7)), std::string::npos) << err;
  write(path_, bytes_.substr(0, 40));
  EXPECT_NE(error_of([&] { check_shard_file(path_); }).find("truncated"), std::string::npos);
  write(path_, "");
  EXPECT_NE(error_of([&] { check_shard_file(path_); }).find("empty"), std::string::npos);
}

TEST_F(BadShard, BadMagicAndVersion) {
  std::string b = bytes_;
  b.replace(0, 8, "GARBAGE!");
  write(path_, b);
  std::string err = error_of([&] { check_shard_file(path_); });
  EXPECT_NE(err.find(path_), std::string::npos) << err;
  EXPECT_NE(err.find("bad magic"), std::string::npos) << err;
  EXPECT_NE(err.find("GARBAGE!"), std::string::npos) << err;
  b = bytes_;
  b[8] = 7;
  write(path_, b);
  err = error_of([&] { check_shard_file(path_); });
  EXPECT_NE(err.find("unsupported format version 7"), std::string::npos) << err;
}

TEST_F(BadShard, OutOfVocabTokenIsRefused) {
  std::vector<uint16_t> toks = {1, 2, 300};
  EXPECT_THROW(encode_shard(toks, 258), std::invalid_argument);
}

// A prepared data dir shared by the loader tests.
class Loader : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(test::scratch_dir("data-loader"));
    make_tree(fs::path(*root_) / "src", 40);
    ByteTokenizer tok;
    // Small shards so windows cross shard boundaries.
    prepare_data({*root_ + "/src"}, {}, *root_ + "/out", tok, 0.25, 333);
  }
  static void TearDownTestSuite() { delete root_; }
  static std::string dir() { return *root_ + "/out"; }
  static std::string* root_;
};
std::string* Loader::root_ = nullptr;

TEST_F(Loader, BatchIsAPureFunctionOfSeedStepMicroRank) {
  TokenLoader a(dir(), "train", 32, 4, 1234), b(dir(), "train", 32, 4, 1234), c(dir(), "train", 32, 4, 99);
  EXPECT_EQ(a.batch_elems(), 4 * 33);
  EXPECT_EQ(a.batch(7, 1, 0, 2), b.batch(7, 1, 0, 2));
  EXPECT_EQ(a.batch(7, 1, 0, 2), a.batch(7, 1, 0, 2));
  EXPECT_NE(a.batch(7, 1, 0, 2), a.batch(7, 1, 1, 2));  // other rank
  EXPECT_NE(a.batch(7, 1, 0, 2), a.batch(8, 1, 0, 2));  // other step
  EXPECT_NE(a.batch(7, 1, 0, 2), a.batch(7, 0, 0, 2));  // other micro
  EXPECT_NE(a.batch(7, 1, 0, 2), c.batch(7, 1, 0, 2));  // other seed
}

TEST_F(Loader, WindowsAreInRangeAndContiguous) {
  TokenLoader ld(dir(), "train", 50, 3, 5);
  const auto stream = split_tokens(dir(), ld.manifest().train);
  ASSERT_EQ(stream.size(), ld.tokens());
  ASSERT_GT(ld.manifest().train.shards.size(), 2u);
  const uint64_t half = (ld.tokens() - ld.window() + 1) / 2;
  for (int world : {1, 2})
    for (int rank = 0; rank < world; ++rank)
      for (int64_t step = 0; step < 40; ++step) {
        const auto bt = ld.batch(step, 0, rank, world);
        for (int64_t r = 0; r < ld.mbs(); ++r) {
          const uint64_t s = ld.window_start(step, 0, rank, world, r);
          ASSERT_LE(s + ld.window(), ld.tokens());
          if (world == 2) EXPECT_TRUE(rank == 0 ? s < half : s >= half);  // disjoint slices
          for (int64_t t = 0; t < ld.window(); ++t) {
            ASSERT_EQ(bt[r * ld.window() + t], stream[s + t]);
            ASSERT_LT(bt[r * ld.window() + t], ld.vocab_size());
          }
        }
      }
}

TEST_F(Loader, PrefetchEqualsDirect) {
  TokenLoader ld(dir(), "train", 16, 2, 42);
  ld.start_prefetch(/*first_step=*/3, /*micro_per_step=*/3, /*rank=*/1, /*world=*/2, /*depth=*/2);
  Batch b;
  for (int k = 0; k < 20; ++k) {
    ld.next(b);
    EXPECT_EQ(b.step, 3 + k / 3);
    EXPECT_EQ(b.micro, k % 3);
    EXPECT_GE(b.wait_s, 0.0);
    EXPECT_EQ(b.tokens, ld.batch(b.step, b.micro, 1, 2)) << "k=" << k;
  }
  // Restart (resume at step 10) replaces the stream.
  ld.start_prefetch(10, 1, 0, 1, 4);
  const Batch c = ld.next();
  EXPECT_EQ(c.step, 10);
  EXPECT_EQ(c.tokens, ld.batch(10, 0, 0, 1));
  EXPECT_GE(ld.total_wait_s(), 0.0);
  ld.stop_prefetch();
  EXPECT_THROW(ld.next(), std::logic_error);
}

TEST_F(Loader, EvalBatchesAreFixed) {
  TokenLoader a(dir(), "val", 24, 2, 1), b(dir(), "val", 24, 2, 777);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.eval_batch(i), b.eval_batch(i));  // independent of the seed
  EXPECT_NE(a.eval_batch(0), a.eval_batch(1));
  std::set<uint64_t> starts;
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 2; ++r) {
      const uint64_t s = a.eval_window_start(i, r);
      EXPECT_LE(s + a.window(), a.tokens());
      starts.insert(s);
    }
  EXPECT_EQ(starts.size(), 8u);
}

TEST_F(Loader, RefusesCorruptShardAndTinySplit) {
  const std::string copy = *root_ + "/corrupt";
  fs::copy(dir(), copy);
  const Manifest m = read_manifest(copy);
  const std::string victim = copy + "/" + m.train.shards[1].file;
  std::string b = slurp(victim);
  b[kShardHeaderBytes + 10] ^= 0x40;
  write(victim, b);
  const std::string err = error_of([&] { TokenLoader(copy, "train", 16, 2, 1); });
  EXPECT_NE(err.find(victim), std::string::npos) << err;
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  fs::remove(copy + "/manifest.json");
  EXPECT_NE(error_of([&] { TokenLoader(copy, "train", 16, 2, 1); }).find("not a prepared data directory"),
            std::string::npos);
  const std::string tiny = error_of([&] { TokenLoader(dir(), "val", 1 << 20, 1, 1); });
  EXPECT_NE(tiny.find("fewer than one window"), std::string::npos) << tiny;
}

TEST(Unigram, EntropyOfKnownDistributions) {
  const std::vector<uint64_t> uniform4 = {5, 5, 5, 5, 0};
  EXPECT_NEAR(entropy_nats(uniform4), std::log(4.0), 1e-12);
  const std::vector<uint64_t> skew = {2, 1, 1};  // p = 1/2, 1/4, 1/4 -> 1.5 bits
  EXPECT_NEAR(entropy_nats(skew), 1.5 * std::log(2.0), 1e-12);
  const std::vector<uint64_t> one = {0, 9};
  EXPECT_EQ(entropy_nats(one), 0.0);
  EXPECT_NEAR(cross_entropy_nats(uniform4, uniform4), -std::log(6.0 / 25.0), 1e-12);  // add-one: (5+1)/(20+5)

  // A prepared file "aaaa": BOS a a a a EOS -> p = 4/6, 1/6, 1/6.
  const fs::path root = test::scratch_dir("data-unigram");
  write(root / "src/a.txt", "aaaa");
  ByteTokenizer tok;
  prepare_data({(root / "src").string()}, {}, (root / "out").string(), tok, 0.0, 1000);
  const double p = 4.0 / 6, q = 1.0 / 6;
  EXPECT_NEAR(unigram_entropy_nats((root / "out").string()), -(p * std::log(p) + 2 * q * std::log(q)), 1e-12);
  TokenLoader ld((root / "out").string(), "train", 3, 1, 0);
  const auto counts = ld.token_counts();
  EXPECT_EQ(counts['a'], 4u);
  EXPECT_EQ(counts[256], 1u);
  EXPECT_EQ(counts[257], 1u);
}

TEST(Corpus, FindsHighestVersionAndCachesPreparedData) {
  const fs::path root = test::scratch_dir("data-corpus");
  fs::create_directories(root / "inc/9");
  fs::create_directories(root / "inc/12");
  fs::create_directories(root / "inc/v1");
  fs::create_directories(root / "inc/4.9.2");
  EXPECT_EQ(find_libstdcxx_dir((root / "inc").string()), (root / "inc/12").string());
  const std::string err = error_of([&] { find_libstdcxx_dir((root / "none").string()); });
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
  EXPECT_NE(err.find("data.source: dir"), std::string::npos) << err;

  make_tree(root / "src", 10);
  DataConfig cfg;
  cfg.source = "dir";
  cfg.inputs = {(root / "src").string()};
  cfg.dir = (root / "cache").string();
  cfg.val_fraction = 0.2;
  const PreparedData first = ensure_data(cfg);
  EXPECT_FALSE(first.reused);
  EXPECT_EQ(first.manifest.files.used, 10u);
  const PreparedData second = ensure_data(cfg);
  EXPECT_TRUE(second.reused);
  EXPECT_EQ(to_json(second.manifest), to_json(first.manifest));
  cfg.include = {"*.hpp"};  // a different config re-prepares
  const PreparedData third = ensure_default_corpus(cfg);
  EXPECT_FALSE(third.reused);
  EXPECT_EQ(third.manifest.files.used, 5u);
  cfg.inputs.clear();
  EXPECT_THROW(ensure_data(cfg), DataError);
}

}  // namespace
}  // namespace megacpp::data
