"""The one selection rule every reported number goes through: choose on validation, report test.

Within one (backbone, dataset, protocol, aggregator, seed), among heads with status "ok", the head with the
highest `val_top1` is selected (ties: lowest lr, then lowest wd) and its `test_top1` is what gets reported.
Nothing is ever selected on test. Vectorised (one lexsort), so it scales to millions of rows. No torch, no Ray.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SELECTION_KEYS = ("backbone", "dataset", "protocol", "aggregator", "seed")


def select_best(results: pd.DataFrame, by: tuple[str, ...] = SELECTION_KEYS) -> pd.DataFrame:
    """One row per value of `by`: the val-selected head among the "ok" rows, ordered by `by`.

    `by` is the selection key; the leaderboard's per-lr curves add "lr" to it (the val-best wd at each lr).
    """
    ok = results[results["status"] == "ok"]
    if ok.empty:
        return ok.reset_index(drop=True)
    keys = list(by)
    group = ok.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    val = ok["val_top1"].to_numpy(dtype=float, na_value=np.nan)
    lr = ok["lr"].to_numpy(dtype=float, na_value=np.nan)
    wd = ok["wd"].to_numpy(dtype=float, na_value=np.nan)
    # lexsort sorts by the last key first; NaN sorts last, so a head without a val score is never preferred.
    order = np.lexsort((wd, lr, -val, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return ok.iloc[order[first]].reset_index(drop=True)
