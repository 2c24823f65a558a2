#!/usr/bin/env python3
"""Ratios of megacpp attention (bench JSON from test_attention_gpu --gtest_filter=AttnBench.*) to torch SDPA
(JSON from attention_torch.py): ours_cudnn / torch_cudnn and ours_native / torch_flash, fwd and fwd+bwd,
by TFLOP/s (same FLOP formula on both sides), default tile configs only. Usage: attention_compare.py ours.json torch.json"""
import json, sys

ours = json.load(open(sys.argv[1]))
th = json.load(open(sys.argv[2]))
t = {(r["backend"], r["D"], r["S"]): r for r in th["rows"] if "error" not in r}
print(f"{'D':>4} {'S':>6} | {'ours cudnn':>10} {'torch cudnn':>11} {'ratio':>6} | {'ours native':>11} {'torch flash':>11} {'ratio':>6}   (TFLOP/s)")
for kind, ok, tk in (("fwd", "fwd_tflops", "fwd_tflops"), ("fwd+bwd", "fwd_bwd_tflops", "fwdbwd_tflops")):
    print(f"-- {kind}")
    for D in (128, 64):
        for S in (4096, 8192, 16384):
            vals = {}
            for r in ours:
                if r["D"] == D and r["S"] == S:
                    vals[r["backend"]] = r["fwd"]["extra"]["tflops"] if kind == "fwd" else r["bwd"]["extra"]["fwd_bwd_tflops"]
            tc = t.get(("cudnn", D, S), {}).get(tk, float("nan"))
            tf = t.get(("flash", D, S), {}).get(tk, float("nan"))
            oc, on = vals.get("cudnn", float("nan")), vals.get("native", float("nan"))
            print(f"{D:4d} {S:6d} | {oc:10.1f} {tc:11.1f} {oc / tc:6.3f} | {on:11.1f} {tf:11.1f} {on / tf:6.3f}")
