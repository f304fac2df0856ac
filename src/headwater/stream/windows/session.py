"""Session windows: per key, events less than `gap` apart form one session.

A session's state row spans [window_start, _last_ts] with window_end =
_last_ts + gap (cut at the next multiple of `max_length`, when declared: a
session never crosses one, kept in `_cell`). Per micro-batch, the accepted
events of a key and cell and the key's sessions in that cell are ordered by
start; an item starting `gap` or more after everything before it ends starts a
new session. Sessions an event bridges merge (their partials merge); a merged
session that has a new start replaces the old ones, whose emitted rows are
retracted.

Components are found by one sort and a running maximum in numpy (a SQL
window over the items when the running maximum's offsets would overflow).

An event is late when it is older than the watermark at its arrival minus the
allowed lateness: then no session it could join has expired, and no session
closed without lateness can change.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..._sql import q
from .. import aggregates, emit
from ..frame import Frame, micros
from ..spec import Session
from ..state import PREFIX
from .common import (
    check_columns,
    column_types,
    group_key,
    input_columns,
    merge_sql,
    partial_sql,
    replace_rows,
)

OPERATOR = "sessions"


def aggregate(frame: Frame, events: str, source: str) -> pa.Table | None:
    stream = frame.stream
    window = stream.window
    assert isinstance(window, Session)
    con = frame.con
    types = column_types(con, events)
    check_columns(frame, types)
    groups = stream.group_by
    gap = micros(window.gap)
    cut = micros(window.max_length) if window.max_length is not None else None
    cell = f"floor(_ts / {cut})::BIGINT" if cut else "0::BIGINT"
    carried = ", ".join(q(c) for c in input_columns(frame))
    ev = frame.materialise(
        "session_events",
        f"SELECT {group_key(groups)} AS _gkey, {cell} AS _cell, "
        f"{carried + ', ' if carried else ''}_ts, _seq, _wm, "
        f"_ts >= _wm - {frame.lateness} AS _ok FROM {q(events)}",
    )
    frame.record_late(
        events,
        f"_seq IN (SELECT _seq FROM {q(ev)} WHERE NOT _ok)",
        "window closed",
        source,
    )
    table = q(PREFIX + OPERATOR)
    exists = frame.store.has(OPERATOR)
    old = (
        f"SELECT s.* FROM {table} s SEMI JOIN (SELECT DISTINCT _gkey, _cell FROM {q(ev)} "
        "WHERE _ok) t ON s._gkey = t._gkey AND s._cell = t._cell"
        if exists
        else None
    )
    items = (
        f"SELECT _gkey, _cell, _ts AS _lo, _ts AS _hi, NULL::VARCHAR AS _old, _seq "
        f"FROM {q(ev)} WHERE _ok"
    )
    if old is not None:
        items += (
            " UNION ALL SELECT _gkey, _cell, window_start, _last_ts, _key, NULL::BIGINT "
            f"FROM ({old})"
        )
    components = _components(frame, items, gap)
    # Partials of the new events per component, in the shape of state rows.
    partial = con.sql(
        "SELECT c._gkey, c._cell, c._comp, "
        + "".join(f"any_value(e.{q(g)}) AS {q(g)}, " for g in groups)
        + "min(e._ts) AS window_start, max(e._ts) AS _last_ts, FALSE AS _emitted, "
        + f"{frame.batch}::BIGINT AS _born, NULL::VARCHAR AS _key, "
        + partial_sql(frame, types)
        + f" FROM {q(ev)} e JOIN {q(components)} c ON e._seq = c._seq "
        "GROUP BY c._gkey, c._cell, c._comp"
    ).to_arrow_table()
    con.register("_incoming", aggregates.build_sketches(partial, stream.aggregates))
    try:
        union = "SELECT * FROM _incoming"
        if exists:
            union += (
                f" UNION ALL BY NAME SELECT s.* EXCLUDE (window_end), c._comp FROM {table} s "
                f"JOIN {q(components)} c ON s._key = c._old"
            )
        end = f"max(_last_ts) + {gap}"
        if cut:
            end = f"least({end}, (any_value(_cell) + 1) * {cut})"
        merged = con.sql(
            "SELECT _gkey || '@' || _cell || '@' || min(window_start) AS _key, _gkey, "
            + "".join(f"any_value({q(g)}) AS {q(g)}, " for g in groups)
            + f"_cell, min(window_start) AS window_start, {end} AS window_end, "
            "max(_last_ts) AS _last_ts, "
            # A session merged from one already written stays written (emit.py).
            "bool_or(_emitted) AS _emitted, min(_born) AS _born, "
            "list(_key) FILTER (WHERE _key IS NOT NULL) AS _replaces, "
            + merge_sql(frame, types)
            + f" FROM ({union}) GROUP BY _gkey, _cell, _comp HAVING bool_or(_key IS NULL)"
        ).to_arrow_table()
    finally:
        con.unregister("_incoming")
    merged = aggregates.merge_sketches(merged, stream.aggregates)
    _retract(frame, merged)
    touched = replace_rows(frame, OPERATOR, merged.drop_columns(["_replaces"]))
    rows = emit.emit(frame, OPERATOR, touched, windowed=True)
    emit.expire(frame, OPERATOR, f"window_end + {frame.lateness} <= {frame.watermark}")
    return rows


def _components(frame: Frame, items: str, gap: int) -> str:
    """A temp table of `items` with `_comp`: items of one key and cell, ordered by
    start, share a component while each starts less than `gap` after the latest end
    before it. Component numbers are unique across keys and cells."""
    con = frame.con
    table = con.sql(items).to_arrow_table()
    numbered = _number_components(table, gap)
    if numbered is None:
        order = "PARTITION BY _gkey, _cell ORDER BY _lo, _hi, _old NULLS LAST, _seq"
        return frame.materialise(
            "components",
            f"SELECT *, sum(_new) OVER ({order} ROWS UNBOUNDED PRECEDING) AS _comp FROM ("
            f"SELECT *, CASE WHEN max(_hi) OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING "
            f"AND 1 PRECEDING) + {gap} > _lo THEN 0 ELSE 1 END AS _new FROM ({items}))",
        )
    con.register("_numbered", numbered)
    try:
        return frame.materialise("components", "SELECT * FROM _numbered")
    finally:
        con.unregister("_numbered")


def _number_components(table: pa.Table, gap: int) -> pa.Table | None:
    """`table` (columns _gkey, _cell, _lo, _hi, ...) sorted by key, cell and start,
    with `_comp`; None when the segmented running maximum could overflow."""
    n = table.num_rows
    if n == 0:
        return table.append_column("_comp", pa.array([], pa.int64()))
    if table.column("_lo").null_count or table.column("_hi").null_count:
        return None
    keys = pc.dictionary_encode(table.column("_gkey")).combine_chunks()
    key = np.asarray(keys.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    cell = np.asarray(table.column("_cell").to_numpy(), dtype=np.int64)
    lo = np.asarray(table.column("_lo").to_numpy(), dtype=np.int64)
    hi = np.asarray(table.column("_hi").to_numpy(), dtype=np.int64)
    order = np.lexsort((lo, cell, key))
    key, cell, lo, hi = key[order], cell[order], lo[order], hi[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (key[1:] != key[:-1]) | (cell[1:] != cell[:-1])
    segment = np.cumsum(first) - 1
    base = int(hi.min())
    span = int(hi.max()) - base + 1
    if span <= 0 or int(segment[-1]) + 1 > (1 << 62) // span:
        return None
    # A running maximum per segment: each segment's values lie above the previous ones.
    shifted = (hi - base) + segment * span
    latest = np.maximum.accumulate(shifted) - segment * span + base
    new = first.copy()
    new[1:] |= latest[:-1] + gap <= lo[1:]
    ordered = table.take(pa.array(order))
    return ordered.append_column("_comp", pa.array(np.cumsum(new), pa.int64()))


def _retract(frame: Frame, merged: pa.Table) -> None:
    """Delete the state rows of sessions merged into one with another start; their
    emitted rows are retracted from the table."""
    con = frame.con
    stream = frame.stream
    if not frame.store.has(OPERATOR):
        return  # no session yet: nothing to replace
    con.register("_merged", merged.select(["_key", "_replaces"]))
    try:
        gone = frame.materialise(
            "gone",
            "SELECT DISTINCT r AS _key FROM (SELECT _key, unnest(_replaces) AS r FROM _merged) "
            "WHERE r <> _key",
        )
    finally:
        con.unregister("_merged")
    table = q(PREFIX + OPERATOR)
    retracted = con.sql(
        "SELECT "
        + "".join(f"{q(g)}, " for g in stream.group_by)
        + f"window_start, window_end FROM {table} "
        f"WHERE _emitted AND _key IN (SELECT _key FROM {q(gone)})"
    ).to_arrow_table()
    if retracted.num_rows:
        frame.retractions.append(emit.as_timestamps(retracted, ("window_start", "window_end")))
        frame.metrics["retracted"] += retracted.num_rows
    frame.store.delete_where(OPERATOR, f"_key IN (SELECT _key FROM {q(gone)})")
