"""Inline SVG plots for the HTML leaderboard, drawn in Python so the page needs no network and no JS library.

`lr_plot`: test (solid) and val (dashed) top-1 against learning rate (log x, one optimizer) per aggregator, with the
seeds' spread -- the curve that shows whether mean pooling only needs another learning rate. `layer_plot`: the same
against the layer read, for aggregators that swept layers. `epoch_plot`: the
selected heads' training curves. `gain_chart`: each aggregator's gain over cls per backbone, coloured by sign.
Every label is escaped; coordinates are rounded so regenerations are byte-identical. No torch, no Ray.
"""

from __future__ import annotations

import math

from harness.report.boards import BASELINE, Board, Curve, LayerCurve, layer_order
from harness.report.plain import html_text

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
GAIN, LOSS = "#2ca02c", "#d62728"  # gain bars by sign
_W, _H, _L, _R, _T, _B = 480, 290, 52, 130, 28, 44  # size and margins (left, right for the legend, top, bottom)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _n(x: float) -> str:
    return f"{x:.1f}"


def _span(lo: float, hi: float, pad: float) -> tuple[float, float]:
    return (lo - pad, hi + pad) if hi - lo < 1e-12 else (lo, hi)


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>{html_text(text)}</text>'


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 10) for i in range(int(math.ceil((hi - first) / step + 1e-9)) + 1)]


def _lr_ticks(lrs: list[float]) -> list[float]:
    """Every lr of the grid when they are few (the ends included), else the decades between them and both ends."""
    distinct = sorted(set(lrs))
    if len(distinct) <= 9:
        return distinct
    decades = [10.0 ** k for k in range(math.ceil(math.log10(distinct[0])), math.floor(math.log10(distinct[-1])) + 1)]
    return sorted({distinct[0], *decades, distinct[-1]})


def _frame(title: str, css_class: str, x_label: str, y_label: str) -> list[str]:
    pw, ph = _W - _L - _R, _H - _T - _B
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot {css_class}" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" role="img">', f"<title>{html_text(title)}</title>",
            _text((_L + _W - _R) / 2, 16, title, extra=' class="plot-title"'),
            f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" class="frame"/>',
            _text(_L + pw / 2, _H - 8, x_label),
            _text(14, _T + ph / 2, y_label, extra=f' transform="rotate(-90 14 {_n(_T + ph / 2)})"')]


def _legend(entries: list[tuple[str, str, str]]) -> list[str]:
    """(label, colour, dash) entries in the right margin, inside the picture."""
    parts = []
    for i, (label, colour, dash) in enumerate(entries):
        y = _T + 8 + 17 * i
        parts.append(f'<line x1="{_W - _R + 8}" y1="{y}" x2="{_W - _R + 28}" y2="{y}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(_text(_W - _R + 32, y + 4, label, anchor="start", extra=' class="legend"'))
    return parts


_DASHED = ' stroke-dasharray="5 3"'


def _test_and_val(aggregator: str, colour: str, at: list[tuple[float, str] | None], test: tuple[float, ...],
                  val: tuple[float, ...], py) -> list[str]:
    """A curve's solid test and dashed val lines with a titled point each; `at` is (x, what the point is) per
    value, None where it has no place on the axis (a non-positive lr on a log axis)."""
    parts = []
    for split, values, dash in (("test", test, ""), ("val", val, _DASHED)):
        points = [(x, py(v), what, v) for place, v in zip(at, values) if place is not None and not math.isnan(v)
                  for x, what in (place,)]
        line = " ".join(f"{_n(x)},{_n(y)}" for x, y, _, _ in points)
        parts.append(f'<polyline class="curve" points="{line}" fill="none" stroke="{colour}"{dash}/>')
        parts += [f'<circle cx="{_n(x)}" cy="{_n(y)}" r="2.5" fill="{colour}"><title>'
                  f'{html_text(f"{aggregator} {split}: {what}, top-1 {v:.2f}")}</title></circle>' for x, y, what, v in points]
    return parts


def _legend_of(curves: list, aggregators: tuple[str, ...], parts: list[str]) -> list[str]:
    """Append the legend (each plotted aggregator, then the test and val line styles); the aggregators shown."""
    present = [a for a in aggregators if any(c.aggregator == a for c in curves)]
    parts += _legend([(agg, color(aggregators.index(agg)), "") for agg in present]
                     + [("test (mean)", "#555", ""), ("val (mean)", "#555", _DASHED)])
    return present


def lr_plot(title: str, curves: list[Curve], aggregators: tuple[str, ...], css_class: str = "lr-plot") -> str:
    """One backbone's top-1 against lr (log x, one optimizer): solid test, dashed val, a colour per aggregator, a
    band over the seeds' range of test top-1, a tick at every lr of the grid. "" when there is nothing to plot."""
    xs = [math.log10(lr) for c in curves for lr in c.lrs if lr > 0]
    ys = [y for c in curves for y in (*c.val_top1, *c.test_top1, *c.test_low, *c.test_high) if not math.isnan(y)]
    if not xs or not ys:
        return ""
    x0, x1 = _span(min(xs), max(xs), 0.5)
    ticks_y = nice_ticks(*_span(min(ys), max(ys), 1.0))
    y0, y1 = ticks_y[0], ticks_y[-1]
    pw, ph = _W - _L - _R, _H - _T - _B
    pad = 0.04 * (x1 - x0)

    def px(lr: float) -> float:
        return _L + (math.log10(lr) - x0 + pad) / (x1 - x0 + 2 * pad) * pw

    def py(y: float) -> float:
        return _T + (y1 - y) / (y1 - y0) * ph

    optimizers = sorted({c.optimizer for c in curves if c.optimizer})
    parts = _frame(title, css_class, f"learning rate ({', '.join(optimizers) or 'optimizer unknown'}; log scale)",
                   "top-1 %")
    for lr in _lr_ticks([lr for c in curves for lr in c.lrs if lr > 0]):
        parts.append(f'<line x1="{_n(px(lr))}" y1="{_T + ph}" x2="{_n(px(lr))}" y2="{_T + ph + 4}" class="axis"/>')
        parts.append(_text(px(lr), _T + ph + 16, f"{lr:g}"))
    for y in ticks_y:
        parts.append(_text(_L - 6, py(y) + 4, f"{y:g}", anchor="end"))
        parts.append(f'<line x1="{_L}" y1="{_n(py(y))}" x2="{_L + pw}" y2="{_n(py(y))}" class="grid"/>')
    shown = sorted(curves, key=lambda c: aggregators.index(c.aggregator))
    for curve in shown:
        colour = color(aggregators.index(curve.aggregator))
        band = [(px(lr), py(lo), py(hi)) for lr, lo, hi in zip(curve.lrs, curve.test_low, curve.test_high)
                if lr > 0 and not (math.isnan(lo) or math.isnan(hi))]
        if len(band) > 1:
            outline = [f"{_n(x)},{_n(top)}" for x, _, top in band] + \
                      [f"{_n(x)},{_n(bottom)}" for x, bottom, _ in band[::-1]]
            parts.append(f'<polygon class="spread" points="{" ".join(outline)}" fill="{colour}" fill-opacity="0.15" '
                         'stroke="none"/>')
        at = [(px(lr), f"lr {lr:g}") if lr > 0 else None for lr in curve.lrs]
        parts += _test_and_val(curve.aggregator, colour, at, curve.test_top1, curve.val_top1, py)
    present = _legend_of(curves, aggregators, parts)
    parts.append(_text(_W - _R + 8, _T + 8 + 17 * (len(present) + 2) + 4, "band: seed range", anchor="start",
                       extra=' class="legend"'))
    return "".join(parts) + "</svg>"


def layer_plot(title: str, curves: list[LayerCurve], aggregators: tuple[str, ...]) -> str:
    """One backbone's top-1 against the layer read (one x position per layer label, blocks in order, then
    concatenations): solid test, dashed val, a colour per aggregator. "" when no aggregator swept layers."""
    layers = sorted({layer for c in curves for layer in c.layers}, key=layer_order)
    ys = [y for c in curves for y in (*c.val_top1, *c.test_top1) if not math.isnan(y)]
    if not layers or not ys:
        return ""
    ticks_y = nice_ticks(*_span(min(ys), max(ys), 1.0))
    y0, y1 = ticks_y[0], ticks_y[-1]
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(layer: str) -> float:
        return _L + (layers.index(layer) + 0.5) / len(layers) * pw

    def py(y: float) -> float:
        return _T + (y1 - y) / (y1 - y0) * ph

    parts = _frame(title, "layer-plot", "layer read (block index, -1 the last; last<n>: the last n concatenated)",
                   "top-1 %")
    for layer in layers:
        parts.append(_text(px(layer), _T + ph + 16, layer))
    for y in ticks_y:
        parts.append(_text(_L - 6, py(y) + 4, f"{y:g}", anchor="end"))
        parts.append(f'<line x1="{_L}" y1="{_n(py(y))}" x2="{_L + pw}" y2="{_n(py(y))}" class="grid"/>')
    for curve in sorted(curves, key=lambda c: aggregators.index(c.aggregator)):
        colour = color(aggregators.index(curve.aggregator))
        at = [(px(layer), f"layer {layer}") for layer in curve.layers]
        parts += _test_and_val(curve.aggregator, colour, at, curve.test_top1, curve.val_top1, py)
    _legend_of(curves, aggregators, parts)
    return "".join(parts) + "</svg>"


def epoch_plot(title: str, series: list[tuple[str, str, list[tuple[int, float, float, float]]]], y_label: str,
               css_class: str = "epoch-plot") -> str:
    """Per-epoch curves: (label, colour, [(epoch, mean, low, high)]) each, the seeds' range as a band."""
    values = [v for _, _, points in series for _, *vs in points for v in vs if not math.isnan(v)]
    epochs = [e for _, _, points in series for e, *_ in points]
    if not values or not epochs:
        return ""
    ticks_y = nice_ticks(*_span(min(values), max(values), 0.5 if max(values) < 5 else 1.0))
    y0, y1 = ticks_y[0], ticks_y[-1]
    e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(e: float) -> float:
        return _L + (e - e0) / (e1 - e0) * pw

    def py(y: float) -> float:
        return _T + (y1 - y) / (y1 - y0) * ph

    parts = _frame(title, css_class, "epoch", y_label)
    for e in nice_ticks(e0, e1, 6):
        if e0 <= e <= e1 and float(e).is_integer():
            parts.append(_text(px(e), _T + ph + 16, f"{e:g}"))
    for y in ticks_y:
        parts.append(_text(_L - 6, py(y) + 4, f"{y:g}", anchor="end"))
        parts.append(f'<line x1="{_L}" y1="{_n(py(y))}" x2="{_L + pw}" y2="{_n(py(y))}" class="grid"/>')
    for label, colour, points in series:
        if len(points) > 1:
            outline = [f"{_n(px(e))},{_n(py(hi))}" for e, _, _, hi in points] + \
                      [f"{_n(px(e))},{_n(py(lo))}" for e, _, lo, _ in points[::-1]]
            parts.append(f'<polygon class="spread" points="{" ".join(outline)}" fill="{colour}" fill-opacity="0.15" '
                         'stroke="none"/>')
        line = " ".join(f"{_n(px(e))},{_n(py(m))}" for e, m, _, _ in points)
        parts.append(f'<polyline class="curve" points="{line}" fill="none" stroke="{colour}"><title>'
                     f"{html_text(label)}</title></polyline>")
    parts += _legend([(label, colour, "") for label, colour, _ in series])
    return "".join(parts) + "</svg>"


def gain_chart(board: Board) -> str:
    """Horizontal bars: each non-cls aggregator's test top-1 gain over cls per backbone, green above zero and red
    below; a backbone without a cls number (I-JEPA has no [cls]) is listed as such, not left out."""
    bars, missing = [], []
    for row in board.rows:
        for agg, cell in row.cells.items():
            if agg == BASELINE or cell.mean is None:
                continue
            (bars.append((row.label, agg, cell.gain)) if cell.gain is not None else missing.append((row.label, agg)))
    if not bars and not missing:
        return ""
    label_w, bar_h, width = 260, 18, 640
    height = _T + bar_h * (len(bars) + len(missing)) + 34
    reach = max([abs(g) for _, _, g in bars] + [0.5])
    half = (width - label_w - 100) / 2  # room for the value labels beside the longest bars
    zero = label_w + 50 + half
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot gain-chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">', f"<title>{html_text(f'gain over cls, {board.title}')}</title>",
             _text(width / 2, 16, f"test top-1 gain over cls (points), {board.title}", extra=' class="plot-title"')]
    for i, (label, agg, gain) in enumerate(bars):
        y = _T + i * bar_h
        x, w = (zero, gain / reach * half) if gain >= 0 else (zero + gain / reach * half, -gain / reach * half)
        parts.append(_text(label_w - 6, y + bar_h - 5, f"{label} · {agg}", anchor="end"))
        parts.append(f'<rect class="bar" x="{_n(x)}" y="{y + 2}" width="{_n(w)}" height="{bar_h - 4}" '
                     f'fill="{GAIN if gain >= 0 else LOSS}"><title>{html_text(f"{label} · {agg}: {gain:+.2f}")}'
                     "</title></rect>")
        parts.append(_text(x + w + 4 if gain >= 0 else x - 4, y + bar_h - 5, f"{gain:+.2f}",
                           anchor="start" if gain >= 0 else "end", extra=' class="legend"'))
    for j, (label, agg) in enumerate(missing):
        y = _T + (len(bars) + j) * bar_h
        parts.append(_text(label_w - 6, y + bar_h - 5, f"{label} · {agg}", anchor="end"))
        parts.append(_text(zero + 6, y + bar_h - 5, "no cls number to compare (cls n/a)", anchor="start",
                           extra=' class="legend missing"'))
    bottom = _T + bar_h * (len(bars) + len(missing))
    parts.append(f'<line x1="{_n(zero)}" y1="{_T}" x2="{_n(zero)}" y2="{bottom}" class="axis"/>')
    for value in (-reach, 0.0, reach):
        parts.append(_text(zero + value / reach * half, bottom + 16, f"{value:+.2f}"))
    return "".join(parts) + "</svg>"
