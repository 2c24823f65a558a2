#!/usr/bin/env bash
# tools/device/mimo.sh — Mamba-3 MIMO kernels on the GPU machine in one call (device tool `run`, repository root):
#   1. CMake build (only the mimo family: -DMEGACPP_ONLY_FAMILIES=mimo) of test_mimo_gpu, mimo_bench and megacpp;
#   2. ptxas resource lines and a SASS summary (HMMA / LDSM / LDGSTS / BAR / LDL+STL per kernel);
#   3. the GPU gate (tests/kernels/mimo/test_mimo_gpu: 14 shapes vs the float64 reference, determinism, PsiV);
#   4. benches: `megacpp bench --kernel mimo_fwd|mimo_bwd_fwd|mimo_bwd_bwd` at the issue-3 bar shape
#      (B=2 S=4096 H=112 G=8 N=128 P=64 R=4 chunk=16) and the 280M training shape (H=48 G=2 N=64).
# A/B mode: if build-mimo-orig/kernels/mimo/ holds a baseline copy of changed mimo files (an ignored folder: pass it
# in the tool's carry), a second tree (the repository with those files overlaid) is built too, and mimo_bench of
# baseline and candidate runs interleaved (A B A B) at both shapes in this same call; each line is the median of
# 20 CUDA-event runs after warm-up (OpDef::bench, the same code path as `megacpp bench`).
# MIMO_BASE_GATE=1 (A/B mode) also builds and runs the baseline tree's test_mimo_gpu.
# The candidate's mimo_fwd / mimo_bwd_fwd are also timed with the wgmma chunk loop switched off
# (MEGACPP_MIMO_SM90=0, lines "MMA"): the mma.sync kernels of the same binary (v12; mimo_bwd_bwd too since v13).
# Profiling (v7): MIMO_PROF=1 adds `ncu --set full --import-source yes` on one launch each, at the bar shape, of the
# kernels named in MIMO_PROF_LIST (default "fwd_new fwd_base bwdbwd"; also "bwdbwd_base", "sm90_fwd", "sm90_bwdfwd",
# "sm90_bwdbwd" (the wgmma kernels); *_base = the A/B
# baseline tree), exported as text (details page; source page per SASS instruction, CSV) into the log tarball.
# MIMO_NO_MEGACPP=1 skips the megacpp build and its benches (mimo_bench runs the same OpDef::bench).
# Output: the device tool returns at most 8 files, so the logs go to one tarball $OUT/mimo_logs.tgz and the tables
# to $OUT/summary.txt (also on stdout).
# Usage: bash tools/device/mimo.sh [all|tests|bench|prof]   (prof: build + MIMO_PROF only)      Output under $OUT (default /tmp/mimo_out).
set -uo pipefail
MODE=${1:-all}
FINAL=${OUT:-/tmp/mimo_out}; mkdir -p "$FINAL"
OUT=/tmp/mimo_logs; rm -rf "$OUT"; mkdir -p "$OUT"
exec > >(tee -a "$FINAL/summary.txt") 2>&1
pack() { tar -C /tmp -czf "$FINAL/mimo_logs.tgz" mimo_logs 2>/dev/null; }
trap pack EXIT
cd "$(dirname "$0")/../.."
ROOT=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
T0=$(date +%s)
CFG="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMEGACPP_PTXAS_VERBOSE=ON -DMEGACPP_ONLY_FAMILIES=mimo"
AB=0
if [ -d build-mimo-orig/kernels/mimo ]; then
  AB=1
  BASE=/tmp/mimo_base_src; rm -rf $BASE; mkdir -p $BASE
  tar --exclude='./build*' --exclude='./.git' --exclude='./runs' --exclude='./data_cache' -cf - . | tar -C $BASE -xf -
  cp build-mimo-orig/kernels/mimo/* $BASE/kernels/mimo/
  ( cmake -S $BASE -B $BASE/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEGACPP_ONLY_FAMILIES=mimo > "$OUT/base_cfg.log" 2>&1 &&
    ninja -C $BASE/build -j6 mimo_bench $([ "${MIMO_BASE_GATE:-0}" = 1 ] && echo test_mimo_gpu) > "$OUT/base_build.log" 2>&1 ) & BPID=$!
fi
cmake -S . -B build-dev $CFG > "$OUT/cfg.log" 2>&1 || { echo "CONFIGURE FAILED"; tail -40 "$OUT/cfg.log"; exit 1; }
TARGETS="test_mimo_gpu mimo_bench"; [ "${MIMO_NO_MEGACPP:-0}" = 1 ] || TARGETS="$TARGETS megacpp"
ninja -C build-dev -j12 -k 0 $TARGETS > "$OUT/build.log" 2>&1
[ -x build-dev/tests/kernels/mimo/test_mimo_gpu ] && [ -x build-dev/tests/kernels/mimo/mimo_bench ] ||
  { echo "BUILD FAILED"; grep -B2 -A8 -E "error|FAILED" "$OUT/build.log" | head -60; exit 1; }
[ -x build-dev/megacpp ] || echo "megacpp did not build (see build.log); benches use mimo_bench only"
if [ $AB = 1 ]; then wait $BPID || { echo "BASELINE BUILD FAILED"; tail -30 "$OUT/base_cfg.log" "$OUT/base_build.log"; AB=0; }; fi
echo "build ok ($(( $(date +%s) - T0 )) s)"
grep -E "Compiling entry|registers|spill" "$OUT/build.log" | grep -A2 "mimo" | grep -E "entry|registers|spill" |
  sed 's/ptxas info *: //' | sed 's/Compiling entry function //' | head -24
for o in mimo_fwd mimo_bwd_fwd mimo_bwd_bwd mimo_chunk_sm90 mimo_bwd_bwd_sm90; do
  f=$(find build-dev/kernels/mimo -name "$o.cu.o" | head -1)
  cuobjdump --dump-sass "$f" > "$OUT/$o.sass" 2>/dev/null
  awk '/Function :/{f=$3; n[f]=1} /HMMA/{h[f]++} /HGMMA/{w[f]++} /LDSM/{m[f]++} /LDGSTS/{g[f]++} /BAR/{u[f]++} /LDL|STL/{l[f]++}
       END{for(k in n) printf "%5d HMMA %4d HGMMA %4d LDSM %3d LDGSTS %4d BAR %3d LDL/STL  %s\n", h[k], w[k], m[k], g[k], u[k], l[k], substr(k,1,72)}' "$OUT/$o.sass"
done
# v12: where the wgmma chunk loop's local-memory accesses sit: LDL/STL count per BAR-delimited segment (R=4 instances)
awk '/Function :/{f=$3; seg=0} f ~ /mimo_chunk_sm90_kernelILi128ELb[01]ELi4E/ { if ($0 ~ /BAR/) seg++; if ($0 ~ /LDL|STL/) c[f" seg "seg]++ }
     END{for(k in c) printf "  LDL/STL %3d  %s\n", c[k], substr(k, index(k,"kernelI"), 60)}' "$OUT/mimo_chunk_sm90.sass" | sort -k3
export MEGACPP_SOURCE_DIR=$ROOT
if [ "$MODE" != bench ] && [ "$MODE" != prof ]; then
  timeout 150 build-dev/tests/kernels/mimo/test_mimo_gpu 2>&1 | tee "$OUT/gpu_tests.log" |
    grep -E "GATE|PSIV|OK \]|FAILED|PASSED|Failure" | head -40
fi
if [ "$MODE" != bench ] && [ $AB = 1 ] && [ "${MIMO_BASE_GATE:-0}" = 1 ]; then  # the baseline tree's gate too
  echo "baseline gate:"
  timeout 150 $BASE/build/tests/kernels/mimo/test_mimo_gpu 2>&1 | tee "$OUT/base_gpu_tests.log" |
    grep -E "PSIV|OK \]|FAILED|PASSED|Failure" | head -20
fi
if [ "$MODE" != tests ] && [ "$MODE" != prof ]; then
  BAR="2 4096 112 8 128 64 4 16"; TRAIN="2 4096 48 2 64 64 4 16"
  NEW=build-dev/tests/kernels/mimo/mimo_bench
  for rep in 1 2; do
    for shape in "$BAR" "$TRAIN"; do
      if [ $AB = 1 ]; then
        timeout 60 $BASE/build/tests/kernels/mimo/mimo_bench $shape 0 mimo_fwd mimo_bwd_fwd mimo_bwd_bwd 2>&1 |
          grep -E "^BENCH" | sed "s/^BENCH/BASE$rep/" | cut -c1-150 | tee -a "$OUT/ab.log"
      fi
      timeout 60 $NEW $shape 0 mimo_fwd mimo_bwd_fwd mimo_bwd_bwd 2>&1 |
        grep -E "^BENCH|KERNEL" | sed "s/^BENCH/NEW$rep /" | cut -c1-150 | tee -a "$OUT/ab.log"
      # v12: the same binary with the wgmma chunk loop switched off (mma.sync mimo_fwd / mimo_bwd_fwd)
      MEGACPP_MIMO_SM90=0 timeout 60 $NEW $shape 0 mimo_fwd mimo_bwd_fwd mimo_bwd_bwd 2>&1 |
        grep -E "^BENCH" | sed "s/^BENCH/MMA$rep /" | cut -c1-150 | tee -a "$OUT/ab.log"
    done
  done
  [ "${MIMO_NO_MEGACPP:-0}" != 1 ] && [ -x build-dev/megacpp ] && for hgn in "112 8 128" "48 2 64"; do
    set -- $hgn
    for k in mimo_fwd mimo_bwd_fwd mimo_bwd_bwd; do
      timeout 60 build-dev/megacpp bench --kernel $k --B 2 --S 4096 --H $1 --G $2 --N $3 --P 64 --R 4 --chunk 16 \
        --receipts-dir "$OUT/receipts" > "$OUT/megacpp_bench_${k}_H$1.log" 2>&1
      echo "megacpp bench --kernel $k H=$1 G=$2 N=$3:"; grep -iE "median" "$OUT/megacpp_bench_${k}_H$1.log" | head -2 | cut -c1-200
    done
  done
fi
if [ "${MIMO_PROF:-0}" = 1 ]; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  echo "ncu: $NCU ($($NCU --version 2>/dev/null | tail -1))"
  BAR="2 4096 112 8 128 64 4 16"
  mkdir -p /tmp/mimo_reps
  prof() {  # name binary op kernel-regex
    timeout 100 $NCU --set full --import-source yes -k "regex:$4" -c 1 -f -o "/tmp/mimo_reps/$1" $2 $BAR 0 $3 > "$OUT/$1_ncu.log" 2>&1
    $NCU -i "/tmp/mimo_reps/$1.ncu-rep" --page details > "$OUT/$1_details.txt" 2>&1
    $NCU -i "/tmp/mimo_reps/$1.ncu-rep" --page source --csv --print-source sass > "$OUT/$1_sass.csv" 2>&1
    $NCU -i "/tmp/mimo_reps/$1.ncu-rep" --page source --csv --print-source cuda > "$OUT/$1_cuda.csv" 2>&1
    echo "== ncu $1: $(grep -E "^ +Duration|Registers Per|Achieved Occupancy|Executed Ipc A|Issued Warp Per|No Eligible" "$OUT/$1_details.txt" | awk '{$1=$1};1' | tr '\n' ';' | cut -c1-400)"
  }
  NB=build-dev/tests/kernels/mimo/mimo_bench
  for p in ${MIMO_PROF_LIST:-fwd_new fwd_base bwdbwd}; do
    case $p in
      fwd_new) prof fwd_new $NB mimo_fwd mimo_fwd_kernel ;;
      sm90_fwd) prof sm90_fwd $NB mimo_fwd mimo_chunk_sm90_kernel ;;
      sm90_bwdfwd) prof sm90_bwdfwd $NB mimo_bwd_fwd mimo_chunk_sm90_kernel ;;
      sm90_bwdbwd) prof sm90_bwdbwd $NB mimo_bwd_bwd mimo_bwd_bwd_sm90_kernel ;;
      fwd_base) [ $AB = 1 ] && prof fwd_base $BASE/build/tests/kernels/mimo/mimo_bench mimo_fwd mimo_fwd_kernel ;;
      bwdbwd) prof bwdbwd $NB mimo_bwd_bwd mimo_bwd_bwd_kernel ;;
      bwdbwd_base) [ $AB = 1 ] && prof bwdbwd_base $BASE/build/tests/kernels/mimo/mimo_bench mimo_bwd_bwd mimo_bwd_bwd_kernel ;;
    esac
  done
  ls -la /tmp/mimo_reps
fi
echo "total $(( $(date +%s) - T0 )) s"
