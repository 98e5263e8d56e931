"""The claim test (issue 8): is mean pooling equivalent to [cls] once its learning rate is tuned?

The ViT paper's appendix found global average pooling poor at the [cls] token's learning rate and equal to it at
its own; probing leaderboards still compare mean pooling at the [cls] lr. This module settles it per backbone x
dataset x protocol from the results store, with no torch or Ray.

Method. The `cls` and `mean` aggregators are compared. For each seed, each one's head is chosen by validation
top-1 over its own lr (and wd) grid (`harness.results.selection.select_best`, never on test); their test top-1 values are
paired by seed, d = mean - cls in top-1 points. With the paired t statistics of d:
- "equivalent": the paired two one-sided tests (TOST) reject at alpha = 0.05 for the margin delta of the grid
  (`claim_margin`), i.e. the 90% CI of d lies inside (-delta, +delta). A significant but smaller-than-delta
  difference is therefore "equivalent": equal for practical purposes.
- "mean better" / "cls better": the whole 95% CI of d lies beyond +delta / below -delta (better by more than the
  margin, a one-sided test at alpha = 0.025). A CI that excludes 0 but still reaches inside the margin is not
  enough in either direction.
- "inconclusive" otherwise, with the number of seeds that would give 80% power at the observed mean and sd of d
  (noncentral t, as statsmodels' `TTestPower`): for TOST when |mean d| < delta (a conservative bound, P(both
  one-sided tests reject) >= P(lower) + P(upper) - 1), for the beyond-the-margin test otherwise. Fewer than 2 paired
  seeds is "inconclusive" with no estimate.
- "grid too narrow" when an aggregator's lr* (its most frequent selected lr over seeds) is the lowest or highest lr
  of its grid (the distinct lrs in its rows): the optimum may lie outside, so nothing is said about pooling.
- "not applicable" when one of the two has no "ok" head (I-JEPA has no [cls] token).
The same test is repeated at a shared lr ("untuned"): the mean head at the lr each seed's cls head selected
(best wd there by validation) against that cls head; only the cls optimum's grid edge matters for it.
Random-init demo backbones are labelled "(random-init)" in every output: their numbers mean nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import special

from harness.report.boards import Curve
from harness.report.svg import lr_plot
from harness.report.markdown import md_escape, md_table
from harness.report.plain import html_text, markup_text
from harness.results.selection import SELECTION_KEYS, select_best

CLS, MEAN = "cls", "mean"
GROUP_KEYS = ["backbone", "dataset", "protocol"]
ALPHA = 0.05
POWER = 0.8
DEFAULT_MARGIN = 0.5
MAX_SEEDS = 100_000  # the power search stops here: beyond it, "seeds needed" is reported as unknown (None)
EQUIVALENT, MEAN_BETTER, CLS_BETTER = "equivalent", "mean better", "cls better"
INCONCLUSIVE, NARROW, NOT_APPLICABLE = "inconclusive", "grid too narrow", "not applicable"


# ------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Comparison:
    """The paired test of d = mean - cls (top-1 points) for one backbone x dataset x protocol."""

    n: int
    diff: float  # mean of d
    ci_low: float  # 95% CI of the mean of d (paired t)
    ci_high: float
    p_tost: float  # paired TOST p-value for |d| < margin
    verdict: str
    seeds_needed: int | None  # only for "inconclusive": seeds for 80% power at the observed mean and sd


# The t and noncentral-t formulas are written out on SciPy's special functions: `scipy.stats`' per-call overhead
# (argument checks, broadcasting) was most of a leaderboard regeneration. Tests check them against statsmodels.


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    """Mean of d and its standard error (n >= 2)."""
    return float(d.mean()), math.sqrt(float(d.var(ddof=1)) / len(d))


def tost_paired(d: np.ndarray, margin: float) -> float:
    """p-value of the paired two one-sided tests that the mean of d lies inside (-margin, +margin)."""
    d = np.asarray(d, dtype=float)
    if np.ptp(d) == 0.0:  # no spread: the decision is exact (the t statistic would divide by a zero sd)
        return 0.0 if abs(d[0]) < margin else 1.0
    mean, se = _mean_se(d)
    df = len(d) - 1
    lower = special.stdtr(df, -(mean + margin) / se)  # H0: mean <= -margin, P(T >= t)
    upper = special.stdtr(df, (mean - margin) / se)  # H0: mean >= +margin, P(T <= t)
    return float(max(lower, upper))


def mean_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided confidence interval of the mean of d (paired t)."""
    d = np.asarray(d, dtype=float)
    if np.ptp(d) == 0.0:
        return float(d.mean()), float(d.mean())
    mean, se = _mean_se(d)
    half = float(special.stdtrit(len(d) - 1, 0.5 + level / 2)) * se
    return mean - half, mean + half


def _power(effect: float, n: int, alpha: float) -> float:
    """Power of the one-sided one-sample t-test at level alpha for a standardised effect (noncentral t)."""
    df = n - 1
    critical = -special.stdtrit(df, alpha)  # the t quantile with alpha above it
    return 1.0 - float(special.nctdtr(df, effect * math.sqrt(n), critical))


def _smallest_n(power_at) -> int | None:
    """The smallest n >= 2 with power_at(n) >= POWER (power grows with n), or None beyond MAX_SEEDS."""
    if power_at(MAX_SEEDS) < POWER:
        return None
    low, high = 1, 2  # invariant: power_at(low) < POWER (or low == 1), power_at(high) >= POWER once found
    while power_at(high) < POWER:
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= POWER else (mid, high)
    return high


def seeds_needed(diff: float, sd: float, margin: float) -> int | None:
    """Seeds for 80% power at the observed mean and sd of d: TOST if |diff| < margin, else beyond-the-margin."""
    if not sd > 0.0 or abs(diff) == margin:
        return None
    if abs(diff) < margin:
        lower, upper = (margin + diff) / sd, (margin - diff) / sd
        return _smallest_n(lambda n: _power(lower, n, ALPHA) + _power(upper, n, ALPHA) - 1.0)
    effect = (abs(diff) - margin) / sd
    return _smallest_n(lambda n: _power(effect, n, ALPHA / 2))


def compare(d: np.ndarray, margin: float) -> Comparison:
    """The verdict on paired differences d = mean - cls by the rule in the module docstring."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        diff = float(d[0]) if n else math.nan
        return Comparison(n, diff, math.nan, math.nan, math.nan, INCONCLUSIVE, None)
    diff = float(d.mean())
    low, high = mean_ci(d)
    p = tost_paired(d, margin)
    if p < ALPHA:
        verdict, needed = EQUIVALENT, None
    elif low > margin:
        verdict, needed = MEAN_BETTER, None
    elif high < -margin:
        verdict, needed = CLS_BETTER, None
    else:
        verdict, needed = INCONCLUSIVE, seeds_needed(diff, float(d.std(ddof=1)), margin)
    return Comparison(n, diff, low, high, p, verdict, needed)


# ---------------------------------------------------------------------------------------------- tables

# The columns the claim test reads; `harness.report.leaderboard` reads only these (and the boards') from the store.
INPUT_COLUMNS = (*GROUP_KEYS, "aggregator", "seed", "lr", "wd", "status", "val_top1", "test_top1", "claim_margin",
                 "random_init")
_AGG_KEYS = [*GROUP_KEYS, "aggregator"]


def _claim_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The cls and mean rows (INPUT_COLUMNS only) of every backbone x dataset x protocol with both aggregators."""
    rows = results.loc[results["aggregator"].isin([CLS, MEAN]).to_numpy(dtype=bool), list(INPUT_COLUMNS)]
    both = rows.groupby(GROUP_KEYS, sort=False)["aggregator"].transform("nunique").to_numpy() == 2
    return rows[both]


def _prepared(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claim rows and, per seed and lr, the head selected by validation over the wds there (curve points)."""
    rows = _claim_rows(results)
    return rows, select_best(rows, by=(*SELECTION_KEYS, "lr"))


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

    One row per backbone x dataset x protocol x aggregator x lr of the grid; `n_ok` seeds had an "ok" head
    there (0: every head at that lr diverged or failed, accuracies NaN).
    """
    return _curves(*_prepared(results))


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


def _differences(frame: pd.DataFrame, d: pd.Series) -> dict[tuple, np.ndarray]:
    """The paired differences d of each group, in seed order."""
    return {key: part.to_numpy() for key, part in d.groupby([frame[k] for k in GROUP_KEYS], sort=False)}


def _groups(rows: pd.DataFrame, per_lr: pd.DataFrame):
    """Per group (sorted): its facts, tuned and untuned paired differences."""
    best = select_best(per_lr)  # the val-best head of each lr, then the val-best of those: the rule's pick
    facts = rows.assign(random_init=rows["random_init"].eq(True)).groupby(GROUP_KEYS).agg(
        random_init=("random_init", "any"), margin=("claim_margin", "min"))
    facts["margin"] = facts["margin"].fillna(DEFAULT_MARGIN)  # the strictest margin of the grids present
    facts = facts.join(_optima(rows, best, facts.index))
    cls = best.loc[best["aggregator"] == CLS, [*GROUP_KEYS, "seed", "lr", "test_top1"]]
    mean = best.loc[best["aggregator"] == MEAN, [*GROUP_KEYS, "seed", "test_top1"]]
    paired = cls.merge(mean, on=[*GROUP_KEYS, "seed"], suffixes=("_cls", "_mean")).sort_values([*GROUP_KEYS, "seed"])
    facts = facts.join(paired.groupby(GROUP_KEYS)[["test_top1_cls", "test_top1_mean"]].mean()
                       .set_axis(["cls_test", "mean_test"], axis=1))
    facts["has_cls"] = facts.index.isin(cls.set_index(GROUP_KEYS).index)
    facts["has_mean"] = facts.index.isin(mean.set_index(GROUP_KEYS).index)
    # untuned: the mean head at each seed's cls-selected lr
    shared = per_lr.loc[per_lr["aggregator"] == MEAN, [*GROUP_KEYS, "seed", "lr", "test_top1"]].merge(
        paired[[*GROUP_KEYS, "seed", "lr", "test_top1_cls"]], on=[*GROUP_KEYS, "seed", "lr"])
    tuned = _differences(paired, paired["test_top1_mean"] - paired["test_top1_cls"])
    untuned = _differences(shared, shared["test_top1"] - shared["test_top1_cls"])
    return facts, tuned, untuned


def _not_applicable(aggregator: str, statuses: dict[str, int]) -> str:
    if set(statuses) == {"not-applicable"}:
        return f"{aggregator}: not applicable to this backbone"
    return f"{aggregator}: no ok head ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"


def _status_counts(rows: pd.DataFrame) -> dict[tuple, dict[str, int]]:
    """{(backbone, dataset, protocol, aggregator): {status: rows}}."""
    out: dict[tuple, dict[str, int]] = {}
    for (*key, status), count in rows.groupby([*_AGG_KEYS, "status"]).size().items():
        out.setdefault(tuple(key), {})[status] = int(count)
    return out


def _group_row(key: tuple, facts: tuple, tuned_d: np.ndarray, untuned_d: np.ndarray, statuses: dict) -> dict:
    backbone, dataset, protocol = key
    tuned, untuned = compare(tuned_d, facts.margin), compare(untuned_d, facts.margin)
    cls_edge, mean_edge = bool(facts.cls_lr_edge), bool(facts.mean_lr_edge)
    missing = not (facts.has_cls and facts.has_mean)
    notes = []
    if missing:
        notes += [_not_applicable(a, statuses[(*key, a)]) for a, has in ((CLS, facts.has_cls),
                                                                         (MEAN, facts.has_mean)) if not has]
    elif cls_edge or mean_edge:
        notes.append("optimum at the edge of the lr grid of " + " and ".join(
            a for a, edge in ((CLS, cls_edge), (MEAN, mean_edge)) if edge) + ": widen it")
    elif tuned.n < 2:
        notes.append(f"{tuned.n} paired seed(s): at least 2 are needed")
    if untuned.n < tuned.n:
        notes.append(f"mean had no ok head at the cls-selected lr for {tuned.n - untuned.n} seed(s)")
    row = dict(backbone=backbone, label=f"{backbone} (random-init)" if facts.random_init else backbone,
               random_init=bool(facts.random_init), dataset=dataset, protocol=protocol, margin=float(facts.margin),
               cls_lr=float(facts.cls_lr), cls_lr_edge=cls_edge, mean_lr=float(facts.mean_lr),
               mean_lr_edge=mean_edge, cls_test=float(facts.cls_test), mean_test=float(facts.mean_test))
    for prefix, comp, verdict in (("", tuned, _overall(tuned, missing, cls_edge or mean_edge)),
                                  ("untuned_", untuned, _overall(untuned, missing, cls_edge))):
        row.update({f"{prefix}n_seeds": comp.n, f"{prefix}difference": comp.diff, f"{prefix}ci_low": comp.ci_low,
                    f"{prefix}ci_high": comp.ci_high, f"{prefix}p_tost": comp.p_tost,
                    f"{prefix}verdict": verdict,
                    f"{prefix}seeds_needed": comp.seeds_needed if verdict == INCONCLUSIVE else None})
    row["note"] = "; ".join(notes)
    return row


def _overall(comp: Comparison, missing: bool, edge: bool) -> str:
    """The statistical verdict unless a head is missing or an optimum sat at its grid's edge."""
    if missing:
        return NOT_APPLICABLE
    return NARROW if edge else comp.verdict


CLAIM_COLUMNS = [
    "backbone", "label", "random_init", "dataset", "protocol", "margin", "n_seeds", "cls_lr", "cls_lr_edge",
    "mean_lr", "mean_lr_edge", "cls_test", "mean_test", "difference", "ci_low", "ci_high", "p_tost", "verdict",
    "seeds_needed", "untuned_n_seeds", "untuned_difference", "untuned_ci_low", "untuned_ci_high", "untuned_p_tost",
    "untuned_verdict", "untuned_seeds_needed", "note",
]


def _table(rows: pd.DataFrame, per_lr: pd.DataFrame) -> pd.DataFrame:
    """Vectorised over groups; only the t tests run once per group (backbone x dataset x protocol: few)."""
    records = []
    if not rows.empty:
        facts, tuned, untuned = _groups(rows, per_lr)
        statuses = _status_counts(rows) if not (facts["has_cls"] & facts["has_mean"]).all() else {}
        empty = np.empty(0)
        records = [_group_row(key, f, tuned.get(key, empty), untuned.get(key, empty), statuses)
                   for key, f in zip(facts.index, facts.itertuples(index=False))]
    table = pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)
    for column in ("seeds_needed", "untuned_seeds_needed"):
        table[column] = table[column].astype("Int64")
    return table


def claim_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone x dataset x protocol with both cls and mean heads: optima, tuned and untuned tests.

    Columns (CLAIM_COLUMNS): `n_seeds` paired seeds; `cls_lr`/`mean_lr` the most frequent selected lr and
    `*_lr_edge` whether any seed selected a grid edge; `cls_test`/`mean_test` mean test top-1 of the selected heads;
    `difference`, `ci_low`, `ci_high` (95%), `p_tost`, `verdict`, `seeds_needed` for d = mean - cls (tuned), and
    the same with `untuned_` for the mean head at the cls-selected lr. Sorted by backbone, dataset, protocol.
    """
    return _table(*_prepared(results))


@dataclass(frozen=True)
class ClaimAnalysis:
    """The verdict table and the curves, computed once and rendered by both pages (Markdown and HTML)."""

    table: pd.DataFrame  # claim_table's
    curves: pd.DataFrame  # claim_curves'


def claim_analysis(results: pd.DataFrame) -> ClaimAnalysis:
    """claim_table and claim_curves of `results`, sharing their selection work."""
    rows, per_lr = _prepared(results)
    return ClaimAnalysis(_table(rows, per_lr), _curves(rows, per_lr))


# ------------------------------------------------------------------------------------------- rendering

TITLE = "Mean pooling vs [cls]"
EMPTY = "No results have both cls and mean heads for a backbone, dataset and protocol."
WIDE_TERMINAL = 160  # columns below which the verdict table is printed as one record per row
VERDICT_HEADERS = ["Backbone", "Dataset", "Protocol", "Seeds", "cls lr*", "mean lr*", "cls top-1", "mean top-1",
                   "Δ tuned [95% CI]", "TOST p", "Verdict (tuned)", "Δ at cls lr [95% CI]", "Verdict (cls lr)"]
METHOD = (
    "Each seed's cls and mean heads are chosen by validation top-1 over their own lr grids; their test top-1 values "
    "are paired by seed and d = mean - cls (top-1 points). Equivalent: the paired two one-sided tests reject at "
    "alpha 0.05 for the grid's margin (90% CI of d inside ±margin; a significant difference smaller than the margin "
    "counts as equivalent). Mean better / cls better: the whole 95% CI lies beyond +margin / below -margin. "
    "Inconclusive otherwise (or fewer than 2 seeds), with the seeds needed for 80% power at the observed mean and "
    "sd of d (TOST when |mean d| < margin, else the beyond-the-margin test). Grid too narrow: an aggregator's lr* (its "
    "most frequent selected lr over seeds) is the lowest or highest lr of its grid, so nothing is said about "
    "pooling; (edge) marks such an lr*. \"At cls lr\" repeats the test with the mean head at the lr each seed's cls head selected: "
    "the untuned comparison public leaderboards make. Random-init demo backbones carry no scientific meaning."
)


def _lr(value: float, edge: bool = False) -> str:
    return "—" if math.isnan(value) else f"{value:.1e}" + (" (edge)" if edge else "")


def _acc(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-0.00", "+0.00")  # no negative zero


def _diff(diff: float, low: float, high: float) -> str:
    if math.isnan(diff):
        return "—"
    return _signed(diff) + ("" if math.isnan(low) else f" [{_signed(low)}, {_signed(high)}]")


def _verdict(verdict: str, needed) -> str:
    return verdict + (f" (≈{needed} seeds)" if verdict == INCONCLUSIVE and not pd.isna(needed) else "")


def _display_rows(table: pd.DataFrame) -> list[list[str]]:
    """The verdict table as fixed-format strings, one list per row, in VERDICT_HEADERS order."""
    return [[
        r.label, r.dataset, r.protocol, str(r.n_seeds), _lr(r.cls_lr, r.cls_lr_edge), _lr(r.mean_lr, r.mean_lr_edge),
        _acc(r.cls_test), _acc(r.mean_test), _diff(r.difference, r.ci_low, r.ci_high),
        "—" if math.isnan(r.p_tost) else f"{r.p_tost:.3f}", _verdict(r.verdict, r.seeds_needed),
        _diff(r.untuned_difference, r.untuned_ci_low, r.untuned_ci_high),
        _verdict(r.untuned_verdict, r.untuned_seeds_needed),
    ] for r in table.itertuples(index=False)]


def _title(r) -> str:
    return f"{r.label} · {r.dataset} · {r.protocol}"


def _notes(table: pd.DataFrame) -> list[str]:
    return [f"{_title(r)}: {r.note}" for r in table.itertuples(index=False) if r.note]


Point = tuple[str, float, float, float]  # (aggregator, lr, val_top1, test_top1) of a claim_curves row


def _curve_groups(claim: ClaimAnalysis):
    """(title, cls and mean curve points sorted by aggregator and lr, {aggregator: optimum lr}) per verdict-table
    row, in its order. Plain tuples: per-row pandas access would dominate the rendering time."""
    columns = [claim.curves[c].tolist() for c in (*GROUP_KEYS, "aggregator", "lr", "val_top1", "test_top1")]
    points: dict[tuple, list[Point]] = {}
    for backbone, dataset, protocol, *point in zip(*columns):
        points.setdefault((backbone, dataset, protocol), []).append(tuple(point))
    for r in claim.table.itertuples(index=False):
        yield (_title(r), points[(r.backbone, r.dataset, r.protocol)], {CLS: r.cls_lr, MEAN: r.mean_lr},
               {CLS: r.cls_test, MEAN: r.mean_test})


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return md_table(headers, [[md_escape(cell) for cell in row] for row in rows])


def _md_curve(points: list[Point], optimum: dict[str, float], selected: dict[str, float]) -> list[str]:
    """val/test top-1 per lr for cls and mean, lr*'s test value marked °, then the starred per-seed selection: the
    leaderboard's number (seeds may pick other lrs than lr*, so it need not equal any row above)."""
    cells = {(agg, lr): [_acc(val), _acc(test) + ("°" if lr == optimum[agg] else "")] for agg, lr, val, test in points}
    rows = [[f"{lr:.1e}"] + cells.get((CLS, lr), ["—"] * 2) + cells.get((MEAN, lr), ["—"] * 2)
            for lr in sorted({point[1] for point in points})]
    star = {agg: "" if math.isnan(v) else _acc(v) + "*" for agg, v in selected.items()}  # unpaired: no claim row
    rows.append(["selected per seed", "", star[CLS] or "—", "", star[MEAN] or "—"])
    return _md_table(["lr", "cls val", "cls test", "mean val", "mean test"], rows)


def claim_markdown(claim: ClaimAnalysis) -> str:
    """The "## Mean pooling vs [cls]" section: verdict table, method, and top-1 against lr per backbone.

    Every string from the results goes through `md_escape`, as on the boards: no raw HTML reaches the page.
    """
    table = claim.table
    lines = [f"## {TITLE}", "", METHOD, ""]
    if table.empty:
        return "\n".join(lines + [EMPTY, ""])
    lines += _md_table(VERDICT_HEADERS, _display_rows(table))
    notes = _notes(table)
    if notes:
        lines += [""] + [f"- {md_escape(note)}" for note in notes]
    lines += ["", "### Top-1 against learning rate (mean over seeds; ° = lr*; * = the selected heads' mean, as on "
              "the leaderboard)", ""]
    for title, points, optimum, selected in _curve_groups(claim):
        lines += [f"**{md_escape(title)}**", ""] + _md_curve(points, optimum, selected) + [""]
    return "\n".join(lines)


def claim_terminal(table: pd.DataFrame, console: Console) -> None:
    """Print the verdict table (`claim_table`'s, and its notes) with rich."""
    if table.empty:
        console.print(f"{TITLE}: {EMPTY}", markup=False, highlight=False)
        return
    caption = "d = mean - cls, top-1 points; TOST at the grid's margin, alpha 0.05"
    if console.width >= WIDE_TERMINAL:
        out = Table(title=markup_text(TITLE), caption=caption)
        for header in VERDICT_HEADERS:
            out.add_column(markup_text(header), overflow="fold")
        for row in _display_rows(table):
            out.add_row(*(markup_text(cell) for cell in row))
        console.print(out)
    else:  # thirteen columns do not fit: one two-column record per backbone, dataset and protocol
        console.print(markup_text(TITLE), style="bold", highlight=False)
        for row in _display_rows(table):
            record = Table(title=markup_text(" · ".join(row[:3])), show_header=False, title_justify="left")
            record.add_column(style="bold")
            record.add_column(overflow="fold")
            for header, cell in zip(VERDICT_HEADERS[3:], row[3:]):
                record.add_row(markup_text(header), markup_text(cell))
            console.print(record)
        console.print(caption, markup=False, highlight=False)
    for note in _notes(table):
        console.print(note, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------ HTML

def _svg(points: list[Point], optimum: dict[str, float], title: str) -> str:
    """Top-1 of cls and mean against lr, drawn by the leaderboard's `lr_plot` with each optimum enlarged."""
    ok = [p for p in points if not (math.isnan(p[2]) or math.isnan(p[3]))]  # not-applicable cls has no curve
    curves = [Curve(title, agg, tuple(p[1] for p in line), tuple(p[2] for p in line), tuple(p[3] for p in line))
              for agg in (CLS, MEAN) if (line := [p for p in ok if p[0] == agg])]
    return lr_plot(title, curves, (CLS, MEAN), optimum, css_class="claim-plot") or \
        f'<p class="claim-nocurve">No curve: {html_text(title)} has no ok heads at a positive lr.</p>'


def claim_html(claim: ClaimAnalysis) -> str:
    """An escaped HTML fragment: verdict table, method, and an inline SVG of top-1 against lr per backbone."""
    table = claim.table
    out = [f'<section class="claim" id="claim"><h2>{html_text(TITLE)}</h2>', f"<p>{html_text(METHOD)}</p>"]
    if table.empty:
        return "\n".join(out + [f"<p>{html_text(EMPTY)}</p></section>"])
    out.append("<table><thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in VERDICT_HEADERS)
               + "</tr></thead><tbody>")
    for row, verdict in zip(_display_rows(table), table["verdict"]):
        out.append(f'<tr class="verdict-{verdict.replace(" ", "-")}">'
                   + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    notes = _notes(table)
    if notes:
        out.append("<ul>" + "".join(f"<li>{html_text(note)}</li>" for note in notes) + "</ul>")
    out.append("<h3>Top-1 against learning rate (mean over seeds; large dot = selected optimum)</h3>")
    for title, points, optimum, _ in _curve_groups(claim):
        out.append(f"<figure>{_svg(points, optimum, title)}<figcaption>{html_text(title)}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)
