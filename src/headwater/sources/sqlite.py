"""SQLite source: a local database file, read-only.

SQLite values carry no declared precision, so column types come from the
table's declared types (INTEGER, REAL, TEXT, DECIMAL(p,s), DATE, DATETIME /
TIMESTAMP, BOOLEAN, BLOB); timestamps without an offset are taken as UTC.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import HeadwaterError
from .base import Increment, Position, ReadContext
from .sql import Mode, SqlSource

_DECIMAL = re.compile(r"(DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", re.IGNORECASE)


def _declared_type(declared: str) -> pa.DataType | None:
    text = (declared or "").upper()
    match = _DECIMAL.search(text)
    if match:
        return pa.decimal128(int(match.group(2)), int(match.group(3)))
    if "DATETIME" in text or "TIMESTAMP" in text:
        return pa.timestamp("us", "UTC")
    if text == "DATE":
        return pa.date32()
    if "BOOL" in text:
        return pa.bool_()
    if "INT" in text:
        return pa.int64()
    if any(k in text for k in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in text:
        return pa.binary()
    if any(k in text for k in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    return None


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _convert(values: Sequence[Any], dtype: pa.DataType | None) -> pa.Array:
    if dtype is None:
        return pa.array(values)
    if pa.types.is_timestamp(dtype):
        return pa.array([_timestamp(v) for v in values], dtype)
    if pa.types.is_date32(dtype):
        return pa.array(
            [None if v is None else date.fromisoformat(str(v)[:10]) for v in values], dtype
        )
    if pa.types.is_decimal(dtype):
        return pa.array([None if v is None else Decimal(str(v)) for v in values], dtype)
    if pa.types.is_boolean(dtype):
        return pa.array([None if v is None else bool(v) for v in values], dtype)
    if pa.types.is_string(dtype):
        return pa.array([None if v is None else str(v) for v in values], dtype)
    return pa.array(values, dtype)


class SqliteSource(SqlSource):
    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        table: str | None = None,
        *,
        query: str | None = None,
        columns: Sequence[str] = (),
        mode: Mode = "incremental",
        cursor: str | None = None,
        tiebreak: str | Sequence[str] | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__(
            table,
            query=query,
            columns=columns,
            mode=mode,
            cursor=cursor,
            tiebreak=tiebreak,
            chunk_rows=chunk_rows,
        )
        self.path = Path(path)
        self._root = Path(".")
        self._last_raw: dict[str, Any] = {}

    def describe(self) -> str:
        return f"sqlite {self.path} {self.spec.table or 'query'} ({self.spec.mode})"

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def _file(self) -> Path:
        return self.path if self.path.is_absolute() else self._root / self.path

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        self._root = ctx.project_root
        if not self._file().exists():
            raise HeadwaterError(
                f"table {ctx.table}: sqlite database {self._file()} does not exist",
                "check the path",
            )
        yield from super().read(position, ctx)

    def mark_of(self, rows: pa.Table, order: Sequence[str]) -> list[Any]:
        # SQLite compares stored text; the mark must be the stored value, not a parsed one.
        return [self._last_raw[c] for c in order]

    def _types(self, conn: sqlite3.Connection, names: list[str]) -> dict[str, pa.DataType | None]:
        if self.spec.table is None:
            return {}
        rows = conn.execute(f"PRAGMA table_info({self.quote(self.spec.table)})").fetchall()
        declared = {r[1]: _declared_type(r[2]) for r in rows}
        return {n: declared.get(n) for n in names}

    def fetch(self, sql: str, params: list[Any]) -> pa.Table:
        try:
            conn = sqlite3.connect(f"file:{self._file()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise HeadwaterError(f"sqlite {self._file()}: {exc}") from exc
        try:
            cursor = conn.execute(sql, [_bindable(p) for p in params])
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            types = self._types(conn, names)
            self._last_raw = dict(zip(names, rows[-1], strict=True)) if rows else {}
        except sqlite3.Error as exc:
            raise HeadwaterError(
                f"sqlite {self._file()}: {exc}", "check the table, columns and query"
            ) from exc
        finally:
            conn.close()
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        arrays = [
            _convert(list(values), types.get(name))
            for name, values in zip(names, columns, strict=True)
        ]
        return pa.Table.from_arrays(arrays, names=names)


def _bindable(value: Any) -> Any:
    if isinstance(value, datetime | date | Decimal):
        return str(value)
    return value


# The name pipelines use: `sqlite(...)` builds the connector.
sqlite = SqliteSource
