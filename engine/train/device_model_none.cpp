// device_model_none.cpp — builds without CUDA: the CUDA training backend is not compiled in.
#include <stdexcept>

#include "engine/train/device_model.hpp"

namespace megacpp {

std::unique_ptr<DeviceModel> make_cuda_model(const Recipe&, int64_t, int64_t, uint64_t, const ModelParallel&) {
  throw std::runtime_error("this megacpp was built without CUDA (MEGACPP_WITH_CUDA=OFF): no CUDA training backend");
}

}  // namespace megacpp
