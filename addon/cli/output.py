"""How the read commands print: a rich table on a terminal; plain, whole text in a
pipe (however narrow COLUMNS is: no value is cut, no ellipsis); JSON or CSV on request.

A command hands `emit` its rows as dicts and its columns; JSON and CSV carry every
key of every row, the table and the plain text the chosen columns.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """Bad input or a ledger that cannot answer: one line on stderr, exit 1."""


def iso(value: object) -> str:
    """An epoch time as ISO-8601 in UTC (2026-11-30T04:35:07Z); '-' for none."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "-"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"{value:,.2f}"
    return str(value)


def one_line(value: Any) -> str:
    """A value on one line: newlines and tabs become spaces."""
    return " ".join(fmt(value).split()) if value is not None else "-"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    right: bool = False  # numbers
    show: Callable[[Any], str] = fmt
    # Never folded on a terminal (ids, model names, times): the table grows instead.
    whole: bool = False


def wants_rich() -> bool:
    return sys.stdout.isatty()


def emit(
    args: Any,
    rows: list[dict[str, Any]],
    columns: Sequence[Column],
    *,
    title: str = "",
    totals: dict[str, Any] | None = None,
    header: bool = True,
) -> None:
    """Print `rows` as the command line asked: --json, --csv, a table or plain text."""
    if getattr(args, "json", False):
        data: Any = rows if totals is None else {"rows": rows, "totals": totals}
        write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        return
    if getattr(args, "csv", False):
        write_csv(rows + ([totals] if totals else []), header=header)
        return
    cells = [[c.show(row.get(c.key)) for c in columns] for row in rows]
    total_cells = [c.show(totals.get(c.key)) for c in columns] if totals else None
    if wants_rich():
        table = Table(title=title or None, show_footer=bool(totals), show_header=header)
        least = 1
        for i, column in enumerate(columns):
            widths = [len(line[i]) for line in cells + ([total_cells] if total_cells else [])]
            width = max([len(column.header), *widths]) if column.whole or column.right else None
            least += (width or min(len(column.header), 8)) + 3
            table.add_column(
                column.header,
                justify="right" if column.right else "left",
                overflow="fold",
                min_width=width,
                footer=total_cells[i] if total_cells else "",
            )
        for line in cells:
            table.add_row(*(Text(cell) for cell in line))
        # Wider than the terminal rather than an id or a model cut or folded.
        console.print(table, width=max(least, console.width), crop=False)
        return
    lines = [[c.header for c in columns]] if header else []
    lines += cells + ([total_cells] if total_cells else [])
    write(plain_table(lines, [c.right for c in columns]))


def plain_table(lines: list[list[str]], right: list[bool]) -> str:
    """Columns padded to their widest cell, two spaces apart; nothing is ever cut."""
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(right))]
    out = []
    for line in lines:
        cells = [
            cell.rjust(width) if is_right else cell.ljust(width)
            for cell, width, is_right in zip(line, widths, right, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def write_csv(rows: list[dict[str, Any]], *, header: bool = True) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    writer = csv.DictWriter(sys.stdout, fieldnames=keys, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    sys.stdout.flush()


def _csv_value(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
