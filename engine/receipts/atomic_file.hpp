// atomic_file.hpp — nothing is lost and nothing is half-visible: a file is written to a temporary
// name in the same directory, fsync'ed, renamed over the target, and the directory fsync'ed.
// A reader sees either the old complete file, the new complete file, or (first write) none.
#pragma once
#include <string>
#include <string_view>

namespace megacpp {

// Throws std::runtime_error (with the path and errno text) on any failure; the target is untouched then.
void write_file_atomic(const std::string& path, std::string_view contents);

// Append-only line stream (JSONL metrics): each line is written with one write() and flushed, so a
// crash leaves every completed line intact (at most the last line is cut short).
class LineStream {
 public:
  LineStream() = default;
  explicit LineStream(const std::string& path);  // creates parent directories
  ~LineStream();
  LineStream(const LineStream&) = delete;
  LineStream& operator=(const LineStream&) = delete;
  void append(std::string_view line);  // adds '\n'
  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace megacpp
