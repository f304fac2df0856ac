"""Property: a streamed table equals the batch oracle over the complete data.

Hypothesis draws seeded event streams (several partitions, disorder within and
beyond the watermark delay B, a fraction of very late events, duplicates, a
partition that goes quiet) and how they are cut into micro-batches. The
streamed table after the final watermark must equal DuckDB SQL over all
events with the same watermark, idleness, dedup and lateness rules, and
`__late` must hold exactly the events the oracle calls late, once each.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import table
from headwater.sources.generator import GeneratorSource
from headwater.stream import count, dedup, first, last, max_, min_, stream, sum_, tumbling

from . import stream_oracle as oracle
from .lake import Lake

SECOND = 1_000_000
SETTINGS = settings(
    max_examples=int(os.environ.get("HEADWATER_STREAM_EXAMPLES", "4")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def streams(draw: Any) -> dict[str, Any]:
    partitions = draw(st.integers(1, 4))
    events = draw(st.integers(1, 400))
    idle = draw(st.booleans()) and partitions > 1
    return {
        "events": events,
        "partitions": partitions,
        "seed": draw(st.integers(0, 10_000)),
        "every": f"{draw(st.sampled_from([200, 500, 1000, 3000]))}ms",
        "disorder": f"{draw(st.integers(0, 20))}s",  # B is 10s: within and beyond it
        "late_fraction": draw(st.sampled_from([0.0, 0.02, 0.1])),
        "late_by": f"{draw(st.integers(15, 300))}s",
        "duplicates": draw(st.sampled_from([0.0, 0.05, 0.2])),
        "keys": draw(st.integers(1, 4)),
        "idle_partition": 0 if idle else None,
        "idle_after": draw(st.integers(0, events)) if idle else None,
    }


@SETTINGS
@given(
    options=streams(),
    max_records=st.integers(20, 500),  # micro-batches of any size (not one event each: slow)
    lateness=st.sampled_from([0, 20]),
    idle_timeout=st.sampled_from([None, 30]),
)
def test_streamed_windows_equal_the_batch_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    options: dict[str, Any],
    max_records: int,
    lateness: int,
    idle_timeout: int | None,
) -> None:
    source = GeneratorSource(**options, batch_size=max(1, min(max_records, 500)))
    lake = Lake(tmp_path_factory.mktemp("property"))
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=source,
            stream=stream(
                event_time="ts",
                watermark="10s",
                idle_timeout=None if idle_timeout is None else f"{idle_timeout}s",
                dedup=dedup("event_id", within="2m"),
                window=tumbling("30s"),
                group_by=["key"],
                aggregates={
                    "n": count(),
                    "total": sum_("amount"),
                    "lo": min_("value"),
                    "hi": max_("value"),
                    "first_v": first("value"),
                    "last_v": last("value"),
                },
                allowed_lateness=f"{lateness}s",
                max_records=max_records,
            ),
        )
    )
    lake.run()

    rows = source.rows(0, options["events"]).to_pylist()
    events = [
        oracle.Event(i, int(r["ts"].timestamp() * SECOND), str(r["partition"]), r)
        for i, r in enumerate(rows)
    ]
    judged = oracle.watermarks(
        events, 10 * SECOND, None if idle_timeout is None else idle_timeout * SECOND
    )
    wms = judged.watermarks
    accepted, _, dedup_late = oracle.dedup(events, wms, "event_id", 120 * SECOND)
    pairs, window_late = oracle.tumbling_windows(
        events, wms, accepted, 30 * SECOND, lateness * SECOND
    )
    expected = oracle.aggregate_sql(events, pairs, 30 * SECOND, ["key"], judged.final)
    want = sorted(
        (
            r["key"],
            r["window_start"],
            r["n"],
            int(r["total"]),
            r["lo"],
            r["hi"],
            r["first_v"],
            r["last_v"],
        )
        for r in expected
    )
    got = []
    if lake.target("silver.per_minute").exists:
        got = sorted(
            (
                r["key"],
                int(r["window_start"].timestamp() * SECOND),
                r["n"],
                r["total"],
                r["lo"],
                r["hi"],
                r["first_v"],
                r["last_v"],
            )
            for r in lake.table("silver.per_minute").to_pylist()
        )
    assert got == want

    # Late events, once each: a copy of an event is told apart by its partition.
    late_want = Counter(
        [(events[i].row["event_id"], events[i].partition, "dedup horizon") for i in dedup_late]
        + [(events[i].row["event_id"], events[i].partition, "window closed") for i in window_late]
    )
    late_got: Counter[tuple[str, str, str]] = Counter()
    if lake.target("silver.per_minute__late").exists:
        late = lake.table("silver.per_minute__late")
        late_got = Counter(
            zip(
                late.column("event_id").to_pylist(),
                [str(p) for p in late.column("partition").to_pylist()],
                late.column("_reason").to_pylist(),
                strict=True,
            )
        )
    assert late_got == late_want


def test_generator_replays_exactly_from_any_position(tmp_path: Path) -> None:
    """The generator's rows depend only on the seed and the event number."""
    source = GeneratorSource(
        5000, partitions=3, seed=4, disorder="5s", late_fraction=0.1, late_by="1m", duplicates=0.1
    )
    whole = source.rows(0, 5000)
    parts = [source.rows(a, b) for a, b in ((0, 1), (1, 4097), (4097, 4100), (4100, 5000))]
    import pyarrow as pa

    assert pa.concat_tables(parts).equals(whole)
    assert whole.column("event_id").to_pylist() != [f"e{i}" for i in range(5000)]  # duplicates
