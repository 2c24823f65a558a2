#!/usr/bin/env bash
# tools/device/multigpu.sh — issue 9's multi-GPU runs in one script, one markdown table each, on the G GPUs
# of this machine (G = GPUS or every GPU nvidia-smi lists):
#   comm    the four NCCL collectives (`megacpp bench --kernel allreduce|allgather|reducescatter|alltoall`)
#           over 1 MiB … 1 GiB on G GPUs: time, algBw, busBw (nccl-tests), % of NVLink 4's 450 GB/s.
#   dp      data-parallel scaling of recipes/md300m.yaml at 1, 2, 4, 8 GPUs (those ≤ G): one process per GPU
#           started with the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
#           MASTER_PORT; docs/launch.md), weak scaling (DP_MICRO micro-batches per rank per step), tokens/s
#           per GPU, scaling efficiency vs 1 GPU, exposed communication per step (receipt: training.distributed).
#   parity  TP=2, TP=4, EP=4, EP=8, TP=2×EP=4 on recipes/hybrid300m.yaml (all five letters) against the same
#           recipe and seed on one GPU, and NAM56R (recipes/nam56r.yaml, EP=8) on 8 GPUs. The CUDA backend
#           refuses TP/EP today: the runs are launched anyway and the refusal is recorded in the table. A layout
#           that needs more GPUs than G is listed as NOT RUN with that reason (never skipped silently).
#   kill    2 ranks of md300m with checkpoints; rank 1 is killed with SIGKILL mid-run; rank 0 must exit within
#           parallel.timeout_s (+ slack) and its receipt should name the failed rank; then the run resumes from
#           its last checkpoint. Needs G ≥ 2 (recorded as NOT RUN otherwise).
# Usage: bash tools/device/multigpu.sh [all|comm|dp|parity|kill ...]   (default all)
# One device command may run 10 minutes at most: on 8 GPUs split it, e.g. `… multigpu.sh comm dp` then
# `SKIP_BUILD=1 … multigpu.sh parity kill` (each call writes its own $OUT). Measured on 1 H100 (G = 1 path):
# build of megacpp 45 s (16 cores), comm with 4 sizes ~25 s, DP N=1 10 steps 51 s (incl. start-up).
# Environment: OUT (default ./device-out), BUILD_DIR (build-dev), SKIP_BUILD=1, GPUS, COMM_SIZES (bytes list),
# COMM_DTYPE (bf16), COMM_ITERS (20), DP_STEPS (30), DP_MICRO (4), DP_WORLDS ("1 2 4 8"), PARITY_STEPS (20),
# NAM_STEPS (10), KILL_STEPS (40), KILL_AT (15: kill after this many logged steps), KILL_TIMEOUT_S (60),
# TRAIN_TIMEOUT (900 s per launch), MASTER_PORT_BASE (29500).
# Output: $OUT/summary.md (all tables), $OUT/results.jsonl (one record per run), and everything else (logs,
# receipts, bench JSON) packed into $OUT/all.tgz (the device returns only a few files).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUILD_DIR=${BUILD_DIR:-build-dev}
MEGACPP=${MEGACPP:-$ROOT/$BUILD_DIR/megacpp}
export NCCL_NVLS_ENABLE=0  # issue 9: NVLink SHARP (multicast) stays off on the lent machines
WHAT=${*:-all}
want() { [[ " $WHAT " == *" all "* || " $WHAT " == *" $1 "* ]]; }
SUMMARY=$OUT/summary.md
RESULTS=$OUT/results.jsonl
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }
: >"$RESULTS"

G=${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')}
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1
nvidia-smi topo -m >"$OUT/topo.txt" 2>&1
{
  echo "# multigpu.sh on $(hostname) — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "G = $G GPU(s): $(cut -d, -f2 "$OUT/gpu.txt" | sort | uniq -c | tr -s ' ' | paste -sd';')"
  echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)'), NCCL_NVLS_ENABLE=0"
  echo
} >>"$SUMMARY"
if ((G < 1)); then log "no GPU visible (nvidia-smi -L lists none): nothing to run"; exit 1; fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  t0=$(date +%s)
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 || { log "configure FAILED"; tail -30 "$OUT/configure.log" | tee -a "$SUMMARY"; exit 1; }
  ninja -C "$BUILD_DIR" -j"$(nproc)" megacpp >"$OUT/build.log" 2>&1 || { log "build FAILED"; grep -E "error" -A3 "$OUT/build.log" | head -40 | tee -a "$SUMMARY"; exit 1; }
  log "build megacpp: $(($(date +%s) - t0)) s"
fi
[[ -x $MEGACPP ]] || { log "no megacpp executable at $MEGACPP"; exit 1; }

# ---- the report helper: `rep record KEY=VALUE... DIR=run-dir` appends one JSON record; `rep tables` writes
# the markdown tables of every record into summary.md. ----
cat >"$OUT/report.py" <<'PY'
import glob, json, os, re, statistics, sys

RESULTS = os.environ["RESULTS"]

def rank0_receipt(d):
    c = [p for p in glob.glob(os.path.join(d, "*", "receipt.json"))
         if not re.search(r"-rank\d+(-\d+)?$", os.path.dirname(p))]
    return sorted(c, key=os.path.getmtime)[-1] if c else None

def last_error_line(d):
    best = ""
    for f in sorted(glob.glob(os.path.join(d, "rank*.log"))):
        for line in open(f, errors="replace"):
            if re.search(r"error|refus|abort|not |fail|Error|terminate", line):
                best = f"{os.path.basename(f)}: {line.strip()}"
        if best:
            break
    return best

def run_summary(d):
    s = {"dir": d}
    rp = rank0_receipt(d)
    if not rp:
        s["status"] = "no receipt"
        s["message"] = last_error_line(d)
        return s
    r = json.load(open(rp))
    s["receipt"] = os.path.relpath(rp, os.environ["OUT"])
    s["run_dir"] = os.path.dirname(rp)
    s["status"] = r.get("status")
    s["message"] = (r.get("error") or {}).get("message", "")
    t = r.get("training", {}) or {}
    dist = t.get("distributed", {}) or {}
    s["world"] = dist.get("world", 1)
    s["layout"] = {k: dist.get(k) for k in ("dp", "tp", "ep", "zero")} if dist else {"dp": 1, "tp": 1, "ep": 1}
    s["resumed_at_step"] = t.get("resumed_at_step")
    ser = t.get("series", []) or []
    s["steps"] = len(ser)
    if ser:
        s["first_step"] = ser[0].get("step")
        tail = ser[len(ser) // 2:]
        med = lambda k: statistics.median([p[k] for p in tail if p.get(k) is not None]) if any(p.get(k) is not None for p in tail) else None
        s["step_ms"] = med("ms")
        s["tokens_per_s"] = med("tokens_per_s")
        s["tokens_per_s_per_gpu"] = s["tokens_per_s"] / s["world"] if s["tokens_per_s"] else None
        s["tflops"] = med("tflops")  # model TFLOP/s of the whole job (global tokens/s × FLOPs/token)
        s["tflops_per_gpu"] = s["tflops"] / s["world"] if s["tflops"] else None
        s["mfu"] = med("mfu")
        s["mfu_per_gpu"] = s["mfu"] / s["world"] if s["mfu"] is not None else None
        s["losses"] = [p.get("loss") for p in ser]
        s["final_loss"] = ser[-1].get("loss")
    if dist.get("exposed_comm_s") is not None and ser:
        s["exposed_comm_s"] = dist["exposed_comm_s"]
        s["exposed_comm_ms_per_step"] = 1e3 * dist["exposed_comm_s"] / len(ser)
        s["comm"] = (dist.get("per_rank") or [{}])[0].get("comm")
        # per-step communication of every rank from its metrics stream (median of the last half)
        per = []
        for f in sorted(glob.glob(os.path.join(s["run_dir"], "metrics-rank*.jsonl"))):
            rows = [json.loads(l) for l in open(f) if l.strip()]
            rows = rows[len(rows) // 2:]
            if rows:
                per.append(statistics.median([x.get("comm_ms", 0) for x in rows]))
        if per:
            s["comm_ms_per_step_max_rank"] = max(per)
    mem = ((t.get("cuda") or {}).get("memory") or {}).get("peak_device_used_mib")
    s["peak_mem_mib"] = mem
    return s

def record(args):
    rec = {}
    for a in args:
        k, v = a.split("=", 1)
        rec[k] = v
    if "DIR" in rec:
        rec.update(run_summary(rec.pop("DIR")))
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")

def fmt(v, p=1):
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:,.{p}f}"
    return str(v)

def short(m, n=240):
    m = (m or "").replace("|", "/").replace("\n", " ")
    return m if len(m) <= n else m[: n - 1] + "…"

def tables():
    recs = [json.loads(l) for l in open(RESULTS) if l.strip()]
    out = []
    comm = [r for r in recs if r.get("kind") == "comm"]
    if comm:
        out += ["## 1. NCCL collectives (`megacpp bench`, one process driving G GPUs)", "",
                "algBw = bytes/time, busBw = algBw × 2(G−1)/G (allreduce) or (G−1)/G (the others), nccl-tests' convention; "
                "link = NVLink 4 nominal 450 GB/s per direction per GPU (H100/H200 SXM). "
                "With G = 1 NCCL only copies inside one GPU: busBw is 0 and nothing crosses a link.", "",
                "| collective | dtype | G | bytes | median ms | algBw GB/s | busBw GB/s | % of link | status |", "|---|---|---|---|---|---|---|---|---|"]
        for r in comm:
            out.append(f"| {r['coll']} | {r.get('dtype')} | {r.get('gpus','')} | {int(r['bytes']):,} | {fmt(r.get('median_ms'), 4)} | "
                       f"{fmt(r.get('algbw'))} | {fmt(r.get('busbw'))} | {fmt(r.get('pct_link'))} | {short(r.get('status',''), 120)} |")
        out.append("")
    dp = [r for r in recs if r.get("kind") == "dp"]
    if dp:
        base = next((r.get("tokens_per_s_per_gpu") for r in dp if r.get("world") in (1, "1") and r.get("tokens_per_s_per_gpu")), None)
        out += ["## 2. Data-parallel scaling, recipes/md300m.yaml (weak scaling: the same micro-batches per rank)", "",
                "tokens/s from rank 0's receipt (median of the last half of the steps; global tokens per step / step time), "
                "per GPU = / world; efficiency = per-GPU tokens/s ÷ the 1-GPU value (target ≥ 90 % at 8); exposed "
                "communication = training.distributed.exposed_comm_s / steps (the CUDA backend all-reduces after the backward: "
                "all of it is exposed).", "",
                "| GPUs | status | global batch | step ms | tokens/s | tokens/s/GPU | efficiency | exposed comm ms/step | share of step | peak MiB |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in dp:
            tpg = r.get("tokens_per_s_per_gpu")
            eff = 100.0 * tpg / base if (tpg and base) else None
            ec = r.get("exposed_comm_ms_per_step")
            share = 100.0 * ec / r["step_ms"] if (ec is not None and r.get("step_ms")) else None
            st = r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {short(r.get('message'), 160)}"
            out.append(f"| {r.get('n')} | {st} | {r.get('global_batch')} | {fmt(r.get('step_ms'))} | {fmt(r.get('tokens_per_s'), 0)} | "
                       f"{fmt(tpg, 0)} | {fmt(eff)}{' %' if eff else ''} | {fmt(ec, 2)} | {fmt(share)}{' %' if share is not None else ''} | {fmt(r.get('peak_mem_mib'), 0)} |")
        out.append("")
    par = [r for r in recs if r.get("kind") in ("parity", "parity-base", "nam56r")]
    if par:
        base = next((r for r in par if r.get("kind") == "parity-base" and r.get("losses")), None)
        out += ["## 3. Parity (recipes/hybrid300m.yaml, same seed and global batch as the 1-GPU run) and NAM56R", "",
                "bf16 noise: the 1-GPU run's own loss differs from the CPU fp32 run by ~1e-2 relative over the first steps "
                "(docs/perf/train.md); a layout follows the curve when its worst relative loss difference stays in that range.", "",
                "| run | layout | ranks | status / refusal | steps | worst rel. loss diff vs 1 GPU | final loss |", "|---|---|---|---|---|---|---|"]
        for r in par:
            worst = None
            if base and r.get("losses") and r.get("kind") == "parity":
                pairs = [(a, b) for a, b in zip(r["losses"], base["losses"]) if a is not None and b]
                if pairs:
                    worst = max(abs(a - b) / abs(b) for a, b in pairs)
            st = r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {short(r.get('message'))}"
            out.append(f"| {r.get('name')} | {r.get('layout_req')} | {r.get('ranks')} | {st} | {r.get('steps', '—')} | "
                       f"{'%.2e' % worst if worst is not None else '—'} | {fmt(r.get('final_loss'), 4)} |")
        out.append("")
        nam = [r for r in par if r.get("kind") == "nam56r"]
        if nam:
            out += ["NAM56R next to the MegaCpp stack's published 8×H200 numbers (bf16): 289 TFLOP/s per GPU, 29.2 % MFU, "
                    "~9,250 tokens/s per GPU.", "",
                    "| run | status | TFLOP/s per GPU | MFU | tokens/s per GPU | peak MiB (rank 0) |", "|---|---|---|---|---|---|",
                    "| MegaCpp (published) | — | 289 | 29.2 % | ~9,250 | — |"]
            for r in nam:
                mfu = r.get("mfu")  # the trainer's MFU: job TFLOP/s over one GPU's peak → divide by world
                out.append(f"| megacpp {r.get('layout_req')} | {r.get('status')}{': ' + short(r.get('message'), 160) if r.get('status') != 'ok' else ''} | "
                           f"{fmt(r.get('tflops_per_gpu'))} | {fmt(100 * r['mfu_per_gpu'] if r.get('mfu_per_gpu') is not None else None)} | "
                           f"{fmt(r.get('tokens_per_s_per_gpu'), 0)} | {fmt(r.get('peak_mem_mib'), 0)} |")
            out.append("")
    kill = [r for r in recs if r.get("kind") in ("kill", "resume")]
    if kill:
        out += ["## 4. A killed rank and the resume", "",
                "| run | ranks | what happened | rank 0 exit after the kill | within timeout | rank 0 receipt | names the killed rank | resumed from step | final loss |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in kill:
            out.append(f"| {r.get('kind')} | {r.get('ranks')} | {short(r.get('what'), 160)} | {r.get('exit_after_kill_s', '—')} s | {r.get('within_timeout', '—')} | "
                       f"{r.get('status')}: {short(r.get('message'), 200)} | {r.get('names_rank', '—')} | {r.get('resumed_at_step') if r.get('resumed_at_step') is not None else '—'} (series starts at {r.get('first_step', '—')}) | {fmt(r.get('final_loss'), 4)} |")
        out.append("")
    notrun = [r for r in recs if r.get("kind") == "notrun"]
    if notrun:
        out += ["## Not run here", ""] + [f"- {r.get('name')}: {r.get('why')}" for r in notrun] + [""]
    print("\n".join(out))

if __name__ == "__main__":
    {"record": lambda: record(sys.argv[2:]), "tables": tables}[sys.argv[1]]()
PY
export RESULTS OUT
rep() { python3 "$OUT/report.py" "$@"; }
# On any exit (also SIGTERM from an outer `timeout`): the tables of what ran, then pack. Only a few files come
# back from the device: keep summary.md and results.jsonl, put the rest into all.tgz.
finish() {
  trap - EXIT TERM INT
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done  # ranks of an interrupted launch (our own children)
  rep tables >>"$SUMMARY"
  (cd "$OUT" && tar czf /tmp/megacpp-multigpu-all.$$.tgz --exclude=summary.md --exclude=results.jsonl --exclude='*/checkpoints' . &&
    find . -mindepth 1 ! -name summary.md ! -name results.jsonl -delete && mv /tmp/megacpp-multigpu-all.$$.tgz all.tgz)
}
PIDS=()
trap finish EXIT
trap 'log "interrupted (signal)"; exit 143' TERM INT

# ---- launching: WORLD processes, one per GPU, torchrun-style environment (docs/launch.md) ----
PORT=${MASTER_PORT_BASE:-29500}
start_ranks() {  # start_ranks DIR WORLD RECIPE ARGS... — background, PIDS set
  local dir=$1 world=$2 recipe=$3 r
  shift 3
  mkdir -p "$dir"
  PORT=$((PORT + 1))
  PIDS=()
  for ((r = 0; r < world; r++)); do
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
      timeout "${TRAIN_TIMEOUT:-900}" "$MEGACPP" train "$recipe" --set receipts.dir="$dir" "$@" >"$dir/rank$r.log" 2>&1 &
    PIDS+=($!)
  done
  echo "RANK=0..$((world - 1)) WORLD_SIZE=$world MASTER_PORT=$PORT megacpp train $recipe $*" >"$dir/command.txt"
}
RCS=""
wait_ranks() {  # wait for every rank; RCS = "rc0 rc1 ..."
  local p rc
  RCS=""
  for p in "${PIDS[@]}"; do
    wait "$p"
    rc=$?
    RCS+="$rc "
  done
  RCS=${RCS% }
}
launch() {  # launch NAME WORLD RECIPE ARGS... — start WORLD ranks and wait for all
  local name=$1 world=$2 recipe=$3
  shift 3
  local t0
  t0=$(date +%s)
  start_ranks "$OUT/runs/$name" "$world" "$recipe" "$@"
  wait_ranks
  log "$name: $world rank(s), rc [$RCS], $(($(date +%s) - t0)) s"
}

# ---- 1. collectives ----
if want comm; then
  SIZES=${COMM_SIZES:-"1048576 4194304 16777216 67108864 268435456 1073741824"}
  mkdir -p "$OUT/comm"
  for coll in allreduce allgather reducescatter alltoall; do
    first=1
    for b in $SIZES; do
      f=$OUT/comm/$coll-$b.json
      chk=--no-check
      ((first)) && chk=""  # the correctness check (all GPUs vs the float64 reference) once per collective
      first=0
      "$MEGACPP" bench --kernel "$coll" --bytes "$b" --gpus "$G" --flag dtype="${COMM_DTYPE:-bf16}" --iters "${COMM_ITERS:-20}" \
        --json $chk --receipts-dir "$OUT/comm/receipts" >"$f" 2>"$OUT/comm/$coll-$b.err"
      rc=$?
      python3 - "$f" "$coll" "$b" "$rc" "$OUT/comm/$coll-$b.err" <<'PY'
import json, os, subprocess, sys
f, coll, b, rc, err = sys.argv[1:]
rec = {"kind": "comm", "coll": coll, "bytes": b, "rc": rc}
try:
    txt = open(f).read()
    d, _ = json.JSONDecoder().raw_decode(txt[txt.index("{"):])
    t = d["timing"]; x = t["extra"]
    rec.update(dtype=x["dtype"], gpus=x["gpus"], median_ms=t["median_ms"], algbw=x["algbw_GBps"], busbw=x["busbw_GBps"],
               pct_link=x.get("busbw_pct_of_link"), status="ok" + (", check pass" if d.get("check", {}).get("pass") else ""))
except Exception as e:
    lines = [l.strip() for l in open(err, errors="replace") if l.strip()]
    rec.update(status=f"FAILED rc={rc}: " + (lines[-1] if lines else str(e)))
with open(os.environ["RESULTS"], "a") as o:
    o.write(json.dumps(rec) + "\n")
PY
    done
  done
  log "comm: 4 collectives × $(wc -w <<<"$SIZES") sizes on $G GPU(s) done"
fi

# ---- 2. DP scaling (weak: DP_MICRO micro-batches of md300m's mbs 2 per rank per step) ----
if want dp; then
  MICRO=${DP_MICRO:-4}
  for n in ${DP_WORLDS:-1 2 4 8}; do
    if ((n > G)); then
      rep record kind=notrun name="DP scaling at $n GPUs" why="needs $n GPUs, $G visible"
      continue
    fi
    gb=$((2 * MICRO * n))
    launch "dp$n" "$n" recipes/md300m.yaml --set train.steps="${DP_STEPS:-30}" --set train.global_batch=$gb \
      --set train.eval_every=0 --set train.checkpoint_every=0 --set train.log_every=5
    rep record kind=dp n=$n global_batch=$gb rcs="$RCS" DIR="$OUT/runs/dp$n"
  done
fi

# ---- 3. parity (hybrid300m, global batch 16 so that every layout divides) and NAM56R ----
if want parity; then
  PSTEPS=${PARITY_STEPS:-20}
  # train.device=cuda explicitly: with `auto` a refused multi-GPU layout would fall back to the CPU backend
  # (recorded in the receipt) and crawl instead of failing fast.
  PARGS=(--set train.device=cuda --set train.steps="$PSTEPS" --set train.global_batch=16 --set train.eval_every=0 --set train.checkpoint_every=0 --set train.log_every=1)
  # name world tp ep
  LAYOUTS=("tp2 2 2 1" "tp4 4 4 1" "ep4 4 1 4" "ep8 8 1 8" "tp2xep4 8 2 4")
  base_done=0
  for l in "${LAYOUTS[@]}"; do
    read -r name w tp ep <<<"$l"
    if ((w > G)); then
      rep record kind=notrun name="parity $name (tp=$tp, ep=$ep)" why="needs $w GPUs (one process per GPU), $G visible"
      continue
    fi
    if ((base_done == 0)); then  # the 1-GPU curve of the same recipe, seed and global batch
      launch parity-base 1 recipes/hybrid300m.yaml "${PARGS[@]}"
      rep record kind=parity-base name="1 GPU reference" layout_req="tp=1 ep=1" ranks=1 rcs="$RCS" DIR="$OUT/runs/parity-base"
      base_done=1
    fi
    launch "parity-$name" "$w" recipes/hybrid300m.yaml "${PARGS[@]}" --set parallel.tp="$tp" --set parallel.ep="$ep"
    rep record kind=parity name="$name" layout_req="tp=$tp ep=$ep" ranks="$w" rcs="$RCS" DIR="$OUT/runs/parity-$name"
  done
  if ((G >= 8)); then
    launch nam56r-ep8 8 recipes/nam56r.yaml --set train.device=cuda --set parallel.ep=8 --set train.steps="${NAM_STEPS:-10}" --set train.eval_every=0 \
      --set train.checkpoint_every=0 --set train.log_every=1
    rep record kind=nam56r name=nam56r layout_req="ep=8 mbs=1" ranks=8 rcs="$RCS" DIR="$OUT/runs/nam56r-ep8"
  else
    rep record kind=notrun name="NAM56R (recipes/nam56r.yaml, EP=8)" why="needs 8 GPUs, $G visible"
  fi
fi

# ---- 4. a killed rank, then resume ----
if want kill; then
  if ((G < 2)); then
    rep record kind=notrun name="killed-rank run and resume" why="needs 2 GPUs (two ranks), $G visible"
  else
    KT=${KILL_TIMEOUT_S:-60}
    KS=${KILL_STEPS:-40}
    KA=${KILL_AT:-15}
    d=$OUT/runs/kill
    start_ranks "$d" 2 recipes/md300m.yaml --set train.steps="$KS" --set train.global_batch=8 --set train.eval_every=0 \
      --set train.checkpoint_every=10 --set train.log_every=1 --set parallel.timeout_s="$KT"
    # rank 0's metrics stream grows one line per step: kill rank 1 once KA steps are logged.
    killed_at=""
    for ((i = 0; i < 1800; i++)); do
      m=$(ls "$d"/*-train-md300m/metrics.jsonl 2>/dev/null | head -1)
      if [[ -n $m ]] && (($(wc -l <"$m") >= KA)); then
        kill -9 "${PIDS[1]}" && killed_at=$(date +%s.%N)
        break
      fi
      kill -0 "${PIDS[0]}" 2>/dev/null || break
      sleep 0.5
    done
    wait "${PIDS[1]}"
    rc1=$?
    wait "${PIDS[0]}"
    rc0=$?
    exited=$(date +%s.%N)
    if [[ -n $killed_at ]]; then
      dt=$(python3 -c "print(f'{$exited - $killed_at:.1f}')")
      within=$(python3 -c "print('yes' if $exited - $killed_at <= $KT + 30 else 'NO')")
      what="SIGKILL to rank 1 after $KA logged steps; rc rank0=$rc0 rank1=$rc1; parallel.timeout_s=$KT (+30 s slack allowed)"
    else
      dt="—" within="—" what="rank 1 was NOT killed (rank 0 ended or never logged $KA steps); rc rank0=$rc0 rank1=$rc1"
    fi
    log "kill: $what; rank 0 exited $dt s after the kill"
    rep record kind=kill ranks=2 what="$what" exit_after_kill_s="$dt" within_timeout="$within" DIR="$d"
    python3 - "$RESULTS" <<'PY'
import json, re, sys
p = sys.argv[1]
recs = [json.loads(l) for l in open(p) if l.strip()]
r = recs[-1]
r["names_rank"] = "yes" if re.search(r"\brank 1\b", r.get("message") or "") else "NO (names only: " + ", ".join(sorted(set(re.findall(r"rank \d+", r.get("message") or "")))) + ")"
recs[-1] = r
open(p, "w").write("".join(json.dumps(x) + "\n" for x in recs))
PY
    rd=$(ls -d "$d"/*-train-md300m 2>/dev/null | head -1)
    if [[ -n $rd ]] && compgen -G "$rd/checkpoints/step-*" >/dev/null; then
      launch kill-resume 2 recipes/md300m.yaml --resume "$rd" --set train.steps="$KS" --set train.global_batch=8 \
        --set train.eval_every=0 --set train.checkpoint_every=10 --set train.log_every=1 --set parallel.timeout_s="$KT"
      rep record kind=resume ranks=2 what="--resume $(basename "${rd:-none}") (rc [$RCS])" DIR="$OUT/runs/kill-resume"
    else
      rep record kind=resume ranks=2 what="no checkpoint found in ${rd:-(no rank-0 run directory)}: not resumed" status="not run"
    fi
  fi
fi

log "done"
