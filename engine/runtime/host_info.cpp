#include "engine/runtime/host_info.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <thread>

#include "kernels/common/gpu_device.hpp"
#include "megacpp/build_info.hpp"
#include "megacpp/git_commit.hpp"  // written at build time (cmake/git_commit.cmake)

namespace megacpp {

nlohmann::json build_info_json() {
  return {{"version", MEGACPP_VERSION},
          {"git_commit", MEGACPP_GIT_COMMIT},
          {"build_type", MEGACPP_BUILD_TYPE},
#if MEGACPP_WITH_CUDA
          {"cuda", true},
          {"gencode", MEGACPP_CUDA_GENCODE}
#else
          {"cuda", false},
          {"gencode", ""}
#endif
  };
}

nlohmann::json host_info_json() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  utsname u{};
  uname(&u);
  return {{"hostname", host},
          {"os", std::string(u.sysname) + " " + u.release},
          {"machine", u.machine},
          {"cpus", std::thread::hardware_concurrency()},
          {"gpu", to_json(gpu_runtime())}};
}

std::string version_text() {
  const auto& rt = gpu_runtime();
  std::string s = "megacpp " MEGACPP_VERSION " (commit " MEGACPP_GIT_COMMIT ", " MEGACPP_BUILD_TYPE ")\n";
  if (!rt.built_with_cuda) {
    s += "built without CUDA (CPU reference backend only)\nruntime: no GPU (CPU-only build)\n";
    return s;
  }
  s += "built with: CUDA " + rt.built_cuda + ", cuBLAS " + rt.built_cublas + ", cuDNN " + rt.built_cudnn + ", NCCL " +
       rt.built_nccl + ", " MEGACPP_CUDA_GENCODE "\n";
  s += "found at run time: cuBLAS " + rt.runtime_cublas + ", cuDNN " + rt.runtime_cudnn + ", NCCL " +
       (rt.runtime_nccl.empty() ? std::string("?") : rt.runtime_nccl);
  if (rt.driver_version > 0)
    s += ", driver CUDA " + std::to_string(rt.driver_version / 1000) + "." + std::to_string((rt.driver_version % 1000) / 10);
  s += "\n";
  if (!rt.available) {
    s += "GPU: " + rt.why_not + "\n";
  } else {
    for (const auto& g : rt.gpus)
      s += "GPU " + std::to_string(g.index) + ": " + g.name + " (sm_" + std::to_string(g.sm_major) +
           std::to_string(g.sm_minor) + ", " + std::to_string(g.multiprocessors) + " SMs, " +
           std::to_string(static_cast<int>(g.memory_gib + 0.5)) + " GiB)\n";
  }
  return s;
}

std::string utc_now_iso() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[80];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}

std::string utc_now_compact() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

}  // namespace megacpp
