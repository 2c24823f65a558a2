// host_info.hpp — who ran what where: host, OS, CPUs, GPUs and library versions, megacpp build.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace megacpp {

nlohmann::json host_info_json();   // hostname, os, cpus, gpu runtime (see gpu_device.hpp)
nlohmann::json build_info_json();  // version, git commit, build type, CUDA on/off, gencode
std::string version_text();        // the `megacpp --version` text
std::string utc_now_iso();         // 2026-11-23T20:15:00.123Z
std::string utc_now_compact();     // 20261123T201500Z (run directory names)

}  // namespace megacpp
