"""MySQL/MariaDB change data capture from the binary log: a snapshot, then every change.

    table("bronze.orders", source=cdc_mysql("shop", "orders"),
          strategy="cdc-apply", keys=["id"], sequence_by="_seq")

The first run takes a consistent snapshot of the table and notes the exact
binlog position it corresponds to; every run after that reads the binlog from
the committed position. Rows carry the table's columns plus

    _op    c (insert), u (update), d (delete), r (read by the snapshot)
    _seq   decimal(38,0), increasing in log order: binlog file, offset of the
           transaction and the change's ordinal within it (with resume='gtid':
           the GTID sequence number and the ordinal)
    _commit_ts  when the change was logged (the snapshot's time for r rows)
    _change_type  insert / update_postimage / delete: how merge, scd1 and scd2
           read the operation (a control column, never stored; change_type=False
           leaves it out, e.g. to keep deletes in an append-only change log)

Snapshot hand-off: on MariaDB, START TRANSACTION WITH CONSISTENT SNAPSHOT
reports the binlog position of the snapshot in binlog_snapshot_file/position;
on MySQL a brief FLUSH TABLES WITH READ LOCK pins the position while the
snapshot starts (as mysqldump --single-transaction --source-data does). The
stream starts at exactly that position, so no change is missed or seen twice.

Positions: a transaction boundary as binlog file + offset (and the MariaDB
GTID state there), plus the number of changes already committed when a
transaction larger than a chunk spans several commits. resume='gtid'
reconnects by GTID (MariaDB), which survives a failover to a replica.

The snapshot is read in chunks by primary key from one transaction, each chunk
committed with the last key read. If a run dies during the snapshot, the next
one reads the remaining keys from a new snapshot (newer sequence numbers) and
then streams from the first snapshot's position: changes made in between to
rows the second snapshot already holds are older than those rows, and
cdc-apply's sequence guard drops them.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pymysql

from ..errors import ConfigError, HeadwaterError
from ._binlog_setup import (
    Check,
    apply_fixes,
    binlog_backlog,
    check_prerequisites,
    connect_args,
    connection,
    connection_error,
    is_mariadb,
    primary_key,
    variables,
)
from ._binlog_stream import (
    BinlogStream,
    Mode,
    Point,
    RowBuffer,
    parse_gtid_state,
)
from ._binlog_types import (
    Convert,
    converter,
    gtid_sequence,
    position_sequence,
    schema_type,
    set_members,
)
from ._change_rows import CHANGE_TYPE, COMMIT_TS, OP, SEQUENCE
from .base import Increment, Position, ReadContext, Source
from .sql import decode_value, encode_value

__all__ = [
    "Check",
    "MysqlCdcSource",
    "apply_fixes",
    "binlog_backlog",
    "cdc_mysql",
    "check_prerequisites",
]

SnapshotMethod = Literal["auto", "lock"]
# With no change of its own, a table still moves its position on this far (bytes of
# other tables' binlog), so later runs do not read the same stretch again and again.
IDLE_ADVANCE_BYTES = 8 << 20


@dataclass(frozen=True)
class _Column:
    name: str
    type: pa.DataType
    convert: Convert | None


class MysqlCdcSource(Source):
    """Changes of one MySQL/MariaDB table: a consistent snapshot, then the binlog."""

    kind = "cdc_mysql"

    def __init__(
        self,
        connection: str | Mapping[str, Any],
        table: str,
        *,
        resume: Mode = "position",
        server_id: int | None = None,
        chunk_rows: int | None = None,
        change_type: bool = True,
        reconnect_seconds: float = 60.0,
        snapshot: SnapshotMethod = "auto",
    ) -> None:
        if resume not in ("position", "gtid"):
            raise ConfigError(
                f"cdc_mysql source {table}: resume must be 'position' or 'gtid', not {resume!r}"
            )
        if snapshot not in ("auto", "lock"):
            raise ConfigError(
                f"cdc_mysql source {table}: snapshot must be 'auto' or 'lock', not {snapshot!r}"
            )
        if not table or table.count(".") > 1:
            raise ConfigError(
                f"cdc_mysql source: table must be 'table' or 'database.table', not {table!r}"
            )
        if server_id is not None and not 1 <= server_id < 2**32:
            raise ConfigError(f"cdc_mysql source {table}: server_id must be between 1 and 2**32-1")
        self.connection = connection
        self.table_name = table
        self.resume: Mode = resume
        self.server_id = server_id
        self.chunk_rows = chunk_rows
        self.change_type = change_type
        self.reconnect_seconds = reconnect_seconds
        self.snapshot_method: SnapshotMethod = snapshot

    def describe(self) -> str:
        name = self.connection if isinstance(self.connection, str) else "mysql"
        return f"cdc_mysql {name} {self.table_name}"

    # -- settings -----------------------------------------------------------------
    def _args(self, ctx: ReadContext) -> tuple[dict[str, Any], str, str]:
        where = f"table {ctx.table}"
        settings = (
            ctx.connection(self.connection)
            if isinstance(self.connection, str)
            else dict(self.connection)
        )
        args = connect_args(settings, where)
        database, _, table = self.table_name.rpartition(".")
        database = database or str(args.get("database") or "")
        if not database:
            raise ConfigError(
                f"{where}: cdc_mysql source {self.table_name!r} names no database",
                "write it as 'database.table' or set database in the connection",
            )
        return args, database, table

    def _server_id(
        self, args: Mapping[str, Any], database: str, table: str, ctx: ReadContext
    ) -> int:
        if self.server_id is not None:
            return self.server_id
        # Stable per table, and away from the small ids servers use for themselves.
        seed = f"{args.get('host')}:{args.get('port')}/{database}.{table}/{ctx.table}"
        return 1_000_000 + zlib.crc32(seed.encode()) % 3_000_000_000

    # -- reading --------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        args, database, table = self._args(ctx)
        where = f"table {ctx.table}"
        if position is not None and not ctx.full_refresh:
            mode = position.get("mode", "position")
            if mode != self.resume:
                raise ConfigError(
                    f"{where}: its changes were read with resume={mode!r}, now resume={self.resume!r}",
                    "sequence numbers of the two modes do not compare: keep the mode, or run with --full-refresh",
                )
        else:
            position = None
        with connection(args, where) as conn:
            mariadb = is_mariadb(conn)
            keys = primary_key(conn, database, table)
            domain = self._domain(conn, mariadb, where, position)
        if not keys:
            raise ConfigError(
                f"{where}: MySQL table {database}.{table} has no primary key (or does not exist)",
                "change data capture applies changes by key: add a primary key to the table",
            )
        if position is None or "snapshot" in position:
            start = yield from self._snapshot(
                args, ctx, database, table, keys, mariadb, domain, position
            )
            skip = 0
        else:
            start = Point(
                str(position["file"]), int(position["pos"]), str(position.get("gtid", ""))
            )
            skip = int(position.get("skip", 0))
        yield from self._stream(args, ctx, database, table, keys, start, skip, domain)

    def _domain(
        self, conn: pymysql.Connection[Any], mariadb: bool, where: str, position: Position | None
    ) -> int | None:
        if self.resume != "gtid":
            return None
        if not mariadb:
            raise ConfigError(
                f"{where}: resume='gtid' follows MariaDB GTIDs; this server is MySQL",
                "use resume='position'",
            )
        if position is not None and "domain" in position:
            return int(position["domain"])
        return int(variables(conn, ["gtid_domain_id"]).get("gtid_domain_id", "0") or 0)

    def _position(self, point: Point, skip: int, domain: int | None) -> dict[str, Any]:
        position: dict[str, Any] = {
            "mode": self.resume,
            "file": point.file,
            "pos": point.pos,
            "gtid": point.gtid,
            "skip": skip,
        }
        if domain is not None:
            position["domain"] = domain
        return position

    # -- the snapshot ------------------------------------------------------------------
    def _snapshot(
        self,
        args: dict[str, Any],
        ctx: ReadContext,
        database: str,
        table: str,
        keys: list[str],
        mariadb: bool,
        domain: int | None,
        previous: Position | None,
    ) -> Generator[Increment, None, Point]:
        """Yield the table's rows from one consistent snapshot; return where streaming starts."""
        where = f"table {ctx.table}"
        limit = self.chunk_rows or ctx.chunk_rows
        with connection(args, where, autocommit=False) as conn:
            try:
                with conn.cursor() as cur:
                    cur.execute("SET SESSION time_zone = '+00:00'")
                    # The engine commits each chunk while this transaction stays open.
                    cur.execute("SET SESSION net_write_timeout = 3600, net_read_timeout = 3600")
                    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    point = self._consistent_snapshot(cur, mariadb)
                    cur.execute("SELECT UTC_TIMESTAMP(6)")
                    taken = _utc(cur.fetchone())
                    columns = self._columns(cur, database, table, where)
            except pymysql.MySQLError as exc:
                raise connection_error(exc, args, where) from exc
            if previous is None:
                start = point
                after: list[Any] | None = None
            else:
                # Resuming a snapshot: the stream still starts where the first one was taken.
                start = Point(
                    str(previous["file"]), int(previous["pos"]), str(previous.get("gtid", ""))
                )
                after = [decode_value(v) for v in previous["snapshot"]["after"]]
            sequence = self._snapshot_sequence(point, domain)
            buffer = RowBuffer(self.change_type)
            schema = buffer.full_schema(pa.schema([pa.field(c.name, c.type) for c in columns]))
            meta = buffer.meta_values("r", sequence, taken)
            select = ", ".join(_quote(c.name) for c in columns)
            order = ", ".join(_quote(k) for k in keys)
            key_index = [next(i for i, c in enumerate(columns) if c.name == k) for k in keys]
            while True:
                sql = f"SELECT {select} FROM {_quote(database)}.{_quote(table)}"
                params: list[Any] = []
                if after is not None:
                    clause, params = _after(keys, after)
                    sql += f" WHERE {clause}"
                sql += f" ORDER BY {order} LIMIT {int(limit)}"
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                        rows = cur.fetchall()
                except pymysql.MySQLError as exc:
                    raise connection_error(exc, args, where) from exc
                done = len(rows) < limit
                data = _snapshot_table(rows, columns, schema, meta)
                position = self._position(start, 0, domain)
                if rows:
                    after = [rows[-1][i] for i in key_index]
                if not done:
                    position["snapshot"] = {
                        "after": [encode_value(v) for v in after or []],
                        "seq": str(sequence),
                    }
                yield Increment(
                    data,
                    position,
                    info={"phase": "snapshot", "at": str(point), "rows": len(rows)},
                )
                if done:
                    break
            conn.rollback()  # a read-only transaction: nothing to keep
        return start

    def _consistent_snapshot(self, cur: Any, mariadb: bool) -> Point:
        if mariadb and self.snapshot_method == "auto":
            # MariaDB reports the binlog position matching the transaction's snapshot.
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
            file, pos = status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])
        else:
            # No commit can happen while the lock is held, so the position is the snapshot's.
            cur.execute("FLUSH TABLES WITH READ LOCK")
            try:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                file, pos = _binlog_status(cur)
            finally:
                cur.execute("UNLOCK TABLES")
        gtid = ""
        if mariadb:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            row = cur.fetchone()
            gtid = str(row[0] or "") if row else ""
        if not file:
            raise HeadwaterError(
                "the server has no binary log (log_bin is OFF)",
                "run `headwater cdc status` for the settings change data capture needs",
            )
        return Point(file, pos, gtid)

    def _snapshot_sequence(self, point: Point, domain: int | None) -> int:
        if self.resume == "gtid":
            server_seq = parse_gtid_state(point.gtid).get(domain if domain is not None else 0)
            return gtid_sequence(server_seq[1] if server_seq else 0, 0)
        return position_sequence(point.file, point.pos, 0)

    def _columns(self, cur: Any, database: str, table: str, where: str) -> list[_Column]:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
            "ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        columns = []
        reserved = {OP, SEQUENCE, COMMIT_TS, CHANGE_TYPE}
        for name, data_type, column_type, precision, scale in cur.fetchall():
            if str(name) in reserved:
                raise ConfigError(
                    f"{where}: MySQL column {database}.{table}.{name} has a name change data capture adds",
                    f"rename the column ({', '.join(sorted(reserved))} are reserved)",
                )
            dtype = schema_type(str(data_type), str(column_type), precision, scale)
            members = set_members(str(column_type)) if str(data_type).lower() == "set" else None
            columns.append(_Column(str(name), dtype, converter(dtype, members)))
        return columns

    # -- the binlog ------------------------------------------------------------------------
    def _stream(
        self,
        args: dict[str, Any],
        ctx: ReadContext,
        database: str,
        table: str,
        keys: list[str],
        start: Point,
        skip: int,
        domain: int | None,
    ) -> Iterator[Increment]:
        stream = BinlogStream(
            args=args,
            server_id=self._server_id(args, database, table, ctx),
            database=database,
            table=table,
            keys=keys,
            mode=self.resume,
            limit=self.chunk_rows or ctx.chunk_rows,
            change_type=self.change_type,
            reconnect_seconds=self.reconnect_seconds,
            where=f"table {ctx.table}",
            gtid_domain=domain,
        )
        for batch in stream.batches(start, skip):
            info = {
                "phase": "binlog",
                "from": str(start),
                "to": str(batch.point),
                "transactions": batch.transactions,
                "reconnects": batch.reconnects,
            }
            if batch.rows.num_rows == 0:
                moved = (
                    batch.point.file != start.file
                    or batch.point.pos - start.pos >= IDLE_ADVANCE_BYTES
                    or batch.skip != skip
                )
                if not moved:
                    continue
            yield Increment(batch.rows, self._position(batch.point, batch.skip, domain), info=info)
            start, skip = batch.point, batch.skip


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _after(keys: list[str], values: list[Any]) -> tuple[str, list[Any]]:
    """(k1, k2) > (v1, v2), spelt out so the optimizer can range-scan the primary key."""
    clauses, params = [], []
    for i, key in enumerate(keys):
        equal = [f"{_quote(k)} = %s" for k in keys[:i]]
        clauses.append("(" + " AND ".join([*equal, f"{_quote(key)} > %s"]) + ")")
        params += [*values[:i], values[i]]
    return "(" + " OR ".join(clauses) + ")", params


def _binlog_status(cur: Any) -> tuple[str, int]:
    try:
        cur.execute("SHOW BINARY LOG STATUS")  # MySQL 8.2+
    except pymysql.MySQLError:
        cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if not row:
        return "", 0
    return str(row[0]), int(row[1])


def _utc(row: Any) -> datetime:
    value = row[0] if row else None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _snapshot_table(
    rows: list[tuple[Any, ...]], columns: list[_Column], schema: pa.Schema, meta: tuple[Any, ...]
) -> pa.Table:
    arrays = []
    for i, column in enumerate(columns):
        values = [r[i] for r in rows]
        if column.convert is not None:
            values = [column.convert(v) for v in values]
        arrays.append(pa.array(values, column.type))
    for field, value in zip(list(schema)[len(columns) :], meta, strict=True):
        arrays.append(pa.array([value] * len(rows), field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# The name pipelines use: `cdc_mysql(...)` builds the connector.
cdc_mysql = MysqlCdcSource
