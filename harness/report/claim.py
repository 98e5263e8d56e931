"""The claim test (issue 8): is mean pooling equivalent to [cls] once its learning rate is tuned?

The ViT paper's appendix found global average pooling poor at the [cls] token's learning rate and equal to it at
its own; probing leaderboards still compare mean pooling at the [cls] lr. This module settles it per group from the
results store, with no torch or Ray; the statistics are `harness.report.claim_stats`', the pages
`harness.report.claim_pages`'.

Groups. One group is a backbone x dataset x protocol x grid x recipe (GROUP_KEYS: the named recipe, optimizer,
epochs, batch size, warmup; selection also keeps token tap and options apart): rows of another grid in the same results folder never
change a group's verdict, its selected lrs or its grid edges.

Method. The `cls` and `mean` aggregators are compared. For each seed, each one's head is chosen by validation
top-1 over its own lr (and wd) grid (`harness.results.selection.select_best`, never on test); their test top-1
values are paired by seed, d = mean - cls in top-1 points. The uncertainty of the mean of d adds the test set's
sampling error (from every selected head's stored test predictions) to the seeds' (`claim_stats`); where the
predictions are missing the seeds alone are used and the note says so. With it:
- "equivalent": the two one-sided tests (TOST) reject at alpha = 0.05 for the grid's margin (`claim_margin`): the
  90% CI of d lies inside (-margin, +margin). Each group's equivalence is its own claim (an intersection-union
  test needs no correction).
- "mean better" / "cls better": the one-sided test that d lies beyond the margin rejects at alpha / 2 (the whole
  95% CI beyond it) after Holm's correction across the groups of the table: the family-wise error of the
  "better" verdicts stays at 0.025 however many groups are tested.
- "inconclusive" otherwise, with the seeds that would give 80% power; fewer than 2 paired seeds is "inconclusive"
  with no estimate.
- "grid too narrow" when an aggregator's lr* (its most frequent selected lr over seeds) is the lowest or highest
  lr of its grid (the distinct lrs in its rows): the optimum may lie outside, so nothing is said about pooling.
- "not applicable" when one of the two has no "ok" head (I-JEPA has no [cls] token).
The same test is repeated at a shared lr ("untuned"): the mean head at the lr each seed's cls head selected (best
wd there) against that cls head. A seed whose mean head diverged or failed at that lr counts against mean pooling:
with any such seed the untuned verdict is never "equivalent" or "mean better", and the table counts them.
Seeds vary initialisation and data order in the cached protocol, initialisation only in the online one (heads
share one batch order): online groups are flagged, their seed interval understates training noise.
Random-init demo backbones are labelled "(random-init)" in every output: their numbers mean nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.registry import backbone_label
from harness.report.claim_stats import (ALPHA, CLS_BETTER, EQUIVALENT, INCONCLUSIVE, MEAN_BETTER, NARROW,
                                        NOT_APPLICABLE, Comparison, compare, holm, sampling_variance)
from harness.results.selection import SELECTION_KEYS, Selection, select

CLS, MEAN = "cls", "mean"
GROUP_KEYS = ["backbone", "dataset", "protocol", "grid", "recipe", "optimizer", "epochs", "batch_size",
              "warmup_epochs"]
DEFAULT_MARGIN = 0.5

# The columns the claim test reads; `harness.report.leaderboard` reads only these (and the boards') from the store.
INPUT_COLUMNS = tuple(dict.fromkeys((*SELECTION_KEYS, "lr", "wd", "status", "val_top1", "test_top1", "claim_margin",
                                     "random_init", "config_hash")))
_AGG_KEYS = [*GROUP_KEYS, "aggregator"]

LoadCorrect = Callable[[set[str]], dict[str, np.ndarray]]  # config hashes -> per-image correctness (store.read_correct)


def _claim_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The cls and mean rows (INPUT_COLUMNS only) of every group with both aggregators."""
    rows = results.loc[results["aggregator"].isin([CLS, MEAN]).to_numpy(dtype=bool), list(INPUT_COLUMNS)]
    both = rows.groupby(GROUP_KEYS, sort=False, dropna=False)["aggregator"].transform("nunique").to_numpy() == 2
    return rows[both]


def _prepared(results: pd.DataFrame, selection: Selection | None = None) -> tuple[pd.DataFrame, Selection]:
    """The claim rows and the selection's picks among them (`select(results)` unless the caller has it): the
    selection's groups include the aggregator, so picks among all rows restricted to the claim's are its own."""
    rows = _claim_rows(results)
    if selection is None:
        return rows, select(rows)
    groups = rows[GROUP_KEYS].drop_duplicates()

    def within(picks: pd.DataFrame) -> pd.DataFrame:
        return picks[picks["aggregator"].isin([CLS, MEAN]).to_numpy(dtype=bool)].merge(groups, on=GROUP_KEYS)

    return rows, Selection(within(selection.per_lr), within(selection.best))


def _curves(rows: pd.DataFrame, per_lr: pd.DataFrame) -> pd.DataFrame:
    keys = [*_AGG_KEYS, "lr"]
    grid = rows[keys].drop_duplicates()
    points = per_lr.groupby(keys, as_index=False).agg(
        n_ok=("seed", "nunique"), val_top1=("val_top1", "mean"), test_top1=("test_top1", "mean"))
    out = grid.merge(points, on=keys, how="left")
    out["n_ok"] = out["n_ok"].fillna(0).astype("int64")
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def claim_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Validation and test top-1 of cls and mean against lr, averaged over seeds (best wd per seed and lr).

    One row per group x aggregator x lr of the grid; `n_ok` seeds had an "ok" head there (0: every head at that
    lr diverged or failed, accuracies NaN).
    """
    rows, selection = _prepared(results)
    return _curves(rows, selection.per_lr)


def _optima(rows: pd.DataFrame, best: pd.DataFrame, groups: pd.Index) -> pd.DataFrame:
    """Per group of `groups`: each aggregator's lr* (its most frequent selected lr over seeds, ties: lowest) and
    whether lr* is an edge of its grid (the distinct lrs of its rows, any status); NaN / False without an ok head.
    lr*, not any seed's pick: on a plateau single seeds land on the edge by validation noise alone."""
    bounds = rows.groupby(_AGG_KEYS)["lr"].agg(["min", "max"])
    counts = best.groupby([*_AGG_KEYS, "lr"]).size().rename("count").reset_index()
    mode = counts.sort_values(["count", "lr"], ascending=[False, True]).drop_duplicates(_AGG_KEYS)
    per_agg = mode.set_index(_AGG_KEYS)[["lr"]].join(bounds)
    per_agg["edge"] = (per_agg["lr"] == per_agg["min"]) | (per_agg["lr"] == per_agg["max"])
    wide = per_agg[["edge", "lr"]].unstack("aggregator").reindex(
        index=groups, columns=pd.MultiIndex.from_product([["edge", "lr"], [CLS, MEAN]]))
    return pd.DataFrame({**{f"{agg}_lr": wide[("lr", agg)].astype(float) for agg in (CLS, MEAN)},
                         **{f"{agg}_lr_edge": wide[("edge", agg)].eq(True) for agg in (CLS, MEAN)}})


def _by_group(frame: pd.DataFrame, columns: list[str]) -> dict[tuple, list[tuple]]:
    """The `columns` of each group's rows, in seed order (frame sorted by group, then seed)."""
    out: dict[tuple, list[tuple]] = {}
    for key, part in frame.groupby(GROUP_KEYS, sort=False):
        out[key] = list(zip(*(part[c].tolist() for c in columns)))
    return out


def _margins(rows: pd.DataFrame) -> pd.Series:
    """Each group's claim_margin (the strictest of its rows; DEFAULT_MARGIN where none is recorded), checked."""
    margin = rows.groupby(GROUP_KEYS)["claim_margin"].min().fillna(DEFAULT_MARGIN)
    bad = margin[~(np.isfinite(margin) & (margin > 0))]
    if len(bad):
        key, value = bad.index[0], bad.iloc[0]
        raise HarnessError(f"grid '{key[3]}' ({key[0]} on {key[1]}): claim_margin {value} in the results; accepted: "
                           "a finite positive number of top-1 points (a negative one would swap the verdicts).")
    return margin


def _groups(rows: pd.DataFrame, selection: Selection):
    """Per group (sorted): its facts, and per seed the tuned and untuned (d, cls hash, mean hash)."""
    per_lr, best = selection.per_lr, selection.best
    twice = best.duplicated([*_AGG_KEYS, "seed"])
    if twice.any():
        r = best[twice].iloc[0]
        raise HarnessError(f"grid '{r.grid}' holds {r.aggregator} heads of more than one token tap or option set "
                           f"for {r.backbone} on {r.dataset}; accepted: one setting per aggregator in a grid (move "
                           "the older rows out of the results folder or give the new setting its own grid name).")
    facts = rows.assign(random_init=rows["random_init"].eq(True)).groupby(GROUP_KEYS).agg(
        random_init=("random_init", "any"))
    facts["margin"] = _margins(rows)
    facts = facts.join(_optima(rows, best, facts.index))
    cls = best.loc[best["aggregator"] == CLS, [*GROUP_KEYS, "seed", "lr", "test_top1", "config_hash"]]
    mean = best.loc[best["aggregator"] == MEAN, [*GROUP_KEYS, "seed", "test_top1", "config_hash"]]
    paired = cls.merge(mean, on=[*GROUP_KEYS, "seed"], suffixes=("_cls", "_mean")).sort_values([*GROUP_KEYS, "seed"])
    facts = facts.join(paired.groupby(GROUP_KEYS)[["test_top1_cls", "test_top1_mean"]].mean()
                       .set_axis(["cls_test", "mean_test"], axis=1))
    facts["has_cls"] = facts.index.isin(cls.set_index(GROUP_KEYS).index)
    facts["has_mean"] = facts.index.isin(mean.set_index(GROUP_KEYS).index)
    # untuned: the mean head at each seed's cls-selected lr
    shared = per_lr.loc[per_lr["aggregator"] == MEAN, [*GROUP_KEYS, "seed", "lr", "test_top1", "config_hash"]].merge(
        paired[[*GROUP_KEYS, "seed", "lr", "test_top1_cls", "config_hash_cls"]], on=[*GROUP_KEYS, "seed", "lr"])
    shared = shared.sort_values([*GROUP_KEYS, "seed"])
    paired["d"] = paired["test_top1_mean"] - paired["test_top1_cls"]
    shared["d"] = shared["test_top1"] - shared["test_top1_cls"]
    tuned = _by_group(paired, ["d", "config_hash_cls", "config_hash_mean"])
    untuned = _by_group(shared, ["d", "config_hash_cls", "config_hash"])
    return facts, tuned, untuned


@dataclass(frozen=True)
class Sampling:
    """The test set's part of a comparison: its variance (None: predictions missing) and size."""

    variance: float | None
    images: int
    missing: int  # selected heads without stored predictions


def _test_set(pairs: list[tuple], correct: dict[str, np.ndarray]) -> Sampling:
    """From each seed's (d, cls hash, mean hash): the sampling variance of the mean difference over test images."""
    vectors = [(correct.get(c), correct.get(m)) for _, c, m in pairs]
    missing = sum(v is None for pair in vectors for v in pair)
    sizes = {len(v) for pair in vectors for v in pair if v is not None}
    if missing or not pairs or len(sizes) != 1 or min(sizes) < 2:
        return Sampling(None, max(sizes, default=0), missing)
    per_image = np.mean([m.astype(np.int8) - c.astype(np.int8) for c, m in vectors], axis=0)
    return Sampling(sampling_variance(per_image), sizes.pop(), 0)


def _test_note(test: Sampling, n: int) -> str:
    if n < 2 or test.variance is not None:
        return ""
    if test.missing:
        return (f"no stored test predictions for {test.missing} selected head(s): the interval covers the seeds "
                "only (rerun the sweep with this harness version to store them)")
    return "test predictions of differing or too few images: the interval covers the seeds only"


def _not_applicable(aggregator: str, statuses: dict[str, int]) -> str:
    if set(statuses) == {"not-applicable"}:
        return f"{aggregator}: not applicable to this backbone"
    return f"{aggregator}: no ok head ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"


def _status_counts(rows: pd.DataFrame) -> dict[tuple, dict[str, int]]:
    """{(*group, aggregator): {status: rows}}."""
    out: dict[tuple, dict[str, int]] = {}
    for (*key, status), count in rows.groupby([*_AGG_KEYS, "status"]).size().items():
        out.setdefault(tuple(key), {})[status] = int(count)
    return out


def _overall(comp: Comparison, missing: bool, edge: bool) -> str:
    """The statistical verdict unless a head is missing or an optimum sat at its grid's edge."""
    if missing:
        return NOT_APPLICABLE
    return NARROW if edge else comp.verdict


def _group_row(key: tuple, facts, tuned_pairs: list, untuned_pairs: list, correct: dict, statuses: dict) -> dict:
    tuned_test, untuned_test = _test_set(tuned_pairs, correct), _test_set(untuned_pairs, correct)
    tuned = compare([p[0] for p in tuned_pairs], facts.margin, tuned_test.variance, tuned_test.images)
    untuned = compare([p[0] for p in untuned_pairs], facts.margin, untuned_test.variance, untuned_test.images)
    cls_edge, mean_edge = bool(facts.cls_lr_edge), bool(facts.mean_lr_edge)
    missing = not (facts.has_cls and facts.has_mean)
    failed = tuned.n - untuned.n
    notes = []
    if missing:
        notes += [_not_applicable(a, statuses[(*key, a)]) for a, has in ((CLS, facts.has_cls),
                                                                         (MEAN, facts.has_mean)) if not has]
    elif cls_edge or mean_edge:
        notes.append("optimum at the edge of the lr grid of " + " and ".join(
            a for a, edge in ((CLS, cls_edge), (MEAN, mean_edge)) if edge) + ": widen it")
    elif tuned.n < 2:
        notes.append(f"{tuned.n} paired seed(s): at least 2 are needed for an interval")
    if failed:
        notes.append(f"mean had no ok head at the cls-selected lr for {failed} of {tuned.n} seed(s): they count "
                     "against mean pooling")
    if not missing:
        notes += [n for n in dict.fromkeys((_test_note(tuned_test, tuned.n), _test_note(untuned_test, untuned.n))) if n]
    online = key[2] == "online"
    if online and not missing:
        notes.append("online protocol: seeds vary only the initialisation (one shared data order), so the seed "
                     "interval understates training noise")
    untuned_verdict = _overall(untuned, missing, cls_edge)
    if failed and untuned_verdict in (EQUIVALENT, MEAN_BETTER):
        untuned_verdict = INCONCLUSIVE
    row = dict(zip(GROUP_KEYS, key))
    row.update(label=backbone_label(key[0], bool(facts.random_init)), random_init=bool(facts.random_init),
               margin=float(facts.margin), seeds_vary="initialisation" if online else "initialisation and data order",
               test_images=tuned_test.images if tuned_test.variance is not None else 0,
               cls_lr=float(facts.cls_lr), cls_lr_edge=cls_edge, mean_lr=float(facts.mean_lr),
               mean_lr_edge=mean_edge, cls_test=float(facts.cls_test), mean_test=float(facts.mean_test),
               failed_seeds_at_cls_lr=failed)
    for prefix, comp, verdict in (("", tuned, _overall(tuned, missing, cls_edge or mean_edge)),
                                  ("untuned_", untuned, untuned_verdict)):
        row.update({f"{prefix}n_seeds": comp.n, f"{prefix}difference": comp.diff, f"{prefix}ci_low": comp.ci_low,
                    f"{prefix}ci_high": comp.ci_high, f"{prefix}seed_ci_low": comp.seed_ci_low,
                    f"{prefix}seed_ci_high": comp.seed_ci_high, f"{prefix}p_tost": comp.p_tost,
                    f"{prefix}p_beyond": comp.p_beyond, f"{prefix}verdict": verdict,
                    f"{prefix}seeds_needed": comp.seeds_needed if verdict == INCONCLUSIVE else None})
    row["note"] = "; ".join(notes)
    return row


def _family(records: list[dict], prefix: str) -> None:
    """Holm across the groups with a statistical verdict: a "better" verdict stands only if its adjusted one-sided
    p-value stays below alpha / 2; the others become "inconclusive" and say why."""
    family = [r for r in records if r[f"{prefix}verdict"] in (EQUIVALENT, MEAN_BETTER, CLS_BETTER, INCONCLUSIVE)
              and not math.isnan(r[f"{prefix}p_beyond"])]
    for r in records:
        r[f"{prefix}p_beyond_holm"] = math.nan
    for r, adjusted in zip(family, holm([r[f"{prefix}p_beyond"] for r in family])):
        r[f"{prefix}p_beyond_holm"] = adjusted
        if r[f"{prefix}verdict"] in (MEAN_BETTER, CLS_BETTER) and not adjusted < ALPHA / 2:
            what = "tuned" if not prefix else "at the cls lr"
            r["note"] = "; ".join(n for n in (r["note"], f"{what}: {r[f'{prefix}verdict']} before Holm's "
                                  f"correction across {len(family)} groups (adjusted p {adjusted:.3f})") if n)
            r[f"{prefix}verdict"] = INCONCLUSIVE


_STAT_COLUMNS = ["n_seeds", "difference", "ci_low", "ci_high", "seed_ci_low", "seed_ci_high", "p_tost", "p_beyond",
                 "p_beyond_holm", "verdict", "seeds_needed"]
CLAIM_COLUMNS = [
    *GROUP_KEYS, "label", "random_init", "margin", "seeds_vary", "test_images", "cls_lr", "cls_lr_edge", "mean_lr",
    "mean_lr_edge", "cls_test", "mean_test", *_STAT_COLUMNS, *(f"untuned_{c}" for c in _STAT_COLUMNS),
    "failed_seeds_at_cls_lr", "note",
]


def _table(rows: pd.DataFrame, selection: Selection, load_correct: LoadCorrect | None) -> pd.DataFrame:
    """Vectorised over groups; only the tests run once per group (few)."""
    records = []
    if not rows.empty:
        facts, tuned, untuned = _groups(rows, selection)
        statuses = _status_counts(rows) if not (facts["has_cls"] & facts["has_mean"]).all() else {}
        hashes = {h for pairs in (*tuned.values(), *untuned.values()) for _, *pair in pairs for h in pair}
        correct = load_correct(hashes) if load_correct is not None and hashes else {}
        records = [_group_row(key, f, tuned.get(key, []), untuned.get(key, []), correct, statuses)
                   for key, f in zip(facts.index, facts.itertuples(index=False))]
        _family(records, "")
        _family(records, "untuned_")
    table = pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)
    for column in ("seeds_needed", "untuned_seeds_needed"):
        table[column] = table[column].astype("Int64")
    return table


def claim_table(results: pd.DataFrame, load_correct: LoadCorrect | None = None) -> pd.DataFrame:
    """One row per group (GROUP_KEYS) with both cls and mean heads: optima, tuned and untuned tests.

    Columns (CLAIM_COLUMNS): `n_seeds` paired seeds; `test_images` the test set behind the full interval (0: seeds
    only); `cls_lr`/`mean_lr` the most frequent selected lr and `*_lr_edge` whether any seed selected a grid edge;
    `cls_test`/`mean_test` mean test top-1 of the selected heads; `difference`, `ci_low`, `ci_high` (95%, seeds and
    test set), `seed_ci_low`, `seed_ci_high` (seeds only), `p_tost`, `p_beyond` (and Holm-adjusted), `verdict`,
    `seeds_needed` for d = mean - cls (tuned), the same with `untuned_` for the mean head at the cls-selected lr,
    and `failed_seeds_at_cls_lr`. `load_correct` (e.g. `store.read_correct` on the results folder) gives the
    selected heads' test predictions. Sorted by GROUP_KEYS.
    """
    return _table(*_prepared(results), load_correct)


@dataclass(frozen=True)
class ClaimAnalysis:
    """The verdict table and the curves, computed once and rendered by both pages (Markdown and HTML)."""

    table: pd.DataFrame  # claim_table's
    curves: pd.DataFrame  # claim_curves'


def claim_analysis(results: pd.DataFrame, load_correct: LoadCorrect | None = None,
                   selection: Selection | None = None) -> ClaimAnalysis:
    """claim_table and claim_curves of `results`, sharing their selection work (`selection`: `select(results)`,
    when the caller has made it for the boards too)."""
    rows, selection = _prepared(results, selection)
    return ClaimAnalysis(_table(rows, selection, load_correct), _curves(rows, selection.per_lr))


JSON_FIELDS = ("backbone", "dataset", "protocol", "grid", "recipe", "optimizer", "epochs", "batch_size",
               "warmup_epochs", "random_init", "margin", "seeds_vary", "n_seeds", "test_images", "difference", "ci_low", "ci_high",
               "seed_ci_low", "seed_ci_high", "p_tost", "p_beyond_holm", "verdict", "seeds_needed", "cls_lr",
               "mean_lr", "untuned_difference", "untuned_ci_low", "untuned_ci_high", "untuned_verdict",
               "failed_seeds_at_cls_lr", "note")


def claim_records(table: pd.DataFrame) -> list[dict]:
    """One plain dict per group (JSON_FIELDS; NaN and missing as None) for `harness claim --format json`."""
    def plain(value):
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
        return value.item() if isinstance(value, np.generic) else value

    return [{f: plain(v) for f, v in zip(JSON_FIELDS, values)}
            for values in zip(*(table[f].astype(object).tolist() for f in JSON_FIELDS))]
