"""Leaderboards: Markdown, HTML and terminal renderings of the same boards (`harness.leaderboard_model`).

They are pure functions of the results store and the registry -- no wall-clock timestamps -- so regenerating
them gives byte-identical files and a diff shows only what the results changed. No torch, no Ray.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.leaderboard_html import html_page
from harness.leaderboard_model import EXPLANATION, RANDOM_INIT_NOTE, Board, build_boards
from harness.registry import Registry
from harness.store import read_results

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_escape(text: str) -> str:
    """Text from results or registry as literal Markdown: no markup, no raw HTML, no broken table cells."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _md_board(board: Board) -> list[str]:
    header = ["backbone", *board.aggregators, "published"]
    lines = [f"## {md_escape(board.title)}", "", board.source_text(), "",
             "| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
    for row in board.rows:
        cells = []
        for agg in board.aggregators:
            cell = row.cells.get(agg)
            if cell is None:
                cells.append("—")
                continue
            text = f"**{md_escape(cell.text())}**" if cell.best else md_escape(cell.text())
            cells.append(", ".join(t for t in (text, cell.gain_text()) if t))
        lines.append("| " + " | ".join([md_escape(row.label), *cells, md_escape(row.published_text())]) + " |")
    if board.has_random_init:
        lines += ["", f"> {RANDOM_INIT_NOTE}"]
    lines += ["", "Selected heads (val-selected per seed; config hash prefix):", ""]
    for row in board.rows:
        for agg, cell in row.cells.items():
            if cell.picks:
                lines.append(f"- {md_escape(row.label)} · {md_escape(agg)}: "
                             + "; ".join(md_escape(p.text()) for p in cell.picks))
    return lines + [""]


def markdown_page(boards: list[Board], claim_section: str) -> str:
    """The whole Markdown page: one section per board, then the claim section."""
    lines = ["# Leaderboard", "", EXPLANATION, ""]
    for board in boards:
        lines += _md_board(board)
    if not boards:
        lines += ["No results yet.", ""]
    return "\n".join(lines) + "\n" + claim_section.rstrip("\n") + "\n"


def render_markdown(results: pd.DataFrame, registry: Registry | None = None) -> str:
    """The Markdown page of a results frame, claim section included."""
    from harness.claim import claim_markdown

    return markdown_page(build_boards(results, registry), claim_markdown(results))


def render_terminal(results: pd.DataFrame, console: Console, registry: Registry | None = None) -> None:
    """The same boards as rich Tables (cells are Text, so names are never read as rich markup)."""
    for board in build_boards(results, registry):
        table = Table(title=Text(board.title), caption=Text(board.source_text()), show_lines=False)
        for name in ("backbone", *board.aggregators, "published"):
            table.add_column(Text(name), overflow="fold")
        for row in board.rows:
            cells = [Text(row.label)]
            for agg in board.aggregators:
                cell = row.cells.get(agg)
                text = "—" if cell is None else " ".join(t for t in (cell.text(), cell.gain_text()) if t)
                cells.append(Text(text, style="bold green" if cell is not None and cell.best else ""))
            table.add_row(*cells, Text(row.published_text()))
        console.print(table)
        if board.has_random_init:
            console.print(Text(RANDOM_INIT_NOTE, style="yellow"))


def write_leaderboards(root: Path, registry: Registry | None = None) -> list[Path]:
    """Regenerate `root/leaderboard.md` and `root/leaderboard.html` from the store under `root`."""
    from harness.claim import claim_html, claim_markdown

    root = Path(root)
    results = read_results(root)
    boards = build_boards(results, registry)
    root.mkdir(parents=True, exist_ok=True)
    pages = {root / "leaderboard.md": markdown_page(boards, claim_markdown(results)),
             root / "leaderboard.html": html_page(boards, claim_html(results))}
    for path, text in pages.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return list(pages)
