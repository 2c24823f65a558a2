// Shared gtest main: prints whether GPU tests will run or skip, then runs everything.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/common/gpu_device.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const auto& rt = megacpp::gpu_runtime();
  if (!rt.available) std::fprintf(stderr, "[megacpp] GPU tests will skip: %s\n", rt.why_not.c_str());
  return RUN_ALL_TESTS();
}
