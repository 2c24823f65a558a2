#!/usr/bin/env bash
# Attention family on the GPU machine, in one call: build (only our targets), CPU + GPU tests, SASS summary,
# then the speed bar side by side with torch SDPA (cuDNN and flash backends). Tables go to stdout and $OUT.
# Usage (device tool): bash tools/device/attention.sh [tests|bench|all]   (default all)
# Env: MEGACPP_ATTN_AB=0 (no A/B of the alternative native configs), MEGACPP_ATTN_AB_FWD_CFGS / _BWD_CFGS (digits,
# default "12" / "1"), MEGACPP_ATTN_TEST_FILTER / _TEST_TIMEOUT / _TEST_LINES, MEGACPP_ATTN_BENCH_TIMEOUT,
# MEGACPP_ATTN_BLOCK=1 (also build and run test_cuda_A's CudaAttention.* tests).
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-/tmp/attn_out}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch;print('torch',torch.__version__,'cudnn',torch.backends.cudnn.version())" 2>/dev/null
ls /usr/lib/x86_64-linux-gnu/libcudnn.so* /usr/local/cuda/lib64/libcudnn.so* /usr/local/cuda/lib64/libnvrtc* 2>/dev/null | head -5
T0=$(date +%s)
BIN=build-dev/tests/kernels/attention
if cmake -S . -B build-dev -G Ninja -DMEGACPP_PTXAS_VERBOSE=ON > "$OUT/build.log" 2>&1 &&
   ninja -C build-dev -j16 test_attention_ref test_attention_gpu test_wgmma_sm90 >> "$OUT/build.log" 2>&1; then
  echo "build ok ($(( $(date +%s) - T0 )) s)"
else
  echo "cmake build failed ($(( $(date +%s) - T0 )) s); tail:"; tail -20 "$OUT/build.log"
  echo "falling back to direct nvcc"
  BIN=build-nvcc; mkdir -p $BIN
  NV="/usr/local/cuda/bin/nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -I. -DMEGACPP_WITH_CUDA=1"
  $NV -Xptxas -v -DMEGACPP_TEST_SOURCE_DIR=\"$PWD\" -o $BIN/test_attention_gpu \
    kernels/attention/attention_native.cu kernels/attention/attention_native_fwd_sm90.cu \
    kernels/attention/attention_native_bwd_sm90.cu kernels/attention/attention_cudnn.cpp kernels/attention/attention_dispatch.cpp \
    kernels/attention/attention_ref.cpp kernels/attention/ops_attention.cpp kernels/common/metrics.cpp \
    kernels/common/host_rng.cpp kernels/common/npy.cpp kernels/registry/op_registry.cpp kernels/common/gpu_timing.cu \
    kernels/common/gpu_device.cu tests/common/test_main.cpp tests/common/test_paths.cpp \
    tests/kernels/attention/test_attention_gpu.cpp -lgtest -lcudnn -lcublas -lcublasLt -lnccl > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
fi
grep -E "Compiling entry|registers|spill" "$OUT/build.log" | sed 's/_ZN7megacpp4attn[0-9]*_GLOBAL__N__[0-9a-f_]*attention_native_cu_[0-9a-f]*//' > "$OUT/ptxas.txt"
OBJ=$(find build-dev -name 'attention_native.cu.o' 2>/dev/null | head -1)
if [ -n "$OBJ" ] && command -v cuobjdump >/dev/null; then
  echo "SASS per kernel: HMMA / HGMMA / LDSM / LDL+STL / MUFU.EX2 counts"
  for O in $OBJ $(find build-dev -name 'attention_native_*sm90.cu.o' 2>/dev/null); do
    cuobjdump --dump-sass "$O" | awk '/Function :/{f=$3; seen[f]=1} /HMMA/{h[f]++} /HGMMA/{g[f]++} /LDL|STL/{l[f]++} /LDSM/{s[f]++} /MUFU.EX2/{e[f]++} END{for(k in seen) printf "%5d HMMA %4d HGMMA %4d LDSM %3d LDL/STL %4d EX2  %s\n", h[k], g[k], s[k], l[k], e[k], k}' \
      | sed 's/_ZN7megacpp4attn[0-9]*_GLOBAL__N__[0-9a-f_]*attention_native[a-z0-9_]*_cu_[0-9a-f]*//'
  done
fi
if [ "$MODE" != bench ]; then
  [ -x $BIN/test_attention_ref ] && $BIN/test_attention_ref 2>&1 | tail -3
  W=build-dev/tests/kernels/common/test_wgmma_sm90
  [ -x $W ] && timeout 60 $W 2>&1 | tee "$OUT/wgmma_unit.log" | grep -E "^wgmma|FAIL|PASSED|SKIPPED|Failure" | tail -16
  CUDNN_LOGLEVEL_DBG=${CUDNN_LOGLEVEL_DBG:-0} timeout ${MEGACPP_ATTN_TEST_TIMEOUT:-200} $BIN/test_attention_gpu \
    --gtest_filter=${MEGACPP_ATTN_TEST_FILTER:--AttnBench.*} 2>&1 \
    | tee "$OUT/gpu_tests.log" | grep -E "FAIL|PASSED|SKIPPED|cudnn vs native|wgmma|^(O|LSE|dQ|dK|dV) |Failure|Expected|which is" | tail -${MEGACPP_ATTN_TEST_LINES:-60}
fi
if [ "$MODE" != tests ]; then
  MEGACPP_ATTN_AB=${MEGACPP_ATTN_AB:-1} MEGACPP_ATTN_BENCH=1 MEGACPP_ATTN_BENCH_OUT="$OUT/ours.json" timeout ${MEGACPP_ATTN_BENCH_TIMEOUT:-150} $BIN/test_attention_gpu \
    --gtest_filter=AttnBench.* 2>&1 | tee "$OUT/bench.log" | grep -vE "^\[ RUN|^\[       OK|^\[==|^\[--|^Note" | tail -30
  PYTHONUNBUFFERED=1 timeout 150 python3 tools/device/attention_torch.py --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log" | tail -16
  [ -f "$OUT/ours.json" ] && [ -f "$OUT/torch.json" ] && python3 tools/device/attention_compare.py "$OUT/ours.json" "$OUT/torch.json" | tee "$OUT/ratios.txt"
fi
if [ "${MEGACPP_ATTN_BLOCK:-0}" = 1 ]; then  # the A letter of the CUDA training backend on the native path too
  if timeout ${MEGACPP_ATTN_BLOCK_BUILD_TIMEOUT:-150} ninja -C build-dev -j16 test_cuda_A > "$OUT/blockbuild.log" 2>&1; then
    timeout ${MEGACPP_ATTN_BLOCK_TIMEOUT:-100} build-dev/tests/engine/cuda/test_cuda_A --gtest_filter='CudaAttention.*' \
      > "$OUT/test_cuda_A.log" 2>&1
    echo "test_cuda_A rc=$?"; grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure" "$OUT/test_cuda_A.log" | head -20
  else
    echo "test_cuda_A build failed:"; grep -E "error|FAILED" "$OUT/blockbuild.log" | head -8
  fi
fi
# The device tool returns at most 8 files: every log in one archive, the large ones removed.
(cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz ./* 2>/dev/null && rm -f build.log torch.log wgmma_unit.log blockbuild.log ptxas.txt bench.log)
echo "total $(( $(date +%s) - T0 )) s"
