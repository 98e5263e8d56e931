"""The HTML leaderboard: one self-contained page (inline CSS, JS and SVG; nothing fetched from a network).

Tables sort by clicking a header. Every string that comes from results or the registry goes through
`plain.html_text` (quotes included, so it is safe in attributes too); the script reads only the DOM and never builds
markup from data. No torch, no Ray.
"""

from __future__ import annotations


import pandas as pd

from harness.report.plain import html_text
from harness.report.boards import EXPLANATION, RANDOM_INIT_NOTE, Board
from harness.report.svg import color, epoch_plot, gain_chart, layer_plot, lr_plot

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1400px}
@media (max-width:600px){body{margin:.6rem;font-size:15px}th,td{padding:.25rem .4rem}}
.scroll{overflow-x:auto;max-width:100%}svg.plot{max-width:100%;height:auto}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
td{white-space:nowrap}td.text{white-space:normal;text-align:left}.gain{display:block}code{font-size:.95em}
th{background:#f3f3f3;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.best{font-weight:bold;background:#e8f5e9}td.tied{background:#f1f8e9}.gain{color:#555;font-size:.85em}.note{color:#8a6d00}
.plots{display:flex;flex-wrap:wrap;gap:1rem}svg.plot{font-size:11px;background:#fff}
svg .frame{fill:none;stroke:#999}svg .axis{stroke:#333}svg .grid{stroke:#eee}svg .plot-title{font-weight:bold}
svg .legend{font-size:11px}svg .missing{fill:#8a6d00}footer{margin-top:2rem;color:#555;font-size:.9em}
"""

_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "desc" ? "asc" : "desc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var key = function (row) {
        var cell = row.cells[col], raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        var num = parseFloat(raw);
        return isNaN(num) ? [1, raw] : [0, num];
      };
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x[0] !== y[0]) return x[0] - y[0];
        var c = x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0;
        return dir === "asc" ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def prose(text: str) -> str:
    """Escaped text whose `code` spans (the Markdown page's backticks) become <code> elements."""
    parts = html_text(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) if len(parts) % 2 else \
        html_text(text)


def _table(board: Board) -> str:
    head = "".join(f"<th>{html_text(name)}</th>" for name in ("backbone", *board.aggregators, "published"))
    body = []
    for row in board.rows:
        tds = [f'<td data-sort="{html_text(row.label)}">{html_text(row.label)}</td>']
        for agg in board.aggregators:
            cell = row.cells.get(agg)
            if cell is None:
                tds.append('<td data-sort="">—</td>')
                continue
            sort = "" if cell.mean is None else f"{cell.mean:.4f}"
            gain = f' <span class="gain">{html_text(cell.gain_text())}</span>' if cell.gain_text() else ""
            best = ' class="best"' if cell.best else ' class="tied"' if cell.tied else ""
            tds.append(f'<td{best} data-sort="{sort}">{html_text(cell.text())}{gain}</td>')
        tds.append(f"<td>{html_text(row.published_text())}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


def _picks(board: Board) -> str:
    items = [f"<li>{html_text(row.label)} · {html_text(agg)}: {html_text('; '.join(p.text() for p in cell.picks))}</li>"
             for row in board.rows for agg, cell in row.cells.items() if cell.picks]
    return ("<details><summary>Selected heads (val-selected per seed; config hash prefix)</summary>"
            f"<ul>{''.join(items)}</ul></details>")


def _plots(board: Board) -> str:
    """Per backbone and optimizer (their lrs are not on one scale) top-1 against lr, and against the layer where
    aggregators swept layers; then the gain bars."""
    labels = {row.backbone: row.label for row in board.rows}
    plots = []
    for backbone, label in labels.items():
        curves = [c for c in board.curves if c.backbone == backbone]
        optimizers = sorted({c.optimizer for c in curves})
        for optimizer in optimizers:
            mine = [c for c in curves if c.optimizer == optimizer]
            plots.append(lr_plot(f"{label}: top-1 vs lr" + (f" ({optimizer})" if len(optimizers) > 1 else ""), mine,
                                 board.aggregators))
        swept = [c for c in board.layer_curves if c.backbone == backbone]
        if swept:
            plots.append(layer_plot(f"{label}: top-1 vs layer", swept, board.aggregators))
    return f'<div class="plots">{"".join(plots)}</div><div class="plots">{gain_chart(board)}</div>'


def _training(board: Board, curves: pd.DataFrame | None) -> str:
    """Validation top-1 and training loss per epoch of each cell's selected heads: mean over seeds, range as band."""
    if curves is None or curves.empty:
        return ""
    by_hash = {h: part for h, part in curves.groupby("config_hash", sort=False)}
    plots = []
    for row in board.rows:
        val, loss = [], []
        for agg, cell in row.cells.items():
            parts = [by_hash[p.config_hash] for p in cell.picks if p.config_hash in by_hash]
            if not parts:
                continue
            stats = pd.concat(parts).groupby("epoch")[["val_top1", "train_loss"]].agg(["mean", "min", "max"])
            colour = color(board.aggregators.index(agg))
            for out, column in ((val, "val_top1"), (loss, "train_loss")):
                points = [(int(e) + 1, *map(float, stats.loc[e, column][["mean", "min", "max"]]))
                          for e in stats.index if not pd.isna(stats.loc[e, (column, "mean")])]
                out.append((f"{agg} (n={len(parts)})", colour, points))
        plots += [epoch_plot(f"{row.label}: validation top-1 per epoch", val, "val top-1 %"),
                  epoch_plot(f"{row.label}: training loss per epoch", loss, "train loss")]
    plots = [p for p in plots if p]
    if not plots:
        return ""
    return ("<h3>Training curves of the selected heads (mean over seeds; band: their range)</h3>"
            f'<div class="plots">{"".join(plots)}</div>')


def _section(board: Board, curves: pd.DataFrame | None = None) -> str:
    note = f'<p class="note">{html_text(RANDOM_INIT_NOTE)}</p>' if board.has_random_init else ""
    return (f"<section><h2>{html_text(board.title)}</h2><p>{html_text(board.source_text())}</p>{_table(board)}{note}"
            f"{_picks(board)}{_plots(board)}{_training(board, curves)}</section>")


def html_page(boards: list[Board], claim_fragment: str, footer: str = "", curves: pd.DataFrame | None = None) -> str:
    """The whole page: a section per board (table, picks, plots, the selected heads' training curves when `curves`
    holds them), the claim section (escaped by claim.py), then where it came from."""
    sections = "".join(_section(b, curves) for b in boards) or "<p>No results yet.</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Leaderboard</title>"
            f"<style>{_CSS}</style></head><body><h1>Leaderboard</h1><p>{prose(EXPLANATION)}</p>{sections}"
            f"{claim_fragment}<footer>{html_text(footer)}</footer><script>{_JS}</script></body></html>\n")

