// data_error.hpp — one exception type for everything the data pipeline refuses (a corrupt or
// truncated shard, a bad manifest, no input files), so the CLI and the training loop can say
// "bad data" rather than "internal error". The message always names the file and what is wrong.
#pragma once
#include <stdexcept>
#include <string>

namespace megacpp::data {

class DataError : public std::runtime_error {
 public:
  DataError(const std::string& path, const std::string& what)
      : std::runtime_error(path.empty() ? what : path + ": " + what), path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace megacpp::data
