// test_paths.hpp — where tests find the repository (recipes, fixtures) and a scratch directory.
#pragma once
#include <string>

#include <gtest/gtest.h>

#include "kernels/common/gpu_device.hpp"

namespace megacpp::test {
std::string source_dir();                      // $MEGACPP_SOURCE_DIR (set by CTest) or the compile-time path
std::string source_path(const std::string& rel);
std::string scratch_dir(const std::string& name);  // fresh empty directory under the build tree's tmp
}  // namespace megacpp::test

// Put first in a GPU test body: skips (not fails) where there is no GPU, e.g. on CI.
#define MEGACPP_REQUIRE_GPU()                                                       \
  do {                                                                              \
    if (!megacpp::gpu_available()) GTEST_SKIP() << megacpp::gpu_runtime().why_not;  \
  } while (0)
