"""The attention diagnostic on the pages: per-metric curves against depth, and the paper's four statements
beside the measured values of each backbone's last block. Numbers side by side; no verdict thresholds.

Pure functions of the attention table (`harness.results.attention`): no torch, no Ray.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.registry import backbone_label
from harness.report.markdown import md_escape, md_table
from harness.report.plain import html_text
from harness.report.svg import _n, _text, color
from harness.results.attention import METRICS
from harness.tokens.layers import layer_blocks

# Pre-training objective of each family: masked image modelling or joint embedding (contrastive/self-distillation)
OBJECTIVE = {"mae": "MIM", "simmim": "MIM", "dino": "JEA", "ibot": "JEA", "ijepa": "JEA", "dinov2": "JEA",
             "dinov2_reg": "JEA", "dinov3": "JEA", "mocov3": "JEA"}

# The four observations of "Beyond [cls]" (Przewięźlikowski et al., 2024), the metrics that measure each, and the
# probe whose selected layer (where a grid swept layers) is the other block shown: [cls] for the [cls] statements.
STATEMENTS = (
    ("MAE's [cls] token attends primarily to itself", ("cls_self",), "cls"),
    ("it attends to the patches too uniformly to select the relevant ones", ("cls_patch_entropy", "cls_patch_top10"),
     "cls"),
    ("MIM patch tokens give more attention to themselves", ("patch_self",), "mean"),
    ("MIM patch tokens attend to other patches more selectively than JEA ones", ("patch_entropy", "patch_top10"),
     "mean"),
)
SHORT = {"cls_self": "[cls]→self", "cls_patch_entropy": "[cls]→patch entropy", "cls_patch_top10": "[cls] top-10%",
         "patch_self": "patch→self", "patch_entropy": "patch entropy", "patch_top10": "patch top-10%",
         "patch_to_cls": "patch→[cls]", "patch_to_registers": "patch→registers",
         "attention_distance": "attention distance"}


def objective(family: str) -> str:
    return OBJECTIVE.get(family, "other")


def _label(row) -> str:
    return backbone_label(str(row.backbone), bool(row.random_init))


def _value(v, spread=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if spread is None or math.isnan(spread) else f"{v:.3f} ± {spread:.3f}"


def _means(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["head"] == "mean"]


def _last_block(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean-over-heads rows of each backbone x dataset's last block."""
    mean = _means(frame)
    last = mean.groupby(["backbone", "dataset"])["block"].transform("max")
    return mean[mean["block"] == last]


def probe_layers(boards) -> dict[tuple[str, str], dict[str, str]]:
    """(backbone, dataset) -> {aggregator: layer} for the aggregators that swept layers: the layer its seeds'
    val-selected heads chose most often (ties: the first in text order), as the boards' lr* is chosen."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for board in boards:
        swept = {(c.backbone, c.aggregator) for c in board.layer_curves}
        for row in board.rows:
            for agg, cell in row.cells.items():
                if (row.backbone, agg) in swept and cell.picks:
                    layer = Counter(sorted(p.layer for p in cell.picks)).most_common(1)[0][0]
                    out.setdefault((row.backbone, board.dataset), {})[agg] = layer
    return out


def statement_rows(frame: pd.DataFrame, probes: dict[tuple[str, str], dict[str, str]] | None = None
                   ) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per statement: (statement, column names, rows): backbone, dataset, objective, last block and its values,
    then the probe's selected layer and the values at that block (where the probe swept layers; a layer of
    several blocks has no single block's values)."""
    mean = _means(frame)
    last = _last_block(frame)
    out = []
    for text, metrics, probe in STATEMENTS:
        rows = []
        for (backbone, dataset), g in last.groupby(["backbone", "dataset"], sort=True):
            first = g.iloc[0]
            by_metric = {r.metric: r for r in g.itertuples()}
            cells = [_label(first), dataset, objective(first.family), str(int(first.block)),
                     *(_value(by_metric[m].value, by_metric[m].spread) if m in by_metric else "n/a" for m in metrics)]
            layer = (probes or {}).get((backbone, dataset), {}).get(probe)
            blocks = layer_blocks(layer, int(first.block) + 1) if layer is not None else ()
            at = mean[(mean["backbone"] == backbone) & (mean["dataset"] == dataset)]
            at = {r.metric: r for r in at[at["block"] == blocks[0]].itertuples()} if len(blocks) == 1 else {}
            cells += [f"{probe}: {layer}" if layer is not None else "—",
                      *(_value(at[m].value, at[m].spread) if m in at else "—" for m in metrics)]
            rows.append(cells)
        out.append((text, [SHORT[m] for m in metrics] + [f"{probe} probe's layer"]
                    + [f"{SHORT[m]} there" for m in metrics], rows))
    return out


def markdown_section(frame: pd.DataFrame, probes: dict[tuple[str, str], dict[str, str]] | None = None) -> str:
    """The attention section of leaderboard.md ("" without attention rows); `probes` as `probe_layers` gives."""
    if frame.empty:
        return ""
    lines = ["", "## Where the tokens look (attention diagnostic)", "",
             "Attention probabilities of every block, computed explicitly over seeded validation images "
             "(`harness attention`): mean over images ± their standard deviation, averaged over heads. MIM = masked "
             "image modelling, JEA = joint embedding. The statements are the paper's; the numbers are measured here.",
             ""]
    for text, names, rows in statement_rows(frame, probes):
        lines += [f"**{md_escape(text)}** (last block, and the block the probe selected)", ""]
        lines += md_table(["backbone", "dataset", "objective", "block", *names],
                          [[md_escape(c) for c in row] for row in rows]) + [""]
    mean = _means(frame)
    for metric, description in METRICS.items():
        g = mean[mean["metric"] == metric]
        if not g["applicable"].any():
            continue
        blocks = sorted(g["block"].unique())
        rows = []
        for (backbone, dataset), part in g.groupby(["backbone", "dataset"], sort=True):
            by_block = dict(zip(part["block"], part["value"]))
            first = part.iloc[0]
            rows.append([md_escape(_label(first)), md_escape(dataset), objective(first.family),
                         *(_value(by_block.get(b)) for b in blocks)])
        lines += [f"**{md_escape(description)}**, by block", ""]
        lines += md_table(["backbone", "dataset", "objective", *map(str, blocks)], rows) + [""]
    return "\n".join(lines) + "\n"


_W, _H, _L, _R, _T, _B = 460, 260, 52, 150, 28, 40


def depth_plot(metric: str, g: pd.DataFrame, keys: list[tuple[str, str]]) -> str:
    """One metric against block index, a line per backbone x dataset (colour by its place in `keys`, the same in
    every plot): solid MIM, dashed JEA, dotted other."""
    g = g[g["applicable"]]
    if g.empty:
        return ""
    series = [(key, part.sort_values("block")) for key, part in g.groupby(["backbone", "dataset"], sort=True)]
    x1 = max(1, int(g["block"].max()))
    y0, y1 = min(0.0, float(g["value"].min())), float(g["value"].max())
    y1 = y1 if y1 > y0 else y0 + 1
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(b: float) -> float:
        return _L + b / x1 * pw

    def py(y: float) -> float:
        return _T + (y1 - y) / (y1 - y0) * ph

    title = METRICS[metric]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot depth-plot" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img">', f"<title>{html_text(title)}</title>",
             _text(_W / 2, 16, SHORT[metric] + " by block", extra=' class="plot-title"'),
             f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" class="frame"/>']
    for b in range(0, x1 + 1, max(1, math.ceil((x1 + 1) / 8))):
        parts.append(_text(px(b), _H - _B + 16, str(b)))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(_text(_L - 6, py(y) + 4, f"{y:.2f}", anchor="end"))
    parts.append(_text(_L + pw / 2, _H - 6, "block"))
    dash = {"MIM": "", "JEA": ' stroke-dasharray="5 3"'}
    for line, ((backbone, dataset), part) in enumerate(series):
        i = keys.index((backbone, dataset))
        first = part.iloc[0]
        kind = objective(first.family)
        points = " ".join(f"{_n(px(b))},{_n(py(v))}" for b, v in zip(part["block"], part["value"]))
        style = dash.get(kind, ' stroke-dasharray="1 3"')
        parts.append(f'<polyline class="curve" points="{points}" fill="none" stroke="{color(i)}"{style}>'
                     f"<title>{html_text(f'{_label(first)} on {dataset} ({kind})')}</title></polyline>")
        y = _T + 10 + 14 * line
        parts.append(f'<line x1="{_W - _R + 8}" y1="{y}" x2="{_W - _R + 26}" y2="{y}" stroke="{color(i)}"{style}/>')
        parts.append(_text(_W - _R + 30, y + 4, f"{first.backbone} ({kind})", anchor="start",
                           extra=' class="small"'))
    return "".join(parts) + "</svg>"


def html_section(frame: pd.DataFrame, probes: dict[tuple[str, str], dict[str, str]] | None = None) -> str:
    """The attention section of leaderboard.html ("" without attention rows); every string escaped."""
    if frame.empty:
        return ""
    parts = ['<section id="attention"><h2>Where the tokens look (attention diagnostic)</h2>',
             "<p>Attention probabilities of every block, computed explicitly over seeded validation images "
             "(<code>harness attention</code>): mean over images ± their standard deviation, averaged over heads. "
             "Solid lines: masked image modelling (MIM); dashed: joint embedding (JEA). The statements are the "
             "paper's; the numbers are measured here.</p>"]
    for text, names, rows in statement_rows(frame, probes):
        head = "".join(f"<th>{html_text(h)}</th>" for h in ("backbone", "dataset", "objective", "block", *names))
        body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(f"<h3>{html_text(text)} (last block)</h3><table class=\"sortable\"><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    mean = _means(frame)
    keys = sorted(set(zip(mean["backbone"], mean["dataset"])))
    plots = [depth_plot(m, mean[mean["metric"] == m], keys) for m in METRICS]
    parts.append('<div class="plots">' + "".join(p for p in plots if p) + "</div></section>")
    return "".join(parts)


def terminal_summary(rows: list[dict], console: Console) -> None:
    """One backbone x dataset's last block (mean over heads): a metric a line, so it fits 80 columns."""
    frame = pd.DataFrame(rows)
    last = _last_block(frame)
    first = last.iloc[0]
    table = Table(title=Text(f"{_label(first)} on {first.dataset}: last block ({int(first.block)}), "
                             f"{int(first.images)} images"), title_justify="left")
    table.add_column("metric")
    table.add_column("mean ± sd over images", justify="right")
    for r in last.itertuples():
        table.add_row(Text(SHORT[r.metric]), Text(_value(r.value, r.spread) if r.applicable else "n/a"))
    console.print(table)
