// corpus.cpp — find the libstdc++ headers, decide whether the prepared cache is still valid, and
// prepare under a file lock when it is not.
#include "engine/data/corpus.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "engine/data/data_error.hpp"
#include "engine/data/prepare.hpp"
#include "engine/data/shard.hpp"
#include "engine/data/source_walk.hpp"
#include "engine/data/tokenizer.hpp"

namespace megacpp::data {

namespace fs = std::filesystem;

namespace {

// "12" -> {12}, "4.9.2" -> {4,9,2}; empty when the name is not a dotted number.
std::vector<long> parse_version(const std::string& s) {
  std::vector<long> v;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i || j - i > 9) return {};
    v.push_back(std::stol(s.substr(i, j - i)));
    if (j == s.size()) break;
    if (s[j] != '.') return {};
    i = j + 1;
    if (i == s.size()) return {};
  }
  return v;
}

class FileLock {
 public:
  explicit FileLock(const std::string& path) : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw DataError(path, std::string("cannot open the lock file: ") + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) {
        const int e = errno;
        ::close(fd_);
        throw DataError(path, std::string("cannot lock: ") + std::strerror(e));
      }
    }
  }
  ~FileLock() { ::close(fd_); }  // closing releases the lock
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_;
};

std::vector<std::string> absolute_all(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& s : in) out.push_back(fs::weakly_canonical(s, ec).string());
  return out;
}

}  // namespace

std::string find_libstdcxx_dir(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    throw DataError(root, "the default corpus (data.source: libstdcxx) is the C++ standard library headers, but " + root +
                              " does not exist: install g++ (libstdc++-dev), or set data.source: dir with data.inputs");
  std::vector<long> best;
  std::string best_dir;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec)) continue;
    const std::string name = e.path().filename().string();
    const std::vector<long> v = parse_version(name);
    if (!v.empty() && v > best) {
      best = v;
      best_dir = e.path().string();
    }
  }
  if (best_dir.empty())
    throw DataError(root, "no version directory (like " + root + "/12) holds C++ standard library headers; "
                          "install g++ (libstdc++-dev), or set data.source: dir with data.inputs");
  return best_dir;
}

void resolve_sources(const DataConfig& cfg, std::vector<std::string>& inputs, std::vector<std::string>& include) {
  if (cfg.source == "libstdcxx") {
    inputs = {find_libstdcxx_dir()};
    include = {"*"};
  } else if (cfg.source == "dir") {
    if (cfg.inputs.empty()) throw DataError("", "data.source: dir needs data.inputs (a list of directories)");
    inputs = cfg.inputs;
    include = normalize_globs(cfg.include);
  } else {
    throw std::invalid_argument("unknown data.source '" + cfg.source + "' (expected libstdcxx or dir)");
  }
}

bool cache_matches(const DataConfig& cfg, const Manifest& m, std::string* why_not) {
  const auto no = [&](const std::string& why) {
    if (why_not) *why_not = why;
    return false;
  };
  std::vector<std::string> inputs, include;
  resolve_sources(cfg, inputs, include);
  if (m.source != cfg.source) return no("source changed (" + m.source + " -> " + cfg.source + ")");
  if (m.sources != absolute_all(inputs)) return no("input directories changed");
  if (m.include != include) return no("include globs changed");
  if (m.tokenizer != cfg.tokenizer) return no("tokenizer changed (" + m.tokenizer + " -> " + cfg.tokenizer + ")");
  if (m.val_fraction != cfg.val_fraction) return no("val_fraction changed");
  if (m.shard_format_version != kShardVersion) return no("shard format version changed");
  std::error_code ec;
  for (const auto* s : {&m.train, &m.val})
    for (const auto& e : s->shards) {
      const fs::path p = fs::path(cfg.dir) / e.file;
      const auto size = fs::file_size(p, ec);
      if (ec || size != kShardHeaderBytes + 2 * e.tokens) return no("shard " + p.string() + " is missing or has the wrong size");
    }
  return true;
}

PreparedData ensure_data(const DataConfig& cfg) {
  PreparedData out;
  out.dir = cfg.dir;
  std::error_code ec;
  fs::create_directories(cfg.dir, ec);
  if (ec) throw DataError(cfg.dir, "cannot create the data directory: " + ec.message());
  FileLock lock((fs::path(cfg.dir) / ".prepare.lock").string());
  if (fs::exists(manifest_path(cfg.dir), ec)) {
    // A manifest that does not parse is treated like a stale cache: it is rebuilt, not trusted.
    try {
      Manifest m = read_manifest(cfg.dir);
      if (cache_matches(cfg, m)) {
        out.manifest = std::move(m);
        out.reused = true;
        return out;
      }
    } catch (const DataError&) {
    }
  }
  std::vector<std::string> inputs, include;
  resolve_sources(cfg, inputs, include);
  const auto tok = make_tokenizer(cfg.tokenizer);
  PrepareStats st = prepare_data(inputs, include, cfg.dir, *tok, cfg.val_fraction, kDefaultShardTokens, cfg.source);
  out.manifest = std::move(st.manifest);
  out.seconds = st.seconds;
  return out;
}

}  // namespace megacpp::data
