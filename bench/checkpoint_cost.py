"""What a mid-trial checkpoint costs: its size, the time to write it and to read and restore it, against the time
of the training steps it protects.

Builds the head bank of a trial at ImageNet-1k's shape (768-wide tokens, 1,000 classes; by default the claim
grid's 210 [cls] and mean heads: 2 kinds x 7 lrs x 3 wds x 5 seeds, each a BatchNorm-SGD linear head), trains it
one step on random tokens so every optimizer buffer exists, then times `bank.state()` + `write_state` (what the
sweep hands Ray Tune, before Tune's copy into its storage) and `read_state` + `restore` (a retried trial's start),
best of --repeats, and the training steps per second of the same bank on this machine. Prints the figures and
writes bench/out/checkpoint_cost.json. Not a test.

    python bench/checkpoint_cost.py                    # the claim grid's bank
    python bench/checkpoint_cost.py --heads 16 --abmilp 8
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from harness.heads.bank import HeadBank
from harness.heads.spec import HeadSpec
from harness.registry import AggregatorEntry
from harness.run.checkpoints import TrialState, read_state, write_state
from harness.heads.train import Position

D, C, TOKENS, PREFIX, NUM_HEADS = 768, 1000, 197, 1, 12


def bank(linear: int, abmilp: int, batch: int) -> HeadBank:
    kinds = [("cls", "cls"), ("mean", "mean")]
    specs = [HeadSpec(f"{name}/{i}", f"{name}{i}", AggregatorEntry(name, kind, "norm"), {}, "sgd", 0.1 * (1 + i), 0.0,
                      i % 5) for i in range(linear // 2) for name, kind in kinds]
    specs += [HeadSpec(f"abmilp/{i}", f"abmilp{i}", AggregatorEntry("abmilp", "abmilp", "norm"), {}, "lars",
                       0.1 * (1 + i), 0.0, i % 5) for i in range(abmilp)]
    return HeadBank(specs, embed_dim=D, num_heads=NUM_HEADS, num_prefix_tokens=PREFIX, num_classes=C,
                    batch_size=batch, total_steps=1000, warmup_steps=10, shared_order=True)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, default=210, help="linear heads ([cls] and mean, half each)")
    p.add_argument("--abmilp", type=int, default=0, help="attention (abmilp) heads")
    p.add_argument("--batch", type=int, default=64, help="training batch (random tokens) for the step rate")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    b = bank(args.heads, args.abmilp, args.batch)
    tokens = {"norm": torch.randn(args.batch, TOKENS if args.abmilp else PREFIX + 1, D)}
    labels = torch.randint(0, C, (args.batch,))
    b.step(tokens, labels)
    step_s = best(lambda: b.step(tokens, labels), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"

        def save() -> None:
            meta, tensors = b.state()
            write_state(folder, "bench", TrialState(Position(1, 2), meta, tensors))

        write_s = best(save, args.repeats)
        size = sum(f.stat().st_size for f in folder.iterdir())
        read_s = best(lambda: b.restore(*(lambda s: (s.bank, s.tensors))(read_state(folder, "bench"))), args.repeats)
    out = {"heads": args.heads, "abmilp": args.abmilp, "checkpoint_bytes": size, "write_s": write_s,
           "read_restore_s": read_s, "train_step_s": step_s, "batch": args.batch,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    print(f"{args.heads} linear + {args.abmilp} abmilp heads at D={D}, C={C}: checkpoint {size / 2**20:.1f} MiB, "
          f"write {write_s:.2f} s ({size / 2**20 / write_s:.0f} MiB/s), read + restore {read_s:.2f} s; "
          f"one training step of batch {args.batch}: {step_s * 1e3:.1f} ms, so a checkpoint costs "
          f"{write_s / step_s:.1f} steps here")
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/checkpoint_cost.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
