"""Aggregation over fixed windows (tumbling, sliding) and running aggregates per key.

Per micro-batch: each event is assigned its windows; a contribution is
accepted while the watermark at the event's arrival has not passed the
window's end plus the allowed lateness; accepted contributions are aggregated
per key and window into partials and merged into the window's state row. An
event with no accepted window is late. Emission and expiry follow (`emit`).

Sliding windows whose size is a multiple of their step are aggregated by
panes (the step-long slices every window is made of): events are first
aggregated per key, pane and number of the pane's windows that still take them
(those are the first n, as window ends fall with k), and only those partials
are copied into the windows and merged, so an event costs one row, not
size/step rows. Sketch aggregates take the per-window path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..._sql import q
from .. import aggregates, emit
from ..aggregates import SKETCHES
from ..frame import Frame, micros
from ..spec import Sliding, Tumbling
from ..state import PREFIX
from . import sliding, tumbling
from .base import Assignment, floor_to
from .common import (
    check_columns,
    column_types,
    final_sql,
    group_key,
    input_columns,
    insert_rows,
    merge_sql,
    partial_sql,
    upsert,
)

OPERATOR = "windows"
ASSIGN: dict[type, Callable[[Any], Assignment]] = {
    Tumbling: tumbling.assign,
    Sliding: sliding.assign,
}


def assignment(window: Tumbling | Sliding) -> Assignment:
    return ASSIGN[type(window)](window)


def aggregate(frame: Frame, events: str, source: str) -> pa.Table | None:
    stream = frame.stream
    types = column_types(frame.con, events)
    check_columns(frame, types)
    groups = stream.group_by
    carried = ", ".join(q(c) for c in input_columns(frame))
    window = stream.window
    plan = None
    if window is not None:
        assert isinstance(window, Tumbling | Sliding)
        plan = assignment(window)
    if plan is not None and _by_panes(frame, plan):
        grouped = _pane_partials(frame, events, source, plan, types)
    else:
        grouped = _window_partials(frame, events, source, plan, types, carried)
    if window is None:
        partial = frame.con.sql(_keyed(groups, grouped)).to_arrow_table()
        keep = ["_gkey", *groups, "window_start", "window_end"]
        touched = upsert(frame, OPERATOR, partial, keep, types)
        rows = emit.emit(frame, OPERATOR, touched, windowed=False)
        if stream.state_ttl is not None:
            ttl = micros(stream.state_ttl)
            emit.expire(frame, OPERATOR, f"_last_ts + {ttl} <= {frame.watermark}")
        return rows
    partials = frame.con.sql(grouped).to_arrow_table()
    closed, fresh, held = _split(frame, partials)
    keep = ["_gkey", *groups, "window_start", "window_end"]
    touched = upsert(frame, OPERATOR, _with_keys(frame, held), keep, types)
    if fresh.num_rows:
        insert_rows(frame, OPERATOR, _with_keys(frame, fresh, born=True))
    rows = emit.emit(frame, OPERATOR, touched, windowed=True)
    emit.expire(frame, OPERATOR, f"window_end + {frame.lateness} <= {frame.watermark}")
    if closed.num_rows == 0:
        return rows
    direct = _emit_closed(frame, closed)
    if rows is None:
        return direct
    order = [("window_start", "ascending"), *((g, "ascending") for g in groups)]
    return pa.concat_tables([rows, direct], promote_options="permissive").sort_by(order)


def _keyed(groups: tuple[str, ...], grouped: str) -> str:
    """Partials with their state keys: `_key` (groups and window start), `_gkey` (groups)."""
    return (
        "SELECT _gkey || '@' || coalesce(window_start::VARCHAR, '') AS _key, * FROM "
        f"(SELECT {group_key(groups)} AS _gkey, * FROM ({grouped}))"
    )


def _with_keys(frame: Frame, partials: pa.Table, *, born: bool = False) -> pa.Table:
    """`partials` with their state keys; `born`: as new state rows of this batch."""
    frame.con.register("_partials", partials)
    try:
        columns = f"FALSE AS _emitted, {frame.batch}::BIGINT AS _born, *" if born else "*"
        grouped = f"SELECT {columns} FROM _partials"
        return frame.con.sql(_keyed(frame.stream.group_by, grouped)).to_arrow_table()
    finally:
        frame.con.unregister("_partials")


def _split(frame: Frame, partials: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(windows born and expired in this micro-batch, windows born and still open,
    windows already held in the state).

    A window no state row holds yet whose end plus the allowed lateness is at or
    before the micro-batch's watermark would be inserted, emitted and expired in
    the same micro-batch: it is emitted straight from the partials and never
    touches the state (nor `__state`). A window born open is inserted without a
    merge (on close; early emission merges it, to emit it as changed). Only windows
    already held are merged into their state rows."""
    starts = partials.column("window_start")
    held = pa.array(np.zeros(partials.num_rows, dtype=bool))
    if frame.store.has(OPERATOR):
        rows = frame.con.execute(
            f"SELECT DISTINCT window_start FROM {q(PREFIX + OPERATOR)}"
        ).fetchall()
        if rows:
            known = pa.array([r[0] for r in rows], starts.type)
            held = pc.is_in(starts, known).combine_chunks()
    ends = partials.column("window_end")
    expired = pc.less_equal(pc.add(ends, frame.lateness), frame.watermark).fill_null(False)
    new = pc.invert(held)
    closed = pc.and_(new, expired)
    fresh = pc.and_(new, pc.invert(expired))
    stream = frame.stream
    if stream.emit != "on-close" or any(a.function in SKETCHES for _, a in stream.aggregates):
        held, fresh = pc.or_(held, fresh), pc.and_(fresh, False)
    return partials.filter(closed), partials.filter(fresh), partials.filter(held)


def _emit_closed(frame: Frame, closed: pa.Table) -> pa.Table:
    """The output rows of windows that close in the micro-batch they were born in."""
    stream = frame.stream
    frame.con.register("_closed", aggregates.build_sketches(closed, stream.aggregates))
    try:
        rows = frame.con.sql(
            "SELECT "
            + "".join(f"{q(g)}, " for g in stream.group_by)
            + "window_start, window_end, "
            + final_sql(frame)
            + " FROM _closed"
        ).to_arrow_table()
    finally:
        frame.con.unregister("_closed")
    frame.metrics["emitted"] += rows.num_rows
    rows = emit.as_timestamps(rows, ("window_start", "window_end"))
    return aggregates.finish_sketches(rows, stream.aggregates)


def _window_partials(
    frame: Frame,
    events: str,
    source: str,
    plan: Assignment | None,
    types: dict[str, str],
    carried: str,
) -> str:
    """SQL of the partials per key and window, from each event's contribution to each
    of its windows."""
    groups = frame.stream.group_by
    if plan is None:
        start, end, accepted, explode, where = "NULL::BIGINT", "NULL::BIGINT", "TRUE", "", ""
    else:
        start = plan.start
        end = f"({plan.start} + {plan.size})"
        accepted = f"{end} + {frame.lateness} > _wm"
        explode = f" CROSS JOIN range({plan.copies}) AS _r(_k)" if plan.copies > 1 else ""
        where = f" WHERE {end} > _ts" if plan.copies > 1 else ""
    # Each event's contribution to each of its windows, and whether the window still
    # takes it. Tumbling windows (one per event) read the events as they are; sliding
    # ones are exploded into a temp table first.
    select = (
        f"SELECT {start} AS window_start, {end} AS window_end, "
        f"{carried + ', ' if carried else ''}_ts, _seq, _wm, {accepted} AS _ok "
        f"FROM {q(events)}{explode}{where}"
    )
    if plan is not None and plan.copies > 1:
        contributions = q(frame.materialise("contrib", select))
        late = f"_seq IN (SELECT _seq FROM {contributions} GROUP BY _seq HAVING NOT bool_or(_ok))"
    else:
        contributions = f"({select})"
        late = f"NOT ({accepted})"
    if plan is not None:
        frame.record_late(events, late, "window closed", source)
    # Group on the columns themselves; the JSON key is built once per group, not per event.
    return (
        "SELECT "
        + "".join(f"{q(g)}, " for g in groups)
        + "window_start, any_value(window_end) AS window_end, max(_ts) AS _last_ts, "
        + partial_sql(frame, types)
        + f" FROM {contributions} WHERE _ok GROUP BY ALL"
    )


def _by_panes(frame: Frame, plan: Assignment) -> bool:
    return (
        plan.copies > 1
        and plan.every > 0
        and plan.size % plan.every == 0
        and not any(a.function in SKETCHES for _, a in frame.stream.aggregates)
    )


def _pane_partials(
    frame: Frame, events: str, source: str, plan: Assignment, types: dict[str, str]
) -> str:
    """SQL of the partials per key and sliding window, merged from partials per pane.

    Window k (0..copies-1) of an event in pane p is [p - k*every, p - k*every + size);
    it takes the event while its end plus the allowed lateness is after the
    watermark at the event's arrival, i.e. for k*every < p + size + lateness - _wm:
    the first n windows."""
    groups = frame.stream.group_by
    every, size, copies = plan.every, plan.size, plan.copies
    pane = floor_to("_ts", every)
    taken = (
        f"least({copies}, greatest(0, "
        f"({pane} + {size + frame.lateness} - _wm + {every - 1}) // {every}))"
    )
    frame.record_late(events, f"{taken} = 0", "window closed", source)
    columns = "".join(f"{q(g)}, " for g in groups)
    panes = (
        f"SELECT {columns}{pane} AS _pane, {taken} AS _n, max(_ts) AS _last_ts, "
        + partial_sql(frame, types)
        + f" FROM {q(events)} WHERE {taken} > 0 GROUP BY ALL"
    )
    start = f"(_pane - _k * {every})"
    return (
        f"SELECT {columns}{start} AS window_start, any_value({start} + {size}) AS window_end, "
        "max(_last_ts) AS _last_ts, "
        + merge_sql(frame, types)
        + f" FROM ({panes}) CROSS JOIN range({copies}) AS _r(_k) WHERE _k < _n GROUP BY ALL"
    )
