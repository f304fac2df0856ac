"""A reference for streaming tables: the same rules, one event at a time, then batch SQL.

The watermark, dedup and lateness rules are applied by a plain loop over the
events in arrival order (independent of the engine's vectorised code); the
windows and aggregates are then computed by DuckDB SQL over the complete set of
accepted events. Streamed output must equal this, whatever the micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

NEVER = -(1 << 62)


@dataclass
class Event:
    seq: int
    ts: int  # µs
    partition: str
    row: dict[str, Any]


@dataclass
class Judged:
    """Per event: watermark at arrival; the verdict of dedup; the watermark at the end."""

    watermarks: list[int] = field(default_factory=list)
    final: int = NEVER


def watermarks(
    events: list[Event], delay: int, idle: int | None, inputs: tuple[str, ...] = ()
) -> Judged:
    """`inputs`: the table's inputs (partitions are `<input>` or `<input>/<value>`); one
    that has delivered nothing holds the watermark back, idle from the first event."""
    newest: dict[str, int] = {}
    seen: dict[str, int] = {}
    stream_max = NEVER
    first = None
    current = NEVER
    out = Judged()
    for e in events:
        stream_max = max(stream_max, e.ts)
        first = stream_max if first is None else first
        newest[e.partition] = max(newest.get(e.partition, NEVER), e.ts)
        seen[e.partition] = stream_max
        candidates = [
            newest[p] - delay for p in newest if idle is None or stream_max - seen[p] <= idle
        ]
        for name in inputs:
            delivered = any(p == name or p.startswith(name + "/") for p in newest)
            if not delivered and (idle is None or stream_max - first <= idle):
                candidates.append(NEVER)
        current = max(current, min(candidates))
        out.watermarks.append(current)
    out.final = current
    return out


def dedup(
    events: list[Event], wms: list[int], column: str, within: int
) -> tuple[list[int], list[int], list[int]]:
    """(accepted, duplicate, late) event indexes."""
    remembered: dict[Any, int] = {}
    accepted, duplicates, late = [], [], []
    for i, e in enumerate(events):
        key = e.row[column]
        wm = wms[i]
        if key is None:
            accepted.append(i)
            continue
        first = remembered.get(key)
        if first is not None and first + within > wm:
            duplicates.append(i)
        elif e.ts + within <= wm:
            late.append(i)
        else:
            accepted.append(i)
            remembered[key] = e.ts
    return accepted, duplicates, late


def tumbling_windows(
    events: list[Event],
    wms: list[int],
    indexes: list[int],
    size: int,
    lateness: int,
    every: int | None = None,
) -> tuple[list[tuple[int, int]], list[int]]:
    """(accepted (event index, window start) pairs, late event indexes)."""
    step = every or size
    pairs: list[tuple[int, int]] = []
    late: list[int] = []
    for i in indexes:
        ts = events[i].ts
        first = ts - (ts % step)
        starts = []
        start = first
        while start + size > ts:
            starts.append(start)
            start -= step
        ok = [s for s in starts if s + size + lateness > wms[i]]
        if ok:
            pairs += [(i, s) for s in ok]
        else:
            late.append(i)
    return pairs, late


def aggregate_sql(
    events: list[Event],
    pairs: list[tuple[int, int]],
    size: int,
    groups: list[str],
    final_watermark: int | None,
) -> list[dict[str, Any]]:
    """count, sum(amount), min/max(value), first/last(value), avg(value) per group and window,
    for windows closed by `final_watermark` (None: every window)."""
    rows = [
        {
            "_seq": events[i].seq,
            "_ts": events[i].ts,
            "window_start": s,
            **{g: events[i].row[g] for g in groups},
            "amount": events[i].row["amount"],
            "value": events[i].row["value"],
        }
        for i, s in pairs
    ]
    schema = pa.schema(
        [
            ("_seq", pa.int64()),
            ("_ts", pa.int64()),
            ("window_start", pa.int64()),
            *[(g, pa.string()) for g in groups],
            ("amount", pa.int64()),
            ("value", pa.float64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    con = duckdb.connect()
    con.register("c", table)
    closed = (
        f"WHERE window_start + {size} <= {final_watermark}" if final_watermark is not None else ""
    )
    group_cols = "".join(f"{g}, " for g in groups)
    result = con.sql(
        f"SELECT {group_cols}window_start, window_start + {size} AS window_end, count(*) AS n, "
        "sum(amount) AS total, min(value) AS lo, max(value) AS hi, "
        "first(value ORDER BY _ts, _seq) AS first_v, last(value ORDER BY _ts, _seq) AS last_v, "
        "avg(value) AS avg_v "
        f"FROM c GROUP BY ALL HAVING true {closed.replace('WHERE', 'AND')} ORDER BY ALL"
    ).to_arrow_table()
    return result.to_pylist()  # type: ignore[no-any-return]


def sessions_sql(
    events: list[Event],
    indexes: list[int],
    gap: int,
    groups: list[str],
    final_watermark: int,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """Sessions of the accepted events (gap-connected per key, cut at multiples of
    max_length), closed by the final watermark, with count and sum(amount)."""
    rows = [
        {
            "_ts": events[i].ts,
            **{g: events[i].row[g] for g in groups},
            "amount": events[i].row["amount"],
        }
        for i in indexes
    ]
    schema = pa.schema(
        [("_ts", pa.int64()), *[(g, pa.string()) for g in groups], ("amount", pa.int64())]
    )
    con = duckdb.connect()
    con.register("e", pa.Table.from_pylist(rows, schema=schema))
    cell = f"floor(_ts / {max_length})::BIGINT" if max_length else "0"
    part = ", ".join([*groups, "_cell"])
    cut = (
        f"least(max(_ts) + {gap}, (any_value(_cell) + 1) * {max_length})"
        if max_length
        else f"max(_ts) + {gap}"
    )
    result = con.sql(
        f"""
        WITH c AS (SELECT *, {cell} AS _cell FROM e),
        s AS (SELECT *, CASE WHEN lag(_ts) OVER (PARTITION BY {part} ORDER BY _ts) + {gap} > _ts
                        THEN 0 ELSE 1 END AS _new FROM c),
        n AS (SELECT *, sum(_new) OVER (PARTITION BY {part} ORDER BY _ts ROWS UNBOUNDED PRECEDING) AS _sid FROM s)
        SELECT {"".join(g + ", " for g in groups)}min(_ts) AS window_start, {cut} AS window_end,
               count(*) AS n, sum(amount) AS total
        FROM n GROUP BY {part}, _sid HAVING {cut} <= {final_watermark} ORDER BY ALL
        """
    ).to_arrow_table()
    return [{k: v for k, v in r.items()} for r in result.to_pylist()]
