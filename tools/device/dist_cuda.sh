#!/usr/bin/env bash
# Tensor/expert parallelism on the CUDA backend (issue 8): build and run the GPU tests of the parallel
# layouts on the device machine (in-process ranks sharing one GPU); logs and gtest JSON go to $OUT.
# Sections by owner; each adds its test targets to TARGETS and its runs below.
#   usage: bash tools/device/dist_cuda.sh [section ...]   (default: all sections)
set -uo pipefail
OUT=${OUT:-/tmp/dist_cuda_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; git rev-parse HEAD; } \
  > "$OUT/device.txt" 2>&1
SECTIONS=${*:-ep}
TARGETS=""
# --- ep: expert parallelism / expert TP of the E letter (engine/cuda/moe_block_cuda.cpp) ---------------
case " $SECTIONS " in *" ep "*) TARGETS="$TARGETS test_cuda_ep test_cuda_E test_moe_gpu" ;; esac
# --- tp: tensor parallelism of D, A, M, R and the vocabulary-parallel embedding / LM-head CE --------------
#   test_cuda_tp (2 in-process TP ranks on one GPU vs the tp = 1 model), test_train_ops_tp (the TP kernels vs
#   float64), and the tp = 1 CUDA tests (every block vs its CPU twin, the model, train_ops) to show tp = 1
#   is unchanged. Logs: test_cuda_tp.log, test_train_ops_tp.log, tp1_regress.log (the tp = 1 tests, appended).
case " $SECTIONS " in *" tp "*)
  TARGETS="$TARGETS test_cuda_tp test_train_ops_tp test_train_ops_gpu test_cuda_D test_cuda_A test_cuda_M test_cuda_R test_cuda_model" ;;
esac

cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
ninja -C build-dev -j16 $TARGETS >> "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; tail -20 "$OUT/build.log"; exit 1; }
rc=0
# $OUT brings back at most 8 files: one log per test, gtest JSON only where asked (JSON=1).
run_test() {  # name path [gtest args]
  local name=$1 path=$2
  shift 2
  local j=()
  [ "${JSON:-0}" = 1 ] && j=(--gtest_output=json:"$OUT/$name.json")
  "$path" "${j[@]}" "$@" > "$OUT/$name.log" 2>&1
  local r=$?
  echo "$name rc=$r"
  [ $r -ne 0 ] && rc=1
  return 0
}
case " $SECTIONS " in *" ep "*)
  JSON=1 run_test test_cuda_ep build-dev/tests/engine/cuda/test_cuda_ep
  grep -E "^\[|FAILED|Failure|Expected|loss/token|SKIP|refused|^ *(layers|embed|head|final)|stable|record" "$OUT/test_cuda_ep.log" | cut -c1-400 | tail -150
  run_test test_cuda_E build-dev/tests/engine/cuda/test_cuda_E
  grep -E "^\[ *(PASSED|FAILED|SKIPPED)|FAILED|Failure" "$OUT/test_cuda_E.log" | tail -20
  run_test test_moe_gpu build-dev/tests/kernels/moe/test_moe_gpu
  grep -E "^\[ *(PASSED|FAILED|SKIPPED)|FAILED|Failure" "$OUT/test_moe_gpu.log" | tail -20
  ;;
esac
case " $SECTIONS " in *" tp "*)
  export NCCL_NVLS_ENABLE=0
  run_test test_train_ops_tp timeout 120 build-dev/tests/kernels/train_ops/test_train_ops_tp
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK)|FAILED|Failure" "$OUT/test_train_ops_tp.log" | tail -12
  # One process per case (a crash loses only its case); the first crash is re-run under cuda-gdb (a
  # backtrace, gdb.log) and compute-sanitizer memcheck (sanitizer.log).
  : > "$OUT/test_cuda_tp.log"
  crashed=""
  for f in DenseMlp Attention MambaMixer M2rnn HybridMDAR TiedEmbeddingsRelu2 RefusesAVocabulary; do
    timeout 150 build-dev/tests/engine/cuda/test_cuda_tp --gtest_filter="CudaTensorParallel.${f}*" >> "$OUT/test_cuda_tp.log" 2>&1
    r=$?
    echo "test_cuda_tp $f rc=$r"
    [ $r -ne 0 ] && rc=1
    [ $r -ge 128 ] && [ -z "$crashed" ] && crashed=$f
  done
  grep -E "^\[ *(PASSED|FAILED|SKIPPED|       OK|  FAILED)|FAILED|Failure|Expected|loss per token|stable|^ *(embedding|lm_head|layers|final)|^\[.* rank" \
    "$OUT/test_cuda_tp.log" | cut -c1-200 | tail -150
  if [ -n "$crashed" ]; then
    timeout 150 cuda-gdb -batch -ex "set pagination off" -ex run -ex "info threads" -ex "thread apply all bt 30" \
      --args build-dev/tests/engine/cuda/test_cuda_tp --gtest_filter="CudaTensorParallel.${crashed}*" > "$OUT/gdb.log" 2>&1
    grep -E "SIG|^#|Thread|rank" "$OUT/gdb.log" | cut -c1-220 | head -80
    timeout 120 compute-sanitizer --tool memcheck build-dev/tests/engine/cuda/test_cuda_tp \
      --gtest_filter="CudaTensorParallel.${crashed}*" > "$OUT/sanitizer.log" 2>&1
    grep -E "ERROR|Invalid|at 0x|by thread|Address|SUMMARY" "$OUT/sanitizer.log" | head -30
  fi
  : > "$OUT/tp1_regress.log"
  for t in tests/kernels/train_ops/test_train_ops_gpu tests/engine/cuda/test_cuda_D tests/engine/cuda/test_cuda_A \
           tests/engine/cuda/test_cuda_M tests/engine/cuda/test_cuda_R tests/engine/cuda/test_cuda_model; do
    echo "=== $t" >> "$OUT/tp1_regress.log"
    timeout 150 "build-dev/$t" >> "$OUT/tp1_regress.log" 2>&1
    r=$?
    echo "$(basename $t) rc=$r"
    [ $r -ne 0 ] && rc=1
  done
  grep -E "^===|^\[ *(PASSED|FAILED|SKIPPED)|FAILED|Failure" "$OUT/tp1_regress.log" | tail -40
  ;;
esac
exit $rc
