"""What every leaderboard shows, computed once from the results and the registry; renderers only format it.

A board is one (dataset, protocol): a row per backbone, a cell per aggregator. A cell is the test top-1 of the
val-selected head of each seed (see `harness.results.selection`), summarised as mean ± standard deviation over seeds,
with the picks kept so every figure traces back to its config hashes. No torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.registry import Registry, load_registry
from harness.results.selection import Selection, select

BOARD_KEYS = ("dataset", "protocol")
CELL_KEYS = ("dataset", "protocol", "backbone", "aggregator")
BOARD_COLUMNS = (*CELL_KEYS, "seed", "lr", "wd", "status", "val_top1", "test_top1", "config_hash", "grid",
                 "random_init")  # the results columns build_boards reads
BASELINE = "cls"
RANDOM_INIT_NOTE = ("(random-init) backbones are untrained pipeline checks: their numbers carry no scientific "
                    "meaning.")
EXPLANATION = ("Test top-1 (%) of the head selected on validation top-1 (learning rate and weight decay), mean ± "
               "standard deviation over seeds (n = seeds). Best in row marked. Δcls: gain over `cls` in top-1 "
               "points (n/a where `cls` does not apply). Published: the registry's literature numbers for the "
               "dataset.")


@dataclass(frozen=True)
class Pick:
    """One seed's selected head."""

    seed: int
    lr: float
    wd: float
    val_top1: float
    test_top1: float
    config_hash: str

    def text(self) -> str:
        return (f"seed {self.seed}: lr {self.lr:g}, wd {self.wd:g}, val {self.val_top1:.2f}, "
                f"test {self.test_top1:.2f}, {self.config_hash[:12]}")


@dataclass(frozen=True)
class Cell:
    """One backbone x aggregator: its picks over seeds, and the status counts of all its rows."""

    aggregator: str
    picks: tuple[Pick, ...]
    statuses: tuple[tuple[str, int], ...]
    baseline: Cell | None = None  # the row's cls cell, for the gain
    best: bool = False

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
        return f"{self.mean:.2f}{spread} (n={self.n})"

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
    published: dict[str, float]  # aggregator -> published test top-1 on this board's dataset

    @property
    def label(self) -> str:
        return f"{self.backbone} (random-init)" if self.random_init else self.backbone

    def published_text(self) -> str:
        return ", ".join(f"{agg} {value:g}" for agg, value in self.published.items()) or "—"


@dataclass(frozen=True)
class Curve:
    """Mean over seeds of the val-selected head at each lr: does this aggregator just need another lr?"""

    backbone: str
    aggregator: str
    lrs: tuple[float, ...]
    val_top1: tuple[float, ...]
    test_top1: tuple[float, ...]


@dataclass(frozen=True)
class Board:
    dataset: str
    protocol: str
    aggregators: tuple[str, ...]
    rows: tuple[BoardRow, ...]
    num_results: int  # result rows the board was computed from
    grids: tuple[str, ...]
    curves: tuple[Curve, ...]

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.protocol}"

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
    for row in _columns(selected, [*CELL_KEYS, "seed", "lr", "wd", "val_top1", "test_top1", "config_hash"]):
        out.setdefault(row[:4], []).append(Pick(int(row[4]), *map(float, row[5:9]), row[9]))
    return out


def _curves(per_lr: pd.DataFrame) -> dict[tuple, list[Curve]]:
    """Per board, one curve per backbone x aggregator from the val-selected head of each seed and lr."""
    means = per_lr.groupby([*CELL_KEYS, "lr"], sort=True)[["val_top1", "test_top1"]].mean().reset_index()
    points: dict[tuple, list[tuple[float, float, float]]] = {}
    for *key, lr, val, test in _columns(means, [*CELL_KEYS, "lr", "val_top1", "test_top1"]):
        points.setdefault(tuple(key), []).append((float(lr), float(val), float(test)))  # sorted by key, then lr
    out: dict[tuple, list[Curve]] = {}
    for (dataset, protocol, backbone, aggregator), line in points.items():
        lrs, val, test = zip(*line)
        out.setdefault((dataset, protocol), []).append(Curve(backbone, aggregator, lrs, val, test))
    return out


def _row(board: tuple[str, str], backbone: str, aggregators: tuple[str, ...], picks: dict, statuses: dict,
         random_init: bool, registry: Registry) -> BoardRow:
    """One backbone's cells (each non-cls cell knows its cls cell, for the gain), best in row marked."""
    def cell(agg: str, baseline: Cell | None = None, best: bool = False) -> Cell:
        key = (*board, backbone, agg)
        return Cell(agg, tuple(picks.get(key, ())), tuple(statuses.get(key, ())), baseline, best)

    present = [agg for agg in aggregators if (*board, backbone, agg) in statuses]
    cls = cell(BASELINE) if BASELINE in present else None
    means = {agg: cell(agg).mean for agg in present}
    top = max((m for m in means.values() if m is not None), default=None)
    cells = {agg: cell(agg, None if agg == BASELINE else cls, means[agg] is not None and means[agg] == top)
             for agg in present}
    entry = registry.backbones.get(backbone)
    published = {key.split("/", 1)[1]: value for key, value in sorted(entry.published.items())
                 if key.split("/", 1)[0] == board[0]} if entry else {}
    return BoardRow(backbone, random_init or bool(entry and entry.random_init), cells, published)


def build_boards(results: pd.DataFrame, registry: Registry | None = None,
                 selection: Selection | None = None) -> list[Board]:
    """Boards sorted by (dataset, protocol), rows by backbone; deterministic for a given results frame.
    `selection` is `select(results)` when the caller has it (a regeneration selects once for boards and claim)."""
    if results.empty:
        return []
    registry = registry if registry is not None else load_registry()
    selection = select(results) if selection is None else selection
    picks = _picks(selection.best)
    curves = _curves(selection.per_lr)
    statuses: dict[tuple, list[tuple[str, int]]] = {}
    for (*key, status), count in results.groupby([*CELL_KEYS, "status"], sort=True).size().items():
        statuses.setdefault(tuple(key), []).append((status, int(count)))
    grids: dict[tuple, list[str]] = {}
    for (*board, grid), _ in results.groupby([*BOARD_KEYS, "grid"], sort=True).size().items():
        grids.setdefault(tuple(board), []).append(grid)
    random_init = results.groupby("backbone")["random_init"].any().to_dict()
    boards = []
    for board in sorted({key[:2] for key in statuses}):
        cells = [key for key in statuses if key[:2] == board]
        aggregators = _aggregator_order({key[3] for key in cells}, registry)
        rows = tuple(_row(board, backbone, aggregators, picks, statuses, bool(random_init[backbone]), registry)
                     for backbone in sorted({key[2] for key in cells}))
        num_results = sum(count for key in cells for _, count in statuses[key])
        boards.append(Board(*board, aggregators, rows, num_results, tuple(grids[board]), tuple(curves.get(board, ()))))
    return boards
