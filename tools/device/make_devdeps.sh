#!/usr/bin/env bash
# tools/device/make_devdeps.sh — the GPU machine has no network; if its image lacks some of the
# project's system packages, carry Debian 12's (ABI-compatible with Ubuntu 24.04: older glibc and
# libstdc++) in .devdeps/ (ignored by git; pass carry [".devdeps"] to the device call).
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download libcli11-dev libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev \
   libfmt9 nlohmann-json3-dev libgtest-dev)
rm -rf .devdeps && mkdir -p .devdeps
for f in "$tmp"/*.deb; do dpkg -x "$f" .devdeps; done
rm -rf "$tmp"
grep -qx '/.devdeps/' .git/info/exclude || echo '/.devdeps/' >> .git/info/exclude
du -sh .devdeps
