"""Inline SVG plots for the HTML leaderboard, drawn in Python so the page needs no network and no JS library.

`lr_plot`: test (solid) and val (dashed) top-1 against learning rate (log x) per aggregator -- the curve that shows
whether mean pooling only needs another learning rate. `gain_chart`: each aggregator's gain over cls per backbone.
Every label is escaped; coordinates are rounded so regenerations are byte-identical. No torch, no Ray.
"""

from __future__ import annotations

import math

from harness.report.boards import BASELINE, Board, Curve
from harness.report.plain import html_text

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_W, _H, _L, _R, _T, _B = 460, 280, 52, 120, 28, 40  # size and margins (left, right, top, bottom)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _n(x: float) -> str:
    return f"{x:.1f}"


def _span(lo: float, hi: float, pad: float) -> tuple[float, float]:
    return (lo - pad, hi + pad) if hi - lo < 1e-12 else (lo, hi)


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>{html_text(text)}</text>'


def lr_plot(title: str, curves: list[Curve], aggregators: tuple[str, ...],
            optimum: dict[str, float] | None = None, css_class: str = "lr-plot") -> str:
    """One backbone's top-1 against lr: solid test, dashed val, a colour per aggregator; the test point at an
    aggregator's `optimum` lr (the claim section's selected lr) drawn larger. "" when there is nothing to plot."""
    optimum = optimum or {}
    xs = [math.log10(lr) for c in curves for lr in c.lrs if lr > 0]
    ys = [y for c in curves for y in c.val_top1 + c.test_top1 if not math.isnan(y)]
    if not xs or not ys:
        return ""
    x0, x1 = _span(min(xs), max(xs), 0.5)
    y0, y1 = _span(math.floor(min(ys)), math.ceil(max(ys)), 1.0)
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(lr: float) -> float:
        return _L + (math.log10(lr) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _T + (y1 - y) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot {css_class}" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img">', f"<title>{html_text(title)}</title>",
             _text(_W / 2, 16, title, extra=' class="plot-title"'),
             f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" class="frame"/>']
    for k in range(math.ceil(x0), math.floor(x1) + 1):
        parts.append(_text(px(10.0 ** k), _H - _B + 16, f"{10.0 ** k:g}"))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(_text(_L - 6, py(y) + 4, f"{y:.1f}", anchor="end"))
    parts.append(_text(_L + pw / 2, _H - 6, "learning rate (log)"))
    parts.append(_text(14, _T + ph / 2, "top-1 %", extra=f' transform="rotate(-90 14 {_n(_T + ph / 2)})"'))
    for curve in sorted(curves, key=lambda c: aggregators.index(c.aggregator)):
        colour = color(aggregators.index(curve.aggregator))
        for split, values, dash in (("test", curve.test_top1, ""), ("val", curve.val_top1, ' stroke-dasharray="5 3"')):
            points = [(px(lr), py(v), lr, v) for lr, v in zip(curve.lrs, values) if lr > 0 and not math.isnan(v)]
            line = " ".join(f"{_n(x)},{_n(y)}" for x, y, _, _ in points)
            parts.append(f'<polyline class="curve" points="{line}" fill="none" stroke="{colour}"{dash}/>')
            parts += [f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_radius(curve.aggregator, split, lr, optimum)}" '
                      f'fill="{colour}"><title>{html_text(f"{curve.aggregator} {split}: lr {lr:g}, top-1 {v:.2f}")}'
                      "</title></circle>" for x, y, lr, v in points]
    for i, agg in enumerate(a for a in aggregators if any(c.aggregator == a for c in curves)):
        y = _T + 10 + 16 * i
        colour = color(aggregators.index(agg))
        parts.append(f'<line x1="{_W - _R + 10}" y1="{y}" x2="{_W - _R + 28}" y2="{y}" stroke="{colour}"/>')
        parts.append(_text(_W - _R + 32, y + 4, agg, anchor="start"))
    parts.append(_text(_W - _R + 10, _H - _B + 16, "solid test, dashed val", anchor="start", extra=' class="small"'))
    return "".join(parts) + "</svg>"


def _radius(aggregator: str, split: str, lr: float, optimum: dict[str, float]) -> str:
    return "4.5" if split == "test" and optimum.get(aggregator) == lr else "2.5"


def gain_chart(board: Board) -> str:
    """Horizontal bars: each non-cls aggregator's test top-1 gain over cls, per backbone (none where cls is n/a)."""
    bars = [(row.label, agg, cell.gain) for row in board.rows for agg, cell in row.cells.items()
            if agg != BASELINE and cell.gain is not None]
    if not bars:
        return ""
    label_w, bar_h, width = 260, 16, 620
    height = _T + bar_h * len(bars) + 30
    reach = max(max(abs(g) for _, _, g in bars), 0.5)
    zero, half = label_w + (width - label_w - 20) / 2, (width - label_w - 20) / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot gain-chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">', f"<title>{html_text(f'gain over cls, {board.title}')}</title>",
             _text(width / 2, 16, f"test top-1 gain over cls (points), {board.title}", extra=' class="plot-title"')]
    for i, (label, agg, gain) in enumerate(bars):
        y = _T + i * bar_h
        x, w = (zero, gain / reach * half) if gain >= 0 else (zero + gain / reach * half, -gain / reach * half)
        parts.append(_text(label_w - 6, y + bar_h - 4, f"{label} · {agg}", anchor="end"))
        parts.append(f'<rect class="bar" x="{_n(x)}" y="{y + 2}" width="{_n(w)}" height="{bar_h - 4}" '
                     f'fill="{color(board.aggregators.index(agg))}"><title>{html_text(f"{label} · {agg}: {gain:+.2f}")}'
                     "</title></rect>")
    bottom = _T + bar_h * len(bars)
    parts.append(f'<line x1="{_n(zero)}" y1="{_T}" x2="{_n(zero)}" y2="{bottom}" class="axis"/>')
    for value in (-reach, 0.0, reach):
        parts.append(_text(zero + value / reach * half, bottom + 16, f"{value:+.2f}"))
    return "".join(parts) + "</svg>"
