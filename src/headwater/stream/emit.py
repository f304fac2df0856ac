"""Emission and expiry of window state.

- on-close: a window is emitted once the watermark passes its end; again (an
  upsert) whenever a late event within the allowed lateness changes it since.
- early, and running aggregates: every window a micro-batch changed.
Expired state rows are deleted (and the delete goes to `__state`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .._sql import q
from .aggregates import finish_sketches
from .frame import Frame
from .state import PREFIX
from .windows.common import final_sql

UTC_MICROS = pa.timestamp("us", "UTC")


def emit(frame: Frame, operator: str, touched: str, *, windowed: bool) -> pa.Table | None:
    """The rows to write for this micro-batch's windows (None: nothing to write).

    The caller of a windowed emission expires the windows past their end plus the
    allowed lateness right after (`expire`)."""
    stream = frame.stream
    table = q(PREFIX + operator)
    if not frame.store.has(operator):
        return None
    changed = f"_key IN (SELECT _key FROM {q(touched)})"
    marks = True
    if windowed and stream.emit == "on-close" and frame.lateness == 0:
        # Without lateness a window expires when it closes: none is held written.
        condition, marks = f"window_end <= {frame.watermark}", False
    elif windowed and stream.emit == "on-close":
        # Closed and not written yet, or written before and changed since (re-emission;
        # a session extended by a late event may end past the watermark again).
        condition = (
            f"(window_end <= {frame.watermark} AND NOT _emitted) OR (_emitted AND {changed})"
        )
    else:
        condition = changed
    window_columns = "window_start, window_end, " if windowed else ""
    rows = frame.con.sql(
        "SELECT _emitted AS _again, "
        + "".join(f"{q(g)}, " for g in stream.group_by)
        + window_columns
        + final_sql(frame)
        + f" FROM {table} WHERE {condition} ORDER BY window_start NULLS FIRST, _gkey"
    ).to_arrow_table()
    mark = f"{condition} AND NOT _emitted"
    if windowed:
        # Windows this micro-batch expires (`expire`, right after) are deleted: no mark.
        mark += f" AND window_end + {frame.lateness} > {frame.watermark}"
    if marks:
        frame.store.changed(operator, f"SELECT _key FROM {table} WHERE {mark}")
        frame.con.execute(f"UPDATE {table} SET _emitted = TRUE WHERE {mark}")
    # An empty result still has the table's shape: the micro-batch's state and
    # position must be committed even when no window closed.
    frame.metrics["re_emitted"] += int(pc.sum(rows.column("_again")).as_py() or 0)
    frame.metrics["emitted"] += rows.num_rows
    rows = rows.drop_columns(["_again"])
    if windowed:
        rows = as_timestamps(rows, ("window_start", "window_end"))
    return finish_sketches(rows, stream.aggregates)


def expire(frame: Frame, operator: str, condition: str) -> int:
    if not frame.store.has(operator):
        return 0
    expired = frame.store.delete_where(operator, condition)
    frame.metrics["state_expired"] += expired
    return expired


def as_timestamps(rows: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    for column in columns:
        index = rows.schema.get_field_index(column)
        rows = rows.set_column(index, column, rows.column(column).cast(pa.int64()).cast(UTC_MICROS))
    return rows
