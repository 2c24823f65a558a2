#!/usr/bin/env python3
"""Checks the receipt of a smoke training run: status ok, the loss decreased, validation loss present.
Usage: check_smoke_receipt.py RUNS_DIR   (the newest */receipt.json of a train run is checked)"""
import glob
import json
import os
import sys

runs = sorted(glob.glob(os.path.join(sys.argv[1], "*-train-*", "receipt.json")))
if not runs:
    sys.exit(f"check_smoke_receipt: no train receipt under {sys.argv[1]}")
r = json.load(open(runs[-1]))
tr = r.get("training", {})
series = tr.get("series", [])
problems = []
if r.get("status") != "ok":
    problems.append(f"status is {r.get('status')!r}, error {r.get('error')}")
if len(series) < 10:
    problems.append(f"only {len(series)} steps in the series")
else:
    first = sum(p["loss"] for p in series[:5]) / 5
    last = sum(p["loss"] for p in series[-5:]) / 5
    if not last < first - 0.3:
        problems.append(f"loss did not decrease: first-5 mean {first:.4f}, last-5 mean {last:.4f}")
if tr.get("final_val_loss") is None:
    problems.append("no validation loss")
if problems:
    sys.exit("smoke receipt " + runs[-1] + ": " + "; ".join(problems))
print(f"smoke receipt ok: {runs[-1]}: loss {series[0]['loss']:.3f} -> {series[-1]['loss']:.3f}, "
      f"val {tr['final_val_loss']:.3f} (unigram {tr.get('unigram_val_cross_entropy_nats', float('nan')):.3f}), "
      f"goodput {tr['goodput']['goodput']:.1%}")
