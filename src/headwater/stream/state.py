"""Operator state: a DuckDB working copy on local disk, a Delta side table as the durable copy.

Each operator keeps its state in tables of a DuckDB database under
`.headwater/stream/` (typed columns, a `_key` per state row, `_born` = the batch
that created the row). DuckDB spills beyond its memory limit, which bounds the
memory a large state uses. A micro-batch changes the working copy inside one
DuckDB transaction, which is committed only after the table's Delta commit:
a crash before it rolls the working copy back to the last committed batch.

The durable copy is `<table>__state`, a changelog (`_operator`, `_key`, `_row`
as JSON or NULL for a deleted key, `_batch`): each checkpoint appends the keys
it changed and deleted, so its cost follows the change, not the state. The
state at a version is the newest row of each key; when the log holds much more
than the live state, a checkpoint rewrites it as the live rows (compaction). The working copy is
tagged with the batch and `__state` version it reflects; when they differ from
what the table committed (a crash after the Delta commit, another machine, a
lost file), it is rebuilt from `__state` at the committed version.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .._sql import q

log = logging.getLogger("headwater.stream")
SIDE = "state"  # <table>__state
PREFIX = "s_"  # operator state tables: s_<operator>
STATE_SCHEMA = pa.schema(
    [
        pa.field("_operator", pa.string(), nullable=False),
        pa.field("_key", pa.string(), nullable=False),
        pa.field("_row", pa.string()),  # NULL: the key was deleted
        pa.field("_batch", pa.int64(), nullable=False),  # the checkpoint that wrote it
    ]
)


@dataclass(frozen=True)
class Tag:
    """What a working copy reflects: the table's batch and the `__state` version."""

    batch: int
    version: int | None


class StateStore:
    """The working copy of one streaming table's operator state."""

    def __init__(self, path: Path, memory_limit: str, threads: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._spill = path.parent / f"{path.stem}.spill"
        self._scratch: Path | None = None
        try:
            self.con = self._connect(path, memory_limit, threads)
        except duckdb.IOException:
            # Another process holds the file (a second run of the table elsewhere on this
            # machine, waiting for the writer lock): work on a private copy rebuilt from Delta.
            self._scratch = Path(tempfile.mkdtemp(prefix="headwater-state-"))
            self._spill = self._scratch / "spill"
            self.con = self._connect(self._scratch / path.name, memory_limit, threads)
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS _meta (name VARCHAR PRIMARY KEY, value VARCHAR)"
        )
        self.con.execute("CREATE TABLE IF NOT EXISTS _changed (_operator VARCHAR, _key VARCHAR)")
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS _deleted (_operator VARCHAR, _key VARCHAR, _born BIGINT)"
        )
        self._in_transaction = False
        self._tables: list[str] | None = None  # operator tables, while known

    def _connect(self, path: Path, memory_limit: str, threads: int) -> duckdb.DuckDBPyConnection:
        self._file = path
        self._spill.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(
            str(path),
            config={
                "memory_limit": memory_limit,
                "temp_directory": str(self._spill),
                "threads": max(1, threads),
                "preserve_insertion_order": False,
            },
        )
        con.execute("SET TimeZone = 'UTC'")
        return con

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        if self._in_transaction:
            self.rollback()
        self.con.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    @property
    def tag(self) -> Tag | None:
        found = scalar(self.con, "SELECT value FROM _meta WHERE name = 'tag'")
        if found is None:
            return None
        value = json.loads(found)
        return Tag(int(value["batch"]), value["version"])

    def begin(self) -> None:
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True

    def commit(self, tag: Tag) -> None:
        """Make the micro-batch's changes durable, tagged with what the table committed."""
        self._set_tag(tag)
        self.con.execute("COMMIT")
        self._in_transaction = False

    def rollback(self) -> None:
        if self._in_transaction:
            self.con.execute("ROLLBACK")
            self._in_transaction = False
            self._tables = None  # a table created in the transaction is gone

    def _set_tag(self, tag: Tag) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO _meta VALUES ('tag', ?)",
            [json.dumps({"batch": tag.batch, "version": tag.version})],
        )

    # -- tables ----------------------------------------------------------------------
    def tables(self) -> list[str]:
        """Operator names that have a state table.

        Known until a rollback, a reset or `has` says no: operators create their
        table only after `has` said it does not exist (reading the catalogue costs
        milliseconds, and a micro-batch asks a dozen times)."""
        if self._tables is None:
            rows = self.con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "AND table_name LIKE 's\\_%' ESCAPE '\\' ORDER BY 1"
            ).fetchall()
            self._tables = [str(r[0])[len(PREFIX) :] for r in rows]
        return list(self._tables)

    def has(self, operator: str) -> bool:
        if operator in self.tables():
            return True
        self._tables = None  # the caller may create it now
        return False

    def schemas(self) -> dict[str, list[list[str]]]:
        """Column names and DuckDB types of every operator table (for rebuilding)."""
        out: dict[str, list[list[str]]] = {}
        for operator in self.tables():
            rows = self.con.execute(f"DESCRIBE {q(PREFIX + operator)}").fetchall()
            out[operator] = [[str(r[0]), str(r[1])] for r in rows]
        return out

    def reset(self) -> None:
        """Forget everything (a full refresh, or before a rebuild)."""
        for operator in self.tables():
            self.con.execute(f"DROP TABLE {q(PREFIX + operator)}")
        self._tables = None
        self.con.execute("DELETE FROM _changed")
        self.con.execute("DELETE FROM _deleted")
        self.con.execute("DELETE FROM _meta")

    def rebuild(self, rows: pa.Table | None, schemas: dict[str, list[list[str]]], tag: Tag) -> None:
        """Replace the working copy with the durable state `rows` (the `__state` table)."""
        self.reset()
        for operator, columns in schemas.items():
            self.con.execute(
                f"CREATE TABLE {q(PREFIX + operator)} ("
                + ", ".join(f"{q(name)} {kind}" for name, kind in columns)
                + ")"
            )
            if rows is None or rows.num_rows == 0:
                continue
            self.con.register("_durable", rows)
            try:
                fields = [(n, k) for n, k in columns if n != "_key"]
                shape = json.dumps({n: _json_type(k) for n, k in fields})
                select = ", ".join(_from_json(f"_r.{q(n)}", k) for n, k in fields)
                self.con.execute(
                    f"INSERT INTO {q(PREFIX + operator)} ({', '.join(q(n) for n, _ in [('_key', ''), *fields])}) "
                    f"SELECT _key, {select} FROM (SELECT _key, json_transform(_row, ?) AS _r "
                    "FROM _durable WHERE _operator = ? QUALIFY row_number() OVER "
                    "(PARTITION BY _key ORDER BY _batch DESC) = 1) WHERE _r IS NOT NULL",
                    [shape, operator],
                )
            finally:
                self.con.unregister("_durable")
        self._tables = None
        self._set_tag(tag)

    # -- changes -------------------------------------------------------------------------
    def changed(self, operator: str, keys_sql: str) -> None:
        """Record that the keys selected by `keys_sql` (a query of `_key`) changed."""
        self.con.execute(f"INSERT INTO _changed SELECT ?, _key FROM ({keys_sql})", [operator])

    def delete_where(self, operator: str, condition: str, params: list[Any] | None = None) -> int:
        """Delete the operator's state rows matching `condition`; returns how many."""
        table = q(PREFIX + operator)
        self.con.execute(
            f"INSERT INTO _deleted SELECT ?, _key, _born FROM {table} WHERE {condition}",
            [operator, *(params or [])],
        )
        # A DELETE's result is the number of rows it deleted.
        return int(scalar(self.con, f"DELETE FROM {table} WHERE {condition}", params) or 0)

    def count(self, operator: str) -> int:
        if not self.has(operator):
            return 0
        return int(scalar(self.con, f"SELECT count(*) FROM {q(PREFIX + operator)}") or 0)

    def export(self, exported_batch: int, batch: int) -> pa.Table | None:
        """The `__state` rows to append for the changes since the last export (a deleted
        key as a NULL row), or None when nothing changed. Rows born after
        `exported_batch` and deleted since were never exported, so they need no delete."""
        table = self._export(
            batch,
            changed_only=True,
            deletes=(
                "SELECT DISTINCT d._operator, d._key, NULL::VARCHAR AS _row FROM _deleted d "
                f"WHERE d._born <= {int(exported_batch)} AND NOT EXISTS (SELECT 1 FROM _live l "
                "WHERE l._operator = d._operator AND l._key = d._key)"
            ),
        )
        return table if table.num_rows else None

    def pending(self) -> int:
        """At most how many rows `export` would write (changed and deleted keys)."""
        return int(
            scalar(
                self.con,
                "SELECT (SELECT count(*) FROM _changed) + (SELECT count(*) FROM _deleted)",
            )
            or 0
        )

    def export_all(self, batch: int) -> pa.Table:
        """Every live state row: the whole `__state` after a compaction or a full refresh."""
        return self._export(batch, changed_only=False, deletes=None)

    def _export(self, batch: int, *, changed_only: bool, deletes: str | None) -> pa.Table:
        live: list[str] = []
        for operator, columns in self.schemas().items():
            row = (
                "to_json(struct_pack("
                + ", ".join(f"{q(c)} := {_to_json(q(c), k)}" for c, k in columns if c != "_key")
                + "))::VARCHAR"
            )
            changed = (
                f" WHERE s._key IN (SELECT _key FROM _changed WHERE _operator = '{operator}')"
                if changed_only
                else ""
            )
            live.append(
                f"SELECT '{operator}' AS _operator, s._key, {row} AS _row "
                f"FROM {q(PREFIX + operator)} s{changed}"
            )
        empty = (
            "SELECT NULL::VARCHAR AS _operator, NULL::VARCHAR AS _key, NULL::VARCHAR AS _row "
            "WHERE FALSE"
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _live AS " + (" UNION ALL ".join(live) or empty)
        )
        union = "SELECT _operator, _key, _row FROM _live" + (
            f" UNION ALL {deletes}" if deletes else ""
        )
        table = self.con.sql(
            f"SELECT *, {int(batch)}::BIGINT AS _batch FROM ({union})"
        ).to_arrow_table()
        self.con.execute("DROP TABLE _live")
        self.con.execute("DELETE FROM _changed")
        self.con.execute("DELETE FROM _deleted")
        return table.cast(STATE_SCHEMA)

    def size(self) -> tuple[int, int]:
        """(state rows, bytes of the database)."""
        rows = sum(self.count(o) for o in self.tables())
        files = [self._file, self._file.with_name(self._file.name + ".wal")]
        return rows, sum(f.stat().st_size for f in files if f.exists())


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first value of a query's result, or None. The result is read to its end:
    a half-read result blocks the connection for `register` and later statements."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def _to_json(column: str, kind: str) -> str:
    """A column as it goes into the JSON of a `__state` row (bytes as base64)."""
    return f"to_base64({column})" if kind.upper() == "BLOB" else column


def _json_type(kind: str) -> str:
    return "VARCHAR" if kind.upper() == "BLOB" else kind


def _from_json(expression: str, kind: str) -> str:
    return f"from_base64({expression})" if kind.upper() == "BLOB" else expression
