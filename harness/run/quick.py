"""A registered grid changed for one run without writing a grid file: the CLI's --backbones, --datasets,
--epochs, --seeds, --lrs and --limit-train, and the same keywords of `harness.sweep`. Every change is checked
against the registry, and what ran is in the rows (backbone, dataset, epochs, seed, lr and train_size columns, and
the config hash)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from harness.errors import HarnessError
from harness.registry import Grid, Registry


def _numbers(flag: str, values: Sequence, kind: type, accepted: str, *, zero: bool) -> tuple:
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or any(v != v or v < 0 or (v == 0 and not zero) for v in out):
        raise HarnessError(f"{flag} {','.join(map(str, values))!r} is not {accepted}.")
    return out


def _names(flag: str, names: Sequence[str], lookup) -> tuple[str, ...]:
    """Registered, distinct names (each backbone x dataset runs once)."""
    found = tuple(lookup(name).name for name in names)
    if len(set(found)) != len(found):
        raise HarnessError(f"{flag} {','.join(names)!r} names an entry twice; accepted: distinct registered names, "
                           "comma-separated (each backbone x dataset runs once).")
    return found


def customise(grid: Grid, reg: Registry, *, backbones: Sequence[str] | None = None,
              datasets: Sequence[str] | None = None, epochs: int | None = None, seeds: Sequence | None = None,
              lrs: Sequence | None = None, limit_train: int | None = None) -> Grid:
    """`grid` with the given parts replaced; None keeps the grid's. `lrs` replaces every head group's lr grid;
    `epochs` also replaces the grid's per-dataset epoch overrides; `limit_train` keeps the first N training images per
    class (part of the config hash; `train_size` in the rows says how many were used)."""
    changes: dict = {}
    if backbones:
        changes["backbones"] = _names("--backbones", backbones, reg.backbone)
    if datasets:
        changes["datasets"] = _names("--datasets", datasets, reg.dataset)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise HarnessError(f"--epochs {epochs} is not a positive number of epochs.")
        changes["epochs"] = epochs
        changes["overrides"] = {d: {k: v for k, v in o.items() if k != "epochs"} for d, o in grid.overrides.items()}
    if seeds:
        changes["seeds"] = _numbers("--seeds", seeds, int, "comma-separated seeds such as 0,1,2", zero=True)
        if len(set(changes["seeds"])) != len(changes["seeds"]):
            raise HarnessError(f"--seeds {','.join(map(str, seeds))!r} repeats a seed; accepted: distinct seeds.")
    if lrs:
        rates = _numbers("--lrs", lrs, float, "comma-separated positive learning rates such as 0.1,0.3,1", zero=False)
        changes["heads"] = tuple(dataclasses.replace(h, lrs=rates) for h in grid.heads)
    if limit_train is not None:
        if isinstance(limit_train, bool) or not isinstance(limit_train, int) or limit_train < 1:
            raise HarnessError(f"--limit-train {limit_train} is not a positive number of training images per class.")
        changes["limit_train"] = limit_train
    return dataclasses.replace(grid, **changes) if changes else grid
