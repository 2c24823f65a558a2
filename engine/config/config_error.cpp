#include "engine/config/config_error.hpp"

namespace megacpp {

namespace {
std::string format(const SourceMark& w, const std::string& key, const std::string& rule, const std::string& got,
                   const std::string& expected) {
  std::string s = w.file;
  if (w.line > 0) s += ":" + std::to_string(w.line) + ":" + std::to_string(w.column);
  s += ": " + (key.empty() ? std::string("<recipe>") : key) + ": rule '" + rule + "'";
  if (!got.empty()) s += ": got " + got;
  if (!expected.empty()) s += "; expected " + expected;
  return s;
}
}  // namespace

ConfigError::ConfigError(SourceMark where, std::string key, std::string rule, std::string got, std::string expected)
    : std::runtime_error(format(where, key, rule, got, expected)),
      where_(std::move(where)),
      key_(std::move(key)),
      rule_(std::move(rule)),
      got_(std::move(got)),
      expected_(std::move(expected)) {}

}  // namespace megacpp
