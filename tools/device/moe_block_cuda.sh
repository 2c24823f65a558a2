#!/usr/bin/env bash
# The E letter on the CUDA training backend (engine/cuda/moe_block_cuda.cpp): build and run its GPU test
# (tests/engine/cuda/test_moe_block_cuda.cpp) on the device machine; the log and gtest JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/moe_block_cuda_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; git rev-parse HEAD; } \
  > "$OUT/device.txt" 2>&1
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C build-dev -j16 test_cuda_E > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
build-dev/tests/engine/cuda/test_cuda_E --gtest_output=json:"$OUT/test_cuda_E.json" > "$OUT/test_cuda_E.log" 2>&1
rc=$?
grep -E "^\[|FAILED|Failure|Expected|aux:|tokens/expert|record:|min router gap" "$OUT/test_cuda_E.log" | tail -60
echo "test_cuda_E rc=$rc"
exit $rc
