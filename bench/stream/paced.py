"""A Nexmark source that offers events at a fixed rate of wall-clock time (latency runs).

Events are generated in fixed blocks (`BLOCK` events, seeded by their first
number), so the rows after a position are the same however the blocks were
grouped into increments: a replay is exact. Block k is *offered* once the wall
clock reaches start + (k + 1) * BLOCK / rate; `read` delivers every offered
block up to the chunk size and otherwise sleeps until the next one is offered,
so a streaming table fed by it runs continuously, as fast as it can keep up.

Position: {"next": k}, the next block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import nexmark
import pyarrow as pa

from headwater.sources.base import Increment, ReadContext, Source

BLOCK = 1000  # events per generated block (100 ms at 10,000 events/s)


class PacedNexmark(Source):
    kind = "nexmark-paced"

    def __init__(self, stream: str, events: int, rate: float, start: float, seed: int = 42) -> None:
        self.stream = stream
        self.blocks = -(-events // BLOCK)
        self.events = events
        self.rate = rate
        self.start = start  # time.time() at which event 0 may be offered
        self.seed = seed

    def describe(self) -> str:
        return f"nexmark {self.stream} at {self.rate:.0f} events/s"

    def offered_at(self, event: int) -> float:
        """Wall-clock time (s since the epoch) at which event number `event` was offered."""
        return self.start + (event // BLOCK + 1) * BLOCK / self.rate

    def read(self, position: Any, ctx: ReadContext) -> Iterator[Increment]:
        block = int(position["next"]) if position else 0
        per_chunk = max(1, ctx.chunk_rows // BLOCK)
        while block < self.blocks:
            offered = min(self.blocks, int((time.time() - self.start) * self.rate / BLOCK))
            if offered <= block:
                time.sleep(max(0.001, self.offered_at(block * BLOCK) - time.time()))
                continue
            end = min(offered, block + per_chunk)
            parts = [
                nexmark.generate_slice(k * BLOCK, min(BLOCK, self.events - k * BLOCK), self.seed)[
                    self.stream
                ]
                for k in range(block, end)
            ]
            yield Increment(pa.concat_tables(parts), {"next": end})
            block = end
