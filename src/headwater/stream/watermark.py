"""Watermarks: per source partition, combined by minimum, judged per event.

For bounded out-of-orderness B, partition p's watermark after an event is the
newest event time p has delivered minus B; the stream's watermark is the
minimum over partitions that are not idle, and never moves back. A partition
is idle once the stream's newest event time has moved more than `idle_timeout`
past what it was when p last delivered: idleness is measured in event time, so
a replay decides it exactly as the first attempt did.

An input of the table that has not delivered any event yet holds the watermark
back (it may still deliver old events) by the same rule, as if it had last
delivered at the stream's first event: until the stream's newest event time has
moved more than `idle_timeout` past that first event time (for ever without a
timeout).

Every event is judged against the watermark right after its own arrival, in
arrival order, so how arrivals are cut into micro-batches changes nothing. The
computation is vectorised: one pass of numpy cumulative maxima per partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Sentinels well inside int64 so that subtracting a delay cannot overflow.
NEVER = np.iinfo(np.int64).min // 4
FOREVER = np.iinfo(np.int64).max // 4


@dataclass
class WatermarkState:
    """What the checkpoint keeps: per partition (newest event time, stream's newest
    event time when the partition last delivered), the combined watermark (None
    while it has not started), and the stream's first event time (from which an
    input that has not delivered yet is idle)."""

    partitions: dict[str, tuple[int, int]] = field(default_factory=dict)
    stream_max: int | None = None
    watermark: int | None = None
    stream_first: int | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "partitions": {k: [m, s] for k, (m, s) in sorted(self.partitions.items())},
            "stream_max": self.stream_max,
            "watermark": self.watermark,
        }
        if self.stream_first is not None:
            value["stream_first"] = self.stream_first
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> WatermarkState:
        if not value:
            return cls()
        return cls(
            {str(k): (int(v[0]), int(v[1])) for k, v in (value.get("partitions") or {}).items()},
            value.get("stream_max"),
            value.get("watermark"),
            # Checkpoints written before this field: every input had delivered by then
            # or did not hold the watermark back; the first event is the best estimate.
            value.get("stream_first", value.get("stream_max")),
        )

    def idle(self, idle_timeout: int | None) -> list[str]:
        """Partitions that no longer hold the watermark back."""
        if idle_timeout is None or self.stream_max is None:
            return []
        return sorted(
            k for k, (_, seen) in self.partitions.items() if self.stream_max - seen > idle_timeout
        )


@dataclass
class Advance:
    """The watermark after each event of a micro-batch, and the new state."""

    watermark: np.ndarray  # int64 µs per event (NEVER before the first event)
    behind: np.ndarray  # how far each event is behind its partition's newest event (µs)
    state: WatermarkState


def advance(
    state: WatermarkState,
    times: np.ndarray,
    partitions: np.ndarray,
    names: list[str],
    delay: int,
    idle_timeout: int | None,
    inputs: Sequence[str] = (),
) -> Advance:
    """Watermarks for events `times` (µs) arriving in this order from `partitions`
    (codes into `names`: an input's name, or `<input>/<value>` for a partition
    column's value). `inputs` are the table's inputs: one that has delivered no
    event yet holds the watermark back until it is idle."""
    n = len(times)
    if n == 0:
        return Advance(np.empty(0, np.int64), np.empty(0, np.int64), state)
    newest = np.maximum.accumulate(times)
    if state.stream_max is not None:
        newest = np.maximum(newest, state.stream_max)
    first = state.stream_first if state.stream_first is not None else int(newest[0])
    combined = np.full(n, FOREVER, dtype=np.int64)
    own_newest = np.empty(n, dtype=np.int64)
    positions = np.arange(n)
    updated: dict[str, tuple[int, int]] = dict(state.partitions)
    keys = sorted(set(state.partitions) | set(names))
    codes = {name: i for i, name in enumerate(names)}
    for key in keys:
        before_max, before_seen = state.partitions.get(key, (NEVER, NEVER))
        code = codes.get(key)
        if code is not None and len(names) == 1:
            # Every event of the micro-batch is this partition's (the common case: one
            # input without partitions), so it is never idle here: fewer passes.
            latest = np.maximum(np.maximum.accumulate(times), before_max)
            own_newest = latest
            updated[key] = (int(latest[-1]), int(newest[-1]))
            np.minimum(combined, latest - delay, out=combined)
            continue
        mask = partitions == code if code is not None else None
        if mask is not None and mask.any():
            latest = np.maximum(np.maximum.accumulate(np.where(mask, times, NEVER)), before_max)
            last_row = np.maximum.accumulate(np.where(mask, positions, -1))
            seen = np.where(last_row >= 0, newest[np.clip(last_row, 0, None)], before_seen)
            own_newest[mask] = latest[mask]
            updated[key] = (int(latest[-1]), int(seen[-1]))
            candidate = np.where(latest > NEVER, latest - delay, FOREVER)
        else:
            seen = np.full(n, before_seen, dtype=np.int64)
            candidate = np.full(n, before_max - delay if before_max > NEVER else FOREVER)
        if idle_timeout is not None:
            candidate = np.where(newest - seen > idle_timeout, FOREVER, candidate)
        np.minimum(combined, candidate, out=combined)
    for waiting in _waiting(state, inputs):
        # Held back up to the input's first event (none in this micro-batch: all of it).
        arrived = [code for key, code in codes.items() if _of_input(key, waiting)]
        mask = np.isin(partitions, arrived)
        until = int(np.argmax(mask)) if mask.any() else n
        hold = positions < until
        if idle_timeout is not None:
            hold &= newest - first <= idle_timeout
        combined[hold] = NEVER
    watermark = np.maximum.accumulate(combined)
    if state.watermark is not None:
        watermark = np.maximum(watermark, state.watermark)
    last = int(watermark[-1])
    return Advance(
        watermark.astype(np.int64),
        (own_newest - times).astype(np.int64),
        WatermarkState(updated, int(newest[-1]), None if last <= NEVER else last, first),
    )


def _of_input(partition: str, alias: str) -> bool:
    return partition == alias or partition.startswith(alias + "/")


def _waiting(state: WatermarkState, inputs: Sequence[str]) -> list[str]:
    """Inputs that had delivered no event before this micro-batch."""
    return [a for a in inputs if not any(_of_input(k, a) for k in state.partitions)]
