"""What every leaderboard shows, computed once from the results and the registry; renderers only format it.

A board is one (dataset, protocol, grid): a row per backbone, a cell per aggregator, so rows of another grid in the
same results folder never change a cell. Where one grid's aggregator was run with more than one recipe (its
settings changed between runs), each recipe is its own column. A cell is the test top-1 of the val-selected head of
each seed (see `harness.results.selection`), summarised as mean ± standard deviation over seeds, with the picks kept
so every figure traces back to its config hashes; it is flagged when its lr* (the most frequent selected lr over
seeds, as in the claim) sits at an edge of its grid. "Best in row" is marked only where the top cell beats the
runner-up beyond the uncertainty (Welch's t at 95% over seeds); otherwise the tied cells are shown as such.
An aggregator that swept layers has its layer selected on val with its lr (the pick names both) and gets an
accuracy-against-layer curve; k-NN cells name their selected k and T. No torch, no Ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
from scipy import special

from harness.registry import Registry, backbone_label, load_registry
from harness.results.selection import RECIPE_KEYS, SELECTION_KEYS, Selection, select, select_best
from harness.results.store import HASH_PREFIX
from harness.tokens.layers import DEFAULT_LAYER

BOARD_KEYS = ("dataset", "protocol", "grid")
CELL_KEYS = ("dataset", "protocol", "grid", "backbone", "aggregator")
BOARD_COLUMNS = tuple(dict.fromkeys((*SELECTION_KEYS, "lr", "wd", "status", "val_top1", "test_top1", "config_hash",
                                     "random_init", "layer", "swept_options")))  # the columns build_boards reads
BASELINE = "cls"
RANDOM_INIT_NOTE = ("(random-init) backbones are untrained pipeline checks: their numbers carry no scientific "
                    "meaning.")
EXPLANATION = ("Test top-1 (%) of the head selected on validation top-1 (learning rate and weight decay), mean ± "
               "standard deviation over seeds (n = seeds), within one grid and recipe. Best in row marked where it "
               "beats the runner-up beyond the uncertainty (Welch's t, 95%, over seeds), else the tied cells say "
               "so. \"lr at edge\": the most frequent selected lr is its grid's lowest or highest, the optimum may lie "
               "outside. Δcls: "
               "gain over `cls` in top-1 points (n/a where `cls` does not apply). Published: the registry's "
               "literature numbers for the dataset and protocol, with their source.")


@dataclass(frozen=True)
class Pick:
    """One seed's selected head."""

    seed: int
    lr: float
    wd: float
    val_top1: float
    test_top1: float
    config_hash: str
    layer: str = DEFAULT_LAYER  # the selected layer (harness.tokens.layers)
    swept: str = "{}"  # JSON of the selected options swept like an lr (k-NN's k and T)

    def text(self) -> str:
        """`seed 0: lr 0.1, wd 0, layer last4, val ..`; an untrained head (k-NN) names its k and T instead of lr."""
        swept = json.loads(self.swept or "{}")
        chosen = (", ".join(f"{k} {v:g}" for k, v in sorted(swept.items(), key=lambda kv: kv[0].lower())) if swept
                  else f"lr {self.lr:g}, wd {self.wd:g}")
        layer = f", layer {self.layer}" if self.layer != DEFAULT_LAYER else ""
        return (f"seed {self.seed}: {chosen}{layer}, val {self.val_top1:.2f}, "
                f"test {self.test_top1:.2f}, {self.config_hash[:HASH_PREFIX]}")


@dataclass(frozen=True)
class Cell:
    """One backbone x aggregator: its picks over seeds, and the status counts of all its rows."""

    aggregator: str
    picks: tuple[Pick, ...]
    statuses: tuple[tuple[str, int], ...]
    baseline: Cell | None = None  # the row's cls cell, for the gain
    best: bool = False  # beats every other cell of its row beyond the uncertainty
    tied: bool = False  # top of its row, or within the uncertainty of the top, with no clear best
    edge: bool = False  # a seed's selected lr is the lowest or highest of its grid

    @property
    def n(self) -> int:
        return len(self.picks)

    @property
    def applicable(self) -> bool:
        return any(status != "not-applicable" for status, _ in self.statuses)

    @property
    def mean(self) -> float | None:
        return sum(p.test_top1 for p in self.picks) / self.n if self.picks else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((p.test_top1 - mean) ** 2 for p in self.picks) / (self.n - 1))

    @property
    def gain(self) -> float | None:
        if self.baseline is None or self.mean is None or self.baseline.mean is None:
            return None
        return self.mean - self.baseline.mean

    def text(self) -> str:
        """The cell as shown: `71.20 ± 0.40 (n=3)`, `n/a`, or what happened instead of an ok head."""
        if not self.applicable:
            return "n/a"
        if self.mean is None:
            return "no ok head (" + ", ".join(f"{count} {status}" for status, count in self.statuses) + ")"
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        flags = "".join((", lr at edge" if self.edge else "", ", tied best" if self.tied else ""))
        return f"{self.mean:.2f}{spread} (n={self.n}{flags})"

    def gain_text(self) -> str:
        """`Δcls +1.10`, `Δcls n/a` where cls does not apply; empty for cls itself or a cell without a number."""
        if self.aggregator == BASELINE or self.mean is None:
            return ""
        if self.baseline is None or not self.baseline.applicable:
            return "Δcls n/a"
        return f"Δcls {self.gain:+.2f}" if self.gain is not None else "Δcls —"


@dataclass(frozen=True)
class BoardRow:
    backbone: str
    random_init: bool
    cells: dict[str, Cell]
    published: dict[str, float]  # aggregator -> published test top-1 on this board's dataset and protocol
    published_source: str = ""

    @property
    def label(self) -> str:
        return backbone_label(self.backbone, self.random_init)

    def published_text(self) -> str:
        numbers = ", ".join(f"{agg} {value:g}" for agg, value in self.published.items())
        return (numbers + (f" ({self.published_source})" if self.published_source else "")) if numbers else "—"


@dataclass(frozen=True)
class Curve:
    """Mean over seeds of the val-selected head at each lr: does this aggregator just need another lr?"""

    backbone: str
    aggregator: str
    lrs: tuple[float, ...]
    val_top1: tuple[float, ...]
    test_top1: tuple[float, ...]
    optimizer: str = ""  # its heads' optimizer(s): lrs of different optimizers are not on one scale
    test_low: tuple[float, ...] = ()  # lowest and highest test top-1 over seeds at each lr
    test_high: tuple[float, ...] = ()


@dataclass(frozen=True)
class LayerCurve:
    """Mean over seeds of the val-selected head (lr and all) at each layer of an aggregator that swept layers."""

    backbone: str
    aggregator: str
    layers: tuple[str, ...]
    val_top1: tuple[float, ...]
    test_top1: tuple[float, ...]

    def text(self) -> str:
        return ", ".join(f"{layer} {test:.2f}" for layer, test in zip(self.layers, self.test_top1))


@dataclass(frozen=True)
class Board:
    dataset: str
    protocol: str
    aggregators: tuple[str, ...]
    rows: tuple[BoardRow, ...]
    num_results: int  # result rows the board was computed from
    grids: tuple[str, ...]
    curves: tuple[Curve, ...]
    layer_curves: tuple[LayerCurve, ...] = ()

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.protocol} · grid {', '.join(self.grids)}"

    @property
    def has_random_init(self) -> bool:
        return any(row.random_init for row in self.rows)

    def source_text(self) -> str:
        return f"From {self.num_results} result rows (grid{'s' if len(self.grids) > 1 else ''}: " \
               f"{', '.join(self.grids)})."


def _aggregator_order(names: set[str], registry: Registry) -> tuple[str, ...]:
    """Registry order (cls first), then any aggregator no longer registered, by name."""
    known = [name for name in registry.aggregators if name in names]
    return tuple(known + sorted(names - set(known)))


def _columns(frame: pd.DataFrame, columns: list[str]) -> zip:
    """The rows of `frame[columns]` as plain tuples: per-row pandas access is far slower at leaderboard scale."""
    return zip(*(frame[c].tolist() for c in columns))


def _picks(selected: pd.DataFrame) -> dict[tuple, list[Pick]]:
    out: dict[tuple, list[Pick]] = {}
    for row in _columns(selected, [*CELL_KEYS, "seed", "lr", "wd", "val_top1", "test_top1", "config_hash", "layer",
                                   "swept_options"]):
        out.setdefault(row[:5], []).append(Pick(int(row[5]), *map(float, row[6:10]), *row[10:13]))
    return out


def layer_order(label: str) -> tuple:
    """Blocks from the first to the last (negative indices after the non-negative ones), then concatenations."""
    if label.lstrip("-").isdigit():
        value = int(label)
        return (0, value if value >= 0 else 10**6 + value, label)
    return (1, 0, label)


def _layer_curves(slim: pd.DataFrame) -> dict[tuple, list[LayerCurve]]:
    """Per board, one curve per backbone x aggregator that read more than one layer: at each layer the val-selected
    head of each seed (lr, wd, k, T chosen on val), mean over seeds."""
    swept = slim.groupby(list(CELL_KEYS))["layer"].transform("nunique") > 1
    if not swept.any():
        return {}
    per_layer = select_best(slim[swept], by=SELECTION_KEYS + ("layer",))
    stats = per_layer.groupby([*CELL_KEYS, "layer"], sort=True)[["val_top1", "test_top1"]].mean().reset_index()
    points: dict[tuple, list[tuple]] = {}
    for *key, layer, val, test in _columns(stats, [*CELL_KEYS, "layer", "val_top1", "test_top1"]):
        points.setdefault(tuple(key), []).append((layer, float(val), float(test)))
    out: dict[tuple, list[LayerCurve]] = {}
    for (*board, backbone, aggregator), line in points.items():
        layers, val, test = zip(*sorted(line, key=lambda p: layer_order(p[0])))
        out.setdefault(tuple(board), []).append(LayerCurve(backbone, aggregator, layers, val, test))
    return out


def _curves(per_lr: pd.DataFrame) -> dict[tuple, list[Curve]]:
    """Per board, one curve per backbone x aggregator from the val-selected head of each seed and lr: the mean
    over seeds, and the seeds' range of test top-1."""
    stats = per_lr.groupby([*CELL_KEYS, "lr"], sort=True).agg(
        val=("val_top1", "mean"), test=("test_top1", "mean"), low=("test_top1", "min"),
        high=("test_top1", "max")).reset_index()
    optimizers = per_lr.groupby(list(CELL_KEYS))["optimizer"].agg(lambda o: ", ".join(sorted(set(map(str, o)))))
    points: dict[tuple, list[tuple[float, ...]]] = {}
    for *key, lr, val, test, low, high in _columns(stats, [*CELL_KEYS, "lr", "val", "test", "low", "high"]):
        points.setdefault(tuple(key), []).append(tuple(map(float, (lr, val, test, low, high))))  # sorted by lr
    out: dict[tuple, list[Curve]] = {}
    for (*board, backbone, aggregator), line in points.items():
        lrs, val, test, low, high = zip(*line)
        out.setdefault(tuple(board), []).append(Curve(
            backbone, aggregator, lrs, val, test, optimizers[(*board, backbone, aggregator)], low, high))
    return out


def _recipe_columns(frame: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """`frame` (the results or their picks) with `aggregator` renamed `aggregator [recipe]` where one board of
    `results` holds that aggregator under several recipes (its grid's settings changed between runs), so each
    recipe gets its own column and no cell mixes two."""
    recipe_keys, keys = [k for k in RECIPE_KEYS if k != "grid"], [*BOARD_KEYS, "aggregator"]
    varied = results.groupby(keys, sort=False, dropna=False)[recipe_keys].nunique(dropna=False).max(axis=1) > 1
    if not varied.any() or frame.empty:  # the usual case: vectorised, no per-row strings
        return frame
    several = frame.set_index(keys).index.isin(varied[varied].index)
    label = frame.loc[several, recipe_keys].astype(str).agg(" ".join, axis=1)
    named = frame["aggregator"].copy()
    named[several] = named[several] + " [" + label + "]"
    return frame.assign(aggregator=named)


def beats(top: Cell, other: Cell) -> bool:
    """Whether `top`'s mean exceeds `other`'s beyond the seeds' uncertainty (one-sided Welch t at 2.5%)."""
    if other.mean is None:
        return True
    if top.n < 2 or other.n < 2:
        return False
    a, b = top.std ** 2 / top.n, other.std ** 2 / other.n
    if a + b == 0.0:
        return top.mean > other.mean
    df = (a + b) ** 2 / (a * a / (top.n - 1) + b * b / (other.n - 1))
    return top.mean - other.mean > float(special.stdtrit(df, 0.975)) * math.sqrt(a + b)


def _row(board: tuple, backbone: str, aggregators: tuple[str, ...], picks: dict, statuses: dict, edges: set,
         random_init: bool, registry: Registry) -> BoardRow:
    """One backbone's cells (each non-cls cell knows its cls cell, for the gain), best in row or ties marked."""
    def cell(agg: str, baseline: Cell | None = None, best: bool = False, tied: bool = False) -> Cell:
        key = (*board, backbone, agg)
        return Cell(agg, tuple(picks.get(key, ())), tuple(statuses.get(key, ())), baseline, best, tied, key in edges)

    present = [agg for agg in aggregators if (*board, backbone, agg) in statuses]
    cls = cell(BASELINE) if BASELINE in present else None
    plain = {agg: cell(agg) for agg in present}
    ranked = sorted((c for c in plain.values() if c.mean is not None), key=lambda c: -c.mean)
    best = ranked[0].aggregator if ranked and all(beats(ranked[0], c) for c in ranked[1:]) else None
    tied = set() if best or not ranked else {c.aggregator for c in ranked if not beats(ranked[0], c)}
    cells = {agg: cell(agg, None if agg == BASELINE else cls, agg == best, agg in tied) for agg in present}
    entry = registry.backbones.get(backbone)
    published = {key.split("/", 1)[1]: value for key, value in sorted(entry.published.items())
                 if key.split("/", 1)[0] == board[0]} if entry and entry.published_protocol == board[1] else {}
    return BoardRow(backbone, random_init or bool(entry and entry.random_init), cells, published,
                    entry.published_source if entry else "")


def lr_star(picks: list[Pick]) -> float:
    """The most frequent selected lr over seeds (ties: the lowest), as the claim's lr*."""
    lrs = [p.lr for p in picks]
    return min(set(lrs), key=lambda lr: (-lrs.count(lr), lr))


def _edges(results: pd.DataFrame, picks: dict[tuple, list[Pick]]) -> set[tuple]:
    """Cells whose lr* is the lowest or highest lr of the cell's rows (any status). lr*, not any seed's pick: on
    a plateau single seeds land on an edge by validation noise alone. Untrained heads (lr 0) have no lr grid."""
    bounds = results.groupby(list(CELL_KEYS), sort=False)["lr"].agg(["min", "max"])
    spans = {key: (low, high) for key, low, high in zip(bounds.index, bounds["min"], bounds["max"])}
    return {key for key, ps in picks.items() if lr_star(ps) in spans[key] and spans[key][1] > 0}  # k-NN: no lr


def build_boards(results: pd.DataFrame, registry: Registry | None = None,
                 selection: Selection | None = None) -> list[Board]:
    """Boards sorted by (dataset, protocol, grid), rows by backbone; deterministic for a given results frame.
    `selection` is `select(results)` when the caller has it (a regeneration selects once for boards and claim)."""
    if results.empty:
        return []
    registry = registry if registry is not None else load_registry()
    selection = select(results) if selection is None else selection
    picks = _picks(_recipe_columns(selection.best, results))
    curves = _curves(_recipe_columns(selection.per_lr, results))
    results = _recipe_columns(results, results)
    layer_curves = _layer_curves(results)
    edges = _edges(results, picks)
    statuses: dict[tuple, list[tuple[str, int]]] = {}
    for (*key, status), count in results.groupby([*CELL_KEYS, "status"], sort=True).size().items():
        statuses.setdefault(tuple(key), []).append((status, int(count)))
    random_init = results.groupby("backbone")["random_init"].any().to_dict()
    boards = []
    for board in sorted({key[:3] for key in statuses}):
        cells = [key for key in statuses if key[:3] == board]
        aggregators = _aggregator_order({key[4] for key in cells}, registry)
        rows = tuple(_row(board, backbone, aggregators, picks, statuses, edges, bool(random_init[backbone]),
                          registry) for backbone in sorted({key[3] for key in cells}))
        num_results = sum(count for key in cells for _, count in statuses[key])
        boards.append(Board(board[0], board[1], aggregators, rows, num_results, (board[2],),
                            tuple(curves.get(board, ())), tuple(layer_curves.get(board, ()))))
    return boards
