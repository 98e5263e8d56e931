"""The claim test (issue 8): is mean pooling equivalent to [cls] once its learning rate is tuned?

The ViT paper's appendix found global average pooling poor at the [cls] token's learning rate and equal to it at
its own; probing leaderboards still compare mean pooling at the [cls] lr. This module settles it per backbone x
dataset x protocol from the results store, with no torch or Ray.

Method. The `cls` and `mean` aggregators are compared. For each seed, each one's head is chosen by validation
top-1 over its own lr (and wd) grid (`harness.selection.select_best`, never on test); their test top-1 values are
paired by seed, d = mean - cls in top-1 points. With the paired t statistics of d (SciPy):
- "equivalent": the paired two one-sided tests (TOST) reject at alpha = 0.05 for the margin delta of the grid
  (`claim_margin`), i.e. the 90% CI of d lies inside (-delta, +delta). A significant but smaller-than-delta
  difference is therefore "equivalent": equal for practical purposes.
- "mean better" / "cls better": the whole 95% CI of d lies beyond +delta / below -delta (better by more than the
  margin, a one-sided test at alpha = 0.025). A CI that excludes 0 but still reaches inside the margin is not
  enough in either direction.
- "inconclusive" otherwise, with the number of seeds that would give 80% power at the observed mean and sd of d
  (statsmodels `TTestPower`): for TOST when |mean d| < delta (a conservative bound, P(both one-sided tests
  reject) >= P(lower) + P(upper) - 1), for the beyond-the-margin test otherwise. Fewer than 2 paired seeds is
  "inconclusive" with no estimate.
- "grid too narrow" when a seed's selected lr sits at the lowest or highest lr of its aggregator's grid (the
  distinct lrs in its rows): the optimum may lie outside, so nothing is said about pooling.
- "not applicable" when one of the two has no "ok" head (I-JEPA has no [cls] token).
The same test is repeated at a shared lr ("untuned"): the mean head at the lr each seed's cls head selected
(best wd there by validation) against that cls head; only the cls optimum's grid edge matters for it.
Random-init demo backbones are labelled "(random-init)" in every output: their numbers mean nothing.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from scipy import stats

from harness.selection import select_best

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


def tost_paired(d: np.ndarray, margin: float) -> float:
    """p-value of the paired two one-sided tests that the mean of d lies inside (-margin, +margin)."""
    d = np.asarray(d, dtype=float)
    if np.ptp(d) == 0.0:  # no spread: the decision is exact (SciPy would divide by a zero sd)
        return 0.0 if abs(d[0]) < margin else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-identical values: SciPy warns, the result stands
        lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(lower, upper))


def mean_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided confidence interval of the mean of d (paired t)."""
    d = np.asarray(d, dtype=float)
    mean = float(d.mean())
    if np.ptp(d) == 0.0:
        return mean, mean
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(level)
    return float(ci.low), float(ci.high)


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
    from statsmodels.stats.power import TTestPower  # lazy: only inconclusive rows pay its import time

    power = TTestPower().power
    if abs(diff) < margin:
        lower, upper = (margin + diff) / sd, (margin - diff) / sd
        return _smallest_n(lambda n: power(lower, n, ALPHA, alternative="larger")
                           + power(upper, n, ALPHA, alternative="larger") - 1.0)
    effect = (abs(diff) - margin) / sd
    return _smallest_n(lambda n: power(effect, n, ALPHA / 2, alternative="larger"))


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


def _claim_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The cls and mean rows of every backbone x dataset x protocol that has both aggregators."""
    rows = results[results["aggregator"].isin([CLS, MEAN])]
    both = rows.groupby(GROUP_KEYS)["aggregator"].transform("nunique") == 2
    return rows[both]


def _best_per_lr(rows: pd.DataFrame) -> pd.DataFrame:
    """Per seed and lr, the head selected by validation over the wds at that lr (the curve points)."""
    parts = [select_best(part) for _, part in rows.groupby("lr", sort=True)]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0]


def claim_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Validation and test top-1 of cls and mean against lr, averaged over seeds (best wd per seed and lr).

    One row per backbone x dataset x protocol x aggregator x lr of the grid; `n_ok` seeds had an "ok" head
    there (0: every head at that lr diverged or failed, accuracies NaN).
    """
    rows = _claim_rows(results)
    keys = GROUP_KEYS + ["aggregator", "lr"]
    grid = rows[keys].drop_duplicates()
    best = _best_per_lr(rows)
    points = best.groupby(keys, as_index=False).agg(
        n_ok=("seed", "nunique"), val_top1=("val_top1", "mean"), test_top1=("test_top1", "mean"))
    out = grid.merge(points, on=keys, how="left")
    out["n_ok"] = out["n_ok"].fillna(0).astype("int64")
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def _optimum(selected: pd.Series, grid: np.ndarray) -> tuple[float, bool]:
    """The most frequent selected lr over seeds (ties: lowest) and whether any seed selected a grid edge."""
    if selected.empty:
        return math.nan, False
    counts = selected.value_counts()
    lr = float(min(counts.index[counts == counts.max()]))
    edge = bool(selected.isin([grid.min(), grid.max()]).any())
    return lr, edge


def _margin(rows: pd.DataFrame) -> float:
    """The grid's equivalence margin; with several (results of different grids), the strictest one."""
    margins = rows["claim_margin"].dropna()
    return float(margins.min()) if not margins.empty else DEFAULT_MARGIN


def _not_applicable(rows: pd.DataFrame, aggregator: str) -> str:
    statuses = rows.loc[rows["aggregator"] == aggregator, "status"]
    if (statuses == "not-applicable").all():
        return f"{aggregator}: not applicable to this backbone"
    return f"{aggregator}: no ok head ({', '.join(f'{k} {v}' for k, v in sorted(statuses.value_counts().items()))})"


def _group_row(key: tuple, rows: pd.DataFrame, best: pd.DataFrame, per_lr: pd.DataFrame) -> dict:
    backbone, dataset, protocol = key
    random_init = bool(rows["random_init"].fillna(False).any())
    margin = _margin(rows)
    cls = best[best["aggregator"] == CLS].set_index("seed")
    mean = best[best["aggregator"] == MEAN].set_index("seed")
    seeds = sorted(set(cls.index) & set(mean.index))
    cls_lr, cls_edge = _optimum(cls["lr"], rows.loc[rows["aggregator"] == CLS, "lr"].to_numpy())
    mean_lr, mean_edge = _optimum(mean["lr"], rows.loc[rows["aggregator"] == MEAN, "lr"].to_numpy())
    row = dict(backbone=backbone, label=f"{backbone} (random-init)" if random_init else backbone,
               random_init=random_init, dataset=dataset, protocol=protocol, margin=margin,
               cls_lr=cls_lr, cls_lr_edge=cls_edge, mean_lr=mean_lr, mean_lr_edge=mean_edge,
               cls_test=float(cls.loc[seeds, "test_top1"].mean()) if seeds else math.nan,
               mean_test=float(mean.loc[seeds, "test_top1"].mean()) if seeds else math.nan)
    tuned = compare(mean.loc[seeds, "test_top1"].to_numpy() - cls.loc[seeds, "test_top1"].to_numpy(), margin)
    # untuned: the mean head at each seed's cls-selected lr
    shared = per_lr[per_lr["aggregator"] == MEAN].merge(
        cls.loc[seeds, ["lr", "test_top1"]].reset_index(), on=["seed", "lr"], suffixes=("", "_cls"))
    untuned = compare(shared["test_top1"].to_numpy() - shared["test_top1_cls"].to_numpy(), margin)
    notes = []
    if cls.empty or mean.empty:
        notes += [_not_applicable(rows, a) for a, sel in ((CLS, cls), (MEAN, mean)) if sel.empty]
    elif cls_edge or mean_edge:
        notes.append("optimum at the edge of the lr grid of " + " and ".join(
            a for a, edge in ((CLS, cls_edge), (MEAN, mean_edge)) if edge) + ": widen it")
    elif tuned.n < 2:
        notes.append(f"{tuned.n} paired seed(s): at least 2 are needed")
    if untuned.n < tuned.n:
        notes.append(f"mean had no ok head at the cls-selected lr for {tuned.n - untuned.n} seed(s)")
    tuned_verdict = _overall(tuned, cls.empty or mean.empty, cls_edge or mean_edge)
    untuned_verdict = _overall(untuned, cls.empty or mean.empty, cls_edge)
    for prefix, comp, verdict in (("", tuned, tuned_verdict), ("untuned_", untuned, untuned_verdict)):
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


def claim_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone x dataset x protocol with both cls and mean heads: optima, tuned and untuned tests.

    Columns (CLAIM_COLUMNS): `n_seeds` paired seeds; `cls_lr`/`mean_lr` the most frequent selected lr and
    `*_lr_edge` whether any seed selected a grid edge; `cls_test`/`mean_test` mean test top-1 of the selected heads;
    `difference`, `ci_low`, `ci_high` (95%), `p_tost`, `verdict`, `seeds_needed` for d = mean - cls (tuned), and
    the same with `untuned_` for the mean head at the cls-selected lr. Sorted by backbone, dataset, protocol.
    """
    rows = _claim_rows(results)
    best, per_lr = select_best(rows), _best_per_lr(rows)
    best_by = dict(tuple(best.groupby(GROUP_KEYS))) if not best.empty else {}
    per_lr_by = dict(tuple(per_lr.groupby(GROUP_KEYS))) if not per_lr.empty else {}
    records = [_group_row(key, group, best_by.get(key, best.iloc[:0]), per_lr_by.get(key, per_lr.iloc[:0]))
               for key, group in rows.groupby(GROUP_KEYS, sort=True)]
    table = pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)
    for column in ("seeds_needed", "untuned_seeds_needed"):
        table[column] = table[column].astype("Int64")
    return table


# ------------------------------------------------------------------------------------------- rendering

TITLE = "Mean pooling vs [cls]"
EMPTY = "No results have both cls and mean heads for a backbone, dataset and protocol."
VERDICT_HEADERS = ["Backbone", "Dataset", "Protocol", "Seeds", "cls lr*", "mean lr*", "cls top-1", "mean top-1",
                   "Δ tuned [95% CI]", "TOST p", "Verdict (tuned)", "Δ at cls lr [95% CI]", "Verdict (cls lr)"]
METHOD = (
    "Each seed's cls and mean heads are chosen by validation top-1 over their own lr grids; their test top-1 values "
    "are paired by seed and d = mean - cls (top-1 points). Equivalent: the paired two one-sided tests reject at "
    "alpha 0.05 for the grid's margin (90% CI of d inside ±margin; a significant difference smaller than the margin "
    "counts as equivalent). Mean better / cls better: the whole 95% CI lies beyond +margin / below -margin. "
    "Inconclusive otherwise (or fewer than 2 seeds), with the seeds needed for 80% power at the observed mean and "
    "sd of d (TOST when |mean d| < margin, else the beyond-the-margin test). Grid too narrow: a seed's optimum sat "
    "at the edge of its lr grid, so nothing is said about pooling. lr* is the most frequent selected lr, (edge) at "
    "the grid's edge. \"At cls lr\" repeats the test with the mean head at the lr each seed's cls head selected: "
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


def _curve_groups(results: pd.DataFrame, table: pd.DataFrame):
    """(title, cls and mean curve points, {aggregator: optimum lr}) per verdict-table row, in its order."""
    curves = dict(tuple(claim_curves(results).groupby(GROUP_KEYS)))
    for r in table.itertuples(index=False):
        yield _title(r), curves[(r.backbone, r.dataset, r.protocol)], {CLS: r.cls_lr, MEAN: r.mean_lr}


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]


def _md_curve(curves: pd.DataFrame, optimum: dict[str, float]) -> list[str]:
    """val/test top-1 per lr for cls and mean; the selected optimum's test value is starred."""
    cells = {}
    for r in curves.itertuples(index=False):
        star = "*" if r.lr == optimum[r.aggregator] else ""
        cells[(r.aggregator, r.lr)] = [_acc(r.val_top1), _acc(r.test_top1) + star]
    rows = [[f"{lr:.1e}"] + cells.get((CLS, lr), ["—"] * 2) + cells.get((MEAN, lr), ["—"] * 2)
            for lr in sorted(curves["lr"].unique())]
    return _md_table(["lr", "cls val", "cls test", "mean val", "mean test"], rows)


def claim_markdown(results: pd.DataFrame) -> str:
    """The "## Mean pooling vs [cls]" section: verdict table, method, and top-1 against lr per backbone."""
    table = claim_table(results)
    lines = [f"## {TITLE}", "", METHOD, ""]
    if table.empty:
        return "\n".join(lines + [EMPTY, ""])
    lines += _md_table(VERDICT_HEADERS, _display_rows(table))
    notes = _notes(table)
    if notes:
        lines += [""] + [_md(f"- {note}") for note in notes]
    lines += ["", "### Top-1 against learning rate (mean over seeds; * = selected optimum)", ""]
    for title, curves, optimum in _curve_groups(results, table):
        lines += [f"**{_md(title)}**", ""] + _md_curve(curves, optimum) + [""]
    return "\n".join(lines)


def claim_terminal(results: pd.DataFrame, console: Console) -> None:
    """Print the verdict table (and its notes) with rich."""
    table = claim_table(results)
    if table.empty:
        console.print(f"{TITLE}: {EMPTY}", markup=False, highlight=False)
        return
    out = Table(title=escape(TITLE), caption="d = mean - cls, top-1 points; TOST at the grid's margin, alpha 0.05")
    for header in VERDICT_HEADERS:
        out.add_column(escape(header), overflow="fold")
    for row in _display_rows(table):
        out.add_row(*(escape(cell) for cell in row))
    console.print(out)
    for note in _notes(table):
        console.print(note, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------ HTML

_COLOURS = {CLS: "#1f77b4", MEAN: "#d62728"}
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 420, 240, 48, 100, 16, 36


def _svg(curves: pd.DataFrame, optimum: dict[str, float], title: str) -> str:
    """Top-1 of cls and mean against lr (log x): test solid, validation dashed, optimum enlarged. No external refs."""
    ok = curves.dropna(subset=["val_top1", "test_top1"])
    lrs = sorted(curves["lr"].unique())
    if ok.empty or min(lrs) <= 0:
        return f'<p class="claim-nocurve">No curve: {html.escape(title)} has no ok heads at a positive lr.</p>'
    x_lo, x_hi = math.log10(min(lrs)), math.log10(max(lrs))
    values = np.concatenate([ok["val_top1"].to_numpy(), ok["test_top1"].to_numpy()])
    pad = max((values.max() - values.min()) * 0.08, 0.5)
    y_lo, y_hi = float(values.min()) - pad, float(values.max()) + pad
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(lr: float) -> float:
        return _LEFT + (plot_w / 2 if x_hi == x_lo else (math.log10(lr) - x_lo) / (x_hi - x_lo) * plot_w)

    def y(acc: float) -> float:
        return _TOP + (y_hi - acc) / (y_hi - y_lo) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
             f'font-family="sans-serif" role="img" aria-label="{html.escape(title)}: top-1 against learning rate">',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
             f'<text x="{_LEFT}" y="{_TOP - 5}" font-size="9">top-1 (%)</text>',
             f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 6}" font-size="10" text-anchor="middle">'
             'learning rate (log scale)</text>']
    for lr in lrs[::max(1, math.ceil(len(lrs) / 6))]:
        parts.append(f'<text x="{x(lr):.1f}" y="{_H - _BOTTOM + 14}" font-size="9" text-anchor="middle">'
                     f'{lr:.0e}</text>')
    for i in range(5):
        acc = y_lo + (y_hi - y_lo) * i / 4
        parts.append(f'<text x="{_LEFT - 4}" y="{y(acc) + 3:.1f}" font-size="9" text-anchor="end">{acc:.1f}</text>')
    legend_y = _TOP + 10
    for agg in (CLS, MEAN):
        points = ok[ok["aggregator"] == agg].sort_values("lr")
        if points.empty:
            continue
        colour = _COLOURS[agg]
        for metric, dash, label in (("test_top1", "", "test"), ("val_top1", ' stroke-dasharray="4 3"', "val")):
            xy = " ".join(f"{x(r.lr):.1f},{y(getattr(r, metric)):.1f}" for r in points.itertuples(index=False))
            parts.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
            lx = _W - _RIGHT + 8
            parts.append(f'<line x1="{lx}" y1="{legend_y - 3}" x2="{lx + 18}" y2="{legend_y - 3}" stroke="{colour}" '
                         f'stroke-width="1.5"{dash}/><text x="{lx + 22}" y="{legend_y}" font-size="10">'
                         f"{agg} {label}</text>")
            legend_y += 14
        for r in points.itertuples(index=False):
            radius = 4.5 if r.lr == optimum[agg] else 2.5
            parts.append(f'<circle cx="{x(r.lr):.1f}" cy="{y(r.test_top1):.1f}" r="{radius}" fill="{colour}"/>')
    parts.append("</svg>")
    return "".join(parts)


def claim_html(results: pd.DataFrame) -> str:
    """An escaped HTML fragment: verdict table, method, and an inline SVG of top-1 against lr per backbone."""
    table = claim_table(results)
    out = [f'<section class="claim" id="claim"><h2>{html.escape(TITLE)}</h2>', f"<p>{html.escape(METHOD)}</p>"]
    if table.empty:
        return "\n".join(out + [f"<p>{html.escape(EMPTY)}</p></section>"])
    out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in VERDICT_HEADERS)
               + "</tr></thead><tbody>")
    for row, verdict in zip(_display_rows(table), table["verdict"]):
        out.append(f'<tr class="verdict-{verdict.replace(" ", "-")}">'
                   + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    notes = _notes(table)
    if notes:
        out.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    out.append("<h3>Top-1 against learning rate (mean over seeds; large dot = selected optimum)</h3>")
    for title, curves, optimum in _curve_groups(results, table):
        out.append(f"<figure>{_svg(curves, optimum, title)}<figcaption>{html.escape(title)}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)
