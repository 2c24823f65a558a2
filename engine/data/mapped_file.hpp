// mapped_file.hpp — a read-only memory map of a whole file (RAII). The loader maps its shards so
// that drawing a window is a memcpy from the page cache, with no read() per batch and no copy of the
// corpus in the process heap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace megacpp::data {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws DataError (naming the file) on failure
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  const uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

}  // namespace megacpp::data
