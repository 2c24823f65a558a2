// cuda_check.hpp — every CUDA call's status is checked; failures throw with file:line and the call.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define MEGACPP_CUDA_CHECK(call)                                                                         \
  do {                                                                                                   \
    const cudaError_t megacpp_err_ = (call);                                                             \
    if (megacpp_err_ != cudaSuccess)                                                                     \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #call ": " + \
                               cudaGetErrorString(megacpp_err_));                                        \
  } while (0)

// After a kernel launch: catches bad launch configurations at once (not a sync).
#define MEGACPP_CUDA_CHECK_LAUNCH() MEGACPP_CUDA_CHECK(cudaGetLastError())
