"""The claim's pages: its verdict table and lr curves as Markdown, rich terminal tables and escaped HTML.

Pure formatting of `harness.report.claim`'s ClaimAnalysis; every string from the results is escaped. No torch, no Ray.
"""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console

from harness.report.claim import CLS, GROUP_KEYS, MEAN, ClaimAnalysis
from harness.report.claim_stats import INCONCLUSIVE
from harness.report.markdown import md_escape, md_table
from harness.report.plain import html_text
from harness.report.terminal import print_table

TITLE = "Mean pooling vs [cls]"
EMPTY = "No results have both cls and mean heads for a backbone, dataset, protocol and grid."
VERDICT_HEADERS = ["Backbone", "Dataset", "Protocol", "Grid", "Seeds", "Test images", "cls lr*", "mean lr*",
                   "cls top-1", "mean top-1", "Δ tuned [95% CI]", "seeds-only CI", "TOST p", "Verdict (tuned)",
                   "Δ at cls lr [95% CI]", "Verdict (cls lr)"]
METHOD = (
    "Each seed's cls and mean heads are chosen by validation top-1 over their own lr grids; their test top-1 values "
    "are paired by seed and d = mean - cls (top-1 points). Only heads of one grid and recipe are compared. The 95% "
    "CI adds the test set's sampling error (from every selected head's stored test predictions: the per-image "
    "difference of correctness, averaged over seeds, var/N) to the seeds' (Welch-Satterthwaite degrees of "
    "freedom); the seeds-only CI is shown beside it. Equivalent: the two one-sided tests reject at alpha 0.05 for "
    "the grid's margin (90% CI of d inside ±margin; a significant difference smaller than the margin counts as "
    "equivalent). Mean better / cls better: the whole 95% CI lies beyond +margin / below -margin and the "
    "one-sided test stays significant after Holm's correction across the table's groups. "
    "Inconclusive otherwise (or fewer than 2 seeds), with the seeds needed for 80% power at the observed mean and "
    "sd of d (TOST when |mean d| < margin, else the beyond-the-margin test). Grid too narrow: an aggregator's lr* (its "
    "most frequent selected lr over seeds) is the lowest or highest lr of its grid, so nothing is said about "
    "pooling; (edge) marks such an lr*. \"At cls lr\" repeats the test with the mean head at the lr each seed's cls "
    "head selected: "
    "the untuned comparison public leaderboards make; a seed whose mean head failed there counts against mean "
    "(never equivalent or mean better), and the verdict says how many. Online-protocol seeds vary only the "
    "initialisation. Random-init demo backbones carry no scientific meaning."
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


def _verdict(verdict: str, needed, failed: int = 0, n: int = 0) -> str:
    text = verdict + (f" (≈{needed} seeds)" if verdict == INCONCLUSIVE and not pd.isna(needed) else "")
    return text + (f", {failed} of {n} seeds failed" if failed else "")


def _display_rows(table: pd.DataFrame) -> list[list[str]]:
    """The verdict table as fixed-format strings, one list per row, in VERDICT_HEADERS order."""
    return [[
        r.label, r.dataset, r.protocol, _grid(r), str(r.n_seeds), f"{r.test_images:,}" if r.test_images else "—",
        _lr(r.cls_lr, r.cls_lr_edge), _lr(r.mean_lr, r.mean_lr_edge), _acc(r.cls_test), _acc(r.mean_test),
        _diff(r.difference, r.ci_low, r.ci_high), _diff(r.difference, r.seed_ci_low, r.seed_ci_high),
        "—" if math.isnan(r.p_tost) else f"{r.p_tost:.3f}", _verdict(r.verdict, r.seeds_needed),
        _diff(r.untuned_difference, r.untuned_ci_low, r.untuned_ci_high),
        _verdict(r.untuned_verdict, r.untuned_seeds_needed, r.failed_seeds_at_cls_lr, r.n_seeds),
    ] for r in table.itertuples(index=False)]


def _grid(r) -> str:
    return r.grid + (f" ({r.recipe})" if r.recipe else "")


def _title(r) -> str:
    return f"{r.label} · {r.dataset} · {r.protocol} · grid {_grid(r)}"


def _notes(table: pd.DataFrame) -> list[str]:
    return [f"{_title(r)}: {r.note}" for r in table.itertuples(index=False) if r.note]


Point = tuple[str, float, float, float]  # (aggregator, lr, val_top1, test_top1) of a claim_curves row


def _curve_groups(claim: ClaimAnalysis):
    """(title, cls and mean curve points sorted by aggregator and lr, {aggregator: optimum lr}) per verdict-table
    row, in its order. Plain tuples: per-row pandas access would dominate the rendering time."""
    columns = [claim.curves[c].tolist() for c in (*GROUP_KEYS, "aggregator", "lr", "val_top1", "test_top1")]
    points: dict[tuple, list[Point]] = {}
    width = len(GROUP_KEYS)
    for values in zip(*columns):
        points.setdefault(values[:width], []).append(tuple(values[width:]))
    keys = zip(*(claim.table[c].tolist() for c in GROUP_KEYS))
    for r, key in zip(claim.table.itertuples(index=False), keys):
        yield _title(r), points[key], {CLS: r.cls_lr, MEAN: r.mean_lr}, {CLS: r.cls_test, MEAN: r.mean_test}


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
    # sixteen columns rarely fit: then one short record per group (names never cut)
    print_table(console, VERDICT_HEADERS, _display_rows(table), ids=(0, 1, 2, 3), title=TITLE, caption=caption)
    for note in _notes(table):
        console.print(note, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------ HTML

def claim_html(claim: ClaimAnalysis) -> str:
    """An escaped HTML fragment: verdict table, method and notes (the lr plots are the boards', not repeated)."""
    table = claim.table
    out = [f'<section class="claim" id="claim"><h2>{html_text(TITLE)}</h2>', f"<p>{html_text(METHOD)}</p>"]
    if table.empty:
        return "\n".join(out + [f"<p>{html_text(EMPTY)}</p></section>"])
    head = "".join(f"<th>{html_text(h)}</th>" for h in VERDICT_HEADERS)
    out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>')
    for row, verdict in zip(_display_rows(table), table["verdict"]):
        out.append(f'<tr class="verdict-{verdict.replace(" ", "-")}">'
                   + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    notes = _notes(table)
    if notes:
        out.append("<ul>" + "".join(f"<li>{html_text(note)}</li>" for note in notes) + "</ul>")
    out.append("<p>Top-1 against learning rate: each board's plots above (lr* is in the table).</p>")
    out.append("</section>")
    return "\n".join(out)
