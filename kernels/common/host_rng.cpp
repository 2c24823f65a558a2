#include "kernels/common/host_rng.hpp"

#include <cmath>
#include <cstring>

namespace megacpp {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

HostRng::HostRng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t HostRng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double HostRng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
double HostRng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
double HostRng::normal() {
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

std::vector<double> random_uniform(std::size_t n, uint64_t seed, double lo, double hi) {
  HostRng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = r.uniform(lo, hi);
  return v;
}

std::vector<double> random_normal(std::size_t n, uint64_t seed, double stddev) {
  HostRng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = stddev * r.normal();
  return v;
}

uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  const uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<uint16_t> to_bf16_bits(const std::vector<double>& v) {
  std::vector<uint16_t> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16_bits(static_cast<float>(v[i]));
  return out;
}

std::vector<double> from_bf16_bits(const std::vector<uint16_t>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = bf16_bits_to_float(v[i]);
  return out;
}

void round_vector_to_bf16(std::vector<double>& v) {
  for (auto& x : v) x = round_to_bf16(x);
}

}  // namespace megacpp
