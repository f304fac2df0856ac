"""Comparing a source with the table it feeds: row hashes (hash-diff) and key sets (deletes).

The table's keys and row hashes, and the keys seen in the source, live in a
DuckDB database on local disk for the duration of one read, so memory stays
bounded however large the table is (DuckDB spills beyond its memory limit).

Rows are hashed after being conformed to the types Delta stores, so a source
row and the table row it produced hash alike. Only the source's columns are
compared; a table row whose soft-delete column is set counts as absent.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from .._sql import canonical_hash, q
from ..errors import ConfigError, HeadwaterError
from ..tables.delta_types import conform_batch, to_delta_schema
from .base import ReadContext

CHANGE_TYPE = "_change_type"
ROW = "__hw_row"
HASH = "__hw_hash"


class KeyDiff:
    """The table's live keys (and row hashes) against the keys the source still has."""

    def __init__(self, ctx: ReadContext, keys: Sequence[str], deleted_column: str, folder: str):
        self.ctx = ctx
        self.keys = list(keys)
        threads = max(1, os.cpu_count() or 1)
        memory = ctx.config.defaults.memory_limit if ctx.config is not None else "1GB"
        self.con = duckdb.connect(
            os.path.join(folder, "diff.duckdb"),
            config={"threads": threads, "memory_limit": memory, "preserve_insertion_order": False},
        )
        self.con.execute("SET TimeZone='UTC'")
        self.dataset = None
        self.columns: dict[str, str] = {}  # lower-case name -> the table's spelling
        if ctx.resolve is not None:
            target = ctx.resolve(ctx.table)
            if target.exists:
                self.dataset = target.dataset()
                self.columns = {f.name.lower(): f.name for f in self.dataset.schema}
        self.deleted = self.columns.get(deleted_column.lower())
        missing = [k for k in self.keys if k.lower() not in self.columns]
        if self.dataset is not None and missing:
            raise ConfigError(
                f"table {ctx.table}: has no key column {missing[0]!r} to compare with the source",
                "the source's tiebreak= must name columns the table keeps",
            )
        if self.dataset is not None:
            self.con.register("target_rows", self.dataset)
        self.hashed = False
        self.seen_created = False

    @classmethod
    @contextlib.contextmanager
    def open(cls, ctx: ReadContext, keys: Sequence[str], deleted_column: str) -> Iterator[KeyDiff]:
        with tempfile.TemporaryDirectory(prefix="headwater-diff-") as folder:
            diff = cls(ctx, keys, deleted_column, folder)
            try:
                yield diff
            finally:
                diff.con.close()

    @property
    def has_target(self) -> bool:
        return self.dataset is not None

    def _t(self, name: str) -> str:
        return q(self.columns[name.lower()])

    def _live(self) -> str:
        return f"t.{q(self.deleted)} IS NULL" if self.deleted else "TRUE"

    def _match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{q(k)} = {right}.{q(k)}" for k in self.keys)

    def _types(self, relation: str) -> dict[str, str]:
        rows = self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def see(self, rows: pa.Table) -> None:
        """Record keys present in the source."""
        keys = conform_batch(rows.select(self.keys), to_delta_schema(rows.select(self.keys).schema))
        self.con.register("seen_chunk", keys)
        try:
            if not self.seen_created:
                self.con.execute("CREATE TABLE seen AS SELECT * FROM seen_chunk")
                self.seen_created = True
            else:
                self.con.execute("INSERT INTO seen SELECT * FROM seen_chunk")
        finally:
            self.con.unregister("seen_chunk")

    def _hash_table(self, columns: list[str], types: dict[str, str]) -> None:
        """Keys and row hashes of the table's live rows, over the source's `columns`."""
        self.hashed = True
        if self.dataset is None:
            key_defs = ", ".join(f"{q(k)} {types[k]}" for k in self.keys)
            self.con.execute(f"CREATE TABLE old ({key_defs}, {HASH} VARCHAR)")
            return
        target_types = self._types("target_rows")
        select, hash_types = [], {}
        for column in columns:
            stored = self.columns.get(column.lower())
            if stored is None:
                select.append(f"CAST(NULL AS VARCHAR) AS {q(column)}")
            else:
                select.append(f"t.{q(stored)} AS {q(column)}")
                hash_types[column] = target_types[stored]
        digest = canonical_hash(columns, hash_types, "r")
        self.con.execute(
            f"CREATE TABLE old AS SELECT {', '.join('r.' + q(k) for k in self.keys)}, {digest} AS {HASH} "
            f"FROM (SELECT {', '.join(select)} FROM target_rows t WHERE {self._live()}) r"
        )

    def changes(self, rows: pa.Table) -> pa.Table:
        """The rows of a source chunk that are new or differ from the table's, with `_change_type`."""
        conformed = conform_batch(
            rows, to_delta_schema(rows.schema, self.ctx.table), self.ctx.table
        )
        conformed = conformed.append_column(ROW, pa.array(range(rows.num_rows), pa.int64()))
        self.con.register("chunk", conformed)
        try:
            types = self._types("chunk")
            columns = [c for c in rows.schema.names]
            if not self.hashed:
                self._hash_table(columns, types)
            digest = canonical_hash(columns, types, "c")
            found = self.con.sql(
                f"SELECT c.{ROW}, o.{HASH} IS NULL AS fresh "
                f"FROM chunk c LEFT JOIN old o ON {self._match('o', 'c')} "
                f"WHERE o.{HASH} IS DISTINCT FROM {digest} ORDER BY c.{ROW}"
            ).to_arrow_table()
            if not self.seen_created:
                self.con.execute(
                    f"CREATE TABLE seen AS SELECT {', '.join(q(k) for k in self.keys)} FROM chunk"
                )
                self.seen_created = True
            else:
                self.con.execute(
                    f"INSERT INTO seen SELECT {', '.join(q(k) for k in self.keys)} FROM chunk"
                )
        finally:
            self.con.unregister("chunk")
        changed = rows.take(found.column(ROW))
        kinds = [
            "insert" if fresh else "update_postimage" for fresh in found.column("fresh").to_pylist()
        ]
        return changed.append_column(CHANGE_TYPE, pa.array(kinds, pa.string()))

    def deletes(self, limit: int) -> Iterator[pa.Table]:
        """The table's live rows whose key the source no longer has, as delete rows."""
        if self.dataset is None:
            return
        columns = [c for c in self.dataset.schema.names if c != self.deleted]
        select = ", ".join(f"t.{q(c)}" for c in columns)
        seen = (
            self.con.sql("SELECT count(*) FROM seen").fetchall()[0][0] if self.seen_created else 0
        )
        if seen == 0:
            live = self.con.sql(f"SELECT count(*) FROM target_rows t WHERE {self._live()}")
            if live.fetchall()[0][0] > 0:
                # An empty answer is far more often a wrong query, an emptied staging table or
                # a permissions change than a real mass delete; never delete everything on it.
                raise HeadwaterError(
                    f"table {self.ctx.table}: the source returned no rows, so delete detection "
                    "would delete every row of the table; nothing was deleted",
                    f"if the source was emptied on purpose, run `headwater run {self.ctx.table} --full-refresh`",
                )
        if self.seen_created:
            gone = f"NOT EXISTS (SELECT 1 FROM seen s WHERE {' AND '.join(f's.{q(k)} = t.{self._t(k)}' for k in self.keys)})"
        else:
            gone = "TRUE"  # the source has no row at all
        result = self.con.sql(
            f"SELECT {select}, 'delete' AS {q(CHANGE_TYPE)} FROM target_rows t "
            f"WHERE {self._live()} AND {gone}"
        )
        reader = result.to_arrow_reader(min(limit, 1 << 16))
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= limit:
                yield _table(pending, reader.schema)
                pending, rows = [], 0
        if rows:
            yield _table(pending, reader.schema)


def _table(batches: list[pa.RecordBatch], schema: Any) -> pa.Table:
    return pa.Table.from_batches(batches, schema)
