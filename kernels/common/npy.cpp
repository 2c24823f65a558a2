#include "kernels/common/npy.hpp"

#include <fstream>
#include <stdexcept>

#include "kernels/common/host_rng.hpp"

namespace megacpp {

namespace {
template <typename T>
void write_npy_impl(const std::string& path, const T* data, std::size_t n, const std::vector<int64_t>& shape,
                    const char* descr) {
  std::size_t expect = 1;
  for (auto d : shape) expect *= static_cast<std::size_t>(d);
  if (expect != n) throw std::invalid_argument("write_npy(" + path + "): shape does not match element count");
  std::string header = "{'descr': '";
  header += descr;
  header += "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    header += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) header += ", ";
  }
  header += "), }";
  // Pad so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n'.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("write_npy: cannot open " + path);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t hl = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&hl), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(T)));
  if (!f) throw std::runtime_error("write_npy: write failed for " + path);
}
}  // namespace

void write_npy(const std::string& path, const std::vector<double>& data, const std::vector<int64_t>& shape) {
  write_npy_impl(path, data.data(), data.size(), shape, "<f8");
}
void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<int64_t>& shape) {
  write_npy_impl(path, data.data(), data.size(), shape, "<f4");
}
void write_npy_bf16(const std::string& path, const std::vector<uint16_t>& bits, const std::vector<int64_t>& shape) {
  std::vector<float> f(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) f[i] = bf16_bits_to_float(bits[i]);
  write_npy(path, f, shape);
}

}  // namespace megacpp
