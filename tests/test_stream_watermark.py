"""Property: the vectorised watermark equals the one-event-at-a-time reference, however
the arrivals are cut into micro-batches and checkpointed (JSON) between them, with
inputs that deliver late or never (held back until idle), partitions and idleness."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.stream.watermark import WatermarkState, advance

from . import stream_oracle as oracle

SECOND = 1_000_000
INPUTS = ("left", "right", "other")


@st.composite
def arrivals(draw: Any) -> tuple[list[oracle.Event], list[int]]:
    n = draw(st.integers(1, 60))
    partitions = draw(
        st.lists(st.sampled_from(["left", "right", "right/a", "right/b"]), min_size=n, max_size=n)
    )
    times = draw(st.lists(st.integers(0, 200), min_size=n, max_size=n))
    events = [
        oracle.Event(i, t * SECOND, p, {})
        for i, (t, p) in enumerate(zip(times, partitions, strict=True))
    ]
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=5))) | {n})
    return events, cuts


@settings(max_examples=300, deadline=None)
@given(case=arrivals(), idle=st.sampled_from([None, 0, 30, 90]))
def test_watermark_per_event_equals_the_reference(
    case: tuple[list[oracle.Event], list[int]], idle: int | None
) -> None:
    events, cuts = case
    idle_us = None if idle is None else idle * SECOND
    expected = oracle.watermarks(events, 5 * SECOND, idle_us, INPUTS)
    state = WatermarkState()
    got: list[int] = []
    start = 0
    for end in cuts:
        part = events[start:end]
        names = sorted({e.partition for e in part})
        moved = advance(
            state,
            np.array([e.ts for e in part], dtype=np.int64),
            np.array([names.index(e.partition) for e in part], dtype=np.int64),
            names,
            5 * SECOND,
            idle_us,
            INPUTS,
        )
        got += [int(w) for w in moved.watermark]
        # What a restart reads back from the checkpoint.
        state = WatermarkState.from_json(json.loads(json.dumps(moved.state.to_json())))
        start = end
    never = np.iinfo(np.int64).min // 4
    assert [max(w, never) for w in got] == [max(w, never) for w in expected.watermarks]
    final = expected.final if expected.final > never else None
    assert state.watermark == final
