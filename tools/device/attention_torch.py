#!/usr/bin/env python3
"""Yardstick for the attention speed bar: torch.nn.functional.scaled_dot_product_attention with the cuDNN
backend and the flash backend (sdpa_kernel context), causal, bf16, 16 heads, batch*seq = 32768 tokens,
seq 4k/8k/16k, head dim 128 and 64; fwd and fwd+bwd; CUDA-event medians of N runs after warm-up.
Inputs are stored (B,S,H,D) and viewed as (B,H,S,D), the same memory layout as megacpp's attention.
FLOPs: causal fwd = 2*B*H*S^2*D (half the score matrix of 4*B*H*S^2*D), fwd+bwd = 3.5 x fwd.
Usage: attention_torch.py [--iters 20] [--json OUT.json]"""
import argparse, json, statistics, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms), min(ms), max(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}", flush=True)
    rows = []
    print(f"{'backend':7} {'D':>4} {'S':>6} {'B':>3} | {'fwd ms':>9} {'TF/s':>7} | {'fwd+bwd ms':>11} {'TF/s':>7}")
    for D in (128, 64):
        for S in (4096, 8192, 16384):
            B, H = 32768 // S, 16
            g = torch.Generator(device=dev).manual_seed(S + D)
            mk = lambda: torch.randn(B, S, H, D, device=dev, dtype=torch.bfloat16, generator=g).transpose(1, 2)
            q, k, v, do = mk(), mk(), mk(), mk()
            q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
            flops = 2.0 * B * H * S * S * D
            for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                rec = {"backend": name, "D": D, "S": S, "B": B, "H": H}
                try:
                    with sdpa_kernel([be]):
                        def fwd():
                            with torch.no_grad():
                                F.scaled_dot_product_attention(q, k, v, is_causal=True)

                        def fwdbwd():
                            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                            o.backward(do)

                        f = timed(fwd, args.warmup, args.iters)
                        fb = timed(fwdbwd, args.warmup, args.iters)
                    rec.update(fwd_ms=f[0], fwd_min=f[1], fwd_max=f[2], fwd_tflops=flops / f[0] * 1e-9,
                               fwdbwd_ms=fb[0], fwdbwd_min=fb[1], fwdbwd_max=fb[2], fwdbwd_tflops=3.5 * flops / fb[0] * 1e-9)
                    print(f"{name:7} {D:4d} {S:6d} {B:3d} | {f[0]:9.3f} {rec['fwd_tflops']:7.1f} | {fb[0]:11.3f} "
                          f"{rec['fwdbwd_tflops']:7.1f}", flush=True)
                except Exception as e:  # report, never hide
                    rec["error"] = repr(e)
                    print(f"{name:7} {D:4d} {S:6d} {B:3d} | ERROR {e!r}", flush=True)
                q.grad = k.grad = v.grad = None
                rows.append(rec)
            del q, k, v, do
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                       "gpu": torch.cuda.get_device_name(), "iters": args.iters, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
