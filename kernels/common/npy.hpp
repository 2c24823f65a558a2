// npy.hpp — write NumPy .npy files (v1.0, little-endian, C order) so that `bench --dump DIR`
// inputs, outputs and gradients can be checked against any other implementation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace megacpp {

void write_npy(const std::string& path, const std::vector<double>& data, const std::vector<int64_t>& shape);
void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<int64_t>& shape);
// Raw bf16 bits are written as float32 (NumPy has no bf16): exact, since bf16 ⊂ fp32.
void write_npy_bf16(const std::string& path, const std::vector<uint16_t>& bits, const std::vector<int64_t>& shape);

}  // namespace megacpp
