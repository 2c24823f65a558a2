#!/usr/bin/env bash
# tools/device/train_cuda.sh — the CUDA training backend on one GPU, in one device call:
#   build (all cores) → the CUDA backend's tests (every block vs its CPU twin, the whole model vs the
#   CPU model, training tracks the CPU run, bit-identical resume) → the GPU smoke run → the md300m
#   acceptance run (tokens/s, TFLOP/s, MFU, peak memory, per-letter time split from the receipt).
#   bash tools/device/train_cuda.sh [tests|smoke|big|all]   (default all)
# Environment: BUILD_DIR (default build-dev), BIG_STEPS (default: the recipe's), SKIP_BUILD=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
BUILD_DIR=${BUILD_DIR:-build-dev}
WHAT=${1:-all}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.md"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1
log "GPU: $(cat "$OUT/gpu.txt")"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  t0=$(date +%s)
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 || { log "configure FAILED"; tail -30 "$OUT/configure.log"; exit 1; }
  ninja -C "$BUILD_DIR" -j"$(nproc)" >"$OUT/build.log" 2>&1 || { log "build FAILED"; grep -E "error" -A3 "$OUT/build.log" | head -60 | tee -a "$OUT/summary.md"; exit 1; }
  log "build: $(( $(date +%s) - t0 )) s"
fi
if [[ $WHAT == all || $WHAT == tests ]]; then
  for t in "$BUILD_DIR"/tests/engine/cuda/test_cuda_*; do
    [[ -x $t ]] || continue
    n=$(basename "$t")
    timeout 300 "$t" >"$OUT/$n.txt" 2>&1
    log "$n: rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/$n.txt" | tr '\n' ' ')"
  done
  grep -hE "FAILED|Failure|error" "$OUT"/test_cuda_*.txt | head -20 >>"$OUT/summary.md"
fi
train() {  # train NAME RECIPE ARGS...
  local name=$1 recipe=$2; shift 2
  timeout "${TRAIN_TIMEOUT:-300}" "$BUILD_DIR/megacpp" train "$recipe" --set receipts.dir="$OUT/runs" "$@" >"$OUT/train-$name.log" 2>&1
  log "train $name ($recipe $*): rc=$?"
  grep -E "^step .*(/| val)|done:|error|Error" "$OUT/train-$name.log" | tail -14 >>"$OUT/summary.md"
  local rj
  rj=$(ls -t "$OUT"/runs/*/receipt.json 2>/dev/null | head -1)
  [[ -n $rj ]] && python3 - "$rj" >>"$OUT/summary.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d.get("training", {})
c = t.get("cuda", {})
print("receipt:", sys.argv[1].split("/runs/")[-1], "status", d.get("status"), "backend", t.get("backend"))
s = t.get("series", [])
if s:
    tail = s[len(s)//2:]
    med = lambda k: sorted(p[k] for p in tail)[len(tail)//2]
    print(f"  steady (median of the last half): {med('ms'):.1f} ms/step, {med('tokens_per_s'):.0f} tok/s, {med('tflops'):.1f} TFLOP/s, MFU {med('mfu') if s[-1].get('mfu') is not None else 'n/a'}")
print("  memory:", json.dumps(c.get("memory", {}).get("peak_device_used_mib")), "MiB peak;", json.dumps({k: round(v) for k, v in c.get("memory", {}).items() if k.endswith("_mib")}))
tm = c.get("time_ms", {})
tot = sum(v for k, v in tm.items() if k.startswith("train"))
for k, v in sorted(tm.items(), key=lambda kv: -kv[1]):
    if k.startswith("train"): print(f"  {k:36s} {v:10.1f} ms  {100*v/max(tot,1e-9):5.1f} %")
print("  features:", json.dumps(d.get("features", {}))[:600])
print("  val:", t.get("final_val_loss"), "unigram:", t.get("unigram_val_cross_entropy_nats"))
PY
}
[[ $WHAT == all || $WHAT == smoke ]] && train smoke-gpu recipes/smoke-gpu.yaml
if [[ $WHAT == all || $WHAT == big ]]; then
  "$BUILD_DIR/megacpp" plan recipes/md300m.yaml >"$OUT/plan-md300m.txt" 2>&1
  train md300m recipes/md300m.yaml ${BIG_STEPS:+--set train.steps=$BIG_STEPS}
fi
log "done"
( cd "$OUT" && tar czf /tmp/megacpp-train-all.tgz --exclude=summary.md --exclude="*/checkpoints" --exclude="data_cache" . && find . -mindepth 1 ! -name summary.md -delete \
  && mv /tmp/megacpp-train-all.tgz all.tgz )
