"""Benchmark harness for reading out frozen self-supervised Vision Transformers.

The Python API, for notebooks and scripts (the CLI is a thin layer over the same functions):

- `sweep(grid, ...)`: run a registered grid (or a .toml path) on Ray Tune, optionally changed for this run;
- `read_results(results_dir)`: the store's latest row per head as a pandas DataFrame;
- `leaderboard(results_dir)`: regenerate the pages and return the boards as `harness leaderboard --format json`;
- `load_backbone(name)`: a registered backbone, frozen, as a torch module.

Heavy imports happen inside these functions, so `import harness` never pulls in torch or Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__version__ = "0.1.0"


def _results_dir(results_dir: str | Path | None) -> Path:
    from harness.config import setting

    return Path(results_dir) if results_dir is not None else setting("results_dir")


def sweep(grid: str | Path = "demo", *, backbones: Sequence[str] | None = None,
          datasets: Sequence[str] | None = None, epochs: int | None = None, seeds: Sequence[int] | None = None,
          lrs: Sequence[float] | None = None, limit_train: int | None = None, results_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, force: bool = False, address: str | None = None,
          num_cpus: int | None = None, write_leaderboard: bool = True):
    """Run the heads of `grid` that have no result yet (all with `force`) and return the `SweepSummary`; the
    rows land in `results_dir` as trials finish, and the pages are regenerated at the end."""
    import dataclasses

    from harness.registry import load_registry
    from harness.results import store
    from harness.run.plan import expand, without_done
    from harness.run.manifest import describe_sweep
    from harness.run.quick import customise
    from harness.run.sweep import git_commit, run_sweep

    reg = load_registry()
    plan = customise(reg.grid(str(grid)), reg, backbones=backbones, datasets=datasets, epochs=epochs, seeds=seeds,
                     lrs=lrs, limit_train=limit_train)
    root = _results_dir(results_dir)
    trials = expand(plan, reg)
    todo = trials if force else without_done(trials, store.completed_hashes(root))
    commit = git_commit()
    todo = [dataclasses.replace(t, provenance={"git_commit": commit}, cache_dir=str(Path(cache_dir).resolve())
                                if cache_dir else None) for t in todo]
    summary = run_sweep(todo, results_dir=root, cpus_per_trial=plan.cpus_per_trial,
                        gpus_per_trial=plan.gpus_per_trial, max_retries=plan.max_retries,
                        checkpoint_minutes=plan.checkpoint_minutes, address=address,
                        num_cpus=num_cpus, manifest=describe_sweep(plan, reg, commit=commit, argv=[]))
    if write_leaderboard and not summary.unfinished and store.completed_hashes(root):
        leaderboard(root)
    return summary


def read_results(results_dir: str | Path | None = None, columns: Sequence[str] | None = None):
    """Every head's latest row (all columns, or only `columns`) as a DataFrame; empty if there are none."""
    from harness.results import store

    return store.read_results(_results_dir(results_dir), columns)


def leaderboard(results_dir: str | Path | None = None, *, write: bool = True) -> list[dict]:
    """The boards of the results (schema: `harness leaderboard --format json`); `write` regenerates
    leaderboard.md and leaderboard.html beside the results."""
    from harness.report.boards import build_boards
    from harness.report.leaderboard import COLUMNS, boards_json, regenerate
    from harness.results import store

    root = _results_dir(results_dir)
    results = store.read_results(root, COLUMNS)
    return boards_json(regenerate(root, results=results)[0] if write else build_boards(results))


def __getattr__(name: str):
    if name == "load_backbone":
        from harness.models.backbones import load_backbone

        return load_backbone
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
