// config_error.hpp — the one error type for bad recipes and bad --set overrides.
// Every error names the file, line and column, the key path, the rule broken and what is expected:
//   recipes/x.yaml:12:15: model.mamba.chunk_size: rule 'chunk-size': got 12; expected one of 8, 16, 32, 64
#pragma once
#include <stdexcept>
#include <string>

namespace megacpp {

struct SourceMark {
  std::string file;  // recipe path, or "--set" for command-line overrides
  int line = 0;      // 1-based; 0 = unknown
  int column = 0;    // 1-based; 0 = unknown
};

class ConfigError : public std::runtime_error {
 public:
  ConfigError(SourceMark where, std::string key, std::string rule, std::string got, std::string expected);
  const SourceMark& where() const { return where_; }
  const std::string& key() const { return key_; }
  const std::string& rule() const { return rule_; }
  const std::string& got() const { return got_; }
  const std::string& expected() const { return expected_; }

 private:
  SourceMark where_;
  std::string key_, rule_, got_, expected_;
};

}  // namespace megacpp
