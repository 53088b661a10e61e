"""Render rows (a list of dicts) as a terminal table, CSV, Markdown or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from db.errors import LatlabError
from db.json_values import finite_or_none

FORMATS = ("table", "csv", "markdown", "json")
WIDE = 120  # a one-row record table wider than this is printed transposed (one line per column)


def _cell(value: Any) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):  # blank, as in the Markdown reports
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 or not math.isfinite(value) or abs(value) >= 1e15 else f"{value:.0f}"
    return str(value)


def _width(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> int:
    """Characters a terminal table needs so that no number is folded across lines."""
    return sum(max(len(c), *(len(_cell(r.get(c))) for r in rows)) + 3 for c in columns) + 1


def render(rows: Sequence[dict[str, Any]], fmt: str = "table", title: str | None = None, record: bool = False) -> str:
    """Rows as text in ``fmt``, ending with one newline; the columns are the keys of the first row. A ``record``
    (one result, not a listing) wider than :data:`WIDE` prints as a terminal table of field | value."""
    if fmt not in FORMATS:
        raise LatlabError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt in ("json", "csv"):  # a missing number is null in JSON and an empty field in CSV, as in the tables
        rows = [finite_or_none(dict(r)) for r in rows]
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str, allow_nan=False) + "\n"
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
    if record and len(rows) == 1 and _width(rows, columns) > WIDE:  # reads better down the page
        rows, columns = [{"field": c, "value": rows[0].get(c)} for c in columns], ["field", "value"]
    table = Table(title=escape(title) if title else None, show_lines=False)  # text, not Rich markup: "ms[lut]"
    for c in columns:
        table.add_column(escape(c), overflow="fold")
    for r in rows:
        table.add_row(*(escape(_cell(r.get(c))) for c in columns))
    width = max(160, _width(rows, columns))
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]
