"""Reading one table's changes from a MySQL/MariaDB binary log, by whole transactions.

The stream starts at a *transaction boundary* (a binlog file and offset, and
on MariaDB the GTID state there) and yields batches of changes, each ending at
a point from which reading can resume exactly:

- normally at a boundary: every change before it is in this or an earlier batch;
- inside a transaction larger than a batch: at the transaction's start plus the
  number of its changes already delivered (`skip`), which a resumed stream
  passes over, so a huge transaction is neither held in memory nor applied twice.

Each change gets a sequence number in log order (see `_binlog_types`), an
operation (c/u/d; an update that changes the primary key is a delete of the old
key and a create of the new one) and the time of its event. A dropped
connection, or a server restart, reconnects at the last boundary (within a time
budget) and passes over what was already delivered. mysql-replication's own
reconnect is not used: it would resume by GTID from where the stream began.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa
import pymysql
from pymysql.cursors import DictCursor
from pymysqlreplication import BinLogStreamReader  # type: ignore[import-untyped, unused-ignore]
from pymysqlreplication.event import (  # type: ignore[import-untyped, unused-ignore]
    FormatDescriptionEvent,
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (  # type: ignore[import-untyped, unused-ignore]
    DeleteRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from ..errors import HeadwaterError
from ._binlog_types import (
    MAX_ORDINAL,
    Convert,
    binlog_type,
    converter,
    gtid_sequence,
    position_sequence,
)
from ._change_rows import CHANGE_TYPE, CHANGE_TYPES, COMMIT_TS, OP, SEQUENCE, SEQUENCE_TYPE

Mode = Literal["position", "gtid"]
# Connection failures worth reconnecting for (server restart, network, killed dump thread).
_TRANSIENT = {1053, 1317, 1927, 2002, 2003, 2006, 2013, 2055}
_POSITION_LOST = {1236}
_FL_STANDALONE = 1  # MariaDB GTID event flag: a single statement, no XID follows


@dataclass(frozen=True)
class Point:
    """A transaction boundary in the binlog (and the MariaDB GTID state there)."""

    file: str
    pos: int
    gtid: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}" + (f" (GTID {self.gtid})" if self.gtid else "")


def parse_gtid_state(text: str) -> dict[int, tuple[int, int]]:
    """MariaDB GTID state '0-1-57,1-2-5' -> {domain: (server_id, seq_no)}."""
    state: dict[int, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        domain, server, seq_no = (int(x) for x in part.split("-"))
        state[domain] = (server, seq_no)
    return state


def format_gtid_state(state: Mapping[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(state.items()))


def meta_fields(change_type: bool) -> list[pa.Field]:
    fields = [
        pa.field(OP, pa.string()),
        pa.field(SEQUENCE, SEQUENCE_TYPE),
        pa.field(COMMIT_TS, pa.timestamp("us", "UTC")),
    ]
    if change_type:
        fields.append(pa.field(CHANGE_TYPE, pa.string()))
    return fields


class RowBuffer:
    """Changes collected for one batch, in arrival order, in runs of one column layout."""

    def __init__(self, change_type: bool) -> None:
        self.change_type = change_type
        self.meta = meta_fields(change_type)
        self.runs: list[tuple[pa.Schema, list[tuple[Any, ...]]]] = []
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def add(self, schema: pa.Schema, row: tuple[Any, ...]) -> None:
        if not self.runs or self.runs[-1][0] is not schema:
            self.runs.append((schema, []))
        self.runs[-1][1].append(row)
        self.rows += 1

    def meta_values(self, op: str, seq: int, ts: dt.datetime) -> tuple[Any, ...]:
        if self.change_type:
            return (op, Decimal(seq), ts, CHANGE_TYPES[op])
        return (op, Decimal(seq), ts)

    def full_schema(self, data: pa.Schema) -> pa.Schema:
        return pa.schema(list(data) + self.meta)

    def take(self, empty: pa.Schema | None = None) -> pa.Table:
        """The collected rows as one table (columns added later are NULL before); empties the buffer."""
        tables = []
        for schema, rows in self.runs:
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
            arrays = [pa.array(list(c), f.type) for c, f in zip(columns, schema, strict=True)]
            tables.append(pa.Table.from_arrays(arrays, schema=schema))
        self.runs, self.rows = [], 0
        if not tables:
            return self.full_schema(empty or pa.schema([])).empty_table()
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables, promote_options="permissive")


@dataclass
class Batch:
    """Changes up to a resumable point."""

    rows: pa.Table
    point: Point
    skip: int  # changes of the transaction starting at `point` already delivered
    transactions: int = 0
    final: bool = False  # the end of the binlog was reached
    reconnects: int = 0  # times the connection was reopened while reading it


RowsEventTypes = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)


class _StreamLost(Exception):
    """The replication connection dropped and would be reopened by the library."""


@dataclass
class _Layout:
    schema: pa.Schema
    names: list[str]
    converters: list[Convert | None]


@dataclass
class BinlogStream:
    """The changes of `database`.`table` after a point, in batches of about `limit` rows."""

    args: Mapping[str, Any]  # PyMySQL connection arguments
    server_id: int  # this reader's replica id (unique among the server's replicas)
    database: str
    table: str
    keys: Sequence[str]
    mode: Mode
    limit: int
    change_type: bool
    reconnect_seconds: float
    where: str  # "table bronze.orders" for messages
    gtid_domain: int | None = None  # gtid mode: the replication domain that orders changes
    transactions: int = 0
    reconnects: int = 0
    _layouts: dict[tuple[Any, ...], _Layout] = field(default_factory=dict)

    def batches(self, start: Point, skip: int) -> Iterator[Batch]:
        self.boundary, self.skip = start, skip
        self.state = parse_gtid_state(start.gtid)
        self.buffer = RowBuffer(self.change_type)
        self.pending: list[tuple[pa.Schema, tuple[Any, ...]]] = []
        failures = 0
        deadline: float | None = None
        while True:
            self._reset_transaction()
            reader = self._open(self.boundary)
            try:
                for event in reader:
                    deadline, failures = None, 0
                    yield from self._on_event(event, reader)
                break  # the end of the binlog
            except (
                _StreamLost,
                pymysql.err.OperationalError,
                pymysql.err.InterfaceError,
                OSError,
                struct.error,
            ) as exc:
                code = _code(exc)
                if code in _POSITION_LOST:
                    raise self._position_lost(exc) from exc
                if code is not None and code not in _TRANSIENT:
                    raise self._failed(exc) from exc
                now = time.monotonic()
                deadline = deadline or now + self.reconnect_seconds
                if now >= deadline:
                    raise HeadwaterError(
                        f"{self.where}: lost the binlog stream of MySQL at {_server(self.args)} "
                        f"and could not reconnect for {self.reconnect_seconds:g}s ({_text(exc)})",
                        "the next run resumes from the last committed position once the server is back",
                    ) from exc
                failures += 1
                self.reconnects += 1
                time.sleep(min(2.0, 0.05 * 2**failures))
            finally:
                reader.close()
        yield self._batch(final=True)

    # -- events -------------------------------------------------------------------
    def _reset_transaction(self) -> None:
        """Forget a transaction in progress: a reconnect reads it again from its start."""
        self.in_transaction = False
        self.explicit = False  # BEGIN ... COMMIT/XID, rather than a single statement
        self.ordinal = 0
        self.gtid: tuple[int, int, int] | None = None
        self.pending = []

    def _on_event(self, event: Any, reader: BinLogStreamReader) -> Iterator[Batch]:
        if isinstance(event, RowsEventTypes):
            yield from self._on_rows(event)
        elif isinstance(event, XidEvent):
            yield from self._end_transaction(reader)
        elif isinstance(event, MariadbGtidEvent):
            self._reset_transaction()
            self.in_transaction = True
            # Without FL_STANDALONE the group ends with XID or COMMIT; with it, after one statement.
            self.explicit = not (event.flags & _FL_STANDALONE)
            self.gtid = (event.domain_id, event.server_id, event.gtid_seq_no)
        elif isinstance(event, GtidEvent):
            self._reset_transaction()
            self.in_transaction = True
        elif isinstance(event, QueryEvent):
            yield from self._on_query(event, reader)
        elif isinstance(event, XAPrepareEvent):
            if self.pending:
                raise HeadwaterError(
                    f"{self.where}: an XA transaction changed {self.database}.{self.table} "
                    f"at {reader.log_file}:{reader.log_pos}; XA transactions are not supported",
                    "change the table in ordinary transactions",
                )
            yield from self._end_transaction(reader)
        elif isinstance(event, RotateEvent) and not self.in_transaction and event.next_binlog:
            self.boundary = Point(event.next_binlog, int(event.position), self.boundary.gtid)

    def _on_query(self, event: QueryEvent, reader: BinLogStreamReader) -> Iterator[Batch]:
        query = str(event.query).strip()
        statement = query.upper()
        if statement == "BEGIN" or statement.startswith("XA START"):
            self.in_transaction = self.explicit = True
            return
        if statement in ("COMMIT", "ROLLBACK") or statement.startswith(
            ("XA END", "XA COMMIT", "XA ROLLBACK")
        ):
            yield from self._end_transaction(reader)
            return
        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
        action = _statement_on(query, schema, self.database, self.table)
        if action is not None and action != "alter":
            at = f"{reader.log_file}:{reader.log_pos}"
            # The changes before it are delivered; the table cannot be followed past it.
            yield self._batch()
            if action == "dml":
                raise HeadwaterError(
                    f"{self.where}: {self.database}.{self.table} was changed by a statement logged as SQL "
                    f"at {at} (binlog_format was not ROW for that session), so its rows are unknown",
                    "keep binlog_format = ROW for every session, then run with --full-refresh",
                )
            raise HeadwaterError(
                f"{self.where}: {self.database}.{self.table} was {action} at {at} ({query[:80]})",
                "run `headwater run TABLE --full-refresh` to take a new snapshot",
            )
        if not self.explicit:
            # A statement outside BEGIN ... COMMIT (DDL) is a transaction of its own.
            yield from self._end_transaction(reader)

    def _end_transaction(self, reader: BinLogStreamReader) -> Iterator[Batch]:
        for schema, row in self.pending:
            self.buffer.add(schema, row)
        had_rows = bool(self.pending)
        self.pending = []
        if self.gtid is not None:
            domain, server, seq_no = self.gtid
            self.state[domain] = (server, seq_no)
        self.boundary = Point(
            str(reader.log_file), int(reader.log_pos), format_gtid_state(self.state)
        )
        self.skip = 0
        self.transactions += int(had_rows)
        self._reset_transaction()
        if len(self.buffer) >= self.limit:
            yield self._batch()

    def _take_count(self) -> int:
        count, self.transactions = self.transactions, 0
        return count

    def _batch(self, final: bool = False) -> Batch:
        """What the buffer holds, up to the current resumable point."""
        batch = Batch(self.buffer.take(), self.boundary, self.skip, self._take_count(), final)
        batch.reconnects, self.reconnects = self.reconnects, 0
        return batch

    def _on_rows(self, event: Any) -> Iterator[Batch]:
        layout = self._layout(event)
        ts = dt.datetime.fromtimestamp(int(event.timestamp), dt.UTC)
        keys = (
            list(event.primary_key)
            if isinstance(event.primary_key, tuple)
            else ([event.primary_key] if event.primary_key else list(self.keys))
        )
        for row in event.rows:
            if isinstance(event, UpdateRowsEvent):
                before, after = row["before_values"], row["after_values"]
                if any(before.get(k) != after.get(k) for k in keys):
                    self._change("d", before, layout, ts)
                    self._change("c", after, layout, ts)
                else:
                    self._change("u", after, layout, ts)
            else:
                self._change(
                    "c" if isinstance(event, WriteRowsEvent) else "d", row["values"], layout, ts
                )
        if len(self.buffer) + len(self.pending) >= self.limit and self.pending:
            # A transaction larger than a batch: deliver what it has so far.
            for schema, values in self.pending:
                self.buffer.add(schema, values)
            self.pending = []
            self.skip = self.ordinal
            yield self._batch()

    def _change(self, op: str, values: Mapping[str, Any], layout: _Layout, ts: dt.datetime) -> None:
        self.ordinal += 1
        if self.ordinal <= self.skip:
            return  # delivered before the stream was resumed
        if self.ordinal > MAX_ORDINAL:
            raise HeadwaterError(
                f"{self.where}: a transaction with more than {MAX_ORDINAL} changes"
            )
        data = tuple(
            value if convert is None else convert(value)
            for value, convert in zip(
                (values.get(n) for n in layout.names), layout.converters, strict=True
            )
        )
        self.pending.append(
            (layout.schema, data + self.buffer.meta_values(op, self._sequence(), ts))
        )

    def _sequence(self) -> int:
        if self.mode == "gtid":
            if self.gtid is None:
                raise HeadwaterError(
                    f"{self.where}: a change without a GTID in the binlog; resume='gtid' needs MariaDB GTIDs",
                    "use resume='position'",
                )
            domain, _, seq_no = self.gtid
            if self.gtid_domain is not None and domain != self.gtid_domain:
                raise HeadwaterError(
                    f"{self.where}: changes of {self.database}.{self.table} arrive from GTID domain {domain}, "
                    f"but resume='gtid' orders them by domain {self.gtid_domain}",
                    "use resume='position' for tables written from several replication domains",
                )
            return gtid_sequence(seq_no, self.ordinal)
        return position_sequence(self.boundary.file, self.boundary.pos, self.ordinal)

    def _layout(self, event: Any) -> _Layout:
        columns = event.columns
        signature = tuple(
            (
                c.name,
                c.type,
                c.unsigned,
                getattr(c, "precision", None),
                getattr(c, "decimals", None),
                getattr(c, "character_set_name", None),
                tuple(getattr(c, "set_values", None) or ()),
            )
            for c in columns
        )
        layout = self._layouts.get(signature)
        if layout is not None:
            return layout
        names = [c.name for c in columns]
        if any(not n or re.fullmatch(r"UNKNOWN_COL\d+", str(n)) for n in names):
            raise HeadwaterError(
                f"{self.where}: the binlog events of {self.database}.{self.table} carry no column names "
                "(binlog_row_metadata is not FULL)",
                "SET GLOBAL binlog_row_metadata = 'FULL' (and in my.cnf), then run with --full-refresh",
            )
        types = [binlog_type(c) for c in columns]
        converters = [
            converter(t, list(c.set_values) if getattr(c, "set_values", None) else None)
            for t, c in zip(types, columns, strict=True)
        ]
        schema = self.buffer.full_schema(
            pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
        )
        layout = _Layout(schema, names, converters)
        self._layouts[signature] = layout
        return layout

    # -- connecting -------------------------------------------------------------------
    def _open(self, point: Point) -> BinLogStreamReader:
        opened = False

        def connect(**kwargs: Any) -> pymysql.Connection[Any]:
            nonlocal opened
            if kwargs.get("cursorclass") is DictCursor:
                return pymysql.connect(**kwargs)  # the library's control connection
            if opened:
                raise _StreamLost("replication connection lost")
            opened = True
            return pymysql.connect(**kwargs)

        settings = {k: v for k, v in self.args.items() if k != "database"}
        options: dict[str, Any] = {
            "connection_settings": settings,
            "server_id": self.server_id,
            "blocking": False,
            "resume_stream": True,
            "only_schemas": [self.database],
            "only_tables": [self.table],
            "only_events": [
                RotateEvent,
                FormatDescriptionEvent,
                MariadbGtidEvent,
                GtidEvent,
                QueryEvent,
                XidEvent,
                XAPrepareEvent,
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
            ],
            "pymysql_wrapper": connect,
            "enable_logging": False,
        }
        if self.mode == "gtid":
            # MariaDB GTID: the server starts right after the transactions in the state.
            options.update(auto_position=point.gtid, is_mariadb=True)
        else:
            options.update(log_file=point.file, log_pos=point.pos)
        return BinLogStreamReader(**options)

    def _position_lost(self, exc: BaseException) -> HeadwaterError:
        return HeadwaterError(
            f"{self.where}: the binlog at {self.boundary} is no longer on MySQL at {_server(self.args)} ({_text(exc)})",
            "binlogs were purged before this table read them: run with --full-refresh to take a new "
            "snapshot, and keep binlogs longer (binlog_expire_logs_seconds / expire_logs_days)",
        )

    def _failed(self, exc: BaseException) -> HeadwaterError:
        return HeadwaterError(
            f"{self.where}: reading the binlog of MySQL at {_server(self.args)} failed ({_text(exc)})",
            "run `headwater cdc status` to check the server's settings and grants",
        )


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return int(exc.args[0])
    return None


def _text(exc: BaseException) -> str:
    if isinstance(exc, pymysql.MySQLError) and len(exc.args) > 1:
        text = str(exc.args[1])
    else:
        text = str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _server(args: Mapping[str, Any]) -> str:
    return f"{args.get('host')}:{args.get('port')}"


# -- statements logged as SQL ---------------------------------------------------------------

_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+)"
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})?"
_DDL = {
    "truncated": re.compile(rf"^\s*TRUNCATE\s+(?:TABLE\s+)?({_QUALIFIED})", re.I),
    "dropped": re.compile(
        rf"^\s*DROP\s+(?:TEMPORARY\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?((?:{_QUALIFIED}\s*,?\s*)+)", re.I
    ),
    "renamed": re.compile(r"^\s*RENAME\s+TABLES?\s+(.*)$", re.I | re.S),
    "alter": re.compile(rf"^\s*ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE\s+({_QUALIFIED})", re.I),
    "dml": re.compile(
        rf"^\s*(?:INSERT|REPLACE)\s+(?:LOW_PRIORITY\s+|DELAYED\s+|HIGH_PRIORITY\s+|IGNORE\s+)*(?:INTO\s+)?({_QUALIFIED})"
        rf"|^\s*UPDATE\s+(?:LOW_PRIORITY\s+|IGNORE\s+)*({_QUALIFIED})"
        rf"|^\s*DELETE\s+(?:LOW_PRIORITY\s+|QUICK\s+|IGNORE\s+)*FROM\s+({_QUALIFIED})",
        re.I,
    ),
}
_COMMENTS = re.compile(r"/\*.*?\*/|^\s*(?:--|#)[^\n]*\n", re.S | re.M)


def _names(text: str, default_schema: str) -> list[tuple[str, str]]:
    found = []
    for qualified in re.findall(_QUALIFIED, text):
        parts = [p.strip().strip("`").replace("``", "`") for p in re.findall(_NAME, qualified)]
        if not parts:
            continue
        found.append((parts[0], parts[1]) if len(parts) == 2 else (default_schema, parts[0]))
    return found


def _statement_on(query: str, schema: str, database: str, table: str) -> str | None:
    """What a statement logged as SQL does to `database`.`table`, if it concerns it."""
    text = _COMMENTS.sub(" ", query)
    target = (database.lower(), table.lower())
    for action, pattern in _DDL.items():
        match = pattern.match(text)
        if not match:
            continue
        names_text = next((g for g in match.groups() if g), "")
        names = [(d.lower(), t.lower()) for d, t in _names(names_text, schema)]
        if target not in names:
            return None
        if action == "alter" and re.search(
            r"\bRENAME\s+(?:TO|AS)\b|\bRENAME\s+" + _NAME + r"\s*$", text, re.I
        ):
            return "renamed"
        return action
    return None
