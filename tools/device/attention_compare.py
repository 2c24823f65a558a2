#!/usr/bin/env python3
"""Ratios of megacpp attention (bench JSON from test_attention_gpu --gtest_filter=AttnBench.*) to torch SDPA
(JSON from attention_torch.py): ours_cudnn / torch_cudnn and ours_native / torch_flash, fwd and fwd+bwd,
by TFLOP/s (same FLOP formula on both sides), default tile configs; when the bench A/B'd native forward
configs (fwd_cfgN / bwd_cfgN entries), their TFLOP/s and ratios to torch flash are printed too.
Usage: attention_compare.py ours.json torch.json"""
import json, sys

ours = json.load(open(sys.argv[1]))
th = json.load(open(sys.argv[2]))
t = {(r["backend"], r["D"], r["S"]): r for r in th["rows"] if "error" not in r}
alt = sorted({k for r in ours for k in r if k.startswith("fwd_cfg")})
balt = sorted({k for r in ours for k in r if k.startswith("bwd_cfg")})
nan = float("nan")
print(f"{'D':>4} {'S':>6} | {'ours cudnn':>10} {'torch cudnn':>11} {'ratio':>6} | {'ours native':>11} {'torch flash':>11} {'ratio':>6}   (TFLOP/s)")
for kind, tk in (("fwd", "fwd_tflops"), ("fwd+bwd", "fwdbwd_tflops")):
    print(f"-- {kind}")
    for D in (128, 64):
        for S in (4096, 8192, 16384):
            vals = {}
            for r in ours:
                if r["D"] == D and r["S"] == S:
                    vals[r["backend"]] = r["fwd"]["extra"]["tflops"] if kind == "fwd" else r["bwd"]["extra"]["fwd_bwd_tflops"]
            tc = t.get(("cudnn", D, S), {}).get(tk, nan)
            tf = t.get(("flash", D, S), {}).get(tk, nan)
            oc, on = vals.get("cudnn", nan), vals.get("native", nan)
            print(f"{D:4d} {S:6d} | {oc:10.1f} {tc:11.1f} {oc / tc:6.3f} | {on:11.1f} {tf:11.1f} {on / tf:6.3f}")
for a in alt:
    print(f"-- native forward {a} (A/B) vs torch flash fwd")
    for D in (128, 64):
        for S in (4096, 8192, 16384):
            for r in ours:
                if r["D"] == D and r["S"] == S and r["backend"] == "native" and a in r:
                    v = r[a]["extra"].get("tflops", nan)
                    tf = t.get(("flash", D, S), {}).get("fwd_tflops", nan)
                    print(f"{D:4d} {S:6d} | {a} {v:7.1f} (median {r[a]['median_ms']:.3f} ms) | torch flash {tf:7.1f} | ratio {v / tf:6.3f}")
for a in balt:
    print(f"-- native backward {a} (A/B; fwd = default) vs torch flash fwd+bwd")
    for D in (128, 64):
        for S in (4096, 8192, 16384):
            for r in ours:
                if r["D"] == D and r["S"] == S and r["backend"] == "native" and a in r:
                    v = r[a]["extra"].get("fwd_bwd_tflops", nan)
                    tf = t.get(("flash", D, S), {}).get("fwdbwd_tflops", nan)
                    print(f"{D:4d} {S:6d} | {a} bwd {r[a]['median_ms']:.3f} ms, fwd+bwd {v:7.1f} | torch flash {tf:7.1f} | ratio {v / tf:6.3f}")
