"""Where does a harness sweep's fixed time go? A timeline of `run_sweep` and the imports of its worker, per part.

`bench/sweep_efficiency.py` lumps the sweep's cost beyond the backbone and head compute into three numbers; this
splits them, on a grid small enough (default: 1 epoch, 8 heads per backbone) that the fixed parts dominate. Every
measurement runs in a fresh Python process (cold imports, a fresh local Ray instance, a cold token cache), and the
variants alternate round by round, so a shared machine's load spreads over all of them alike:

- `sweep`: one `run_sweep` per process, its parts read from driver-side Tune callbacks (trial start, rows stored)
  and the rows' own `started_at` / `ended_at` / `wall_s` (the worker's clock is the driver's: one machine):
  Ray start | Tune start to trial 0 running (worker process start, Tune's trainable actor) | trial 0 running to
  run_trial start (the trainable's imports: torch, timm, harness) | run_trial of trial 0 and of trial 1 (the
  difference is what only the first trial of a worker pays) | run_trial end to rows stored by the driver | trial
  i stored to trial i+1 running | last trial stored to `run_sweep` return; and `ray.shutdown`.
- `imports`: the worker's imports one after another, in the order a Tune worker meets them.
- `trial`: `run_trial`'s direct callees (cProfile, cumulative) for each trial, in one process.
- `extract`: `extract_tokens` over every split (the loader's batches transformed in one call, as the harness does)
  against the same with one transform call per image (`LabelledView.__getitems__` removed), alternated.

Variants (`--variants`, comma list): `default` (the harness as it is), `loggers` (Tune's automatic CSV / JSON /
TensorBoard result loggers on), `prestart-off` (Ray's start-up worker prestart off). Each prints the median of
`--repeats` rounds per part and writes bench/out/sweep_overhead.json.

    python bench/sweep_overhead.py                                  # 3 rounds of every variant, imports, trial
    python bench/sweep_overhead.py --variants default --repeats 1 --device cuda
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (environment, extra ray.init keyword arguments)
    "default": ({}, {}),
    "loggers": ({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}, {}),
    "prestart-off": ({}, {"_system_config": {"enable_worker_prestart": False}}),
}
IMPORTS = ("ray", "ray.tune", "harness.run.sweep", "torch", "timm", "harness.run.trial", "sklearn.model_selection")


def plans(args: argparse.Namespace) -> list:
    """The grid of bench/sweep_efficiency.py at this script's (smaller) sizes."""
    sys.path.insert(0, str(ROOT / "bench"))
    from sweep_efficiency import make_grid

    from harness.run.plan import expand
    from harness.registry import load_registry

    grid_args = argparse.Namespace(backbones=args.backbones, dataset=args.dataset, aggregators=args.aggregators,
                                   lrs=args.lrs, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size,
                                   cpus=args.cpus, device=args.device)
    return expand(make_grid(grid_args), load_registry())


def sweep_once(args: argparse.Namespace) -> dict:
    """One `run_sweep` in this (fresh) process; its parts in seconds."""
    import logging

    import ray

    import harness.run.sweep as sweep
    from harness.results import store

    trial_plans, gpus = plans(args), 1.0 if args.device == "cuda" else 0.0
    events: dict[str, float] = {}
    show = sweep._StoreAndShow._set

    def record(self, trial, state: str) -> None:  # driver-side: when Tune starts a trial, when its rows are stored
        events.setdefault(f"{state}:{trial.config['index']}", time.time())
        show(self, trial, state)

    sweep._StoreAndShow._set = record
    _, init_kwargs = VARIANTS[args.variant]
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        os.environ["HARNESS_CACHE_DIR"] = str(Path(tmp) / "cache")
        t0 = time.time()
        if init_kwargs:  # run_sweep's connect() then finds Ray running and leaves it as it is
            ray.init(num_cpus=args.cpus, num_gpus=gpus, include_dashboard=False, object_store_memory=200 * 1024**2,
                     log_to_driver=False, logging_level=logging.ERROR, **init_kwargs)
        else:
            sweep.connect(None, num_cpus=args.cpus, num_gpus=gpus)
        t_ray = time.time()
        summary = sweep.run_sweep(trial_plans, results_dir=Path(tmp) / "results", cpus_per_trial=args.cpus,
                                  gpus_per_trial=gpus, max_retries=0)
        t_end = time.time()
        rows = store.read_results(Path(tmp) / "results").drop_duplicates("trial_id").set_index("backbone")
    ray.shutdown()
    t_down = time.time()
    if summary.failed:
        raise SystemExit(f"trials failed: {summary.failed}")
    trials = [rows.loc[p.backbone] for p in trial_plans]
    n = len(trials)
    return {
        "ray_start": t_ray - t0,
        "tune_to_trial0_running": events["running:0"] - t_ray,
        "trial0_running_to_run_trial": trials[0].started_at.timestamp() - events["running:0"],
        "run_trial_0": float(trials[0].wall_s),
        "run_trial_1": float(trials[1].wall_s) if n > 1 else float("nan"),
        "run_trial_end_to_stored": statistics.mean(events[f"done:{i}"] - trials[i].ended_at.timestamp()
                                                   for i in range(n)),
        "stored_to_next_running": statistics.mean(events[f"running:{i + 1}"] - events[f"done:{i}"]
                                                  for i in range(n - 1)) if n > 1 else float("nan"),
        "last_stored_to_return": t_end - events[f"done:{n - 1}"],
        "run_sweep_total": t_end - t0,
        "ray_shutdown": t_down - t_end,
    }


def imports_once() -> dict:
    """Seconds of each import of IMPORTS in turn (each on top of the ones before)."""
    out = {}
    for name in IMPORTS:
        t = time.perf_counter()
        __import__(name)
        out[name] = time.perf_counter() - t
    return out


def trial_once(args: argparse.Namespace) -> dict:
    """run_trial's direct callees, cumulative seconds, per trial (the first trial pays first-use costs)."""
    import ray  # noqa: F401  -- a Tune worker has Ray and Tune imported before the trainable runs
    import ray.tune  # noqa: F401
    import torch

    from harness.run.trial import run_trial

    torch.set_num_threads(args.cpus)
    out = {}
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        os.environ["HARNESS_CACHE_DIR"] = tmp
        for plan in plans(args):
            profile = cProfile.Profile()
            t = time.perf_counter()
            profile.runcall(run_trial, plan, device=args.device)
            parts = {"total": time.perf_counter() - t}
            for (path, line, func), (_, _, _, _, callers) in pstats.Stats(profile).stats.items():
                for (cpath, _, cfunc), (_, _, _, cum) in callers.items():
                    if cfunc == "run_trial" and cpath.endswith("trial.py"):
                        key = f"{Path(path).stem}.{func}"
                        parts[key] = parts.get(key, 0.0) + cum
            out[plan.backbone] = dict(sorted(parts.items(), key=lambda kv: -kv[1]))
    return out


def extract_once(args: argparse.Namespace) -> dict:
    """Seconds of extract_tokens over all splits, per backbone: batched transform against per image (best of 2)."""
    import torch

    from harness.models.backbones import load_backbone
    from harness.data.splits import LabelledView, load_splits
    from harness.registry import load_registry
    from harness.tokens.cache import extract_tokens

    torch.set_num_threads(args.cpus)
    registry, batched = load_registry(), LabelledView.__getitems__
    taps = sorted({registry.aggregator(a).tap for a in args.aggregators.split(",")})
    out = {}
    for name in args.backbones.split(","):
        backbone = load_backbone(name, None, device=args.device)
        splits = load_splits(registry.dataset(args.dataset), backbone.entry)
        times: dict[str, list[float]] = {"batched": [], "per_image": []}
        for _ in range(2):
            for way in times:
                if way == "per_image":
                    del LabelledView.__getitems__
                t = time.perf_counter()
                for split in (splits.train, splits.val, splits.test):
                    extract_tokens(backbone, split, taps, batch_size=args.batch_size, device=args.device)
                times[way].append(time.perf_counter() - t)
                LabelledView.__getitems__ = batched
        out[name] = {way: min(ts) for way, ts in times.items()}
    return out


def child(args: argparse.Namespace, what: str, variant: str = "default") -> dict:
    """Run one measurement in a fresh Python process and return its JSON."""
    env = {**os.environ, **VARIANTS[variant][0], "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, __file__, "--child", what, "--variant", variant, *forwarded(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def forwarded(args: argparse.Namespace) -> list[str]:
    return [f"--backbones={args.backbones}", f"--dataset={args.dataset}", f"--aggregators={args.aggregators}",
            f"--lrs={args.lrs}", f"--seeds={args.seeds}", f"--epochs={args.epochs}",
            f"--batch-size={args.batch_size}", f"--cpus={args.cpus}", f"--device={args.device}"]


def median_parts(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="demo-mae-tiny,demo-simmim-tiny")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--aggregators", default="cls,mean,abmilp,ep")
    parser.add_argument("--lrs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma list of parts to leave out: imports, trial, extract")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sweep_overhead.json")
    parser.add_argument("--child", choices=("sweep", "imports", "trial", "extract"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        result = {"sweep": lambda: sweep_once(args), "imports": imports_once, "trial": lambda: trial_once(args),
                  "extract": lambda: extract_once(args)}
        print(json.dumps(result[args.child]()))
        return
    variants, skip = args.variants.split(","), set(filter(None, args.skip.split(",")))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; accepted: {', '.join(VARIANTS)}")
    load_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    imports, trials, extracts = [], [], []
    for round_ in range(args.repeats):
        for variant in variants:
            runs[variant].append(child(args, "sweep", variant))
            print(f"round {round_ + 1}, {variant}: run_sweep {runs[variant][-1]['run_sweep_total']:.2f} s", flush=True)
        if "imports" not in skip:
            imports.append(child(args, "imports"))
        if "trial" not in skip and round_ == 0:
            trials.append(child(args, "trial"))
        if "extract" not in skip:
            extracts.append(child(args, "extract"))
    medians = {v: median_parts(r) for v, r in runs.items()}
    print(f"\nmedian of {args.repeats} rounds, seconds ({args.epochs} epochs, {len(plans(args))} trials; load "
          f"average at start {load_start:.2f} on {os.cpu_count()} cores)")
    print(f"{'part':32}" + "".join(f"{v:>14}" for v in variants))
    for key in medians[variants[0]]:
        print(f"{key:32}" + "".join(f"{medians[v][key]:14.2f}" for v in variants))
    if imports:
        print("\nworker imports, each on top of the ones before (median):")
        for key, value in median_parts(imports).items():
            print(f"  {key:30}{value:8.2f}")
    if trials:
        print("\nrun_trial's direct callees, cumulative seconds:")
        for backbone, parts in trials[0].items():
            print(f"  {backbone}: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if v >= 0.005))
    if extracts:
        print("\nextract_tokens over every split (median), one transform call per loader batch vs per image:")
        for backbone in extracts[0]:
            batched, per_image = (statistics.median(e[backbone][w] for e in extracts) for w in ("batched", "per_image"))
            print(f"  {backbone:30}{batched:8.2f} vs {per_image:.2f}")
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
           "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
           "grid": {k: v for k, v in vars(args).items() if k in ("backbones", "dataset", "aggregators", "lrs", "seeds",
                                                                   "epochs", "batch_size", "cpus")},
           "median_s": medians, "runs_s": runs, "imports_s": imports, "run_trial_callees_s": trials,
           "extract_s": extracts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
