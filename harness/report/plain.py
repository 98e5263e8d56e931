"""Text from files made safe to show: control characters are written out, never sent.

Registry names are restricted to a safe alphabet, but results files, error messages and curves can hold anything
(a Parquet file anyone can write), and an escape sequence that reaches a terminal clears it, retitles it or hides
text; a newline splits a Markdown row. `printable` writes every control character (C0, DEL, C1 and the Unicode
bidirectional overrides) as its Python escape, so the reader sees it and the terminal never acts on it. Every
output's own escaping (Markdown, HTML, rich markup) starts from this. No torch, no Ray.
"""

from __future__ import annotations

import html
import re

import rich.markup

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with each control character replaced by its escape (`\\x1b`, `\\n`, `\\u202e`)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def html_text(text: str) -> str:
    """`text` as literal HTML (quotes too, so it is safe in attributes), control characters written out."""
    return html.escape(printable(text), quote=True)


def markup_text(text: str) -> str:
    """`text` as literal rich markup ("[cls]" prints as written), control characters written out."""
    return rich.markup.escape(printable(text))
