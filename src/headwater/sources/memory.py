"""In-memory source: a list of batches (for tests and examples).

Position: the number of batches already committed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .base import Increment, Position, ReadContext, Source


class MemorySource(Source):
    kind = "memory"

    def __init__(
        self, batches: Sequence[pa.Table | list[dict[str, Any]]], name: str = "memory"
    ) -> None:
        self.batches = [
            b if isinstance(b, pa.Table) else pa.Table.from_pylist(list(b)) for b in batches
        ]
        self.name = name
        self.acknowledged: list[Position] = []

    def describe(self) -> str:
        return f"{self.name} ({len(self.batches)} batches)"

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        start = 0 if position is None else int(position["next"])
        for index in range(start, len(self.batches)):
            yield Increment(self.batches[index], {"next": index + 1})

    def acknowledge(self, position: Position, ctx: ReadContext) -> None:
        self.acknowledged.append(position)


# The name pipelines use: `memory(...)` builds the connector.
memory = MemorySource
