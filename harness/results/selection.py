"""The one selection rule every reported number goes through: choose on validation, report test.

Within one (backbone, dataset, protocol, recipe, aggregator, seed), among heads with status "ok", the head with the
highest `val_top1` is selected (ties: lowest lr, then lowest wd) and its `test_top1` is what gets reported. The
recipe (RECIPE_KEYS: the grid, the named recipe, every other training setting but lr and wd) is part of the key because a results folder
may hold several grids for one backbone and dataset (`full` and `claim` both cache CIFAR-100): selecting across
them would pick LARS and SGD heads together and take the union of their lr grids as the grid's edges.
Nothing is ever selected on test. Vectorised (factorize, a per-group maximum, then a sort of the few rows that reach
it), so it scales to millions of rows. No torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RECIPE_KEYS = ("grid", "optimizer", "recipe", "epochs", "batch_size", "warmup_epochs", "token_tap", "aggregator_options")
SELECTION_KEYS = ("backbone", "dataset", "protocol", *RECIPE_KEYS, "aggregator", "seed")


def select_best(results: pd.DataFrame, by: tuple[str, ...] = SELECTION_KEYS) -> pd.DataFrame:
    """One row per value of `by`: the val-selected head among the "ok" rows, ordered by `by`.

    `by` is the selection key; the leaderboard's per-lr curves add "lr" to it (the val-best wd at each lr).
    """
    ok = np.flatnonzero((results["status"] == "ok").to_numpy(dtype=bool, na_value=False))
    _, group = np.unique(_group_codes(results, by, ok), return_inverse=True)  # dense, in key order
    val, lr, wd = (results[c].to_numpy(dtype=float, na_value=np.nan)[ok] for c in ("val_top1", "lr", "wd"))
    top = np.full(int(group.max()) + 1 if len(group) else 0, np.nan)
    np.fmax.at(top, group, val)  # the best val score per group; NaN only where no head has one
    # A head without a val score is never preferred; ties (or no score at all): lowest lr, then lowest wd.
    tied = np.flatnonzero((val == top[group]) | np.isnan(top[group]))
    order = tied[np.lexsort((wd[tied], lr[tied], group[tied]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return results.iloc[ok[order[first]]].reset_index(drop=True)


@dataclass(frozen=True)
class Selection:
    """The rule's picks, computed once per regeneration and read by the boards and the claim alike."""

    per_lr: pd.DataFrame  # per selection key and lr: the val-best head over the wds there (the lr curves' points)
    best: pd.DataFrame  # per selection key: the val-best of those, the reported head (ties: lowest lr, then wd)


def select(results: pd.DataFrame) -> Selection:
    """The per-lr and the overall val-selected heads of `results`."""
    per_lr = select_best(results, by=SELECTION_KEYS + ("lr",))
    return Selection(per_lr, select_best(per_lr))


def _group_codes(results: pd.DataFrame, by: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """One int64 per row of `rows`, ordered like the sorted key tuples (hash factorize, no string sorts)."""
    group, size = np.zeros(len(rows), dtype=np.int64), 1
    for key in by:
        code = pd.factorize(results[key], sort=True, use_na_sentinel=False)[0][rows]
        card = int(code.max()) + 1 if len(code) else 1
        if size * card > 2**62:  # re-densify before the mixed-radix number could overflow
            group, uniques = pd.factorize(group, sort=True)
            size = len(uniques)
        group, size = group * card + code, size * card
    return group
