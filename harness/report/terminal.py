"""Terminal tables that fit the console without hiding names.

rich shrinks a too-wide table by cutting long words with an ellipsis, which made two backbones look alike.
Here identifier columns are at least as wide as their longest word, so they wrap only at spaces; the other
columns fold. When the identifiers alone leave the others too little room, each row becomes a short record:
its identifiers on one line, its other fields ("header value; ...") wrapped below. Every cell is Text: registry
names are data, never rich markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from harness.report.plain import printable

MIN_OTHER = 8  # narrowest useful width of a non-identifier column
_BORDER = 3  # a column's padding and rule in rich's default box


def _text(cell: str | Text) -> Text:
    return cell if isinstance(cell, Text) else Text(printable(cell))  # control characters written out


def _longest_word(texts: Sequence[Text]) -> int:
    return max((len(word) for t in texts for word in t.plain.split()), default=1)


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str | Text]], *,
                ids: Sequence[int] = (0,), title: str | Text | None = None, caption: str | Text | None = None,
                right: Sequence[int] = ()) -> None:
    """`rows` under `headers`, identifier columns `ids` never cut; a record per row when a table cannot fit."""
    cells = [[_text(c) for c in row] for row in rows]
    widths = {i: max(_longest_word([row[i] for row in cells] + [Text(headers[i])]), 1) for i in ids}
    others = len(headers) - len(ids)
    needed = sum(widths.values()) + others * MIN_OTHER + _BORDER * len(headers) + 1
    title_text = None if title is None else _text(title)
    if needed <= console.width or not cells:
        table = Table(title=title_text, caption=None if caption is None else _text(caption), title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(Text(header), min_width=widths.get(i), overflow="fold",
                             justify="right" if i in right else "left")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    if title_text is not None:
        console.print(title_text, style="bold")
    for row in cells:
        console.print(Text(" · ").join(row[i] for i in ids), style="bold")
        details = Text("; ").join(Text.assemble((headers[i], "dim"), " ", row[i])
                                  for i in range(len(headers)) if i not in ids and row[i].plain)
        console.print(Padding(details, (0, 0, 0, 2), expand=False))
    if caption is not None:
        console.print(_text(caption))


def print_record(console: Console, title: str | Text, fields: Sequence[tuple[str, str | Text]]) -> None:
    """One entry as a two-column table: field names, then values folded to the console's width."""
    record = Table(title=_text(title), show_header=False, title_justify="left")
    record.add_column(style="bold", no_wrap=True)
    record.add_column(overflow="fold")
    for name, value in fields:
        record.add_row(Text(name), _text(value))
    console.print(record)
