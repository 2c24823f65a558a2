// source_walk.cpp — recursive, sorted, glob-filtered listing of input files (see source_walk.hpp).
#include "engine/data/source_walk.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <filesystem>

#include "engine/data/data_error.hpp"

namespace megacpp::data {

namespace fs = std::filesystem;

std::vector<std::string> normalize_globs(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const auto& a : args) {
    std::size_t start = 0;
    while (start <= a.size()) {
      const std::size_t comma = a.find(',', start);
      const std::string g = a.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!g.empty()) out.push_back(g);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (out.empty()) out.push_back("*");
  return out;
}

bool include_matches(const std::vector<std::string>& globs, const std::string& rel) {
  const std::size_t slash = rel.rfind('/');
  const std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
  for (const auto& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0 || ::fnmatch(g.c_str(), rel.c_str(), 0) == 0) return true;
  return false;
}

std::vector<SourceFile> list_source_files(const std::vector<std::string>& inputs, const std::vector<std::string>& globs,
                                          const std::string& exclude_dir, FileCounts& counts) {
  std::error_code ec;
  const fs::path exclude = exclude_dir.empty() ? fs::path() : fs::weakly_canonical(exclude_dir, ec);
  std::vector<SourceFile> all;
  for (const auto& input : inputs) {
    const fs::path root = fs::weakly_canonical(input, ec);
    const fs::file_status st = fs::status(root, ec);
    if (ec || !fs::exists(st)) throw DataError(input, "input does not exist");
    if (fs::is_regular_file(st)) {
      const std::string rel = root.filename().string();
      if (include_matches(globs, rel)) {
        ++counts.seen;
        all.push_back({root.string(), rel});
      }
      continue;
    }
    if (!fs::is_directory(st)) throw DataError(input, "input is neither a directory nor a regular file");
    std::vector<SourceFile> files;
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) throw DataError(input, "cannot list the directory: " + ec.message());
    for (; it != end; it.increment(ec)) {
      if (ec) throw DataError(input, "cannot list the directory: " + ec.message());
      const fs::path& p = it->path();
      const fs::file_status ls = it->symlink_status(ec);
      if (fs::is_directory(ls)) {
        if (!exclude.empty() && p == exclude) it.disable_recursion_pending();
        continue;
      }
      const std::string rel = p.lexically_relative(root).generic_string();
      if (!include_matches(globs, rel)) continue;
      if (!fs::is_regular_file(ls)) {
        ++counts.skipped_not_regular;
        continue;
      }
      ++counts.seen;
      files.push_back({p.string(), rel});
    }
    std::sort(files.begin(), files.end(), [](const SourceFile& a, const SourceFile& b) { return a.rel < b.rel; });
    all.insert(all.end(), files.begin(), files.end());
  }
  return all;
}

}  // namespace megacpp::data
