"""What does training the head bank cost on top of the backbone pass? (target, issue 9: the whole bank of cls and
mean heads under 5% of the backbone's forward at ViT-B/16 shapes)

For each shape (a tiny ViT, and ViT-B/16: 197 tokens x 768), times per batch, median over `--reps` steps:
- `backbone_s`: one frozen forward of the backbone on images (both token taps; bf16 autocast on CUDA);
- `per_head_s[kind]`: one training step (forward, backward, optimizer update) of a bank of ONE head of each
  aggregator (cls, mean, abmilp, query, ep), and `stack_s[kind]`: the same for a stack of `--stack` heads of that
  aggregator (one seed, lrs apart: how the heads of a sweep grid step together), with its cost per head;
- `bank_s`: one step of the whole bank of cls + mean heads (2 x `--lrs` x `--seeds` heads, all on the batch, as
  in the online protocol), and `loop_bank_s`: the same heads the way the bank worked before stacking (one module,
  torch optimizer and loss per head, a host sync per head per step), measured in the same run;
- `stack_vs_alone_max_abs_diff`: whether a head in a stack computes exactly what it computes alone, on this device,
  per aggregator and optimizer.
Prints the figures and ratios and writes them to bench/out/head_bank-<device>.json. Not a test.

    python bench/head_bank.py                                  # CPU, batch 64, 210-head bank
    python bench/head_bank.py --device cuda --batch-size 256   # on a GPU (the lead's run)
    python bench/head_bank.py --shapes tiny --lrs 3 --seeds 1  # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from harness.heads.head import build_head
from harness.models.backbones import Backbone, build_model
from harness.heads.precision import head_matmuls
from harness.heads.bank import HeadBank, HeadSpec
from harness.registry import load_registry
from harness.tokens.cache import backbone_autocast

SHAPES = {"tiny": "demo-mae-tiny", "vitb16": "mae-vit-b16"}  # registry entries, built with random weights
ONE_HEAD = {"cls": "sgd", "mean": "sgd", "abmilp": "lars", "query": "adamw", "ep": "adamw"}  # their papers' optimizers
POOLINGS = {k: "lars" for k in ("simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca", "cait", "dinovit",
                                "jepa", "dolg", "cae")}  # efficient probing's other poolings, LARS as its recipe
KIND_SETS = {"bank": ONE_HEAD, "poolings": POOLINGS}


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall time of `fn` over `reps` calls after one warm-up call, synchronising the device."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def specs_for(kind: str, optimizer: str, lrs: list[float], seeds: list[int]) -> list[HeadSpec]:
    entry = load_registry().aggregator(kind)
    return [HeadSpec(f"{kind}/{lr:g}/{seed}", f"{kind}{lr}{seed}", entry, dict(entry.options), optimizer, lr, 0.0,
                     seed) for seed in seeds for lr in lrs]


class LoopBank:
    """The bank before stacking, for the before/after ratio: per head a module, a torch optimizer, a loss,
    and host syncs for the non-finite checks."""

    def __init__(self, specs: list[HeadSpec], dims: dict, batch_size: int, device: torch.device):
        self.heads, self.optimizers = [], []
        for s in specs:
            torch.manual_seed(s.seed)
            head = build_head(s.aggregator, options=s.options, **dims).to(device)
            self.heads.append(head)
            self.optimizers.append(torch.optim.SGD(head.parameters(), lr=s.lr * batch_size / 256, momentum=0.9))

    def step(self, tokens: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        losses = [F.cross_entropy(head(tokens[head.tap]), labels) for head in self.heads]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        torch.autograd.backward(losses)
        for head, opt, loss in zip(self.heads, self.optimizers, losses):
            if math.isfinite(loss.item()):
                opt.step()
                assert all(torch.isfinite(p).all() for p in head.parameters())


def stack_vs_alone(bank: Callable[[list[HeadSpec]], HeadBank], tokens: dict, labels: torch.Tensor,
                   kinds: dict[str, str]) -> dict:
    """Largest difference, after 3 steps, between each head of a stack of three and the same head alone, per
    aggregator and optimizer (0.0: bit for bit on this device at these shapes)."""
    out = {}
    extra = (("cls", "sgd"), ("mean", "lars"), ("cls", "adamw")) if kinds is ONE_HEAD else ()
    for kind, optimizer in (*extra, *kinds.items()):
        specs = specs_for(kind, optimizer, [1e-3, 1e-2, 1e-1], [0])
        banks = [bank(specs)] + [bank([s]) for s in specs]
        for b in banks:
            for _ in range(3):
                b.step(tokens, labels)
        out[f"{kind}/{optimizer}"] = max(float((x - y).abs().max()) for i in range(3)
                             for x, y in zip(banks[0].parameters_of(i), banks[1 + i].parameters_of(0)))
    return out


def measure(shape: str, args: argparse.Namespace, device: torch.device) -> dict:
    entry = load_registry().backbone(SHAPES[shape])
    backbone = Backbone(build_model(entry), entry, "random-init").to(device)
    b, classes = args.batch_size, args.classes
    images = torch.randn(b, 3, entry.img_size, entry.img_size, device=device)
    taps = ["norm", "prenorm"]

    def forward() -> dict:
        with torch.no_grad(), backbone_autocast(device):
            return backbone.forward_taps(images, taps)

    backbone_s = timed(forward, args.reps, device)
    tokens = {tap: x.float() for tap, x in forward().items()}
    labels = torch.randint(0, classes, (b,), device=device)
    dims = {"embed_dim": backbone.embed_dim, "num_heads": backbone.num_heads,
            "num_prefix_tokens": backbone.num_prefix_tokens, "num_classes": classes}
    del backbone

    def bank(specs: list[HeadSpec]) -> HeadBank:  # every head on every batch, as in the online protocol
        return HeadBank(specs, **dims, batch_size=b, total_steps=10 ** 6, warmup_steps=0, shared_order=True,
                        device=device)

    kinds = KIND_SETS[args.kinds]
    per_head = {}
    for kind, optimizer in kinds.items():
        one = bank(specs_for(kind, optimizer, [0.1], [0]))
        per_head[kind] = timed(lambda: one.step(tokens, labels), args.reps, device)
    stack_s = {}
    for kind, optimizer in kinds.items():
        stack = bank(specs_for(kind, optimizer, [10 ** (-4 + 3 * i / max(args.stack - 1, 1))
                                                 for i in range(args.stack)], [0]))
        stack_s[kind] = timed(lambda: stack.step(tokens, labels), args.reps, device)
        del stack
    figures = {
        "backbone": entry.name, "embed_dim": dims["embed_dim"], "tokens": tokens["norm"].shape[1],
        "stack_vs_alone_max_abs_diff": stack_vs_alone(bank, tokens, labels, kinds),
        "backbone_s": backbone_s, "per_head_s": per_head,
        "per_head_vs_backbone": {k: v / backbone_s for k, v in per_head.items()},
        "stack_heads": args.stack, "stack_s": stack_s,
        "stack_s_per_head": {k: v / args.stack for k, v in stack_s.items()},
        "stack_per_head_vs_backbone": {k: v / args.stack / backbone_s for k, v in stack_s.items()},
        "stack_speedup_vs_one_at_a_time": {k: per_head[k] * args.stack / v for k, v in stack_s.items()},
    }
    if kinds is POOLINGS:  # the cls + mean bank is the `bank` set's figure
        return figures
    lrs = [10 ** (-4 + 5 * i / max(args.lrs - 1, 1)) for i in range(args.lrs)]
    specs = specs_for("cls", "sgd", lrs, list(range(args.seeds))) + specs_for("mean", "sgd", lrs,
                                                                               list(range(args.seeds)))
    stacked = bank(specs)
    bank_s = timed(lambda: stacked.step(tokens, labels), args.reps, device)
    bank_share = {}  # the bank's share of the forward at each head-matmul precision the device offers
    for mode in ("fp32", "tf32") if device.type == "cuda" else ("fp32",):
        with head_matmuls(device, mode):
            bank_share[mode] = timed(lambda: stacked.step(tokens, labels), args.reps, device) / backbone_s
    del stacked
    loop = LoopBank(specs, dims, b, device)
    loop_bank_s = timed(lambda: loop.step(tokens, labels), args.reps, device)
    del loop
    return {
        **figures, "bank_heads": len(specs), "bank_s": bank_s, "bank_vs_backbone": bank_s / backbone_s,
        "bank_vs_backbone_by_head_precision": bank_share,
        "bank_s_per_head": bank_s / len(specs), "loop_bank_s": loop_bank_s,
        "loop_bank_vs_backbone": loop_bank_s / backbone_s, "speedup_vs_loop": loop_bank_s / bank_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000, help="classes of every head (default: ImageNet's)")
    parser.add_argument("--lrs", type=int, default=21, help="lr grid points per aggregator in the bank (claim grid)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--stack", type=int, default=8, help="heads per aggregator stack (the sweep grid's 8 lrs)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median), after one warm-up")
    parser.add_argument("--shapes", default="tiny,vitb16", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--kinds", default="bank", choices=sorted(KIND_SETS),
                        help="bank: cls, mean, abmilp, query, ep and the cls + mean bank; poolings: efficient "
                             "probing's twelve other poolings, each alone and in a stack (use --shapes vitb16: "
                             "clip's 14x14 table and esimpool's 12 heads do not fit the tiny ViT)")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = {
        "command": " ".join(sys.argv), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__, "batch_size": args.batch_size, "classes": args.classes, "reps": args.reps,
        "shapes": {},
    }
    for shape in args.shapes.split(","):
        r = measure(shape, args, device)
        out["shapes"][shape] = r
        print(f"{shape} ({r['backbone']}, {r['tokens']} tokens x {r['embed_dim']}, batch {args.batch_size}, "
              f"{args.classes} classes, {out['device']})")
        print(f"  backbone forward        {r['backbone_s'] * 1e3:10.2f} ms/batch")
        for kind, s in r["per_head_s"].items():
            print(f"  one {kind:<7} head step  {s * 1e3:10.2f} ms/batch  {100 * s / r['backbone_s']:8.2f}% of backbone")
        for kind, s in r["stack_s"].items():
            print(f"  stack of {args.stack} {kind:<7}    {s * 1e3:10.2f} ms/batch  {s / args.stack * 1e3:8.3f} "
                  f"ms/head  ({r['stack_speedup_vs_one_at_a_time'][kind]:.1f}x one head at a time)")
        if 'bank_s' in r:
            print(f"  bank of {r['bank_heads']} cls+mean   {r['bank_s'] * 1e3:10.2f} ms/batch  "
                  f"{100 * r['bank_vs_backbone']:8.2f}% of backbone  ({r['bank_s_per_head'] * 1e3:.3f} ms/head)")
            print("  bank share by head-matmul precision: " + ", ".join(
                f"{mode} {100 * share:.2f}%" for mode, share in r["bank_vs_backbone_by_head_precision"].items()))
            print(f"  same, loop per head     {r['loop_bank_s'] * 1e3:10.2f} ms/batch  "
                  f"{100 * r['loop_bank_vs_backbone']:8.2f}% of backbone  (stacked is {r['speedup_vs_loop']:.1f}x faster)")
        print(f"  stack of 3 vs alone, max |diff| after 3 steps: {r['stack_vs_alone_max_abs_diff']}")
    suffix = "" if args.kinds == "bank" else f"-{args.kinds}"
    path = Path(__file__).resolve().parent / "out" / f"head_bank-{device.type}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
