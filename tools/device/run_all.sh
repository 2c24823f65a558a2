#!/usr/bin/env bash
# tools/device/run_all.sh — the one device call: build everything for Hopper with all cores, run the
# whole test suite (GPU tests included), then the benches of every kernel family at the shapes the
# issues name. Tables and logs go to $OUT (default ./device-out).
#
#   bash tools/device/run_all.sh [tests|bench|all]      (default all)
# Environment: BUILD_DIR (default build-dev), BENCH_ITERS (default 20), SKIP_BUILD=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
BUILD_DIR=${BUILD_DIR:-build-dev}
WHAT=${1:-all}
ITERS=${BENCH_ITERS:-20}
export NCCL_NVLS_ENABLE=0
[[ -d .devdeps/usr/lib/x86_64-linux-gnu ]] && export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.md"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
log "GPU: $(tail -1 "$OUT/gpu.txt")"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  t0=$(date +%s)
  # The GPU machine's image may lack some of the system packages that machines.md lists; then use the
  # Debian 12 packages carried in .devdeps (see tools/device/make_devdeps.sh) and say so.
  if ! cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEGACPP_PTXAS_VERBOSE=ON >"$OUT/configure.log" 2>&1; then
    log "configure with the machine's own packages failed: $(grep -m1 -E 'Could not find|Could NOT find' "$OUT/configure.log")"
    [[ -d .devdeps/usr ]] || { log "no .devdeps carried"; tail -30 "$OUT/configure.log"; exit 1; }
    rm -rf "$BUILD_DIR"
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEGACPP_PTXAS_VERBOSE=ON \
      -DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr" >"$OUT/configure.log" 2>&1 \
      || { log "configure FAILED"; tail -30 "$OUT/configure.log"; exit 1; }
    log "configured with the carried Debian 12 packages (.devdeps)"
  fi
  grep -E "Found|megacpp" "$OUT/configure.log" | tee -a "$OUT/summary.md"
  ninja -C "$BUILD_DIR" -j"$(nproc)" >"$OUT/build.log" 2>&1 || { log "build FAILED"; grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  log "build: $(( $(date +%s) - t0 )) s"
  grep -E "ptxas info|spill" "$OUT/build.log" | grep -vE "^\s*$" >"$OUT/ptxas.txt" || true
fi
"$BUILD_DIR/megacpp" --version | tee -a "$OUT/summary.md"

if [[ $WHAT == all || $WHAT == tests ]]; then
  t0=$(date +%s)
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j4 --timeout 300 >"$OUT/ctest.log" 2>&1
  log "ctest: rc=$? in $(( $(date +%s) - t0 )) s: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1)"
  grep -E "Failed|\*\*\*|Not Run|Timeout" "$OUT/ctest.log" | head -30 | tee -a "$OUT/summary.md"
fi

bench() {  # bench NAME ARGS...
  local name=$1; shift
  timeout 240 "$BUILD_DIR/megacpp" bench --kernel "$name" --iters "$ITERS" --receipts-dir "$OUT/runs" "$@" \
    >"$OUT/bench-$name-$(echo "$*" | tr ' =/-' '____' | cut -c1-60).log" 2>&1
  local rc=$?
  log "bench $name $* (rc=$rc)"
  grep -E "median|TFLOP|regs|tokens|check|FAIL|error" "$OUT"/bench-"$name"-*.log 2>/dev/null | tail -8 >>"$OUT/summary.md"
}

if [[ $WHAT == all || $WHAT == bench ]]; then
  "$BUILD_DIR/megacpp" bench --list >"$OUT/ops.txt" 2>&1
  for op in $(awk '/^[a-z]/{print $1}' "$OUT/ops.txt"); do echo "op: $op" >>"$OUT/summary.md"; done
  # Mamba-3 MIMO: the issue's speed-bar shape, and the seeds' reference shape.
  if grep -q '^mimo_fwd' "$OUT/ops.txt"; then
    for k in mimo_fwd mimo_bwd_fwd mimo_bwd_bwd; do
      bench $k --B 2 --S 4096 --H 112 --G 8 --N 128 --P 64 --R 4 --chunk 16
    done
    bench mimo_all --B 2 --S 4096 --H 112 --G 8 --N 128 --P 64 --R 4 --chunk 16 --psiv-cache
    bench mimo_all --B 8 --S 8192 --H 16 --G 1 --N 64 --P 64 --R 4 --chunk 16
  fi
  grep -q '^m2rnn_fwd' "$OUT/ops.txt" && { bench m2rnn_fwd; bench m2rnn_bwd; }
  if grep -q '^attn_fwd' "$OUT/ops.txt"; then
    for be in cudnn native; do
      bench attn_fwd --backend $be --B 8 --S 4096 --heads 16 --kv-heads 16 --head-dim 128
      bench attn_bwd --backend $be --B 8 --S 4096 --heads 16 --kv-heads 16 --head-dim 128
    done
  fi
  grep -q '^moe' "$OUT/ops.txt" && { bench moe --moe-path standard; bench moe --moe-path fused; }
fi
log "done"
# Only a few files come back from the device: keep summary.md and pack everything else.
( cd "$OUT" && tar czf /tmp/megacpp-device-all.tgz --exclude=summary.md . && find . -mindepth 1 ! -name summary.md -delete \
  && mv /tmp/megacpp-device-all.tgz all.tgz )
