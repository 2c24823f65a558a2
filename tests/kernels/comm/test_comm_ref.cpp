// The comm family's host side: geometry (and its refusals), nccl-tests' bus-bandwidth factors, and the
// float64 reference of every collective on a hand-checkable case.
#include <gtest/gtest.h>

#include <stdexcept>

#include "kernels/comm/comm_ref.hpp"

namespace megacpp::comm {
namespace {

TEST(CommRef, GeometryFollowsNcclTestsSizes) {
  const Geometry ar = geometry(Coll::AllReduce, 4096, 4, DType::F32);
  EXPECT_EQ(ar.send_elems, 1024);
  EXPECT_EQ(ar.recv_elems, 1024);
  const Geometry ag = geometry(Coll::AllGather, 4096, 4, DType::BF16);
  EXPECT_EQ(ag.send_elems, 512);
  EXPECT_EQ(ag.recv_elems, 2048);
  const Geometry rs = geometry(Coll::ReduceScatter, 4096, 4, DType::BF16);
  EXPECT_EQ(rs.send_elems, 2048);
  EXPECT_EQ(rs.recv_elems, 512);
  const Geometry aa = geometry(Coll::AllToAll, 4096, 8, DType::F32);
  EXPECT_EQ(aa.send_elems, 1024);
  EXPECT_EQ(aa.block_elems, 128);
}

TEST(CommRef, BadInputNamesTheLimit) {
  try {
    geometry(Coll::AllGather, 4100, 8, DType::F32);
    FAIL() << "4100 bytes over 8 GPUs accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of dtype size × gpus = 4 × 8 = 32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(geometry(Coll::AllReduce, 0, 1, DType::F32), std::invalid_argument);
  EXPECT_THROW(geometry(Coll::AllReduce, 64, 0, DType::F32), std::invalid_argument);
  try {
    parse_dtype("fp8");
    FAIL() << "fp8 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("supported: bf16, f32"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_coll("alltoall"), Coll::AllToAll);
  EXPECT_THROW(parse_coll("broadcast"), std::invalid_argument);
}

TEST(CommRef, BusFactorsAreNcclTests) {
  EXPECT_DOUBLE_EQ(bus_factor(Coll::AllReduce, 8), 2.0 * 7 / 8);
  EXPECT_DOUBLE_EQ(bus_factor(Coll::AllGather, 8), 7.0 / 8);
  EXPECT_DOUBLE_EQ(bus_factor(Coll::ReduceScatter, 4), 3.0 / 4);
  EXPECT_DOUBLE_EQ(bus_factor(Coll::AllToAll, 2), 0.5);
  for (Coll c : {Coll::AllReduce, Coll::AllGather, Coll::ReduceScatter, Coll::AllToAll}) EXPECT_EQ(bus_factor(c, 1), 0.0);
}

TEST(CommRef, ReferenceOnAHandCase) {
  // G = 2, 4 f32 elements per rank's send buffer where the geometry allows it.
  const std::vector<std::vector<double>> in4{{1, 2, 3, 4}, {10, 20, 30, 40}};
  const Geometry ar = geometry(Coll::AllReduce, 16, 2, DType::F32);
  const auto r_ar = reference(Coll::AllReduce, ar, in4);
  EXPECT_EQ(r_ar[0], (std::vector<double>{11, 22, 33, 44}));
  EXPECT_EQ(r_ar[1], r_ar[0]);
  const Geometry rs = geometry(Coll::ReduceScatter, 16, 2, DType::F32);
  const auto r_rs = reference(Coll::ReduceScatter, rs, in4);
  EXPECT_EQ(r_rs[0], (std::vector<double>{11, 22}));
  EXPECT_EQ(r_rs[1], (std::vector<double>{33, 44}));
  const Geometry aa = geometry(Coll::AllToAll, 16, 2, DType::F32);
  const auto r_aa = reference(Coll::AllToAll, aa, in4);
  EXPECT_EQ(r_aa[0], (std::vector<double>{1, 2, 10, 20}));
  EXPECT_EQ(r_aa[1], (std::vector<double>{3, 4, 30, 40}));
  const Geometry ag = geometry(Coll::AllGather, 16, 2, DType::F32);
  const auto r_ag = reference(Coll::AllGather, ag, {{1, 2}, {10, 20}});
  EXPECT_EQ(r_ag[0], (std::vector<double>{1, 2, 10, 20}));
  EXPECT_EQ(r_ag[1], r_ag[0]);
  EXPECT_THROW(reference(Coll::AllGather, ag, in4), std::invalid_argument);  // wrong input size
}

TEST(CommRef, TolerancesAreExactForMovesAndOneGpu) {
  EXPECT_LE(tolerance(Coll::AllGather, 8, DType::BF16), 1e-12);
  EXPECT_LE(tolerance(Coll::AllToAll, 8, DType::F32), 1e-12);
  EXPECT_LE(tolerance(Coll::AllReduce, 1, DType::BF16), 1e-12);
  EXPECT_NEAR(tolerance(Coll::AllReduce, 8, DType::BF16), 2.0 * 7 / 256, 1e-9);
  EXPECT_LT(tolerance(Coll::ReduceScatter, 8, DType::F32), 1e-5);
}

}  // namespace
}  // namespace megacpp::comm
