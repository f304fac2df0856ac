"""What fixed windows, sessions and running aggregates share: keys, partials, state rows.

A window's state row: `_key`, `_gkey` (the group columns as JSON), the group
columns, `window_start` / `window_end` (µs; NULL for a running aggregate),
`_last_ts` (newest event), `_emitted`, `_born` (the batch that created it) and
the partial aggregate columns (see `aggregates`).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from ..._sql import q
from ...errors import ConfigError
from .. import aggregates
from ..frame import Frame
from ..state import PREFIX

INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")


def column_types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in con.execute(f"DESCRIBE {q(relation)}").fetchall()}


def check_columns(frame: Frame, types: dict[str, str]) -> None:
    """Group and aggregate columns must exist in the events reaching the window."""
    stream = frame.stream
    wanted = [*stream.group_by, *(a.column for _, a in stream.aggregates if a.column)]
    for column in wanted:
        if column not in types:
            visible = ", ".join(c for c in types if not c.startswith("_")) or "none"
            raise ConfigError(
                f"table {frame.table}: column {column!r} of the stream's group_by/aggregates is "
                f"not in its events (columns: {visible})",
                "name an existing column, or derive it in the table's function",
            )


def group_key(groups: tuple[str, ...]) -> str:
    if not groups:
        return "'{}'"
    return "to_json(struct_pack(" + ", ".join(f"{q(g)} := {q(g)}" for g in groups) + "))::VARCHAR"


def input_columns(frame: Frame) -> list[str]:
    """The columns events bring into a window: groups and aggregate inputs, once each."""
    stream = frame.stream
    seen: list[str] = []
    for column in [*stream.group_by, *(a.column for _, a in stream.aggregates if a.column)]:
        if column not in seen:
            seen.append(column)
    return seen


def partial_sql(frame: Frame, types: dict[str, str]) -> str:
    return ", ".join(
        expr
        for name, agg in frame.stream.aggregates
        for expr in aggregates.partial_sql(name, agg, _integer(agg.column, types))
    )


def merge_sql(frame: Frame, types: dict[str, str]) -> str:
    return ", ".join(
        expr
        for name, agg in frame.stream.aggregates
        for expr in aggregates.merge_sql(name, agg, _integer(agg.column, types))
    )


def final_sql(frame: Frame) -> str:
    return ", ".join(aggregates.final_sql(name, agg) for name, agg in frame.stream.aggregates)


def _integer(column: str | None, types: dict[str, str]) -> bool:
    return column is not None and types.get(column, "").upper() in INTEGER_TYPES


def upsert(
    frame: Frame, operator: str, rows: pa.Table, keep: list[str], types: dict[str, str]
) -> str:
    """Merge partial rows `rows` (one per `_key`) into the operator's state rows.

    `keep` are the bookkeeping columns taken as they are (any value of the key);
    returns a temp table of the keys touched.
    """
    con = frame.con
    table = q(PREFIX + operator)
    exists = frame.store.has(operator)
    con.register("_incoming", aggregates.build_sketches(rows, frame.stream.aggregates))
    try:
        union = f"SELECT *, FALSE AS _emitted, {frame.batch}::BIGINT AS _born FROM _incoming"
        if exists:
            union += (
                f" UNION ALL BY NAME SELECT * FROM {table} "
                "WHERE _key IN (SELECT _key FROM _incoming)"
            )
        merged = con.sql(
            "SELECT _key, "
            + "".join(f"any_value({q(c)}) AS {q(c)}, " for c in keep)
            + "max(_last_ts) AS _last_ts, bool_or(_emitted) AS _emitted, min(_born) AS _born, "
            + merge_sql(frame, types)
            + f" FROM ({union}) GROUP BY _key"
        ).to_arrow_table()
    finally:
        con.unregister("_incoming")
    return replace_rows(frame, operator, aggregates.merge_sketches(merged, frame.stream.aggregates))


def replace_rows(frame: Frame, operator: str, rows: pa.Table) -> str:
    """Write state rows (replacing rows of the same key); a temp table of their keys."""
    con = frame.con
    table = q(PREFIX + operator)
    con.register("_rows", rows)
    try:
        if not frame.store.has(operator):
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM _rows WHERE FALSE")
        con.execute(f"DELETE FROM {table} WHERE _key IN (SELECT _key FROM _rows)")
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
        frame.store.changed(operator, "SELECT _key FROM _rows")
        return frame.materialise("touched", "SELECT _key FROM _rows")
    finally:
        con.unregister("_rows")


def insert_rows(frame: Frame, operator: str, rows: pa.Table) -> None:
    """Add state rows of keys the state does not hold (its table exists)."""
    con = frame.con
    con.register("_rows", rows)
    try:
        con.execute(f"INSERT INTO {q(PREFIX + operator)} BY NAME SELECT * FROM _rows")
        frame.store.changed(operator, "SELECT _key FROM _rows")
    finally:
        con.unregister("_rows")
