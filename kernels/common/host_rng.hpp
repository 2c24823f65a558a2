// host_rng.hpp — deterministic host-side random inputs for tests and benches, plus bf16 helpers.
// Inputs are never zeros: every check draws fresh values from a seed that the caller varies.
#pragma once
#include <cstdint>
#include <vector>

namespace megacpp {

// SplitMix64-seeded xoshiro256** — fast, reproducible across compilers and platforms.
class HostRng {
 public:
  explicit HostRng(uint64_t seed);
  uint64_t next_u64();
  double uniform();                      // [0, 1)
  double uniform(double lo, double hi);  // [lo, hi)
  double normal();                       // N(0, 1), Box–Muller

 private:
  uint64_t s_[4];
};

std::vector<double> random_uniform(std::size_t n, uint64_t seed, double lo, double hi);
std::vector<double> random_normal(std::size_t n, uint64_t seed, double stddev = 1.0);

// bf16 as raw uint16 bits, round-to-nearest-even (the same rounding as __float2bfloat16_rn).
uint16_t float_to_bf16_bits(float f);
float bf16_bits_to_float(uint16_t b);
inline double round_to_bf16(double x) { return bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(x))); }
std::vector<uint16_t> to_bf16_bits(const std::vector<double>& v);
std::vector<double> from_bf16_bits(const std::vector<uint16_t>& v);
// Round every element to bf16 in place: the reference then sees exactly what the kernel sees.
void round_vector_to_bf16(std::vector<double>& v);

}  // namespace megacpp
