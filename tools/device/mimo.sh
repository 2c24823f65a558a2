#!/usr/bin/env bash
# tools/device/mimo.sh — Mamba-3 MIMO kernels on the GPU machine in one call: build only this family with nvcc
# directly (the device image lacks the project's other system packages; nlohmann/gtest headers + libgtest.a
# travel in .mimo_dev), SASS summary, GPU-vs-reference tests, then the bench table.
# Usage (device tool, carry [".mimo_dev"]): bash tools/device/mimo.sh [tests|bench|all|prof]  (prof = all + ncu)
# Prepare .mimo_dev here once: mkdir -p .mimo_dev/include .mimo_dev/lib && cp -r /usr/include/nlohmann
#   /usr/include/gtest .mimo_dev/include && cp /usr/lib/x86_64-linux-gnu/libgtest.a .mimo_dev/lib
#   (and add /.mimo_dev/ to .git/info/exclude).
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-/tmp/mimo_out}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
T0=$(date +%s)
B=build-mimo-dev; mkdir -p $B
INC="-I. -I.mimo_dev/include"; LIBS="-L.mimo_dev/lib"
for d in $(python3 -c "import os,importlib
for m in ('nvidia.cudnn','nvidia.nccl','nvidia.cublas'):
  try:
    p=importlib.import_module(m); print(list(p.__path__)[0])
  except Exception: pass" 2>/dev/null); do
  [ -d "$d/include" ] && INC="$INC -I$d/include"; [ -d "$d/lib" ] && LIBS="$LIBS -L$d/lib -Xlinker -rpath=$d/lib"
done
NV="/usr/local/cuda/bin/nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo $INC -DMEGACPP_WITH_CUDA=1"
pids=()
for f in kernels/mimo/mimo_bwd_bwd.cu kernels/mimo/mimo_fwd.cu kernels/mimo/mimo_bwd_fwd.cu kernels/mimo/mimo_prep.cu \
         kernels/common/gpu_timing.cu kernels/common/gpu_device.cu; do
  $NV -Xptxas -v -c $f -o $B/$(basename $f).o > $B/$(basename $f).log 2>&1 & pids+=($!)
done
for f in kernels/mimo/mimo_ref.cpp kernels/mimo/mimo_prep_ref.cpp kernels/mimo/ops_mimo.cpp kernels/common/metrics.cpp \
         kernels/common/host_rng.cpp kernels/common/npy.cpp kernels/registry/op_registry.cpp tests/common/test_main.cpp \
         tests/common/test_paths.cpp tests/kernels/mimo/test_mimo_gpu.cpp tests/kernels/mimo/mimo_bench_main.cpp; do
  $NV -DMEGACPP_TEST_SOURCE_DIR=\"$PWD\" -c $f -o $B/$(basename $f).o > $B/$(basename $f).log 2>&1 & pids+=($!)
done
fail=0; for p in "${pids[@]}"; do wait $p || fail=1; done
cat $B/*.log > "$OUT/build.log"
if [ $fail = 1 ]; then echo "BUILD FAILED"; grep -B2 -A6 -E "error" "$OUT/build.log" | head -60; exit 1; fi
COMMON="$B/metrics.cpp.o $B/host_rng.cpp.o $B/npy.cpp.o $B/op_registry.cpp.o $B/gpu_timing.cu.o $B/gpu_device.cu.o"
FAM="$B/mimo_fwd.cu.o $B/mimo_bwd_fwd.cu.o $B/mimo_bwd_bwd.cu.o $B/mimo_prep.cu.o $B/mimo_ref.cpp.o $B/mimo_prep_ref.cpp.o $B/ops_mimo.cpp.o"
L="$LIBS -lcudnn -lcublas -lcublasLt -lnccl"
$NV -o $B/test_mimo_gpu $B/test_mimo_gpu.cpp.o $B/test_main.cpp.o $B/test_paths.cpp.o $FAM $COMMON -lgtest $L &&
$NV -o $B/mimo_bench $B/mimo_bench_main.cpp.o $FAM $COMMON $L || { echo LINK FAILED; exit 1; }
echo "build ok ($(( $(date +%s) - T0 )) s)"
grep -E "Compiling entry|registers|spill" "$OUT/build.log" | grep -A2 "mimo" | grep -E "entry|registers|spill" | sed 's/ptxas info *: //' | head -16
for o in mimo_fwd mimo_bwd_fwd mimo_bwd_bwd; do
  /usr/local/cuda/bin/cuobjdump --dump-sass $B/$o.cu.o > "$B/$o.sass" 2>/dev/null
  awk '/Function :/{f=$3} /HMMA/{h[f]++} /LDSM/{m[f]++} /BAR/{u[f]++} /LDL|STL/{l[f]++} END{for(k in h) printf "%5d HMMA %4d LDSM %4d BAR %3d LDL/STL  %s\n", h[k], m[k], u[k], l[k], substr(k,1,70)}' "$B/$o.sass"
done
export MEGACPP_SOURCE_DIR=$PWD
if [ "$MODE" != bench ]; then
  timeout 150 $B/test_mimo_gpu 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "GATE|PSIV|OK \]|FAILED|PASSED|Failure|tensor|rel|^ *[a-z_]+ +[0-9]" | head -80
fi
if [ "$MODE" != tests ]; then
  # the issue's speed-bar shape, then the seeds' default bench shape
  timeout 100 $B/mimo_bench 2 4096 112 8 128 64 4 16 0 mimo_fwd mimo_bwd_fwd mimo_bwd_bwd mimo_all 2>&1 | tee "$OUT/bench_bar.log"
  timeout 60 $B/mimo_bench 2 4096 112 8 128 64 4 16 1 mimo_all 2>&1 | tee "$OUT/bench_bar_psiv.log" | grep BENCH
  timeout 60 $B/mimo_bench 8 8192 16 1 64 64 4 16 0 mimo_all 2>&1 | tee "$OUT/bench_default.log" | grep BENCH
fi
if [ "$MODE" = prof ]; then
  for k in mimo_fwd mimo_bwd_bwd; do
    timeout 60 /usr/local/cuda/bin/ncu -k regex:"${k}_kernel" --launch-skip 2 --launch-count 1 --set full \
      --print-details all $B/mimo_bench 2 4096 112 8 128 64 4 16 0 $k > "$OUT/ncu_$k.txt" 2>&1
    grep -E "Duration|Issued Warp|No Eligible|Eligible Warps|Warp Cycles Per Issued|Achieved Occ|Executed Ipc A|stalled|Stall" "$OUT/ncu_$k.txt" | cut -c1-220 | head -30
  done
fi
echo "total $(( $(date +%s) - T0 )) s"
