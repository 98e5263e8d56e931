"""Leaderboards: Markdown, HTML and terminal renderings of the same boards (`harness.report.boards`).

They are pure functions of the results store and the registry -- no wall-clock timestamps -- so regenerating
them gives byte-identical files and a diff shows only what the results changed. No torch, no Ray.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.text import Text

from harness.report.attention import html_section, markdown_section, probe_layers
from harness.report.claim import INPUT_COLUMNS, LoadCorrect, claim_analysis
from harness.report.claim_pages import claim_html, claim_markdown
from harness.report.html import html_page
from harness.report.boards import BOARD_COLUMNS, EXPLANATION, RANDOM_INIT_NOTE, Board, Cell, build_boards
from harness.report.markdown import md_escape, md_table
from harness.report.plain import printable
from harness.report.provenance import PROVENANCE_COLUMNS, provenance_text
from harness.report.terminal import print_table
from harness.registry import Registry
from harness.results.attention import read_attention
from harness.results.selection import select
from harness.results.store import read_correct, read_curves, read_results

# The store columns a regeneration reads (boards and claim section): far faster than all of them on large stores.
COLUMNS = tuple(dict.fromkeys((*BOARD_COLUMNS, *INPUT_COLUMNS, *PROVENANCE_COLUMNS)))


def _md_board(board: Board) -> list[str]:
    rows = []
    for row in board.rows:
        cells = []
        for agg in board.aggregators:
            cell = row.cells.get(agg)
            if cell is None:
                cells.append("—")
                continue
            text = f"**{md_escape(cell.text())}**" if cell.best else md_escape(cell.text())
            cells.append(", ".join(t for t in (text, cell.gain_text()) if t))
        rows.append([md_escape(row.label), *cells, md_escape(row.published_text())])
    lines = [f"## {md_escape(board.title)}", "", md_escape(board.source_text()), ""]
    lines += md_table(["backbone", *board.aggregators, "published"], rows)
    if board.has_random_init:
        lines += ["", f"> {RANDOM_INIT_NOTE}"]
    lines += ["", "Selected heads (val-selected per seed; config hash prefix):", ""]
    for row in board.rows:
        for agg, cell in row.cells.items():
            if cell.picks:
                lines.append(f"- {md_escape(row.label)} · {md_escape(agg)}: "
                             + "; ".join(md_escape(p.text()) for p in cell.picks))
    if board.layer_curves:
        labels = {row.backbone: row.label for row in board.rows}
        lines += ["", "Test top-1 against the layer read (the val-selected head at each layer, mean over seeds):", ""]
        lines += [f"- {md_escape(labels.get(c.backbone, c.backbone))} · {md_escape(c.aggregator)}: {md_escape(c.text())}"
                  for c in board.layer_curves]
    return lines + [""]


def markdown_page(boards: list[Board], claim_section: str, footer: str = "") -> str:
    """The whole Markdown page: one section per board, the claim section, then where it came from."""
    lines = ["# Leaderboard", "", EXPLANATION, ""]
    for board in boards:
        lines += _md_board(board)
    if not boards:
        lines += ["No results yet.", ""]
    end = f"\n---\n\n{md_escape(footer)}\n" if footer else ""
    return "\n".join(lines) + "\n" + claim_section.rstrip("\n") + "\n" + end


def render_terminal(boards: list[Board], console: Console) -> None:
    """The boards (`build_boards`) as tables that never cut a backbone name (`print_table`)."""
    for board in boards:
        rows = []
        for row in board.rows:
            cells = [Text(printable(row.label))]
            for agg in board.aggregators:
                cell = row.cells.get(agg)
                text = "—" if cell is None else " ".join(t for t in (cell.text(), cell.gain_text()) if t)
                cells.append(Text(text, style="bold green" if cell is not None and cell.best else ""))
            rows.append([*cells, Text(row.published_text())])
        print_table(console, ["backbone", *board.aggregators, "published"], rows, title=board.title,
                    caption=board.source_text())
        if board.has_random_init:
            console.print(Text(RANDOM_INIT_NOTE, style="yellow"))


def boards_json(boards: list[Board]) -> list[dict]:
    """The boards as `harness leaderboard --format json` prints them: per board its rows, per row a cell per
    aggregator with the numbers the tables show (mean, sd, n, gain over cls) and each seed's selected head."""
    def cell(c: Cell) -> dict:
        return {"mean": c.mean, "std": c.std, "n": c.n, "gain_over_cls": c.gain, "best": c.best, "tied": c.tied,
                "edge": c.edge, "applicable": c.applicable, "statuses": dict(c.statuses),
                "picks": [dataclasses.asdict(p) for p in c.picks]}

    return [{"dataset": b.dataset, "protocol": b.protocol, "grids": list(b.grids), "num_results": b.num_results,
             "aggregators": list(b.aggregators),
             "rows": [{"backbone": r.backbone, "label": r.label, "random_init": r.random_init,
                       "published": r.published, "cells": {agg: cell(c) for agg, c in r.cells.items()}}
                      for r in b.rows]} for b in boards]


def leaderboard_pages(results: pd.DataFrame, registry: Registry | None = None, *,
                      attention: pd.DataFrame | None = None, load_correct: LoadCorrect | None = None,
                      curves: pd.DataFrame | None = None) -> tuple[list[Board], dict[str, str]]:
    """The boards and both pages (file name -> text) of a results frame, with the attention tables, the selected
    heads' test predictions (`load_correct`, see `claim_analysis`) and training curves where given: one selection
    feeds the boards and the claim, whose analysis is computed once for both pages."""
    selection = select(results)
    boards = build_boards(results, registry, selection)
    claim = claim_analysis(results, load_correct, selection)
    attention = pd.DataFrame() if attention is None else attention
    footer = provenance_text(results)
    probes = probe_layers(boards)
    return boards, {
        "leaderboard.md": markdown_page(boards, claim_markdown(claim) + markdown_section(attention, probes), footer),
        "leaderboard.html": html_page(boards, claim_html(claim) + html_section(attention, probes), footer, curves)}


def regenerate(root: Path, registry: Registry | None = None, *,
               results: pd.DataFrame | None = None) -> tuple[list[Board], list[Path]]:
    """Rewrite `root/leaderboard.md` and `root/leaderboard.html` from the store under `root` (`results`: its rows,
    when the caller has read them with `read_results(root, COLUMNS)`); the boards and the files written. Each
    page is replaced atomically, so a reader never sees half of one."""
    root = Path(root)
    results = read_results(root, COLUMNS) if results is None else results
    boards, texts = leaderboard_pages(results, registry, attention=read_attention(root), curves=read_curves(root),
                                      load_correct=lambda hashes: read_correct(root, hashes))
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = root / name
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return boards, paths


def write_leaderboards(root: Path, registry: Registry | None = None) -> list[Path]:
    """Regenerate `root/leaderboard.md` and `root/leaderboard.html` from the store under `root`."""
    return regenerate(root, registry)[1]
