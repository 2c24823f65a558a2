#!/usr/bin/env bash
# Data parallelism on the CUDA backend (issue 8, trainer side): build, run test_cuda_dp (in-process ranks
# sharing the one GPU), then measure the gradient reduction of md300m at seq 1024 with 2 in-process ranks on one GPU:
# overlap on, overlap off, ZeRO-1 (receipt numbers → $OUT/bench.txt); then test_cuda_model (tp = 1
# unchanged) and test_dist's NCCL world-1 and heartbeat tests.
#   usage: bash tools/device/dp_cuda.sh [tests|bench|regress ...]   (default: all three)
set -uo pipefail
OUT=${OUT:-/tmp/dp_cuda_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; git rev-parse HEAD; } > "$OUT/device.txt" 2>&1
SECTIONS=${*:-tests bench regress}
export NCCL_NVLS_ENABLE=0
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
ninja -C build-dev -j16 test_cuda_dp megacpp >> "$OUT/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
rc=0
run_test() {  # name timeout path [args]
  local name=$1 t=$2 path=$3
  shift 3
  timeout "$t" "$path" "$@" > "$OUT/$name.log" 2>&1
  local r=$?
  echo "$name rc=$r"
  [ $r -ne 0 ] && rc=1
  return 0
}
case " $SECTIONS " in *" tests "*)
  run_test test_cuda_dp ${DP_TEST_TIMEOUT:-180} build-dev/tests/engine/cuda/test_cuda_dp --gtest_filter=-*TensorParallel*
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK)|FAILED|Failure|Expected|Which is|step [0-9]+:|ZeRO-1 vs|backend|overlap off" \
    "$OUT/test_cuda_dp.log" | cut -c1-300 | tail -60
  # The end-to-end tp = 2 case separately (it crashed once: a backtrace if gdb is there).
  if command -v gdb > /dev/null; then
    timeout 90 gdb -q -batch -ex run -ex bt --args build-dev/tests/engine/cuda/test_cuda_dp --gtest_filter=*TensorParallel* \
      > "$OUT/test_cuda_dp_tp.log" 2>&1
    echo "test_cuda_dp tp2 (gdb) rc=$?"
  else
    run_test test_cuda_dp_tp 90 build-dev/tests/engine/cuda/test_cuda_dp --gtest_filter=*TensorParallel*
  fi
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK)|FAILED|Failure|tp2|SIG|^#[0-9]+ " "$OUT/test_cuda_dp_tp.log" | cut -c1-250 | head -40
  ;;
esac
case " $SECTIONS " in *" bench "*)
  : > "$OUT/bench.txt"
  for cfg in "overlap parallel.overlap_grad_reduce=true" "no-overlap parallel.overlap_grad_reduce=false" "zero1 parallel.zero=1"; do
    case "$cfg" in zero1*) [ "${BENCH_ZERO:-1}" = 1 ] || continue ;; esac
    set -- $cfg
    name=$1
    timeout ${BENCH_TIMEOUT:-60} build-dev/megacpp --receipts-dir "/tmp/dp-bench/runs-$name" train recipes/md300m.yaml --nproc-per-node 2 --launch threads --quiet \
      --set train.seq_len=${BENCH_SEQ:-1024} --set model.depth=${BENCH_DEPTH:-16} --set train.steps=6 --set train.eval_every=0 --set train.eval_batches=1 \
      --set train.checkpoint_every=0 --set "$2" > "$OUT/bench-$name.log" 2>&1
    echo "$name rc=$?" | tee -a "$OUT/bench.txt"
    python3 - "/tmp/dp-bench/runs-$name" "$name" >> "$OUT/bench.txt" 2>&1 <<'EOF'
import json, sys, glob, statistics
f = sorted(glob.glob(sys.argv[1] + "/**/receipt.json", recursive=True))
if not f: print("no receipt"); sys.exit()
t = json.load(open(f[-1]))["training"]
d = t.get("distributed", {})
ms = [p["ms"] for p in t["series"]][2:]  # after 2 warm-up steps
print(f"{sys.argv[2]}: backend {t['backend']}, params {t['params']}, steps {len(t['series'])}, "
      f"median step ms (steps 3..) {statistics.median(ms):.1f}, step_comm_s {d.get('step_comm_s')}, "
      f"exposed_comm_s {d.get('exposed_comm_s')}, overlapped_comm_s {d.get('overlapped_comm_s')}")
for r in d.get("per_rank", []):
    print(f"  rank {r['rank']}: mean step {r['mean_step_ms']:.1f} ms, comm {json.dumps(r['comm'])}, "
          f"exposed {r['exposed_comm_s']:.4f} s, overlapped {r['overlapped_comm_s']:.4f} s")
m = t.get("cuda", {}).get("memory", {})
print(f"  memory: adamw_state_mib {m.get('adamw_state_mib')}, parameters_and_optimizer_mib {m.get('parameters_and_optimizer_mib')}, "
      f"zero1 {m.get('zero1')}, device_used_mib {m.get('device_used_mib')}")
print("  " + d.get("grad_reduction", ""))
EOF
  done
  for f in /tmp/dp-bench/runs-*/*/receipt.json; do [ -f "$f" ] && cp "$f" "$OUT/receipt-$(basename $(dirname $(dirname $f))).json"; done
  cat "$OUT/bench.txt"
  ;;
esac
case " $SECTIONS " in *" regress "*)
  ninja -C build-dev -j16 test_cuda_model test_dist >> "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  run_test test_cuda_model 120 build-dev/tests/engine/cuda/test_cuda_model
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK)|FAILED|Failure" "$OUT/test_cuda_model.log" | tail -12
  run_test test_dist_nccl 60 build-dev/tests/engine/test_dist --gtest_filter='Nccl*:Heartbeat*'
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK)|FAILED|Failure" "$OUT/test_dist_nccl.log" | tail -12
  ;;
esac
exit $rc
