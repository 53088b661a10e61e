"""Render rows (a list of dicts) as a terminal table, CSV, Markdown or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from db.errors import LatlabError

FORMATS = ("table", "csv", "markdown", "json")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def render(rows: Sequence[dict[str, Any]], fmt: str = "table", title: str | None = None) -> str:
    """Rows as text in ``fmt``, ending with one newline; the columns are the keys of the first row."""
    if fmt not in FORMATS:
        raise LatlabError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(list(rows), indent=2, default=str) + "\n"
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
        return ("\n".join(([f"**{title}**", ""] if title else []) + lines)) + "\n"
    table = Table(title=escape(title) if title else None, show_lines=False)  # text, not Rich markup: "ms[lut]"
    for c in columns:
        table.add_column(escape(c), overflow="fold")
    for r in rows:
        table.add_row(*(escape(_cell(r.get(c))) for c in columns))
    cells = [[c, *(_cell(r.get(c)) for r in rows)] for c in columns]
    needed = sum(max(len(v) for v in col) + 3 for col in cells) + 1  # no number folded across lines
    console = Console(file=io.StringIO(), width=max(160, needed), force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]
