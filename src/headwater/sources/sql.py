"""What every SQL database source shares: how rows are chosen, chunked and positioned.

Modes of a table (or query):

- full: every run reads everything, in key order, in chunks. Position while a
  reload is under way: the last key read, so a crash resumes the reload where
  it stopped; at the end, `complete`.
- incremental: rows after the high-water mark, `WHERE (cursor, tiebreak) >
  (last_cursor, last_tiebreak)`, ordered by both. The tie-break (the primary
  key) makes the mark exact, so rows sharing a cursor value are never skipped
  and each chunk's end is a resumable position. Options:
    lag="5m"               also re-read rows whose cursor is within 5 minutes
                           below the mark (rows stamped early, committed late by
                           long transactions); the mark itself never moves back.
    full_reload_every="7d" when the last full reload is that old, read the whole
                           table again by key (resumable), then go on from the mark.
- hash-diff: for sources without a usable cursor. Every run reads everything by
  key, hashes each row, compares it with the table's own row and emits only
  inserts, updates and (rows with `_change_type` = 'delete') deletes.

detect_deletes=True adds key reconciliation to full and incremental reads:
keys present in the table but gone from the source become delete rows (hard,
or `_deleted_at` on a table declared deletes="soft").

A connector supplies the connection, identifier quoting and the conversion of
its rows to Arrow; values are always bound through the driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc

from .._units import parse_duration
from ..errors import ConfigError
from .base import Increment, Position, ReadContext, Source

Mode = Literal["full", "incremental", "hash-diff"]
MODES = ("full", "incremental", "hash-diff")
# The alias of the source relation in generated SQL: columns are always `hw_src."name"`.
SRC = "hw_src"
CHANGE_TYPE = "_change_type"


def encode_value(value: Any) -> Any:
    """A cursor value as JSON that keeps its type."""
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "datetime" in value:
            return datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return date.fromisoformat(value["date"])
        if "decimal" in value:
            return Decimal(value["decimal"])
        if "hex" in value:
            return bytes.fromhex(value["hex"])
    return value


def _encode(values: Sequence[Any]) -> list[Any]:
    return [encode_value(v) for v in values]


def _decode(values: Sequence[Any]) -> list[Any]:
    return [decode_value(v) for v in values]


@dataclass(frozen=True)
class SqlRead:
    """One table or query of a SQL source, and how it is read."""

    table: str | None = None
    query: str | None = None
    columns: tuple[str, ...] = ()
    mode: Mode = "incremental"
    cursor: str | None = None
    tiebreak: tuple[str, ...] = ()
    chunk_rows: int | None = None
    lag: timedelta | int | float | None = None
    full_reload_every: timedelta | None = None
    detect_deletes: bool = False
    timezone: str = "UTC"
    deleted_column: str = "_deleted_at"


@dataclass
class Described:
    """The result columns of the source relation, as the connector learned them."""

    names: list[str]
    # Connector-specific facts per column (database type, precision...).
    types: dict[str, Any] = field(default_factory=dict)


class SqlSource(Source):
    """Base of SQL connectors (SQLite, PostgreSQL, MySQL/MariaDB)."""

    # The connector streams one ordered query and the base cuts it into chunks;
    # otherwise the base pages with `ORDER BY ... LIMIT` through `fetch`.
    streams: ClassVar[bool] = False
    # The connector can find a table's primary key, so tiebreak= is optional for tables.
    discovers_keys: ClassVar[bool] = False

    def __init__(
        self,
        table: str | None = None,
        *,
        query: str | None = None,
        columns: Sequence[str] = (),
        mode: Mode = "incremental",
        cursor: str | None = None,
        tiebreak: str | Sequence[str] | None = None,
        chunk_rows: int | None = None,
        lag: str | int | float | timedelta | None = None,
        full_reload_every: str | int | float | timedelta | None = None,
        detect_deletes: bool = False,
        timezone: str = "UTC",
        deleted_column: str = "_deleted_at",
    ) -> None:
        what = f"{self.kind} source {table or 'query'}"
        if (table is None) == (query is None):
            raise ConfigError(f"{self.kind} source: give exactly one of table=... or query=...")
        if mode not in MODES:
            raise ConfigError(f"{what}: mode must be one of {', '.join(MODES)}, not {mode!r}")
        ties = (tiebreak,) if isinstance(tiebreak, str) else tuple(tiebreak or ())
        if mode == "incremental" and not cursor:
            raise ConfigError(
                f"{what}: incremental mode needs cursor= (e.g. 'updated_at')",
                "or use mode='full' to reload everything each run, or mode='hash-diff'",
            )
        needs_keys = mode != "incremental" or detect_deletes or full_reload_every is not None
        if (
            not ties
            and (needs_keys or self.discovers_keys)
            and (query is not None or not self.discovers_keys)
        ):
            raise ConfigError(
                f"{what}: mode {mode!r} needs tiebreak= (the primary key) to read in resumable chunks"
                if needs_keys
                else f"{what}: a query needs tiebreak= (a unique key) so rows sharing a cursor value are never skipped",
                "e.g. tiebreak='id' or tiebreak=['order_id', 'line']",
            )
        if lag is not None and mode != "incremental":
            raise ConfigError(f"{what}: lag= applies to mode='incremental' only")
        if full_reload_every is not None and mode != "incremental":
            raise ConfigError(
                f"{what}: full_reload_every= applies to mode='incremental' only",
                "mode='full' reloads everything every run already",
            )
        if detect_deletes and mode == "hash-diff":
            raise ConfigError(f"{what}: hash-diff mode detects deletes already")
        if isinstance(lag, str | timedelta):
            lag = parse_duration(lag, f"{what}: lag")
        every = None
        if full_reload_every is not None:
            every = parse_duration(full_reload_every, f"{what}: full_reload_every")
            if every <= timedelta(0):
                raise ConfigError(f"{what}: full_reload_every must be positive")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{what}: unknown time zone {timezone!r}",
                "use an IANA name such as 'UTC' or 'Europe/Paris'",
            ) from None
        if chunk_rows is not None and chunk_rows < 1:
            raise ConfigError(f"{what}: chunk_rows must be at least 1")
        self.spec = SqlRead(
            table,
            query,
            tuple(columns),
            mode,
            cursor,
            ties,
            chunk_rows,
            lag,
            every,
            bool(detect_deletes),
            timezone,
            deleted_column,
        )

    # -- connector hooks ---------------------------------------------------------
    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def fetch(self, sql: str, params: list[Any]) -> pa.Table:
        """Run `sql` with bound `params` and return the rows as Arrow (paging connectors)."""
        raise NotImplementedError

    def placeholder(self) -> str:
        return "?"

    def mark_of(self, rows: pa.Table, order: Sequence[str]) -> list[Any]:
        """The position values of the last row read (as the database compares them)."""
        last = rows.slice(rows.num_rows - 1).select(list(order)).to_pylist()[0]
        return [last[c] for c in order]

    def session(self, ctx: ReadContext) -> contextlib.AbstractContextManager[Any]:
        """Connections held for one read (streaming connectors)."""
        return contextlib.nullcontext()

    def stream(self, session: Any, sql: str, params: list[Any]) -> pa.RecordBatchReader:
        """Run `sql` and stream its rows as raw Arrow batches (streaming connectors)."""
        raise NotImplementedError

    def convert(self, session: Any, raw: pa.Table) -> pa.Table:
        """Raw streamed rows -> the connector's Arrow types (decimals, json...)."""
        return raw

    def inspect(self, session: Any, ctx: ReadContext) -> Described | None:
        """The result columns of the source relation, or None if unknown before reading."""
        return None

    def primary_key(self, session: Any, ctx: ReadContext) -> list[str]:
        """The primary key of `spec.table` (connectors that discover keys)."""
        return []

    def projection(self, session: Any, columns: Sequence[str] | None) -> str:
        """The select list over `hw_src` (connectors may convert types in SQL)."""
        if columns is None:
            return f"{SRC}.*"
        return ", ".join(f"{SRC}.{self.quote(c)}" for c in columns)

    def bind(self, session: Any, column: str) -> str:
        """A bound value compared with `column` (connectors may cast it to the column's type)."""
        return self.placeholder()

    def after(
        self, session: Any, columns: Sequence[str], values: Sequence[Any]
    ) -> tuple[str, list[Any]]:
        """SQL true for rows after `values` in `columns` order, and its parameters.

        Spelt out as (a > x) OR (a = x AND b > y)... for portability; connectors
        with row-value comparison (which uses the index) override it.
        """
        clauses, params = [], []
        for i, column in enumerate(columns):
            equal = [f"{self.col(c)} = {self.bind(session, c)}" for c in columns[:i]]
            clauses.append(
                "("
                + " AND ".join([*equal, f"{self.col(column)} > {self.bind(session, column)}"])
                + ")"
            )
            params += [*values[:i], values[i]]
        return "(" + " OR ".join(clauses) + ")", params

    # -- SQL ---------------------------------------------------------------------
    def col(self, name: str) -> str:
        return f"{SRC}.{self.quote(name)}"

    def _relation(self) -> str:
        if self.spec.table is not None:
            return ".".join(self.quote(p) for p in self.spec.table.split("."))
        assert self.spec.query is not None
        query = self.spec.query.strip().rstrip(";")
        if self.placeholder() == "%s":
            query = query.replace("%", "%%")  # the driver formats %s; a literal % stays one
        return f"({query}) AS hw_q"

    def _select(self) -> str:
        cols = ", ".join(self.quote(c) for c in self.spec.columns) if self.spec.columns else "*"
        return f"SELECT {cols} FROM {self._relation()}"

    def _order(self, columns: Sequence[str]) -> str:
        return ", ".join(self.col(c) for c in columns)

    def query_sql(
        self,
        session: Any,
        conditions: Sequence[str],
        order: Sequence[str],
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> str:
        sql = f"SELECT {self.projection(session, columns)} FROM ({self._select()}) AS {SRC}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        if order:
            sql += f" ORDER BY {self._order(order)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql

    # -- scanning ----------------------------------------------------------------
    def scan(
        self,
        session: Any,
        order: Sequence[str],
        limit: int,
        *,
        conditions: Sequence[str] = (),
        params: Sequence[Any] = (),
        after: Sequence[Any] | None = None,
        columns: Sequence[str] | None = None,
    ) -> Iterator[tuple[pa.Table, list[Any]]]:
        """Rows in `order` after `after`, as (chunk of at most `limit` rows, mark of its last row)."""
        order = list(order)
        if self.streams:
            where, values = list(conditions), list(params)
            if after is not None:
                clause, extra = self.after(session, order, after)
                where.append(clause)
                values += extra
            reader = self.stream(session, self.query_sql(session, where, order, columns), values)
            for raw in _rechunk(reader, limit):
                yield self._finish(self.convert(session, raw)), self.mark_of(raw, order)
            return
        mark: list[Any] | None = None if after is None else list(after)
        while True:
            where, values = list(conditions), list(params)
            if mark is not None:
                clause, extra = self.after(session, order, mark)
                where.append(clause)
                values += extra
            rows = self.fetch(self.query_sql(session, where, order, columns, limit), values)
            if rows.num_rows == 0:
                return
            mark = self.mark_of(rows, order)
            yield self._finish(rows), mark
            if rows.num_rows < limit:
                return

    def empty(self, session: Any) -> pa.Table:
        """No rows, with the columns and types a read yields."""
        if self.streams:
            reader = self.stream(session, self.query_sql(session, ["1 = 0"], []), [])
            raw = reader.read_all()
            return self._finish(self.convert(session, raw))
        return self._finish(self.fetch(self.query_sql(session, ["1 = 0"], []), []))

    def _finish(self, table: pa.Table) -> pa.Table:
        """Timestamps without a zone are in the source's declared zone: make them UTC."""
        zone = self.spec.timezone
        for i, f in enumerate(table.schema):
            if pa.types.is_timestamp(f.type) and f.type.tz is None:
                column = table.column(i)
                if zone != "UTC":
                    column = pc.assume_timezone(
                        column, zone, ambiguous="earliest", nonexistent="earliest"
                    )
                table = table.set_column(
                    i, f.name, pc.cast(column, pa.timestamp(f.type.unit or "us", "UTC"))
                )
        return table

    # -- reading -------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        with self.session(ctx) as session:
            spec = self._resolved(session, ctx)
            run = _Run(self, spec, session, ctx)
            if spec.mode == "full":
                yield from run.full(position)
            elif spec.mode == "incremental":
                yield from run.incremental(position)
            else:
                yield from run.hash_diff(position)
            if spec.detect_deletes:
                yield from run.reconcile()

    def _resolved(self, session: Any, ctx: ReadContext) -> SqlRead:
        """The spec with the primary key filled in, checked against the source's columns."""
        spec = self.spec
        described = self.inspect(session, ctx)
        if not spec.tiebreak and self.discovers_keys and spec.table is not None:
            keys = self.primary_key(session, ctx)
            if not keys:
                raise ConfigError(
                    f"table {ctx.table}: {self.kind} table {spec.table} has no primary key",
                    "give tiebreak= (a unique column or columns)",
                )
            spec = replace(spec, tiebreak=tuple(keys))
        if described is not None:
            names = described.names
            wanted = [*([spec.cursor] if spec.cursor else []), *spec.tiebreak]
            for column in wanted:
                if column not in names:
                    raise ConfigError(
                        f"table {ctx.table}: {self.kind} {spec.table or 'query'} has no column {column!r}",
                        f"its columns are: {', '.join(names)}",
                    )
        return spec


class ServerSqlSource(SqlSource):
    """Base of SQL connectors reached over the network (PostgreSQL, MySQL/MariaDB):
    the SQL options plus where the server is. Secrets stay in the connection."""

    def __init__(
        self,
        table: str | None = None,
        *,
        connection: str | None = None,
        dsn: str | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        user: str | None = None,
        query: str | None = None,
        columns: Sequence[str] = (),
        mode: Mode = "incremental",
        cursor: str | None = None,
        tiebreak: str | Sequence[str] | None = None,
        chunk_rows: int | None = None,
        lag: str | int | float | timedelta | None = None,
        full_reload_every: str | int | float | timedelta | None = None,
        detect_deletes: bool = False,
        timezone: str = "UTC",
        deleted_column: str = "_deleted_at",
    ) -> None:
        super().__init__(
            table,
            query=query,
            columns=columns,
            mode=mode,
            cursor=cursor,
            tiebreak=tiebreak,
            chunk_rows=chunk_rows,
            lag=lag,
            full_reload_every=full_reload_every,
            detect_deletes=detect_deletes,
            timezone=timezone,
            deleted_column=deleted_column,
        )
        if connection is None and dsn is None and host is None:
            raise ConfigError(
                f"{self.kind} source {table or 'query'}: give connection= (a [connections.NAME] of headwater.toml) or dsn=",
                "secrets belong in the connection (password_env=...), never in the pipeline",
            )
        self.connection = connection
        self.dsn = dsn
        self.overrides = {"host": host, "port": port, "database": database, "user": user}


@dataclass
class _Run:
    """One read of a SQL source: the mode's logic over the connector's scans."""

    source: SqlSource
    spec: SqlRead
    session: Any
    ctx: ReadContext
    # The position reached so far in this read (what a delete increment carries).
    current: Position | None = None

    @property
    def limit(self) -> int:
        return self.spec.chunk_rows or self.ctx.chunk_rows

    def info(self, phase: str) -> dict[str, Any]:
        return {"phase": phase, "source_time_zone": self.spec.timezone}

    def increment(
        self, data: pa.Table, position: Position, phase: str, advances: bool = True
    ) -> Increment:
        self.current = position
        return Increment(data, position, advances=advances, info=self.info(phase))

    def scan(self, order: Sequence[str], **kwargs: Any) -> Iterator[tuple[pa.Table, list[Any]]]:
        return self.source.scan(self.session, order, self.limit, **kwargs)

    # -- full ----------------------------------------------------------------------
    def full(self, position: Position | None) -> Iterator[Increment]:
        self.current = position
        resume = None
        if position is not None and not position.get("complete") and not self.ctx.full_refresh:
            resume = _decode(position["after"])
        produced = False
        for rows, mark in self.scan(self.spec.tiebreak, after=resume):
            produced = True
            yield self.increment(rows, {"after": _encode(mark), "complete": False}, "full")
        # The reload is complete: record it, so the next run starts a new one.
        if produced or position is None or not position.get("complete"):
            done = {"complete": True, "at": self.ctx.run_ts.isoformat()}
            yield self.increment(self.source.empty(self.session), done, "full")

    # -- incremental -----------------------------------------------------------------
    def incremental(self, position: Position | None) -> Iterator[Increment]:
        spec, ctx = self.spec, self.ctx
        assert spec.cursor is not None
        order = [spec.cursor, *spec.tiebreak]
        position = dict(position or {})
        mark = _decode(position["mark"]) if position.get("mark") is not None else None
        state: dict[str, Any] = {"mark": position.get("mark")}
        pending = False  # a state change (a completed reload) still to be committed
        if spec.full_reload_every is not None:
            reloaded = position.get("reloaded_at")
            reload = position.get("reload")
            state["reloaded_at"] = reloaded or ctx.run_ts.isoformat()
            # Never reloaded (the option was just added): due now. The first read of
            # all rows (no mark yet) is itself a full load.
            due = mark is not None and (
                reloaded is None
                or ctx.run_ts - datetime.fromisoformat(reloaded) >= spec.full_reload_every
            )
            if reload is not None or due:
                after = None if reload is None else reload.get("after")
                resume = None if after is None else _decode(after)
                for rows, key in self.scan(spec.tiebreak, after=resume):
                    reloading = {**state, "reload": {"after": _encode(key)}}
                    yield self.increment(rows, reloading, "reload")
                # Rows changed during the reload are re-read from the old mark: the
                # reload never moves the mark, so nothing between is skipped.
                state["reloaded_at"] = ctx.run_ts.isoformat()
                pending = True
        self.current = dict(state) if position else None
        notnull = f"{self.source.col(spec.cursor)} IS NOT NULL"
        if spec.lag is not None and mark is not None:
            start = _minus(mark[0], spec.lag, ctx.table, spec.cursor)
            since, params = self.source.after(self.session, order, mark)
            window = [
                notnull,
                f"{self.source.col(spec.cursor)} >= {self.source.bind(self.session, spec.cursor)}",
                f"NOT {since}",
            ]
            for rows, _ in self.scan(order, conditions=window, params=[start, *params]):
                yield self.increment(rows, dict(state), "lookback")
        for rows, key in self.scan(order, conditions=[notnull], after=mark):
            state["mark"] = _encode(key)
            pending = False
            yield self.increment(rows, dict(state), "incremental")
        if pending:
            yield self.increment(self.source.empty(self.session), dict(state), "reload")

    # -- hash-diff ----------------------------------------------------------------------
    def hash_diff(self, position: Position | None) -> Iterator[Increment]:
        from ._sql_diff import KeyDiff

        keys = list(self.spec.tiebreak)
        resume = None
        if position is not None and not position.get("complete") and not self.ctx.full_refresh:
            resume = _decode(position["after"])
        self.current = position
        with KeyDiff.open(self.ctx, keys, self.spec.deleted_column) as diff:
            if resume is not None:
                # Keys read before the interruption still count as present in the source.
                since, params = self.source.after(self.session, keys, resume)
                for rows, _ in self.scan(
                    keys, conditions=[f"NOT {since}"], params=params, columns=keys
                ):
                    diff.see(rows)
            # Whether the table's committed position says a pass is under way.
            open_pass = position is None or not position.get("complete") or self.ctx.full_refresh
            for rows, key in self.scan(keys, after=resume):
                changed = diff.changes(rows)
                # A chunk without changes need not be committed: a crash re-diffs it.
                progress = {"after": _encode(key), "complete": False}
                open_pass = open_pass or changed.num_rows > 0
                yield self.increment(changed, progress, "hash-diff", advances=changed.num_rows > 0)
            done = {"complete": True, "at": self.ctx.run_ts.isoformat()}
            yielded = False
            for deletes in diff.deletes(self.limit):
                yielded = True
                yield self.increment(deletes, done, "deletes")
            if not yielded:
                # Record the finished pass only if a pass was left open; an unchanged
                # source then costs no commit at all.
                empty = self.source.empty(self.session)
                yield self.increment(empty, done, "hash-diff", advances=open_pass)

    # -- delete detection -------------------------------------------------------------
    def reconcile(self) -> Iterator[Increment]:
        """Deletes for keys the table holds and the source no longer has."""
        from ._sql_diff import KeyDiff

        if self.current is None:
            return  # nothing was ever committed: the table holds no key yet
        keys = list(self.spec.tiebreak)
        with KeyDiff.open(self.ctx, keys, self.spec.deleted_column) as diff:
            if not diff.has_target:
                return
            for rows, _ in self.scan(keys, columns=keys):
                diff.see(rows)
            for deletes in diff.deletes(self.limit):
                yield self.increment(deletes, self.current, "deletes")


def _minus(value: Any, lag: timedelta | int | float, table: str, cursor: str) -> Any:
    """The cursor value `lag` before `value` (where the look-back window starts)."""
    if isinstance(value, datetime | date) and isinstance(lag, timedelta):
        return value - lag
    if isinstance(value, Decimal) and isinstance(lag, int | float):
        return value - Decimal(str(lag))
    if isinstance(value, int | float) and isinstance(lag, int | float):
        return value - lag
    raise ConfigError(
        f"table {table}: lag cannot be subtracted from cursor {cursor!r} (value {type(value).__name__})",
        "use a duration (lag='5m') with a date/time cursor, or a number with a numeric cursor",
    )


def _rechunk(reader: pa.RecordBatchReader, limit: int) -> Iterator[pa.Table]:
    """Cut a stream of batches into tables of exactly `limit` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        while batch.num_rows:
            take = min(batch.num_rows, limit - rows)
            pending.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == limit:
                yield pa.Table.from_batches(pending, reader.schema)
                pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending, reader.schema)


def scrub(message: str, secrets: Sequence[str | None]) -> str:
    """`message` without any of `secrets` (drivers may echo connection strings)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def connection_settings(
    ctx: ReadContext, connection: str | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Settings of a named connection (secrets resolved), with explicit arguments on top."""
    settings: dict[str, Any] = {}
    if connection is not None:
        settings.update(ctx.connection(connection))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings
