"""Is the harness sweep close to its cost floor, and how much faster is it than a sweep of one trial per head?

One run, the same data (a registered dataset) and tiny backbones, every trial given the same `--cpus`:
- (a) `backbone_s`: the backbone's forward passes alone, every image of every split once per backbone, on images
  already decoded and in memory (the cached protocol's floor);
- (h) `heads_s`: the head bank's own training for the same grid (`train_cached`, every epoch and evaluation) on
  tokens already in memory: the compute the user asked for;
- (b) `harness_s`: `run_sweep` on Ray Tune, Ray start included, one trial per backbone with every head of the grid
  (default 4 aggregators x 8 lrs x 3 seeds = 96 heads) and a cold token cache;
- (c) `naive_s`: one Ray Tune trial per head with Tune's defaults, each loading its backbone and data, running the
  backbone over every split itself and training its one head -- as the reference repositories do, minus their
  per-epoch backbone pass (a generous baseline). With `--naive-heads K` only K heads per backbone (spread evenly
  over the aggregators) run and (c) is extrapolated, which the output and JSON say explicitly.
Prints (b) / ((a) + (h)) (target <= 1.25) and (c) / (b) (target >= 20) and writes bench/out/sweep_efficiency.json.
(a) and (h) run before and after (b), and the faster of the two counts (the floor is what the machine can do; a
shared machine's load only ever slows it). Not a test. The ratios compare parts of one run.

    python bench/sweep_efficiency.py                      # 2 backbones x 96 heads, naive sweep on 8 heads each
    python bench/sweep_efficiency.py --naive-heads all    # the full naive sweep (192 trials, 5 s or more each)
    python bench/sweep_efficiency.py --device cuda        # trials on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from harness.results import store
from harness.models.backbones import Backbone, load_backbone
from harness.data.splits import Splits, load_splits
from harness.heads.bank import HeadBank
from harness.run.plan import TrialPlan, expand
from harness.registry import Grid, HeadGroup, load_registry
from harness.tokens.cache import TokenSet, backbone_autocast, extract_tokens
from harness.run.trial import make_bank
from harness.heads.train import train_cached

OPTIMIZER = {"cls": "sgd", "mean": "sgd", "abmilp": "lars", "query": "adamw", "ep": "adamw"}  # their papers'
LOG10_LR = {"sgd": (-3.0, 0.5), "lars": (-3.0, 0.5), "adamw": (-5.0, -1.5)}  # lr grid range per optimizer
SPLITS = ("train", "val", "test")


def make_grid(args: argparse.Namespace) -> Grid:
    """The benchmark grid: each aggregator with its paper's optimizer over `--lrs` log-spaced lrs, `--seeds` seeds."""
    heads = tuple(HeadGroup(agg, OPTIMIZER[agg], tuple(float(x) for x in np.logspace(*LOG10_LR[OPTIMIZER[agg]],
                                                                                      args.lrs)), (0.0,))
                  for agg in args.aggregators.split(","))
    return Grid(name="sweep-efficiency", description="bench/sweep_efficiency.py", backbones=tuple(args.backbones
                .split(",")), datasets=(args.dataset,), heads=heads, seeds=tuple(range(args.seeds)), protocol="cached",
                epochs=args.epochs, batch_size=args.batch_size, cpus_per_trial=args.cpus,
                gpus_per_trial=1.0 if args.device == "cuda" else 0.0, max_retries=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(plan: TrialPlan, device: torch.device) -> tuple[Backbone, Splits, HeadBank]:
    """The trial's backbone, splits and head bank, built as `harness.run.trial.run_trial` builds them."""
    backbone = load_backbone(plan.backbone_entry, plan.weights, device=device)
    splits = load_splits(plan.dataset_entry, backbone.entry)
    return backbone, splits, make_bank(plan, plan.heads, backbone, splits, device)


def extract_all(backbone: Backbone, splits: Splits, bank: HeadBank, plan: TrialPlan,
                device: torch.device) -> dict[str, TokenSet]:
    return {name: extract_tokens(backbone, getattr(splits, name), bank.taps, batch_size=plan.batch_size,
                                 device=device)[0] for name in SPLITS}


def train(bank: HeadBank, tokens: dict[str, TokenSet], plan: TrialPlan, device: torch.device) -> list:
    return train_cached(bank, tokens["train"], tokens["val"], tokens["test"], epochs=plan.epochs,
                        batch_size=plan.batch_size, device=device)


def floor(plan: TrialPlan, device: torch.device) -> dict:
    """(a) and (h) of one backbone, in this process: forward passes on decoded images (in the extraction's precision),
    then the bank on tokens."""
    backbone, splits, bank = prepare(plan, device)
    images = {name: torch.stack([getattr(splits, name)[i][0] for i in range(len(getattr(splits, name)))])
              for name in SPLITS}
    taps = bank.taps
    with torch.inference_mode(), backbone_autocast(device):
        backbone.forward_taps(images["val"][:plan.batch_size].to(device), taps)  # warm-up
        sync(device)
        t = time.perf_counter()
        for name in SPLITS:
            for chunk in images[name].split(plan.batch_size):
                backbone.forward_taps(chunk.to(device), taps)
        sync(device)
        backbone_s = time.perf_counter() - t
    tokens = extract_all(backbone, splits, bank, plan, device)
    t = time.perf_counter()
    outcomes = train(bank, tokens, plan, device)
    sync(device)
    heads_s = time.perf_counter() - t
    return {"backbone_s": backbone_s, "heads_s": heads_s, "images": sum(len(v) for v in images.values()),
            "val_top1": {h.config_hash: o.val_top1 for h, o in zip(plan.heads, outcomes)}}


def _naive_trainable(config: dict, plans: list[TrialPlan]) -> None:
    """One naive trial: its own backbone pass over every split, then its one head."""
    import ray
    from ray import tune

    t0 = time.perf_counter()
    plan = plans[config["index"]]
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    backbone, splits, bank = prepare(plan, device)
    t1 = time.perf_counter()
    tokens = extract_all(backbone, splits, bank, plan, device)
    t2 = time.perf_counter()
    outcome = train(bank, tokens, plan, device)[0]
    t3 = time.perf_counter()
    tune.report({"setup_s": t1 - t0, "extract_s": t2 - t1, "head_s": t3 - t2, "val_top1": outcome.val_top1,
                 "config_hash": plan.heads[0].config_hash})


def subset(plan: TrialPlan, k: int | None) -> tuple[TrialPlan, ...]:
    """One-head plans: every head, or `k` heads taken evenly through the grid's order (so across aggregators)."""
    heads = plan.heads if k is None or k >= len(plan.heads) else \
        tuple(plan.heads[int(i)] for i in np.linspace(0, len(plan.heads) - 1, k).round())
    return tuple(replace(plan, heads=(h,)) for h in heads)


def naive_sweep(plans: list[TrialPlan], cpus: float, gpus: float) -> tuple[float, list[dict]]:
    """Wall time of a Tune run of one trial per plan (Tune's defaults: a fresh worker per trial), and its results."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_naive_trainable, plans=plans),
                                    {"cpu": cpus, "gpu": gpus})
    with tempfile.TemporaryDirectory(prefix="naive-tune-") as storage:
        t = time.perf_counter()
        grid = tune.Tuner(trainable, param_space={"index": tune.grid_search(list(range(len(plans))))},
                          run_config=tune.RunConfig(name="naive", storage_path=storage, verbose=0)).fit()
        wall = time.perf_counter() - t
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} naive trials failed; first: {errors[0]}")
    return wall, [r.metrics for r in grid]


def ray_start(cpus: float, gpus: float) -> float:
    from harness.run.sweep import connect

    t = time.perf_counter()
    connect(None, num_cpus=int(cpus), num_gpus=gpus)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="demo-mae-tiny,demo-simmim-tiny")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--aggregators", default="cls,mean,abmilp,ep", help=f"comma list of {', '.join(OPTIMIZER)}")
    parser.add_argument("--lrs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=1, help="Ray's CPUs and each trial's (trials run one at a time)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--naive-heads", default="8", help="heads per backbone in the naive sweep, or 'all'")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "sweep_efficiency.json")
    args = parser.parse_args()
    device, gpus = torch.device(args.device), 1.0 if args.device == "cuda" else 0.0
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.cpus)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    grid = make_grid(args)
    plans = expand(grid, load_registry())
    heads_per_backbone = len(plans[0].heads)
    print(f"grid: {len(plans)} backbones x {heads_per_backbone} heads ({args.aggregators} x {args.lrs} lrs x "
          f"{args.seeds} seeds), {args.dataset}, {args.epochs} epochs, batch {args.batch_size}, {args.cpus} CPU per "
          f"trial, device {args.device}; load average at start {load_start:.2f} on {os.cpu_count()} cores")

    before = {p.backbone: floor(p, device) for p in plans}

    from harness.run.sweep import run_sweep  # imports Ray: after the floor, so (a) and (h) run without it
    import ray

    with tempfile.TemporaryDirectory(prefix="sweep-eff-") as tmp:
        os.environ["HARNESS_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold cache: the sweep extracts and writes
        t = time.perf_counter()
        ray_harness_s = ray_start(args.cpus, gpus)
        summary = run_sweep(plans, results_dir=Path(tmp) / "results", cpus_per_trial=args.cpus,
                            gpus_per_trial=gpus, max_retries=0)
        b = time.perf_counter() - t
        rows = store.read_results(Path(tmp) / "results")
    ray.shutdown()
    if summary.failed:
        raise SystemExit(f"harness sweep: trials failed: {summary.failed}")
    after = {p.backbone: floor(p, device) for p in plans}
    floors = {name: {key: min(before[name][key], after[name][key]) for key in ("backbone_s", "heads_s")}
              for name in before}
    a = sum(f["backbone_s"] for f in floors.values())
    h = sum(f["heads_s"] for f in floors.values())
    print(f"(a) backbone forward passes alone   {a:8.2f} s  (the faster of the runs before and after (b): "
          f"{sum(f['backbone_s'] for f in before.values()):.2f}, {sum(f['backbone_s'] for f in after.values()):.2f})")
    print(f"(h) head bank training on tokens    {h:8.2f} s  (likewise: {sum(f['heads_s'] for f in before.values()):.2f}"
          f", {sum(f['heads_s'] for f in after.values()):.2f})")
    trial_walls = rows.groupby("backbone")["wall_s"].first().to_dict()
    harness_top1 = dict(zip(rows["config_hash"], rows["val_top1"]))
    inside = sum(trial_walls.values())
    print(f"(b) harness sweep                   {b:8.2f} s = Ray start {ray_harness_s:.2f} + run_trial {inside:.2f} "
          f"(beyond (a)+(h): {inside - a - h:.2f}) + workers' start, Tune, store {b - ray_harness_s - inside:.2f}")

    k = None if args.naive_heads == "all" else int(args.naive_heads)
    naive_plans = [q for p in plans for q in subset(p, k)]
    ray_naive_s = ray_start(args.cpus, gpus)
    naive_wall, metrics = naive_sweep(naive_plans, args.cpus, gpus)
    ray.shutdown()
    total_heads = len(plans) * heads_per_backbone
    extrapolated = len(naive_plans) < total_heads
    per_trial = naive_wall / len(naive_plans)
    c = ray_naive_s + per_trial * total_heads
    naive_top1 = {m["config_hash"]: m["val_top1"] for m in metrics}
    deltas = [abs(naive_top1[k_] - harness_top1[k_]) for k_ in naive_top1
              if naive_top1[k_] is not None and harness_top1.get(k_) is not None and not np.isnan(harness_top1[k_])]
    how = (f"EXTRAPOLATED from {len(naive_plans)} of {total_heads} trials: Ray start + {per_trial:.2f} s/trial x "
           f"{total_heads}" if extrapolated else f"measured, all {total_heads} trials")
    print(f"(c) naive sweep, one trial per head {c:8.2f} s  ({how})")
    means = {key: float(np.mean([m[key] for m in metrics])) for key in ("setup_s", "extract_s", "head_s")}
    print(f"    per naive trial: {per_trial:.2f} s wall = setup {means['setup_s']:.2f} + own backbone pass "
          f"{means['extract_s']:.2f} + one head {means['head_s']:.2f} + Ray/worker start "
          f"{per_trial - sum(means.values()):.2f} s")
    overhead = b / (a + h)
    speedup = c / b
    print(f"(b) / ((a) + (h)) = {overhead:.3f}   (target <= 1.25; {(b - ray_harness_s) / (a + h):.3f} without "
          "Ray start)")
    print(f"(c) / (b)         = {speedup:.1f}   (target >= 20)")
    print(f"same heads, naive vs harness: max |val top-1 difference| {max(deltas) if deltas else float('nan'):.4f} "
          f"points over {len(deltas)} heads")
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
        "grid": {"backbones": list(grid.backbones), "dataset": args.dataset, "aggregators": args.aggregators,
                 "lrs": args.lrs, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size,
                 "heads_per_backbone": heads_per_backbone, "cpus_per_trial": args.cpus},
        "a_backbone_s": a, "h_heads_s": h, "b_harness_s": b, "c_naive_s": c,
        "b_over_a_plus_h": overhead, "c_over_b": speedup,
        "floor_per_backbone": {
            "min": floors, "after_b": {k_: {x: v[x] for x in ("backbone_s", "heads_s")} for k_, v in after.items()},
            "before_b": {k_: {x: v[x] for x in ("backbone_s", "heads_s", "images")} for k_, v in before.items()}},
        "b_over_a_plus_h_without_ray_start": (b - ray_harness_s) / (a + h),
        "harness": {"ray_start_s": ray_harness_s, "run_trial_wall_s": trial_walls,
                    "run_trial_beyond_a_plus_h_s": inside - a - h,
                    "workers_tune_store_s": b - ray_harness_s - inside},
        "naive": {"extrapolated": extrapolated, "trials_run": len(naive_plans), "trials_total": total_heads,
                  "wall_s_measured": naive_wall, "ray_start_s": ray_naive_s, "per_trial_s": per_trial,
                  "per_trial_mean_parts_s": means, "how": how},
        "max_val_top1_diff_naive_vs_harness": max(deltas) if deltas else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
