"""Generator source: deterministic, seeded events for streaming tests and examples.

    generator(events=100_000, partitions=4, seed=7, every="100ms",
              disorder="2s", late_fraction=0.01, late_by="5m", duplicates=0.02)

Event i has event time `start + i * every`, moved back by a random delay of up
to `disorder` (and by `late_by` more for a `late_fraction` of events), and
arrives from partition `i % partitions`. With `duplicates`, an event may be a
copy of one a few events earlier (same id and time, arriving again). With
`idle_partition=p, idle_after=n`, partition p delivers nothing after event n.
The values of an event depend only on the seed and its number, so reading from
a position always yields the same rows: replays are exact.

Position: `{"next": n}`, the number of events delivered. With `rate=` (events
per second) it offers what the rate allows since this process first read (from
that position on); otherwise it stops after `events`. Each increment reports
the events on offer beyond it as `info["lag"]`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from .._units import parse_duration
from ..errors import ConfigError
from .base import Increment, Position, ReadContext, Source

BLOCK = 4096  # events drawn from one seeded random stream


class GeneratorSource(Source):
    kind = "generator"
    partition_column = "partition"

    def __init__(
        self,
        events: int | None = 10_000,
        *,
        partitions: int = 4,
        seed: int = 0,
        start: str | datetime = "2024-01-01T00:00:00+00:00",
        every: str | float | timedelta = "100ms",
        disorder: str | float | timedelta = "0s",
        late_fraction: float = 0.0,
        late_by: str | float | timedelta = "0s",
        duplicates: float = 0.0,
        keys: int = 10,
        idle_partition: int | None = None,
        idle_after: int | None = None,
        batch_size: int = 1000,
        rate: float | None = None,
    ) -> None:
        if events is None and rate is None:
            raise ConfigError("generator: give events= (a bound) or rate= (events per second)")
        if partitions < 1 or keys < 1 or batch_size < 1:
            raise ConfigError("generator: partitions, keys and batch_size must be at least 1")
        if not (0 <= late_fraction <= 1 and 0 <= duplicates <= 1):
            raise ConfigError("generator: late_fraction and duplicates are fractions in [0, 1]")
        if idle_partition is not None and not 0 <= idle_partition < partitions:
            raise ConfigError("generator: idle_partition must be one of the partitions")
        self.events = events
        self.partitions = partitions
        self.seed = seed
        begin = datetime.fromisoformat(start) if isinstance(start, str) else start
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=UTC)
        self.start_us = int(begin.timestamp() * 1_000_000)
        self.every_us = _micros(parse_duration(every, "generator: every"))
        self.disorder_us = _micros(parse_duration(disorder, "generator: disorder"))
        self.late_fraction = late_fraction
        self.late_by_us = _micros(parse_duration(late_by, "generator: late_by"))
        self.duplicates = duplicates
        self.keys = keys
        self.idle_partition = idle_partition
        self.idle_after = idle_after
        self.batch_size = batch_size
        self.rate = rate
        self._first: tuple[int, float] | None = None  # (position, clock) of the first read

    def describe(self) -> str:
        bound = f"{self.events:,} events" if self.events is not None else f"{self.rate:g}/s"
        return f"generator ({bound}, {self.partitions} partitions, seed {self.seed})"

    def available(self, start: int = 0) -> int:
        """Events on offer now; with a rate, counted from where this process started reading."""
        if self.rate is None:
            assert self.events is not None
            return self.events
        if self._first is None:
            self._first = (start, time.monotonic())
        begun, at = self._first
        offered = begun + int((time.monotonic() - at) * self.rate)
        return offered if self.events is None else min(self.events, offered)

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        start = 0 if position is None else int(position["next"])
        end = self.available(start)
        size = max(1, min(self.batch_size, ctx.chunk_rows))
        while start < end:
            stop = min(end, start + size)
            # Events on offer and not yet read: the consumer lag a stream reports.
            yield Increment(self.rows(start, stop), {"next": stop}, info={"lag": end - stop})
            start = stop

    def read_until(
        self, position: Position | None, until: Position, ctx: ReadContext
    ) -> Iterator[Increment]:
        start = 0 if position is None else int(position["next"])
        stop = int(until["next"])
        yield Increment(self.rows(start, stop), {"next": stop})

    # -- the events ---------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> pa.Table:
        """Events [start, stop) in arrival order."""
        index = np.arange(start, stop, dtype=np.int64)
        draws = self._draws(start, stop)
        original = index.copy()
        if self.duplicates > 0:
            again = draws["dup"] < self.duplicates
            back = 1 + (draws["back"] % 50)
            original = np.where(again & (index - back >= 0), index - back, index)
        source = self._draws_for(original)
        delay = (source["delay"] * self.disorder_us).astype(np.int64)
        late = source["late"] < self.late_fraction
        delay = delay + np.where(late, self.late_by_us, 0)
        times = self.start_us + original * self.every_us - delay
        partition = index % self.partitions
        if self.idle_partition is not None and self.idle_after is not None:
            quiet = (partition == self.idle_partition) & (index >= self.idle_after)
            others = max(1, self.partitions - 1)
            moved = index % others
            moved = np.where(moved >= self.idle_partition, moved + 1, moved)
            partition = np.where(quiet, moved % self.partitions, partition)
        key = source["key"] % self.keys
        return pa.table(
            {
                "event_id": pa.array([f"e{n}" for n in original.tolist()], pa.string()),
                "partition": pa.array(partition, pa.int32()),
                "ts": pa.array(times, pa.int64()).cast(pa.timestamp("us", "UTC")),
                "key": pa.array([f"k{k}" for k in key.tolist()], pa.string()),
                "value": pa.array(np.round(source["value"] * 100, 2), pa.float64()),
                "amount": pa.array(source["amount"], pa.int64()),
            }
        )

    def _draws(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return self._draws_for(np.arange(start, stop, dtype=np.int64))

    def _draws_for(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Random draws of events `index`: a function of the seed and the event number."""
        names = ("delay", "late", "dup", "back", "key", "value", "amount")
        out = {name: np.empty(len(index)) for name in names}
        if len(index) == 0:
            return out
        blocks = index // BLOCK
        for block in np.unique(blocks):
            rng = np.random.default_rng([self.seed, int(block)])
            drawn = {
                "delay": rng.random(BLOCK),
                "late": rng.random(BLOCK),
                "dup": rng.random(BLOCK),
                "back": rng.integers(0, 1 << 30, BLOCK),
                "key": rng.integers(0, 1 << 30, BLOCK),
                "value": rng.random(BLOCK),
                "amount": rng.integers(1, 1000, BLOCK),
            }
            where = blocks == block
            offsets = index[where] - int(block) * BLOCK
            for name in names:
                out[name][where] = drawn[name][offsets]
        out["back"] = out["back"].astype(np.int64)
        out["key"] = out["key"].astype(np.int64)
        out["amount"] = out["amount"].astype(np.int64)
        return out


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The name pipelines use: `generator(...)` builds the connector.
generator = GeneratorSource
