// prepare.cpp — classify files, split by path hash, tokenise into size-capped shards, write manifest.
#include "engine/data/prepare.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "engine/data/data_error.hpp"
#include "engine/data/shard.hpp"
#include "engine/data/source_walk.hpp"
#include "engine/receipts/sha256.hpp"

namespace megacpp::data {

namespace fs = std::filesystem;

double split_fraction(const std::string& rel_path) {
  const std::string h = sha256_hex(rel_path);
  const uint64_t v = std::stoull(h.substr(0, 16), nullptr, 16);
  return static_cast<double>(v) * 0x1p-64;
}

nlohmann::json to_json(const PrepareStats& s) {
  nlohmann::json j = to_json(s.manifest);
  j["out_dir"] = s.out_dir;
  j["seconds"] = s.seconds;
  j["stale_shards_removed"] = s.stale_shards_removed;
  return j;
}

namespace {

enum class Kind { kText, kBinary, kEmpty, kUnreadable };

bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return false;
  out = std::move(ss).str();
  return true;
}

Kind classify(const std::string& bytes, bool ok) {
  if (!ok) return Kind::kUnreadable;
  if (bytes.empty()) return Kind::kEmpty;
  if (std::memchr(bytes.data(), 0, bytes.size()) != nullptr) return Kind::kBinary;
  return Kind::kText;
}

// Accumulates one split's token stream and cuts it into shards of at most `cap` tokens.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, uint64_t cap, uint32_t vocab)
      : dir_(std::move(dir)), split_(std::move(split)), cap_(cap), vocab_(vocab) {}

  void add(const std::vector<int32_t>& ids) {
    for (const int32_t id : ids) {
      if (id < 0 || static_cast<uint32_t>(id) >= vocab_)
        throw std::invalid_argument("tokenizer produced id " + std::to_string(id) + " outside its vocabulary");
      buf_.push_back(static_cast<uint16_t>(id));
      if (buf_.size() == cap_) flush();
    }
  }

  void finish(SplitInfo& info) {
    flush();
    info.shards = std::move(entries_);
    info.tokens = 0;
    for (const auto& e : info.shards) info.tokens += e.tokens;
  }

 private:
  void flush() {
    if (buf_.empty()) return;
    char name[64];
    std::snprintf(name, sizeof name, "%s-%05zu.tok", split_.c_str(), entries_.size());
    const ShardHeader h = write_shard((fs::path(dir_) / name).string(), buf_, vocab_);
    entries_.push_back({name, h.tokens, h.sha256});
    buf_.clear();
  }

  std::string dir_, split_;
  uint64_t cap_;
  uint32_t vocab_;
  std::vector<uint16_t> buf_;
  std::vector<ShardEntry> entries_;
};

uint64_t remove_stale_shards(const std::string& out_dir, const Manifest& m) {
  std::set<std::string> keep;
  for (const auto* s : {&m.train, &m.val})
    for (const auto& e : s->shards) keep.insert(e.file);
  static const std::regex shard_name(R"((train|val)-[0-9]{5,}\.tok)");
  uint64_t removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file(ec) && std::regex_match(name, shard_name) && !keep.count(name)) {
      fs::remove(e.path(), ec);
      if (!ec) ++removed;
    }
  }
  return removed;
}

}  // namespace

PrepareStats prepare_data(const std::vector<std::string>& inputs, const std::vector<std::string>& include_globs,
                          const std::string& out_dir, const Tokenizer& tokenizer, double val_fraction,
                          uint64_t shard_tokens, const std::string& source) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    throw std::invalid_argument("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
  if (shard_tokens == 0) throw std::invalid_argument("shard_tokens must be positive");
  if (tokenizer.vocab_size() <= 0 || tokenizer.vocab_size() > 65536)
    throw std::invalid_argument("tokenizer '" + tokenizer.name() + "' has vocabulary " +
                                std::to_string(tokenizer.vocab_size()) + ": shards hold uint16 tokens (at most 65536)");
  if (inputs.empty()) throw DataError("", "no input directories given");

  Manifest m;
  m.tokenizer = tokenizer.name();
  m.vocab_size = tokenizer.vocab_size();
  m.bos = tokenizer.bos();
  m.eos = tokenizer.eos();
  m.source = source;
  m.include = normalize_globs(include_globs);
  m.val_fraction = val_fraction;
  m.shard_tokens = shard_tokens;
  std::error_code ec;
  for (const auto& in : inputs) m.sources.push_back(fs::weakly_canonical(in, ec).string());

  // 1. Which files, and which of them are text.
  const std::vector<SourceFile> files = list_source_files(inputs, m.include, out_dir, m.files);
  struct Doc {
    const SourceFile* file;
    double fraction;
    bool val;
  };
  std::vector<Doc> docs;
  {
    std::string bytes;
    for (const auto& f : files) {
      const bool ok = read_file(f.path, bytes);
      switch (classify(bytes, ok)) {
        case Kind::kText: docs.push_back({&f, split_fraction(f.rel), false}); break;
        case Kind::kBinary: ++m.files.skipped_binary; break;
        case Kind::kEmpty: ++m.files.skipped_empty; break;
        case Kind::kUnreadable: ++m.files.skipped_unreadable; break;
      }
    }
  }
  if (docs.empty()) {
    std::string in;
    for (const auto& s : inputs) in += (in.empty() ? "" : ", ") + s;
    std::string gl;
    for (const auto& g : m.include) gl += (gl.empty() ? "" : ",") + g;
    throw DataError("", "no usable text files under " + in + " matching --include " + gl + " (" +
                            std::to_string(m.files.seen) + " matched, " + std::to_string(m.files.skipped_binary) +
                            " binary, " + std::to_string(m.files.skipped_empty) + " empty, " +
                            std::to_string(m.files.skipped_unreadable) + " unreadable)");
  }

  // 2. Split by path hash; with >= 2 files make both splits non-empty.
  for (auto& d : docs) d.val = d.fraction < val_fraction;
  if (docs.size() >= 2 && val_fraction > 0) {
    const auto by_fraction = [](const Doc& a, const Doc& b) {
      return a.fraction != b.fraction ? a.fraction < b.fraction : a.file->rel < b.file->rel;
    };
    if (std::none_of(docs.begin(), docs.end(), [](const Doc& d) { return d.val; }))
      std::min_element(docs.begin(), docs.end(), by_fraction)->val = true;
    if (std::all_of(docs.begin(), docs.end(), [](const Doc& d) { return d.val; }))
      std::max_element(docs.begin(), docs.end(), by_fraction)->val = false;
  }

  // 3. Tokenise in path order into the two shard streams; the manifest goes last.
  fs::create_directories(out_dir, ec);
  if (ec) throw DataError(out_dir, "cannot create the output directory: " + ec.message());
  fs::remove(manifest_path(out_dir), ec);
  ShardWriter train(out_dir, "train", shard_tokens, static_cast<uint32_t>(m.vocab_size));
  ShardWriter val(out_dir, "val", shard_tokens, static_cast<uint32_t>(m.vocab_size));
  std::string bytes;
  std::vector<int32_t> ids;
  for (const auto& d : docs) {
    if (!read_file(d.file->path, bytes)) throw DataError(d.file->path, "became unreadable while preparing");
    ids.clear();
    ids.push_back(tokenizer.bos());
    tokenizer.encode_into(bytes, ids);
    ids.push_back(tokenizer.eos());
    SplitInfo& info = d.val ? m.val : m.train;
    ++info.documents;
    info.bytes += bytes.size();
    (d.val ? val : train).add(ids);
  }
  train.finish(m.train);
  val.finish(m.val);
  m.files.used = m.train.documents + m.val.documents;
  write_manifest(out_dir, m);

  PrepareStats st;
  st.stale_shards_removed = remove_stale_shards(out_dir, m);
  st.manifest = std::move(m);
  st.out_dir = out_dir;
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace megacpp::data
