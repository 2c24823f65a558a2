// device_comm.cu — see device_comm.hpp. Staging buffers are allocated on first use and only grow (the
// sizes are fixed by the shapes, so after the first step nothing is allocated).
#include "engine/cuda/device_comm.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/common/cuda_check.hpp"
#include "kernels/common/host_rng.hpp"

namespace megacpp::cuda_backend {

namespace {

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* x, float* y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}
__global__ void f32_to_bf16_kernel(const float* x, __nv_bfloat16* y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}
unsigned grid_for(std::size_t n) { return static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 4096)); }

}  // namespace

DeviceCollectives::~DeviceCollectives() {
  if (dev_f32_) cudaFree(dev_f32_);
  if (host_) cudaFreeHost(host_);
}

bool DeviceCollectives::on_nccl() const { return c_ && c_->kind() == "nccl"; }

float* DeviceCollectives::fp32_stage(std::size_t n) {
  if (n > dev_f32_n_) {
    if (dev_f32_) MEGACPP_CUDA_CHECK(cudaFree(dev_f32_));
    dev_f32_ = nullptr;
    MEGACPP_CUDA_CHECK(cudaMalloc(&dev_f32_, n * sizeof(float)));
    dev_f32_n_ = n;
  }
  return dev_f32_;
}

void* DeviceCollectives::host_stage(std::size_t bytes) {
  if (bytes > host_bytes_) {
    if (host_) MEGACPP_CUDA_CHECK(cudaFreeHost(host_));
    host_ = nullptr;
    MEGACPP_CUDA_CHECK(cudaMallocHost(&host_, bytes));
    host_bytes_ = bytes;
  }
  return host_;
}

void DeviceCollectives::all_reduce(float* buf, std::size_t n, cudaStream_t stream) {
  if (size() <= 1 || n == 0) return;
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (on_nccl()) return c_->all_reduce_sum(buf, n);
  auto* h = static_cast<float*>(host_stage(n * sizeof(float)));
  MEGACPP_CUDA_CHECK(cudaMemcpy(h, buf, n * sizeof(float), cudaMemcpyDeviceToHost));
  c_->all_reduce_sum(h, n);
  MEGACPP_CUDA_CHECK(cudaMemcpy(buf, h, n * sizeof(float), cudaMemcpyHostToDevice));
}

void DeviceCollectives::all_reduce(__nv_bfloat16* buf, std::size_t n, cudaStream_t stream) {
  if (size() <= 1 || n == 0) return;
  if (on_nccl()) {
    float* f = fp32_stage(n);
    bf16_to_f32_kernel<<<grid_for(n), 256, 0, stream>>>(buf, f, n);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
    MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
    c_->all_reduce_sum(f, n);
    f32_to_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(f, buf, n);
    MEGACPP_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // In-process: bf16 bits → fp32 on the host, reduce, round back.
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
  auto* h = static_cast<char*>(host_stage(n * (sizeof(float) + 2)));
  auto* hb = reinterpret_cast<uint16_t*>(h + n * sizeof(float));
  auto* hf = reinterpret_cast<float*>(h);
  MEGACPP_CUDA_CHECK(cudaMemcpy(hb, buf, n * 2, cudaMemcpyDeviceToHost));
  for (std::size_t i = 0; i < n; ++i) hf[i] = bf16_bits_to_float(hb[i]);
  c_->all_reduce_sum(hf, n);
  for (std::size_t i = 0; i < n; ++i) hb[i] = float_to_bf16_bits(hf[i]);
  MEGACPP_CUDA_CHECK(cudaMemcpy(buf, hb, n * 2, cudaMemcpyHostToDevice));
}

void DeviceCollectives::all_gather_bytes(const void* send, void* recv, std::size_t bytes, cudaStream_t stream) {
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (size() <= 1) {
    if (recv != send) MEGACPP_CUDA_CHECK(cudaMemcpy(recv, send, bytes, cudaMemcpyDeviceToDevice));
    return;
  }
  if (on_nccl()) return c_->all_gather_bytes(send, recv, bytes);
  const std::size_t W = static_cast<std::size_t>(size());
  auto* h = static_cast<char*>(host_stage(bytes * (W + 1)));
  MEGACPP_CUDA_CHECK(cudaMemcpy(h + bytes * W, send, bytes, cudaMemcpyDeviceToHost));
  c_->all_gather_bytes(h + bytes * W, h, bytes);
  MEGACPP_CUDA_CHECK(cudaMemcpy(recv, h, bytes * W, cudaMemcpyHostToDevice));
}

void DeviceCollectives::all_to_all_v(const void* send, const std::vector<std::size_t>& send_bytes,
                                     const std::vector<std::size_t>& send_off, void* recv,
                                     const std::vector<std::size_t>& recv_bytes, const std::vector<std::size_t>& recv_off,
                                     cudaStream_t stream) {
  MEGACPP_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (size() <= 1) {  // one rank: its own block only
    if (!send_bytes.empty() && send_bytes[0] > 0)
      MEGACPP_CUDA_CHECK(cudaMemcpy(static_cast<char*>(recv) + recv_off[0], static_cast<const char*>(send) + send_off[0],
                                    send_bytes[0], cudaMemcpyDeviceToDevice));
    return;
  }
  if (on_nccl()) return c_->all_to_all_v(send, send_bytes, send_off, recv, recv_bytes, recv_off);
  // In-process: stage both sides on the host (extent = max offset + size).
  std::size_t s_ext = 0, r_ext = 0;
  for (std::size_t q = 0; q < send_bytes.size(); ++q) s_ext = std::max(s_ext, send_off[q] + send_bytes[q]);
  for (std::size_t q = 0; q < recv_bytes.size(); ++q) r_ext = std::max(r_ext, recv_off[q] + recv_bytes[q]);
  auto* h = static_cast<char*>(host_stage(s_ext + r_ext));
  if (s_ext) MEGACPP_CUDA_CHECK(cudaMemcpy(h, send, s_ext, cudaMemcpyDeviceToHost));
  c_->all_to_all_v(h, send_bytes, send_off, h + s_ext, recv_bytes, recv_off);
  for (std::size_t q = 0; q < recv_bytes.size(); ++q)
    if (recv_bytes[q])
      MEGACPP_CUDA_CHECK(cudaMemcpy(static_cast<char*>(recv) + recv_off[q], h + s_ext + recv_off[q], recv_bytes[q],
                                    cudaMemcpyHostToDevice));
}

}  // namespace megacpp::cuda_backend
