// source_walk.hpp — which files of the input directories become documents, in a deterministic
// order: every input is walked recursively, entries are sorted by relative path (bytewise), and a
// file is taken when any include glob (fnmatch) matches its file name or its relative path.
// Symlinks and other non-regular entries are skipped and counted, never followed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/manifest.hpp"

namespace megacpp::data {

struct SourceFile {
  std::string path;  // as opened
  std::string rel;   // relative to its input dir, '/'-separated (the split hash uses it)
};

// Splits comma-separated globs ("*.h,*.hpp") and drops empties; no globs at all -> {"*"}.
std::vector<std::string> normalize_globs(const std::vector<std::string>& args);
// True when a glob matches the file name (last component of rel) or the whole relative path.
bool include_matches(const std::vector<std::string>& globs, const std::string& rel);

// Lists the regular files under `inputs` (directories, or single files whose rel is their name)
// that match `globs`. Skips the directory `exclude_dir` (the output dir when it lies inside an
// input). Counts files.seen and files.skipped_not_regular. Throws DataError when an input does not exist.
std::vector<SourceFile> list_source_files(const std::vector<std::string>& inputs, const std::vector<std::string>& globs,
                                          const std::string& exclude_dir, FileCounts& counts);

}  // namespace megacpp::data
