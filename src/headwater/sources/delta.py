"""Delta source: any Delta table by path or URI, written by Headwater or another engine.

Reads the changes since the version last processed: from the table's change
data feed where its writer records one, else from the files added since then
(all an append-only table needs). See tables/change_feed.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..tables.delta import DeltaTarget
from .base import Increment, Position, ReadContext, Source
from .upstream import Mode, read_delta_input


class DeltaSource(Source):
    kind = "delta"

    def __init__(
        self, uri: str | Path, mode: Mode = "changes", storage_options: dict[str, str] | None = None
    ) -> None:
        self.uri = str(uri)
        self.mode: Mode = mode
        self.storage_options = storage_options or {}

    def describe(self) -> str:
        return f"{self.mode} of delta table {self.uri}"

    def _target(self, ctx: ReadContext) -> DeltaTarget:
        uri = self.uri
        if "://" not in uri and not Path(uri).is_absolute():
            uri = str(ctx.project_root / uri)
        return DeltaTarget(uri, self.uri, self.storage_options)

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        yield from read_delta_input(self._target(ctx), self.mode, position, ctx)


# The name pipelines use: `delta(...)` builds the connector.
delta = DeltaSource
