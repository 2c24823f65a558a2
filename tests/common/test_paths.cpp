#include "tests/common/test_paths.hpp"

#include <cstdlib>
#include <filesystem>
#include <random>

namespace megacpp::test {

std::string source_dir() {
  if (const char* e = std::getenv("MEGACPP_SOURCE_DIR")) return e;
  return MEGACPP_TEST_SOURCE_DIR;
}

std::string source_path(const std::string& rel) { return source_dir() + "/" + rel; }

std::string scratch_dir(const std::string& name) {
  namespace fs = std::filesystem;
  std::random_device rd;
  const fs::path p = fs::temp_directory_path() / ("megacpp-test-" + name + "-" + std::to_string(rd()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace megacpp::test
