#!/usr/bin/env bash
# tools/device/moe.sh — build the MoE targets on the GPU machine, run the CPU and GPU tests, bench both
# dispatch paths at the NAM56R default shape. Writes logs and bench JSON under $OUT (default ./moe_out).
# Usage (repo root): bash tools/device/moe.sh   (at most 8 files under $OUT: the device tool's limit)
set -u
OUT=${OUT:-$PWD/moe_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv | tee "$OUT/bench.log"
B=build-dev
T0=$(date +%s)
if cmake -S . -B $B -G Ninja -DMEGACPP_PTXAS_VERBOSE=ON >"$OUT/build.log" 2>&1 &&
   ninja -C $B -j16 test_moe_ref test_moe_gpu moe_bench >>"$OUT/build.log" 2>&1; then
  REF=$B/tests/kernels/moe/test_moe_ref; GPU=$B/tests/kernels/moe/test_moe_gpu; BENCH=$B/tests/kernels/moe/moe_bench
else
  echo "cmake/ninja failed (see build.log): building directly with nvcc" | tee -a "$OUT/build.log"
  tail -20 "$OUT/build.log"
  mkdir -p $B/moe_direct; D=$B/moe_direct
  NV="/usr/local/cuda/bin/nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -I. -DMEGACPP_WITH_CUDA=1"
  COMMON="kernels/common/metrics.cpp kernels/common/host_rng.cpp kernels/common/npy.cpp kernels/registry/op_registry.cpp kernels/common/gpu_timing.cu kernels/common/gpu_device.cu kernels/moe/moe_ref.cpp kernels/moe/ops_moe.cpp kernels/moe/moe.cu"
  LIBS="-lcublas -lcublasLt -lcudnn -lnccl"
  $NV $COMMON tests/kernels/moe/moe_bench.cpp $LIBS -o $D/moe_bench >>"$OUT/build.log" 2>&1 || { echo "direct build failed"; tail -30 "$OUT/build.log"; exit 1; }
  $NV -DMEGACPP_TEST_SOURCE_DIR=\"$PWD\" $COMMON tests/common/test_main.cpp tests/common/test_paths.cpp tests/kernels/moe/test_moe_gpu.cpp $LIBS -lgtest -o $D/test_moe_gpu >>"$OUT/build.log" 2>&1
  $NV kernels/moe/moe_ref.cpp kernels/common/host_rng.cpp tests/kernels/moe/test_moe_ref.cpp -lgtest -lgtest_main -o $D/test_moe_ref >>"$OUT/build.log" 2>&1
  REF=$D/test_moe_ref; GPU=$D/test_moe_gpu; BENCH=$D/moe_bench
fi
echo "build: $(( $(date +%s) - T0 )) s"
grep -A2 "Compiling entry function '_ZN7megacpp3moe" "$OUT/build.log" | grep -E "registers|spill" > "$OUT/ptxas_moe.txt" 2>/dev/null
$REF 2>&1 | tail -3 | tee "$OUT/test_ref.log"
$GPU 2>&1 > "$OUT/test_gpu.log"; echo "test_moe_gpu rc=$?"
grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|PASSED|FAILED" "$OUT/test_gpu.log" | head -20
# Bench at the default shape (NAM56R: T=16384 H=3584 E=16 K=4 F=896 S=1024), every variant, 30 timed runs.
$BENCH --variants standard,fused,fused-1s,fused-2s,fused-8s,fused-grouped,fused-serial,standard-serial --iters 30 --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.log"
# Smaller micro-batch (T=4096) and SwiGLU routed experts, both paths.
$BENCH --variants standard,fused --tokens 4096 --iters 30 --json "$OUT/bench_t4096.json" 2>&1 | tee -a "$OUT/bench.log"
$BENCH --variants standard,fused --swiglu 1 --iters 30 --json "$OUT/bench_swiglu.json" 2>&1 | tee -a "$OUT/bench.log"
echo "total: $(( $(date +%s) - T0 )) s"
