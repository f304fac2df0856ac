"""`headwater cdc setup | status | teardown`: what change data capture holds on the source server.

    headwater cdc setup [TABLES] [--dry-run]    check prerequisites, explain, create what is missing
    headwater cdc status [TABLES] [--max-lag 1GB]   where each stream is, how much log it keeps
    headwater cdc teardown TABLES --yes         drop what the tables hold on the server

A table takes part when its source's `kind` has an adapter in ADAPTERS
(PostgreSQL logical decoding, MySQL/MariaDB binary log). An adapter turns one
connector's checks and states into the `Finding` and `StreamState` rows printed
here, so another connector plugs in by adding its kind and adapter, without
touching the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer
from rich.text import Text

from .._units import parse_size
from ..errors import HeadwaterError
from . import render

if TYPE_CHECKING:
    from ..declare import TableSpec
    from ..project import Project
    from ..sources.base import ReadContext, Source

app = typer.Typer(
    help="Change data capture: prepare, watch and remove what sources hold on the server.",
    no_args_is_help=True,
)

STATUS_STYLE = {"ok": "green", "created": "cyan", "warning": "yellow", "failed": "bold red"}


@dataclass(frozen=True)
class Finding:
    """One prerequisite: ok, created (fixed just now), warning or failed."""

    name: str
    status: str
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class StreamState:
    """Where one table's change stream is on the server, and what it keeps there."""

    table: str
    stream: str  # a replication slot, a binlog reader...
    exists: bool
    active: bool = False
    server_position: str | None = None  # what the server has been told
    table_position: str | None = None  # what the table has committed
    lag_bytes: int | None = None
    retained_bytes: int | None = None
    state: str | None = None
    warnings: tuple[str, ...] = ()


class Adapter(Protocol):
    """What the commands need from one kind of CDC connector."""

    def setup(self, spec: TableSpec, ctx: ReadContext, *, apply: bool) -> list[Finding]: ...

    def status(
        self, spec: TableSpec, ctx: ReadContext, position: Any, max_lag_bytes: int
    ) -> StreamState: ...

    def strays(self, ctx: ReadContext, known: set[str], max_lag_bytes: int) -> list[StreamState]:
        """Streams on the server that no declared table uses (they keep log all the same)."""
        ...

    def stream_name(self, spec: TableSpec, ctx: ReadContext) -> str: ...

    def teardown(self, spec: TableSpec, ctx: ReadContext) -> list[str]: ...


class _PostgresAdapter:
    """Logical replication slots and publications (headwater.sources.cdc_postgres)."""

    def __init__(self, source: Source) -> None:
        from ..sources.cdc_postgres import PostgresCdcSource

        assert isinstance(source, PostgresCdcSource)
        self.source = source

    def setup(self, spec: TableSpec, ctx: ReadContext, *, apply: bool) -> list[Finding]:
        checks = self.source.setup(ctx, spec.options.keys, apply=apply)
        return [Finding(c.name, c.status, c.detail, c.hint) for c in checks]

    def status(
        self, spec: TableSpec, ctx: ReadContext, position: Any, max_lag_bytes: int
    ) -> StreamState:
        return _state(self.source.status(ctx, position, max_lag_bytes))

    def strays(self, ctx: ReadContext, known: set[str], max_lag_bytes: int) -> list[StreamState]:
        return [_state(r) for r in self.source.abandoned_slots(ctx, known)]

    def stream_name(self, spec: TableSpec, ctx: ReadContext) -> str:
        return self.source.slot_name(ctx)

    def teardown(self, spec: TableSpec, ctx: ReadContext) -> list[str]:
        return self.source.teardown(ctx)


def _state(report: Any) -> StreamState:
    return StreamState(
        table=report.table,
        stream=report.slot,
        exists=report.exists,
        active=report.active,
        server_position=report.confirmed_lsn,
        table_position=report.table_lsn,
        lag_bytes=report.lag_bytes,
        retained_bytes=report.retained_wal_bytes,
        state=report.wal_status,
        warnings=tuple(report.warnings),
    )


class _MysqlAdapter:
    """Binary log readers (headwater.sources.cdc_mysql). They hold nothing on the server:
    setup checks the server's settings and grants and applies what can be set online,
    status checks them again, teardown has nothing to drop."""

    def __init__(self, source: Source) -> None:
        from ..sources.cdc_mysql import MysqlCdcSource, apply_fixes, check_prerequisites

        assert isinstance(source, MysqlCdcSource)
        self.source = source
        self.check, self.fix = check_prerequisites, apply_fixes

    def _checks(self, spec: TableSpec, ctx: ReadContext) -> tuple[dict[str, Any], list[Any]]:
        connection = self.source.connection
        settings = ctx.connection(connection) if isinstance(connection, str) else dict(connection)
        where = f"table {spec.name}"
        return settings, self.check(settings, [self.source.table_name], where)

    def setup(self, spec: TableSpec, ctx: ReadContext, *, apply: bool) -> list[Finding]:
        settings, checks = self._checks(spec, ctx)
        applied = self.fix(settings, checks, f"table {spec.name}") if apply else []
        if applied:
            settings, checks = self._checks(spec, ctx)
        findings = [
            Finding(
                c.name,
                "ok" if c.ok else "failed",
                f"{c.actual}" if c.ok else f"{c.actual}; needs {c.expected}",
                None if c.ok else c.fix or None,
            )
            for c in checks
        ]
        findings += [Finding("applied", "created", statement) for statement in applied]
        return findings

    def status(
        self, spec: TableSpec, ctx: ReadContext, position: Any, max_lag_bytes: int
    ) -> StreamState:
        _, checks = self._checks(spec, ctx)
        at = f"{position.get('file')}:{position.get('pos')}" if isinstance(position, dict) else None
        return StreamState(
            spec.name,
            "binlog",
            True,
            table_position=at,
            warnings=tuple(c.line() for c in checks if not c.ok),
        )

    def strays(self, ctx: ReadContext, known: set[str], max_lag_bytes: int) -> list[StreamState]:
        return []

    def stream_name(self, spec: TableSpec, ctx: ReadContext) -> str:
        return f"binlog:{spec.name}"

    def teardown(self, spec: TableSpec, ctx: ReadContext) -> list[str]:
        return ["reads the binary log: nothing to drop on the server"]


# Connector kind -> adapter. Add a kind here to give its tables these commands.
ADAPTERS: dict[str, Callable[[Source], Adapter]] = {
    "postgres-cdc": _PostgresAdapter,
    "cdc_mysql": _MysqlAdapter,
}


def _cdc_tables(project: Project, names: list[str] | None) -> list[tuple[TableSpec, Adapter]]:
    chosen = project.order(names) if names else project.order()
    found = []
    for name in chosen:
        spec = project.spec(name)
        source = spec.source
        make = ADAPTERS.get(source.kind) if source is not None else None
        if source is None or make is None:
            if names and name in names:
                raise HeadwaterError(
                    f"table {name} does not read a change data capture source",
                    f"`headwater cdc` works on tables reading: {', '.join(sorted(ADAPTERS))}",
                )
            continue
        found.append((spec, make(source)))
    if not found:
        raise HeadwaterError(
            "no declared table reads a change data capture source",
            "declare one, e.g. table('bronze.orders', source=cdc_postgres('shop', 'public.orders'), ...)",
        )
    return found


def _context(project: Project, name: str) -> ReadContext:
    from ..sources.base import ReadContext

    return ReadContext(
        name,
        project.root,
        datetime.now(UTC),
        resolve=project.target,
        config=project.config,
    )


def _load() -> Project:
    from .main import _load as load

    return load()


@app.command()
def setup(
    tables: Annotated[
        list[str] | None, typer.Argument(help="Tables to prepare (default: every CDC table).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and explain only; create nothing.")
    ] = False,
) -> None:
    """Check what change data capture needs on the server, and create what is missing."""
    project = _load()
    failed = False
    for spec, adapter in _cdc_tables(project, tables):
        findings = adapter.setup(spec, _context(project, spec.name), apply=not dry_run)
        listing = render.new_table(f"{spec.name} · {spec.source.describe() if spec.source else ''}")
        for column in ("check", "status", "detail"):
            listing.add_column(column)
        for finding in findings:
            detail = Text(finding.detail)
            if finding.hint:
                detail.append(f"\n→ {finding.hint}", style="dim")
            listing.add_row(
                finding.name,
                Text(finding.status, style=STATUS_STYLE.get(finding.status, "")),
                detail,
            )
        render.out().print(listing)
        failed = failed or any(f.status == "failed" for f in findings)
    if failed:
        raise typer.Exit(1)


@app.command()
def status(
    tables: Annotated[
        list[str] | None, typer.Argument(help="Tables to show (default: every CDC table).")
    ] = None,
    max_lag: Annotated[
        str,
        typer.Option(
            "--max-lag", help="Warn when a stream is this far behind or keeps this much log."
        ),
    ] = "1GB",
) -> None:
    """Show each table's stream on the server: position, lag and the log it keeps."""
    from ..engine.position import read_committed_state

    project = _load()
    limit = parse_size(max_lag, "--max-lag")
    states: list[StreamState] = []
    known: dict[type, tuple[Adapter, set[str], str]] = {}
    for spec, adapter in _cdc_tables(project, tables):
        ctx = _context(project, spec.name)
        position = read_committed_state(project.target(spec.name), spec.app_id).position("source")
        states.append(adapter.status(spec, ctx, position, limit))
        entry = known.setdefault(type(adapter), (adapter, set(), spec.name))
        entry[1].add(adapter.stream_name(spec, ctx))
    if not tables:
        for adapter, names, first in known.values():
            states += adapter.strays(_context(project, first), names, limit)
    listing = render.new_table("change data capture streams")
    for column in ("table", "stream", "state", "server at", "table at", "lag", "log kept"):
        listing.add_column(column, justify="right" if column in ("lag", "log kept") else "left")
    for state in states:
        shown = (
            "missing"
            if not state.exists
            else ("active" if state.active else "idle")
            + (f" ({state.state})" if state.state and state.state != "reserved" else "")
        )
        listing.add_row(
            state.table,
            state.stream,
            Text(shown, style="yellow" if state.warnings else ""),
            state.server_position or "",
            state.table_position or "",
            _size(state.lag_bytes),
            _size(state.retained_bytes),
        )
    render.out().print(listing)
    warned = False
    for state in states:
        for warning in state.warnings:
            warned = True
            render.out().print(
                Text.assemble(
                    ("warning: ", "yellow"), f"{state.table} ({state.stream}): {warning}"
                ),
                soft_wrap=True,
            )
    if warned:
        raise typer.Exit(1)


@app.command()
def teardown(
    tables: Annotated[list[str], typer.Argument(help="Tables whose streams to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop what the tables hold on the server (replication slots, publications)."""
    project = _load()
    chosen = _cdc_tables(project, tables)
    if not yes:
        names = ", ".join(spec.name for spec, _ in chosen)
        if not typer.confirm(
            f"Drop the change data capture streams of {names}? Their next run starts with a new snapshot"
        ):
            raise typer.Exit(1)
    for spec, adapter in chosen:
        for line in adapter.teardown(spec, _context(project, spec.name)):
            render.out().print(f"{spec.name}: {line}", markup=False)


def _size(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return str(value)
