"""How the CLI shows things: consoles, cells, and the tables every command prints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.traceback import Traceback

from ..engine.run import TableRun
from ..errors import HeadwaterError
from ..tables.time_travel import HistoryEntry

# Piped output (CI logs, files) has no terminal width; 80 columns would wrap
# every summary table, so it gets a wider page unless COLUMNS says otherwise.
PIPED_WIDTH = 160
FAILED = ("failed", "upstream-failed")
STATUS_STYLE = {
    "committed": "green",
    "up-to-date": "dim",
    "failed": "bold red",
    "upstream-failed": "red",
}


def _console(stderr: bool) -> Console:
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, width=width)


@cache
def out() -> Console:
    """Results: tables, rows, reports."""
    return _console(stderr=False)


@cache
def err() -> Console:
    """Progress, errors and hints, so that results can be piped."""
    return _console(stderr=True)


def error(message: str, hint: str | None = None) -> None:
    """`error: ...` and `hint: ...`, each on one line whatever the terminal width."""
    console = err()
    console.print(Text.assemble(("error: ", "bold red"), _one_line(message)), soft_wrap=True)
    if hint:
        console.print(Text.assemble(("hint: ", "yellow"), _one_line(hint)), soft_wrap=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The summary line of an unexpected error (some libraries append backtraces)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def heading(text: str) -> None:
    out().print()
    out().print(Text(text, style="bold cyan"))


# -- cells ----------------------------------------------------------------------


def cell(value: Any) -> Text:
    """A value as a table cell: NULL is visible, times are ISO, numbers exact."""
    if value is None:
        return Text("null", style="dim italic")
    if isinstance(value, bool):
        return Text("true" if value else "false")
    if isinstance(value, datetime):
        return Text(value.isoformat(sep=" "))
    if isinstance(value, date | time):
        return Text(value.isoformat())
    if isinstance(value, Decimal | int | float):
        return Text(str(value))
    if isinstance(value, bytes):
        shown = value[:16].hex()
        return Text(shown + ("…" if len(value) > 16 else ""))
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def new_table(title: str | None = None) -> Table:
    """Every table the CLI prints: light rules, so that wide results fit more columns."""
    return Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


def rows_table(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], title: str | None = None
) -> Table:
    rows = list(rows)
    table = new_table(title)
    for name in columns:
        values = [row.get(name) for row in rows if row.get(name) is not None]
        numeric = bool(values) and all(
            isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
        )
        table.add_column(name, overflow="fold", justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(cell(row.get(name)) for name in columns))
    return table


def number(value: int | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def size(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - loop always returns


# -- run summary -----------------------------------------------------------------


def run_summary(
    results: Sequence[TableRun],
    current: Mapping[str, int | None] | None = None,
    title: str | None = None,
) -> Table:
    """The outcome per table; `current` gives the version of tables the run left as they were."""
    current = current or {}
    table = new_table(title)
    # On a narrow terminal the number headers fold; table names and statuses never do.
    widest = max((len(r.table) for r in results), default=5)
    table.add_column("table", no_wrap=True, min_width=widest)
    table.add_column(
        "status", no_wrap=True, min_width=max(len(r.status) for r in results) if results else 6
    )
    for name in ("commits", "rows in", "inserted", "updated", "deleted", "version", "seconds"):
        table.add_column(name, justify="right", overflow="fold")
    for run in results:
        m = run.metrics
        table.add_row(
            run.table,
            Text(run.status, style=STATUS_STYLE.get(run.status, "")),
            number(run.commits),
            number(m.get("rows_in", 0)),
            number(m.get("inserted", 0)),
            number(m.get("updated", 0)),
            number(m.get("deleted", 0)),
            _version(run, current.get(run.table)),
            f"{run.seconds:.2f}",
        )
    return table


def _version(run: TableRun, current: int | None) -> Text:
    if run.version is not None:
        return Text(str(run.version))
    return Text("" if current is None else str(current), style="dim")


def run_failures(results: Sequence[TableRun], debug: bool = False) -> None:
    """One `error:` (and `hint:`) line per table that failed; with `debug`, tracebacks first."""
    if debug:
        for run in results:
            if run.exception is not None:
                exc = run.exception
                err().print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
    for run in results:
        if run.status == "failed":
            message = run.error or "failed"
            if not isinstance(run.exception, HeadwaterError):
                message = first_line(message)
            if run.table not in message:
                message = f"table {run.table}: {message}"
            hint = run.hint
            if hint is None and not debug and not isinstance(run.exception, HeadwaterError):
                hint = "run with --debug for the traceback"
            error(message, hint)
        elif run.status == "upstream-failed":
            error(f"table {run.table} was not run: {run.error}")


# -- history -----------------------------------------------------------------------


def history_table(entries: Sequence[HistoryEntry], title: str | None = None) -> Table:
    table = new_table(title)
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("operation", min_width=6)
    table.add_column("batch", justify="right", min_width=5)
    table.add_column("run id", no_wrap=True)
    table.add_column("rows", no_wrap=True)
    for entry in entries:
        table.add_row(
            str(entry.version),
            entry.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            entry.operation,
            "" if entry.batch is None else str(entry.batch),
            entry.run_id or "",
            row_counts(entry.metrics) if entry.run_id is not None else "",
        )
    if any(e.run_id is not None for e in entries):
        table.caption = "rows: read in, then + inserted, ~ updated, - deleted"
        table.caption_justify = "left"
    return table


def row_counts(metrics: Mapping[str, int]) -> str:
    """'35 in: +25 ~10' - what a commit read and what it changed (zeros left out)."""
    text = f"{metrics.get('rows_in', 0):,} in"
    changed = [
        f"{sign}{metrics[key]:,}"
        for sign, key in (("+", "inserted"), ("~", "updated"), ("-", "deleted"))
        if metrics.get(key)
    ]
    return f"{text}: {' '.join(changed)}" if changed else text
