// World size 1 through the real NCCL path (GPU only; skips cleanly without one or in CPU builds):
// the bootstrap (TCP store on a free loopback port, recipe hash check, unique id) creates the NCCL
// communicator, and every collective runs on device buffers.
#include <gtest/gtest.h>

#include <vector>

#include "engine/dist/bootstrap.hpp"
#include "engine/dist/nccl_comm.hpp"
#include "tests/common/test_paths.hpp"

#if MEGACPP_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace megacpp {
namespace {

#if MEGACPP_WITH_CUDA
TEST(Nccl, WorldOfOneThroughTheBootstrap) {
  MEGACPP_REQUIRE_GPU();
  LaunchEnv env;
  env.launcher = "test";
  env.master_port = 0;  // any free port on 127.0.0.1
  auto comm = bootstrap_nccl(env, std::string(64, 'a'), /*timeout_s=*/60);
  ASSERT_EQ(comm->kind(), "nccl");
  ASSERT_EQ(comm->world(), 1);
  const std::size_t n = 1000;
  std::vector<float> h(n), back(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = 0.25f * static_cast<float>(i) - 7.f;
  float *d = nullptr, *e = nullptr;
  ASSERT_EQ(cudaMalloc(&d, n * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&e, n * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  comm->all_reduce_sum(d, n);
  comm->reduce_scatter_sum(d, e, n);
  comm->all_gather(e, d, n);
  comm->broadcast(d, n * 4, 0);
  comm->barrier();
  comm->all_to_all_bytes(d, e, n * 4);
  ASSERT_EQ(cudaMemcpy(back.data(), e, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, h);  // one rank: every collective is the identity
  EXPECT_EQ(comm->stats()[static_cast<std::size_t>(CollKind::all_reduce)].calls, 1);
  cudaFree(d);
  cudaFree(e);
}
#else
TEST(Nccl, WorldOfOneThroughTheBootstrap) {
  EXPECT_FALSE(nccl_available());
  EXPECT_THROW(make_nccl_comm(0, 1, 0, "", 1), std::runtime_error);
  GTEST_SKIP() << "built without CUDA/NCCL";
}
#endif

}  // namespace
}  // namespace megacpp
