"""MySQL and MariaDB source: tables or queries, full / incremental / hash-diff.

Rows are streamed through an unbuffered cursor (pymysql's SSCursor), so memory
holds one chunk, never the result. The session reads in UTC (`time_zone =
'+00:00'`), so TIMESTAMP columns arrive as UTC; DATETIME columns carry no zone
and are taken in the source's `timezone=` (default UTC), then converted to UTC.

Types: integers as integers (unsigned ones one size wider; BIGINT UNSIGNED as
decimal(20,0)), DECIMAL(p,s) as decimal(p,s), FLOAT/DOUBLE, DATE, TIME as a
duration, YEAR as an integer, TEXT/VARCHAR/CHAR/ENUM/SET/JSON/UUID as text,
BLOB/BINARY/VARBINARY/BIT/GEOMETRY as bytes. BOOLEAN is TINYINT(1) in MySQL and
arrives as 0/1. Zero dates ('0000-00-00') arrive as NULL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from ..errors import ConfigError, HeadwaterError
from .base import ReadContext
from .sql import SRC, Described, ServerSqlSource, connection_settings, scrub

# Rows fetched from the unbuffered cursor per Arrow batch.
FETCH_ROWS = 10_000
# Seconds the server waits while a chunk is being committed before it gives up
# sending the rest of a streamed result (MySQL's default is 60).
STREAM_TIMEOUT = 86_400

# pymysql.constants.FIELD_TYPE codes.
_DECIMAL, _NEWDECIMAL = 0, 246
_TINY, _SHORT, _LONG, _INT24, _LONGLONG, _YEAR = 1, 2, 3, 9, 8, 13
_FLOAT, _DOUBLE = 4, 5
_TIMESTAMP, _DATETIME, _DATE, _NEWDATE, _TIME = 7, 12, 10, 14, 11
_BIT, _GEOMETRY = 16, 255
_UNSIGNED = 32  # pymysql.constants.FLAG.UNSIGNED
_BINARY_CHARSET = 63


def _arrow_type(f: Any) -> pa.DataType:
    """The Arrow type of a result column, from its MySQL field description."""
    code, unsigned = f.type_code, bool(f.flags & _UNSIGNED)
    if code in (_DECIMAL, _NEWDECIMAL):
        scale = int(f.scale)
        precision = int(f.length) - (1 if scale else 0) - (0 if unsigned else 1)
        return pa.decimal128(max(1, min(precision, 38)), scale)
    if code == _TINY:
        return pa.int16() if unsigned else pa.int8()
    if code == _SHORT:
        return pa.int32() if unsigned else pa.int16()
    if code in (_LONG, _INT24):
        return pa.int64() if unsigned else pa.int32()
    if code == _LONGLONG:
        return pa.decimal128(20, 0) if unsigned else pa.int64()
    if code == _YEAR:
        return pa.int16()
    if code == _FLOAT:
        return pa.float32()
    if code == _DOUBLE:
        return pa.float64()
    if code == _TIMESTAMP:
        return pa.timestamp("us", "UTC")  # the session's zone is UTC
    if code == _DATETIME:
        return pa.timestamp("us")  # no zone: the source's declared zone applies
    if code in (_DATE, _NEWDATE):
        return pa.date32()
    if code == _TIME:
        return pa.duration("us")
    if code in (_BIT, _GEOMETRY):
        return pa.binary()
    if f.charsetnr == _BINARY_CHARSET:
        return pa.binary()
    return pa.string()


def _values(values: Sequence[Any], dtype: pa.DataType) -> list[Any]:
    """Python values of one column, cleaned for `dtype` (zero dates come as text)."""
    if pa.types.is_timestamp(dtype):
        return [v if isinstance(v, datetime) else None for v in values]
    if pa.types.is_date32(dtype):
        return [v if isinstance(v, date) else None for v in values]
    if pa.types.is_string(dtype):
        return [v.decode() if isinstance(v, bytes) else v for v in values]
    if pa.types.is_binary(dtype):
        return [v.encode() if isinstance(v, str) else v for v in values]
    if pa.types.is_decimal(dtype):
        return [Decimal(v) if isinstance(v, int) else v for v in values]
    return list(values)


@dataclass
class _Session:
    conn: Any
    where: str
    secrets: list[str | None]
    cursor: Any = None
    names: list[str] = field(default_factory=list)


class MySqlSource(ServerSqlSource):
    kind = "mysql"
    streams = True
    discovers_keys = True

    def describe(self) -> str:
        return f"mysql {self.connection or 'dsn'} {self.spec.table or 'query'} ({self.spec.mode})"

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def placeholder(self) -> str:
        return "%s"

    # -- connections -----------------------------------------------------------------
    def _settings(self, ctx: ReadContext) -> dict[str, Any]:
        settings = connection_settings(ctx, self.connection, self.overrides)
        dsn = settings.pop("dsn", None) or self.dsn
        if dsn:
            url = urlparse(str(dsn))
            if url.scheme not in ("mysql", "mariadb"):
                raise ConfigError(
                    f"table {ctx.table}: a mysql dsn starts with mysql:// (mysql://user@host:3306/db)"
                )
            parsed = {
                "host": url.hostname,
                "port": url.port,
                "user": unquote(url.username) if url.username else None,
                "password": unquote(url.password) if url.password else None,
                "database": url.path.lstrip("/") or None,
            }
            settings = {**{k: v for k, v in parsed.items() if v is not None}, **settings}
        if "dbname" in settings:
            settings["database"] = settings.pop("dbname")
        if "port" in settings:
            settings["port"] = int(settings["port"])
        return settings

    @contextlib.contextmanager
    def session(self, ctx: ReadContext) -> Iterator[_Session]:
        import pymysql

        settings = self._settings(ctx)
        secrets = [str(settings["password"]) if settings.get("password") else None]
        where = (
            f"mysql connection {self.connection or 'dsn'!r} "
            f"({settings.get('host', 'localhost')}:{settings.get('port', 3306)}/{settings.get('database', '')})"
        )
        charset = str(settings.pop("charset", "utf8mb4"))
        try:
            conn = pymysql.connect(
                **settings,
                charset=charset,
                init_command=(
                    f"SET time_zone = '+00:00', net_write_timeout = {STREAM_TIMEOUT}, "
                    f"net_read_timeout = {STREAM_TIMEOUT}"
                ),
                autocommit=True,
            )
        except pymysql.err.Error as exc:
            raise HeadwaterError(
                f"table {ctx.table}: cannot connect to {where}: {scrub(_message(exc), secrets)}",
                "check that the server runs and the connection's host, port, user and password",
            ) from None
        except TypeError as exc:  # an unknown setting
            raise ConfigError(
                f"table {ctx.table}: {where} has an unknown setting: {scrub(str(exc), secrets)}"
            ) from None
        session = _Session(conn, where, secrets)
        try:
            yield session
        finally:
            with contextlib.suppress(Exception):
                conn.close()  # also ends a stream left unread

    def _fail(self, session: _Session, exc: BaseException) -> HeadwaterError:
        return HeadwaterError(
            f"{session.where}, {self.spec.table or 'query'}: {scrub(_message(exc), session.secrets)}",
            "check the table, columns and query (and the user's privileges)",
        )

    # -- the catalog ------------------------------------------------------------------
    def inspect(self, session: Any, ctx: ReadContext) -> Described:
        import pymysql

        try:
            with session.conn.cursor() as cur:
                cur.execute(f"SELECT * FROM ({self._select()}) AS {SRC} LIMIT 0", ())
                names = [d[0] for d in cur.description or []]
        except pymysql.err.Error as exc:
            raise HeadwaterError(f"table {ctx.table}: {self._fail(session, exc).message}") from None
        session.names = names
        return Described(names)

    def primary_key(self, session: Any, ctx: ReadContext) -> list[str]:
        import pymysql

        assert self.spec.table is not None
        schema, _, name = self.spec.table.rpartition(".")
        try:
            with session.conn.cursor() as cur:
                cur.execute(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
                    "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s "
                    "AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                    (schema or None, name),
                )
                return [str(r[0]) for r in cur.fetchall()]
        except pymysql.err.Error as exc:
            raise HeadwaterError(f"table {ctx.table}: {self._fail(session, exc).message}") from None

    # -- SQL ----------------------------------------------------------------------------
    def after(
        self, session: Any, columns: Sequence[str], values: Sequence[Any]
    ) -> tuple[str, list[Any]]:
        left = ", ".join(self.col(c) for c in columns)
        right = ", ".join("%s" for _ in columns)
        return f"(({left}) > ({right}))", list(values)

    # -- streaming ----------------------------------------------------------------------
    def stream(self, session: Any, sql: str, params: list[Any]) -> pa.RecordBatchReader:
        import pymysql

        if session.cursor is not None:
            session.cursor.close()  # an unbuffered result must be finished before the next
        cur = session.cursor = session.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(sql, tuple(params))  # pymysql binds (escapes) every value
        except pymysql.err.Error as exc:
            raise self._fail(session, exc) from None
        fields = list(cur._result.fields)
        schema = pa.schema([pa.field(f.name, _arrow_type(f)) for f in fields])
        return pa.RecordBatchReader.from_batches(schema, self._batches(session, cur, schema))

    def _batches(self, session: _Session, cur: Any, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        import pymysql

        while True:
            try:
                rows = cur.fetchmany(FETCH_ROWS)
            except pymysql.err.Error as exc:
                raise self._fail(session, exc) from None
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            arrays = []
            for f, values in zip(schema, columns, strict=True):
                try:
                    arrays.append(pa.array(_values(values, f.type), f.type))
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                    raise HeadwaterError(
                        f"{session.where}: column {f.name!r} has a value that is not {f.type}: {exc}",
                        "cast the column in a query (query=...)",
                    ) from None
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    def mark_of(self, rows: pa.Table, order: Sequence[str]) -> list[Any]:
        values = super().mark_of(rows, order)
        # The session compares TIMESTAMP values in UTC, written without an offset.
        return [
            v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
            for v in values
        ]


def _message(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[1], str) and args[1].strip():
        return args[1].strip().splitlines()[0]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# The name pipelines use: `mysql(...)` builds the connector.
mysql = MySqlSource
