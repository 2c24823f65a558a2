#!/usr/bin/env bash
# tools/setup.sh — install megacpp's system packages (apt-get, idempotent) and build with all cores.
#
#   bash tools/setup.sh                 # install what is missing, configure, build into ./build
#   bash tools/setup.sh --cpu-only      # build without CUDA even if a toolkit is present
#   bash tools/setup.sh --no-install    # skip apt-get (packages already there)
#   BUILD_DIR=out bash tools/setup.sh   # another build directory
#
# The CUDA toolkit (nvcc, cuBLAS/cuBLASLt), cuDNN 9 and NCCL 2 come from NVIDIA's packages and are
# not installed here; when /usr/local/cuda/bin/nvcc exists the CUDA build is configured automatically.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CPU_ONLY=0
INSTALL=1
for a in "$@"; do
  case "$a" in
    --cpu-only) CPU_ONLY=1 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

PACKAGES=(build-essential cmake ninja-build git pkg-config
          libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
          libgtest-dev libbenchmark-dev libopenmpi-dev openmpi-bin)

if [[ $INSTALL == 1 ]]; then
  if [[ ! -r /etc/os-release ]] || ! grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; then
    echo "setup.sh: this script installs packages with apt-get and supports Debian 12 and Ubuntu 24.04 only." >&2
    echo "          On another system install: ${PACKAGES[*]} (or their equivalents), then run with --no-install." >&2
    exit 1
  fi
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "setup.sh: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "setup.sh: all system packages present"
  fi
fi

CMAKE_ARGS=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release)
[[ $CPU_ONLY == 1 ]] && CMAKE_ARGS+=(-DMEGACPP_WITH_CUDA=OFF)
t0=$(date +%s)
cmake "${CMAKE_ARGS[@]}"
t1=$(date +%s)
cmake --build "$BUILD_DIR" -j "$(nproc)"
t2=$(date +%s)
echo "setup.sh: configure $((t1 - t0)) s, build $((t2 - t1)) s on $(nproc) cores -> $BUILD_DIR/megacpp"
