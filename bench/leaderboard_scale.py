"""How long does `write_leaderboards` take on a 1,000,000-row results store? (target: under 10 s, 2 cores)

Writes a synthetic store through `harness.results.store.write_trial` (one file per trial, as a sweep does), then times
`write_leaderboards` end to end twice (read, select, claim test, render Markdown + HTML), checks that the two
regenerations wrote byte-identical pages, and times its stages separately: read_results (the columns the pages
need), select (once, for boards and claim), build_boards, claim_analysis (computed once for both pages), and
rendering both pages. The machine may be shared, so the load average is recorded before and after. Prints the figures and writes them to
bench/out/leaderboard_scale.json. Not a test.

    python bench/leaderboard_scale.py                 # 1,000,000 rows
    python bench/leaderboard_scale.py --backbones 2   # 80,000 rows, a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import product
from pathlib import Path

import numpy as np

from harness.results.store import SCHEMA_VERSION, read_results, write_trial

AGGREGATORS = ("cls", "mean", "abmilp", "query", "ep")
DATASETS = ("digits", "cifar10", "cifar100", "flowers", "pets")
PROTOCOLS = ("cached", "online")
SEEDS = tuple(range(5))
LRS = tuple(float(f"{10 ** (-4 + 4 * i / 19):.3g}") for i in range(20))
WDS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def trial_rows(backbone: str, dataset: str, protocol: str, rng: np.random.Generator) -> list[dict]:
    """One trial's heads: every aggregator x seed x lr x wd, a few diverged, cls not applicable to '*-nocls'."""
    rows = []
    trial = f"{backbone}-{dataset}-{protocol}"
    for agg, seed, lr, wd in product(AGGREGATORS, SEEDS, LRS, WDS):
        head = f"{agg}/lr={lr:g}/wd={wd:g}/seed={seed}"
        status = "not-applicable" if agg == "cls" and backbone.endswith("-nocls") else (
            "diverged" if rng.random() < 0.02 else "ok")
        acc = 60 + 10 * np.exp(-(np.log10(lr) + 2 + 0.3 * AGGREGATORS.index(agg)) ** 2) + rng.normal(0, 0.5)
        ok = status == "ok"
        rows.append({
            "config_hash": hashlib.sha256(f"{trial}/{head}".encode()).hexdigest(), "trial_id": trial,
            "grid": "scale", "head_id": head, "backbone": backbone, "family": "mae",
            "random_init": backbone.startswith("demo"), "weights_sha256": "0" * 64, "dataset": dataset,
            "num_classes": 10, "train_size": 50000, "val_size": 5000, "test_size": 10000, "split_seed": 0,
            "aggregator": agg, "aggregator_kind": agg, "aggregator_options": "{}", "token_tap": "norm", "layer": "-1",
            "swept_options": "{}", "protocol": protocol, "optimizer": "lars", "recipe": "", "lr": lr, "wd": wd,
            "epochs": 90, "batch_size": 1024, "warmup_epochs": 10, "seed": seed, "claim_margin": 0.5,
            "status": status, "error": "",
            "diverged_step": 100 if status == "diverged" else None,
            "val_top1": float(acc) if ok else None, "val_top5": 95.0 if ok else None,
            "test_top1": float(acc + rng.normal(0, 0.5)) if ok else None, "test_top5": 95.0 if ok else None,
            "train_loss": 1.0 if ok else None, "wall_s": 100.0, "backbone_passes": 65000, "images_per_s": 900.0,
            "harness_version": "0.1.0", "git_commit": "bench", "torch_version": "2", "timm_version": "1",
            "ray_version": "2", "device": "bench", "started_at": T0, "ended_at": T0 + timedelta(seconds=100),
            "schema_version": SCHEMA_VERSION,
        })
    return rows


def generate(root: Path, num_backbones: int) -> int:
    rng = np.random.default_rng(0)
    names = [f"demo-bench-{i}" if i == 0 else f"bench-vit-{i}" + ("-nocls" if i == 1 else "")
             for i in range(num_backbones)]
    count = 0
    for backbone, dataset, protocol in product(names, DATASETS, PROTOCOLS):
        rows = trial_rows(backbone, dataset, protocol, rng)
        write_trial(root, rows, [])
        count += len(rows)
    return count


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", type=int, default=25, help="40,000 rows each (default 25: 1,000,000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "leaderboard_scale.json")
    parser.add_argument("--root", type=Path, help="keep the store here (reused if it has rows; default: temporary)")
    args = parser.parse_args()
    from harness.report.claim import claim_analysis
    from harness.report.claim_pages import claim_html, claim_markdown
    from harness.report.leaderboard import COLUMNS, markdown_page, write_leaderboards
    from harness.report.html import html_page
    from harness.report.boards import build_boards
    from harness.results.selection import select

    root = args.root or Path(tempfile.mkdtemp(prefix="leaderboard-scale-"))
    try:
        reuse = (root / "rows").is_dir()
        gen_s, rows = (0.0, len(read_results(root))) if reuse else timed(generate, root, args.backbones)
        load_before = os.getloadavg()
        runs, pages = [], []
        for _ in range(2):
            total_s, paths = timed(write_leaderboards, root)
            runs.append(round(total_s, 2))
            pages.append([path.read_bytes() for path in paths])
        read_s, results = timed(read_results, root, COLUMNS)
        select_s, selection = timed(select, results)
        build_s, boards = timed(build_boards, results, None, selection)
        claim_s, claim = timed(claim_analysis, results, None, selection)
        render_s, _ = timed(lambda: (markdown_page(boards, claim_markdown(claim)),
                                     html_page(boards, claim_html(claim))))
        figures = {
            "command": f"python bench/leaderboard_scale.py --backbones {args.backbones}",
            "rows": rows, "files": len(list((root / "rows").rglob("*.parquet"))), "target_s": 10.0,
            "write_leaderboards_s": runs, "byte_identical": pages[0] == pages[1],
            "stages_s": {"read_results": round(read_s, 2), "select": round(select_s, 2),
                         "build_boards": round(build_s, 2),
                         "claim_analysis": round(claim_s, 2), "render_markdown+html": round(render_s, 2)},
            "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                    "after": [round(x, 2) for x in os.getloadavg()]},
            "generate_s": "reused store" if reuse else round(gen_s, 1),
            "cpus": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
        }
    finally:
        if args.root is None:
            shutil.rmtree(root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"write_leaderboards on {rows:,} rows: {min(runs):.2f} s best of 2 (target < 10 s); wrote {args.out}")


if __name__ == "__main__":
    main()
