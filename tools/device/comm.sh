#!/usr/bin/env bash
# tools/device/comm.sh — the comm family in one device call: build megacpp and the comm tests, run
# test_comm_ref and test_comm_gpu (every collective vs the float64 reference on the visible GPUs), then
# `megacpp bench` of the four collectives at BYTES (default 64 MiB) in bf16 and f32 on all visible GPUs.
# For the size sweep, DP scaling, parity and the killed-rank run use tools/device/multigpu.sh.
# Environment: OUT (default ./device-out), BUILD_DIR (build-dev), SKIP_BUILD=1, BYTES.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
BUILD_DIR=${BUILD_DIR:-build-dev}
export NCCL_NVLS_ENABLE=0
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.md"; }
log "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | paste -sd';')"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C "$BUILD_DIR" -j"$(nproc)" megacpp test_comm_ref test_comm_gpu) \
    >"$OUT/build.log" 2>&1 || { log "build FAILED"; grep -E "error" -A3 "$OUT/build.log" | head -40 | tee -a "$OUT/summary.md"; exit 1; }
fi
for t in test_comm_ref test_comm_gpu; do
  timeout 300 "$BUILD_DIR/tests/kernels/comm/$t" >"$OUT/$t.txt" 2>&1
  log "$t: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.txt" | tr '\n' ' ')"
done
for k in allreduce allgather reducescatter alltoall; do
  for d in bf16 f32; do
    timeout 120 "$BUILD_DIR/megacpp" bench --kernel "$k" --bytes "${BYTES:-67108864}" --flag dtype=$d >>"$OUT/bench.txt" 2>&1
    log "bench $k $d: rc=$? $(grep -E '^  note:' "$OUT/bench.txt" | tail -1 | cut -c9-220)"
  done
done
