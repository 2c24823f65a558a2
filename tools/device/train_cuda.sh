#!/usr/bin/env bash
# tools/device/train_cuda.sh — the CUDA training backend on one GPU, in one device call:
#   build (all cores) → the CUDA backend's tests (every block vs its CPU twin, the whole model vs the
#   CPU model, training tracks the CPU run, bit-identical resume) → the GPU smoke run → the md300m
#   acceptance run (tokens/s, TFLOP/s, MFU, peak memory, per-letter time split from the receipt).
#   bash tools/device/train_cuda.sh [tests|smoke|big|hybrid|all]   (default all; hybrid: recipes/hybrid300m.yaml,
#   every letter at seq 4096)
# Environment: BUILD_DIR (default build-dev), BIG_STEPS (default: the recipe's), BIG_VARIANTS=1 (also
# 40 steps with features.psiv_cache and with train.recompute [M, D]), SKIP_BUILD=1.
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
if [[ $WHAT == all || $WHAT == smoke ]]; then
  train smoke-gpu recipes/smoke-gpu.yaml
  # The smoke recipe's first steps on the GPU (bf16) against the same 20 steps on the CPU backend (fp32).
  train smoke-cpu20 recipes/smoke-gpu.yaml --set train.device=cpu --set train.precision=fp32 --set train.steps=20 --set train.eval_every=0
  train smoke-gpu20 recipes/smoke-gpu.yaml --set train.steps=20 --set train.eval_every=0
  python3 - "$OUT/runs" >>"$OUT/summary.md" <<'PY'
import glob, json, sys
runs = {}
for f in sorted(glob.glob(sys.argv[1] + "/*/receipt.json")):
    d = json.load(open(f))
    if d["training"].get("tokens_per_step") and len(d["training"].get("series", [])) == 20:
        runs[d["training"]["backend"]] = [p["loss"] for p in d["training"]["series"]]
if "cpu" in runs and "cuda" in runs:
    c, g = runs["cpu"], runs["cuda"]
    worst = max(abs(a - b) / a for a, b in zip(c, g))
    print("smoke first 20 steps, loss cpu (fp32) vs cuda (bf16):")
    for i in (0, 1, 4, 9, 14, 19): print(f"  step {i+1:2d}: cpu {c[i]:.4f}  cuda {g[i]:.4f}  rel diff {abs(c[i]-g[i])/c[i]:.2e}")
    print(f"  worst relative difference over 20 steps: {worst:.2e}")
else:
    print("smoke comparison: missing runs", list(runs))
PY
fi
if [[ $WHAT == all || $WHAT == big ]]; then
  "$BUILD_DIR/megacpp" plan recipes/md300m.yaml >"$OUT/plan-md300m.txt" 2>&1
  train md300m recipes/md300m.yaml ${BIG_STEPS:+--set train.steps=$BIG_STEPS}
  if [[ ${BIG_VARIANTS:-0} == 1 ]]; then  # the same model with the PsiV cache, and with recompute [M, D]
    train md300m-psiv recipes/md300m.yaml --set train.steps=40 --set train.eval_every=0 --set features.psiv_cache=true
    train md300m-recompute recipes/md300m.yaml --set train.steps=40 --set train.eval_every=0 --set "train.recompute=[M, D]"
  fi
fi
[[ $WHAT == all || $WHAT == hybrid ]] && train hybrid300m recipes/hybrid300m.yaml ${HYBRID_STEPS:+--set train.steps=$HYBRID_STEPS}
log "done"
( cd "$OUT" && tar czf /tmp/megacpp-train-all.tgz --exclude=summary.md --exclude="*/checkpoints" --exclude="data_cache" . && find . -mindepth 1 ! -name summary.md -delete \
  && mv /tmp/megacpp-train-all.tgz all.tgz )
