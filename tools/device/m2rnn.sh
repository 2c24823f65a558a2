#!/usr/bin/env bash
# M²RNN family on the GPU machine, in one call: build only this family with nvcc directly (the device image
# lacks the project's other system packages; nlohmann/gtest headers + libgtest.a travel in .m2rnn_dev, see
# below), CPU reference tests, GPU-vs-reference tests, SASS summary, then the bench table.
# Usage (device tool, carry [".m2rnn_dev"]): bash tools/device/m2rnn.sh [tests|bench|all]
# Prepare .m2rnn_dev here once: mkdir -p .m2rnn_dev/include .m2rnn_dev/lib && cp -r /usr/include/nlohmann
#   /usr/include/gtest .m2rnn_dev/include && cp /usr/lib/x86_64-linux-gnu/libgtest.a .m2rnn_dev/lib
#   (and add /.m2rnn_dev/ to .git/info/exclude).
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-/tmp/m2rnn_out}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
T0=$(date +%s)
B=build-m2rnn-dev; mkdir -p $B
INC="-I. -I.m2rnn_dev/include"; LIBS="-L.m2rnn_dev/lib"
for d in $(python3 -c "import os,importlib
for m in ('nvidia.cudnn','nvidia.nccl','nvidia.cublas'):
  try:
    p=importlib.import_module(m); print(list(p.__path__)[0])
  except Exception: pass" 2>/dev/null); do
  [ -d "$d/include" ] && INC="$INC -I$d/include"; [ -d "$d/lib" ] && LIBS="$LIBS -L$d/lib -Xlinker -rpath=$d/lib"
done
NV="/usr/local/cuda/bin/nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo $INC -DMEGACPP_WITH_CUDA=1"
pids=()
for f in kernels/m2rnn/m2rnn_fwd.cu kernels/m2rnn/m2rnn_bwd.cu kernels/common/gpu_timing.cu kernels/common/gpu_device.cu; do
  $NV -Xptxas -v -c $f -o $B/$(basename $f).o > $B/$(basename $f).log 2>&1 & pids+=($!)
done
for f in kernels/m2rnn/m2rnn_ref.cpp kernels/m2rnn/ops_m2rnn.cpp kernels/common/metrics.cpp kernels/common/host_rng.cpp \
         kernels/common/npy.cpp kernels/registry/op_registry.cpp tests/common/test_main.cpp tests/common/test_paths.cpp \
         tests/kernels/m2rnn/test_m2rnn_ref.cpp tests/kernels/m2rnn/test_m2rnn_gpu.cpp tests/kernels/m2rnn/m2rnn_bench.cpp; do
  $NV -DMEGACPP_TEST_SOURCE_DIR=\"$PWD\" -c $f -o $B/$(basename $f).o > $B/$(basename $f).log 2>&1 & pids+=($!)
done
fail=0; for p in "${pids[@]}"; do wait $p || fail=1; done
cat $B/*.log > "$OUT/build.log"
if [ $fail = 1 ]; then echo "BUILD FAILED"; grep -B2 -A6 -E "error" "$OUT/build.log" | head -60; exit 1; fi
COMMON="$B/metrics.cpp.o $B/host_rng.cpp.o $B/npy.cpp.o $B/op_registry.cpp.o $B/gpu_timing.cu.o $B/gpu_device.cu.o"
FAM="$B/m2rnn_fwd.cu.o $B/m2rnn_bwd.cu.o $B/m2rnn_ref.cpp.o $B/ops_m2rnn.cpp.o"
L="$LIBS -lcudnn -lcublas -lcublasLt -lnccl"
$NV -o $B/test_m2rnn_ref $B/test_m2rnn_ref.cpp.o $B/test_main.cpp.o $B/test_paths.cpp.o $FAM $COMMON -lgtest $L &&
$NV -o $B/test_m2rnn_gpu $B/test_m2rnn_gpu.cpp.o $B/test_main.cpp.o $B/test_paths.cpp.o $FAM $COMMON -lgtest $L &&
$NV -o $B/m2rnn_bench $B/m2rnn_bench.cpp.o $FAM $COMMON $L || { echo LINK FAILED; exit 1; }
echo "build ok ($(( $(date +%s) - T0 )) s)"
grep -E "Compiling entry|registers|spill" "$OUT/build.log" | grep -B1 -A1 m2rnn | grep -E "registers|spill" | head -12
for o in m2rnn_fwd m2rnn_bwd; do
  /usr/local/cuda/bin/cuobjdump --dump-sass $B/$o.cu.o > "$B/$o.sass" 2>/dev/null
  awk '/Function :/{f=$3} /HMMA/{h[f]++} /MOVM/{m[f]++} /MUFU/{u[f]++} /SHFL/{s[f]++} /LDL|STL/{l[f]++} END{for(k in h) printf "%5d HMMA %4d MOVM %4d MUFU %4d SHFL %3d LDL/STL  %s\n", h[k], m[k], u[k], s[k], l[k], substr(k,1,90)}' "$B/$o.sass"
done
cat $B/m2rnn_fwd.sass $B/m2rnn_bwd.sass > "$OUT/sass.txt"
export MEGACPP_SOURCE_DIR=$PWD
if [ "$MODE" != bench ]; then
  $B/test_m2rnn_ref 2>&1 | tail -3
  timeout 200 $B/test_m2rnn_gpu 2>&1 | tee "$OUT/gpu_tests.log" | grep -vE "^\[ RUN|^\[       OK" | tail -150
fi
if [ "$MODE" != tests ]; then
  timeout 120 $B/m2rnn_bench --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | head -10
fi
if [ "$MODE" = all ] && command -v ncu >/dev/null; then  # stall reasons of one launch of each optimised kernel
  for k in fwd bwd; do
    timeout 60 ncu --clock-control none --kernel-name-base function --kernel-name "regex:^m2rnn_${k}_kernel$" \
      --launch-count 1 --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      $B/m2rnn_bench --iters 1 --warmup 0 2 4096 44 64 > "$OUT/ncu_$k.txt" 2>&1 || echo "ncu $k failed"
    grep -E "Issued Warp|No Eligible|Executed Ipc|Warp Cycles Per Issued" "$OUT/ncu_$k.txt" | head -6
    grep -E "issue_stalled" "$OUT/ncu_$k.txt" | awk '$NF+0 > 0.05' | sort -k3 -g -r | head -10
  done
fi
echo "total $(( $(date +%s) - T0 )) s"
