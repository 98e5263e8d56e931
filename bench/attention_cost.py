"""Cost of the attention diagnostic: one explicit-attention pass (probabilities reduced on the fly) against a plain
forward of the same backbone, alternated in one process. Target: at most 2x at ViT-B/16 shapes.

    python bench/attention_cost.py [--device cuda] [--batch-size 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from harness.diagnostics.attention import accumulator, measure_batch
from harness.models.backbones import Backbone, build_model
from harness.registry import load_registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mae-vit-b16", help="registry entry whose architecture to build (random)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="bench/out/attention_cost.json")
    args = ap.parse_args()
    entry = load_registry().backbone(args.backbone)
    bb = Backbone(build_model(entry), entry, "random").to(args.device)
    x = torch.randn(args.batch_size, 3, entry.img_size, entry.img_size, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def plain() -> None:
        bb.forward_tokens(x)

    def diagnostic() -> None:
        measure_batch(bb, accumulator(bb), x)

    times: dict[str, list[float]] = {"plain": [], "diagnostic": []}
    with torch.inference_mode():
        plain(), diagnostic()  # warm-up
        for _ in range(args.reps):
            for name, fn in (("plain", plain), ("diagnostic", diagnostic)):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    out = {"backbone": args.backbone, "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "batch_size": args.batch_size, "reps": args.reps, "seconds": times, "best_s": best,
           "ratio": best["diagnostic"] / best["plain"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{args.backbone} batch {args.batch_size} on {out['device']}: plain {best['plain']:.3f} s, diagnostic "
          f"{best['diagnostic']:.3f} s, ratio {out['ratio']:.2f} (best of {args.reps}, alternated)")


if __name__ == "__main__":
    main()
