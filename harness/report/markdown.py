"""Markdown text from results or the registry, made literal: one escaping rule for every Markdown page section.

Names come from files anyone can write (a backbone called `<img src=x onerror=alert(1)>`), and Markdown passes
raw HTML through, so both the leaderboard boards and the claim section go through `md_escape`. No torch, no Ray.
"""

from __future__ import annotations

import html
import re

from harness.report.plain import printable

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_escape(text: str) -> str:
    """Text as literal Markdown: no markup, no raw HTML, no broken table cells or rows, no control characters."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(printable(text), quote=False))


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Table lines; headers are escaped here, cells must already be Markdown (escaped, plus any intended markup)."""
    lines = ["| " + " | ".join(map(md_escape, headers)) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
