"""What every SQL database source shares: full and high-water-mark reads in chunks.

- full: every run reads the whole table (or query), in key order, in chunks.
  Position while a reload is under way: the last key read, so a crash resumes
  the reload where it stopped; at the end, `complete`.
- incremental: rows after the high-water mark, `WHERE (cursor, tiebreak) >
  (last_cursor, last_tiebreak)`, ordered by both. The tie-break (the primary
  key) makes the mark exact, so rows sharing a cursor value are never skipped
  and each chunk's end is a resumable position.

A connector supplies the connection, identifier quoting and the conversion of
its rows to Arrow; values are always bound as parameters.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa

from ..errors import ConfigError
from .base import Increment, Position, ReadContext, Source

Mode = Literal["full", "incremental"]


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


@dataclass(frozen=True)
class SqlRead:
    """One table or query of a SQL source."""

    table: str | None = None
    query: str | None = None
    columns: tuple[str, ...] = ()
    mode: Mode = "incremental"
    cursor: str | None = None
    tiebreak: tuple[str, ...] = ()
    chunk_rows: int | None = None


class SqlSource(Source):
    """Base of SQL connectors (SQLite here; PostgreSQL and MySQL share it)."""

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
    ) -> None:
        if (table is None) == (query is None):
            raise ConfigError(f"{self.kind} source: give exactly one of table=... or query=...")
        ties = (tiebreak,) if isinstance(tiebreak, str) else tuple(tiebreak or ())
        if mode == "incremental" and not cursor:
            raise ConfigError(
                f"{self.kind} source {table or 'query'}: incremental mode needs cursor= (e.g. 'updated_at')",
                "or use mode='full' to reload everything each run",
            )
        if mode == "full" and not ties:
            raise ConfigError(
                f"{self.kind} source {table or 'query'}: full mode needs tiebreak= (the primary key) to read in resumable chunks"
            )
        if mode not in ("full", "incremental"):
            raise ConfigError(
                f"{self.kind} source: mode must be 'full' or 'incremental', not {mode!r}"
            )
        self.spec = SqlRead(table, query, tuple(columns), mode, cursor, ties, chunk_rows)

    # -- connector hooks ---------------------------------------------------------
    @abstractmethod
    def quote(self, name: str) -> str: ...

    @abstractmethod
    def fetch(self, sql: str, params: list[Any]) -> pa.Table:
        """Run `sql` with bound `params` and return the rows as Arrow."""

    def placeholder(self) -> str:
        return "?"

    def mark_of(self, rows: pa.Table, order: Sequence[str]) -> list[Any]:
        """The position values of the last row read (as the database compares them)."""
        last = rows.slice(rows.num_rows - 1).select(list(order)).to_pylist()[0]
        return [last[c] for c in order]

    # -- reading -------------------------------------------------------------------
    def _relation(self) -> str:
        if self.spec.table is not None:
            return ".".join(self.quote(p) for p in self.spec.table.split("."))
        return f"({self.spec.query}) AS hw_src"

    def _select(self) -> str:
        cols = ", ".join(self.quote(c) for c in self.spec.columns) if self.spec.columns else "*"
        return f"SELECT {cols} FROM {self._relation()}"

    def _order(self, columns: Sequence[str]) -> str:
        return ", ".join(self.quote(c) for c in columns)

    def _after(self, columns: Sequence[str], values: Sequence[Any]) -> tuple[str, list[Any]]:
        """Row-value comparison (a, b, c) > (x, y, z), spelt out for portability."""
        p = self.placeholder()
        clauses, params = [], []
        for i, column in enumerate(columns):
            equal = [f"{self.quote(c)} = {p}" for c in columns[:i]]
            clauses.append("(" + " AND ".join([*equal, f"{self.quote(column)} > {p}"]) + ")")
            params += [*values[:i], values[i]]
        return "(" + " OR ".join(clauses) + ")", params

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        spec = self.spec
        limit = spec.chunk_rows or ctx.chunk_rows
        if spec.mode == "incremental":
            assert spec.cursor is not None
            order = [spec.cursor, *spec.tiebreak]
            mark = None if position is None else [decode_value(v) for v in position["mark"]]
            where = f"{self.quote(spec.cursor)} IS NOT NULL"
            yield from self._chunks(order, where, mark, limit, lambda m: {"mark": m})
            return
        order = list(spec.tiebreak)
        resume = None
        if position is not None and not position.get("complete") and not ctx.full_refresh:
            resume = [decode_value(v) for v in position["after"]]
        produced = False
        for increment in self._chunks(
            order, None, resume, limit, lambda m: {"after": m, "complete": False}
        ):
            produced = True
            yield increment
        # The reload is complete: record it, so the next run starts a new one.
        if produced or position is None or not position.get("complete"):
            yield Increment(
                self.fetch(self._select() + " WHERE 1 = 0", []),
                {"complete": True, "at": ctx.run_ts.isoformat()},
            )

    def _chunks(
        self,
        order: list[str],
        where: str | None,
        mark: list[Any] | None,
        limit: int,
        make_position: Any,
    ) -> Iterator[Increment]:
        while True:
            conditions: list[str] = []
            params: list[Any] = []
            if where:
                conditions.append(where)
            if mark is not None:
                clause, params = self._after(order, mark)
                conditions.append(clause)
            sql = f"SELECT * FROM ({self._select()}) AS hw_rows"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            sql += f" ORDER BY {self._order(order)} LIMIT {int(limit)}"
            rows = self.fetch(sql, params)
            if rows.num_rows == 0:
                return
            mark = self.mark_of(rows, order)
            yield Increment(rows, make_position([encode_value(v) for v in mark]))
            if rows.num_rows < limit:
                return
