"""Streamed windows equal a batch SQL oracle over the complete data, with the same lateness rule.

Random events arrive out of order (within and beyond the watermark delay), some
twice, from several partitions, cut into random micro-batches. After the last
micro-batch, every window the final watermark closed must hold exactly what the
oracle computes, and `__late` must hold exactly the events the oracle calls late.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import table
from headwater.errors import ConfigError
from headwater.stream import (
    avg,
    count,
    dedup,
    first,
    last,
    max_,
    min_,
    session,
    sliding,
    stream,
    sum_,
    tumbling,
)

from . import stream_oracle as oracle
from .lake import Feed, Lake

SECOND = 1_000_000
BASE = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * SECOND)
DELAY = 10 * SECOND  # the watermark's bounded out-of-orderness
WITHIN = 5 * 60 * SECOND  # dedup horizon
AGGREGATES = {
    "n": count(),
    "total": sum_("amount"),
    "lo": min_("value"),
    "hi": max_("value"),
    "first_v": first("value"),
    "last_v": last("value"),
    "avg_v": avg("value"),
}


@st.composite
def arrivals(draw: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Events in arrival order, and the sizes of the micro-batches they arrive in."""
    n = draw(st.integers(0, 45))
    partitions = draw(st.integers(1, 3))
    events: list[dict[str, Any]] = []
    clock = 0
    for i in range(n):
        clock += draw(st.integers(0, 20)) * SECOND
        kind = draw(st.sampled_from(["in-order", "in-order", "within", "beyond"]))
        behind = {
            "in-order": 0,
            "within": draw(st.integers(0, 10)) * SECOND,
            "beyond": draw(st.integers(11, 200)) * SECOND,
        }[kind]
        events.append(
            {
                "event_id": f"e{i}",
                "partition": draw(st.integers(0, partitions - 1)),
                "ts": BASE + clock - behind,
                "key": draw(st.sampled_from(["a", "b", "c"])),
                "amount": draw(st.integers(-5, 100)),
                "value": float(i) + draw(st.sampled_from([0.25, 0.5, 0.75])),
            }
        )
    # Some events arrive again later (duplicates), anywhere after their first arrival.
    for _ in range(draw(st.integers(0, max(0, n // 4)))):
        if not events:
            break
        original = draw(st.sampled_from(events))
        at = draw(st.integers(events.index(original) + 1, len(events)))
        events.insert(at, {**original, "partition": draw(st.integers(0, partitions - 1))})
    sizes: list[int] = []
    left = len(events)
    while left > 0:
        size = draw(st.integers(1, max(1, left)))
        sizes.append(size)
        left -= size
    return events, sizes


def as_table_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**e, "ts": datetime.fromtimestamp(e["ts"] / SECOND, UTC), "partition": str(e["partition"])}
        for e in events
    ]


def feed_in(
    lake: Lake, feed: Feed, events: list[dict[str, Any]], sizes: list[int], each: bool
) -> None:
    rows = as_table_rows(events)
    at = 0
    for size in sizes:
        feed.push(rows[at : at + size])
        at += size
        if each:
            lake.run()
    if not each:
        lake.run()


def judge(events: list[dict[str, Any]]) -> tuple[list[oracle.Event], oracle.Judged]:
    evs = [oracle.Event(i, e["ts"], str(e["partition"]), e) for i, e in enumerate(events)]
    return evs, oracle.watermarks(evs, DELAY, None)


def streamed(lake: Lake, name: str) -> list[dict[str, Any]]:
    if not lake.target(name).exists:
        return []
    rows = lake.table(name).to_pylist()
    out = []
    for r in rows:
        r = dict(r)
        for c in ("window_start", "window_end"):
            r[c] = int(r[c].timestamp() * SECOND)
        r["avg_v"] = round(r["avg_v"], 9) if r.get("avg_v") is not None else None
        out.append(r)
    return sorted(out, key=lambda r: (r["key"], r["window_start"]))


def late_ids(lake: Lake, name: str) -> list[tuple[str, str]]:
    if not lake.target(f"{name}__late").exists:
        return []
    late = lake.table(f"{name}__late")
    return sorted(
        zip(late.column("event_id").to_pylist(), late.column("_reason").to_pylist(), strict=True)
    )


# Each example runs real micro-batches into Delta tables: a handful per test keeps the
# default suite fast; HEADWATER_STREAM_EXAMPLES=200 searches further.
SETTINGS = settings(
    max_examples=int(os.environ.get("HEADWATER_STREAM_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(case=arrivals(), lateness=st.sampled_from([0, 30]), each=st.booleans())
def test_tumbling_windows_with_dedup_equal_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[dict[str, Any]], list[int]],
    lateness: int,
    each: bool,
) -> None:
    events, sizes = case
    lake = Lake(tmp_path_factory.mktemp("tumbling"))
    feed = Feed([])
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="10s",
                partition_column="partition",
                dedup=dedup("event_id", within="5m"),
                window=tumbling("1m"),
                group_by=["key"],
                aggregates=AGGREGATES,
                allowed_lateness=f"{lateness}s",
            ),
        )
    )
    feed_in(lake, feed, events, sizes, each)

    evs, judged = judge(events)
    accepted, _, dedup_late = oracle.dedup(evs, judged.watermarks, "event_id", WITHIN)
    pairs, window_late = oracle.tumbling_windows(
        evs, judged.watermarks, accepted, 60 * SECOND, lateness * SECOND
    )
    expected = oracle.aggregate_sql(evs, pairs, 60 * SECOND, ["key"], judged.final)
    for r in expected:
        r["avg_v"] = round(r["avg_v"], 9)
    assert streamed(lake, "silver.per_minute") == sorted(
        expected, key=lambda r: (r["key"], r["window_start"])
    )
    want_late = sorted(
        [(events[i]["event_id"], "dedup horizon") for i in dedup_late]
        + [(events[i]["event_id"], "window closed") for i in window_late]
    )
    assert late_ids(lake, "silver.per_minute") == want_late


@SETTINGS
@given(
    case=arrivals(),
    lateness=st.sampled_from([0, 30]),
    size=st.sampled_from([60, 50]),
    each=st.booleans(),
)
def test_sliding_windows_equal_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[dict[str, Any]], list[int]],
    lateness: int,
    size: int,
    each: bool,
) -> None:
    # 1m every 20s is aggregated by panes; 50s every 20s (windows not made of whole
    # steps) event by event.
    events, sizes = case
    lake = Lake(tmp_path_factory.mktemp("sliding"))
    feed = Feed([])
    lake.declare(
        lambda: table(
            "silver.sliding",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="10s",
                partition_column="partition",
                window=sliding(f"{size}s", every="20s"),
                group_by=["key"],
                aggregates=AGGREGATES,
                allowed_lateness=f"{lateness}s",
            ),
        )
    )
    feed_in(lake, feed, events, sizes, each)
    evs, judged = judge(events)
    pairs, window_late = oracle.tumbling_windows(
        evs,
        judged.watermarks,
        list(range(len(evs))),
        size * SECOND,
        lateness * SECOND,
        every=20 * SECOND,
    )
    expected = oracle.aggregate_sql(evs, pairs, size * SECOND, ["key"], judged.final)
    for r in expected:
        r["avg_v"] = round(r["avg_v"], 9)
    assert streamed(lake, "silver.sliding") == sorted(
        expected, key=lambda r: (r["key"], r["window_start"])
    )
    assert late_ids(lake, "silver.sliding") == sorted(
        (events[i]["event_id"], "window closed") for i in window_late
    )


@SETTINGS
@given(
    case=arrivals(),
    lateness=st.sampled_from([0, 20]),
    max_length=st.sampled_from([None, 90]),
    each=st.booleans(),
)
def test_session_windows_equal_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[dict[str, Any]], list[int]],
    lateness: int,
    max_length: int | None,
    each: bool,
) -> None:
    events, sizes = case
    lake = Lake(tmp_path_factory.mktemp("sessions"))
    feed = Feed([])
    lake.declare(
        lambda: table(
            "silver.sessions",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="10s",
                partition_column="partition",
                window=session(gap="30s", max_length=f"{max_length}s" if max_length else None),
                group_by=["key"],
                aggregates={"n": count(), "total": sum_("amount")},
                allowed_lateness=f"{lateness}s",
            ),
        )
    )
    feed_in(lake, feed, events, sizes, each)
    evs, judged = judge(events)
    wms = judged.watermarks
    ok = [i for i, e in enumerate(evs) if e.ts >= wms[i] - lateness * SECOND]
    late = [i for i, e in enumerate(evs) if e.ts < wms[i] - lateness * SECOND]
    expected = oracle.sessions_sql(
        evs, ok, 30 * SECOND, ["key"], judged.final, max_length * SECOND if max_length else None
    )
    got = []
    if lake.target("silver.sessions").exists:
        for r in lake.table("silver.sessions").to_pylist():
            got.append(
                {
                    "key": r["key"],
                    "window_start": int(r["window_start"].timestamp() * SECOND),
                    "window_end": int(r["window_end"].timestamp() * SECOND),
                    "n": r["n"],
                    "total": r["total"],
                }
            )
    closed = sorted(
        (g for g in got if g["window_end"] <= judged.final),
        key=lambda r: (r["key"], r["window_start"]),
    )
    assert closed == sorted(expected, key=lambda r: (r["key"], r["window_start"]))
    # On close, an open session is written only when it was written before and a late
    # event (within the allowed lateness) extended it: then with its current content.
    every = oracle.sessions_sql(
        evs, ok, 30 * SECOND, ["key"], 1 << 62, max_length * SECOND if max_length else None
    )
    still_open = [g for g in got if g["window_end"] > judged.final]
    assert all(g in every for g in still_open)
    if lateness == 0:
        assert not still_open
    assert late_ids(lake, "silver.sessions") == sorted(
        (events[i]["event_id"], "window closed") for i in late
    )


def test_empty_state_and_no_events_make_no_table(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([])
    lake.declare(
        lambda: table(
            "silver.nothing",
            source=feed,
            stream=stream(event_time="ts", window=tumbling("1m"), aggregates={"n": count()}),
        )
    )
    lake.run()
    assert not lake.target("silver.nothing").exists


def test_the_public_event_time_helper_survives_importing_the_engine() -> None:
    """A submodule named like a public function would replace it on the package once
    imported, and declaring a stream in the same process would then fail."""
    import headwater.stream
    import headwater.stream.engine

    assert callable(headwater.stream.event_time)
    assert headwater.stream.event_time("ts").column == "ts"


@SETTINGS
@given(case=arrivals(), each=st.booleans())
def test_a_step_after_the_window_sees_each_closed_window_whole(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[dict[str, Any]], list[int]],
    each: bool,
) -> None:
    """then= keeps the keys with the most events of each sliding window: it equals the
    oracle's windows filtered to their maximum, however the events are cut."""
    events, sizes = case
    lake = Lake(tmp_path_factory.mktemp("then"))
    feed = Feed([])
    lake.declare(
        lambda: table(
            "silver.busiest",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="10s",
                partition_column="partition",
                window=sliding("60s", every="20s"),
                group_by=["key"],
                aggregates=AGGREGATES,
                then=lambda windows: windows.query(
                    "w", "SELECT * FROM w QUALIFY n = max(n) OVER (PARTITION BY window_start)"
                ),
            ),
        )
    )
    feed_in(lake, feed, events, sizes, each)
    evs, judged = judge(events)
    pairs, _ = oracle.tumbling_windows(
        evs, judged.watermarks, list(range(len(evs))), 60 * SECOND, 0, every=20 * SECOND
    )
    expected = oracle.aggregate_sql(evs, pairs, 60 * SECOND, ["key"], judged.final)
    most: dict[int, int] = {}
    for r in expected:
        most[r["window_start"]] = max(most.get(r["window_start"], 0), r["n"])
    busiest = [r for r in expected if r["n"] == most[r["window_start"]]]
    for r in busiest:
        r["avg_v"] = round(r["avg_v"], 9)
    assert streamed(lake, "silver.busiest") == sorted(
        busiest, key=lambda r: (r["key"], r["window_start"])
    )


def test_a_step_after_the_window_needs_a_stream_that_appends(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    with pytest.raises(ConfigError, match="then= needs a stream that appends"):
        lake.declare(
            lambda: table(
                "silver.upserted",
                source=Feed([]),
                stream=stream(
                    event_time="ts",
                    window=tumbling("1m"),
                    group_by=["key"],
                    aggregates={"n": count()},
                    allowed_lateness="1m",
                    then=lambda windows: windows.filter("n > 1"),
                ),
            )
        )
