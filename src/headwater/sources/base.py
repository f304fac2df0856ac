"""The source protocol: every input yields Arrow data plus the position after it.

A position is a small JSON value (a cursor, a set of loaded files, a log
position, an upstream table version). The engine commits it in the same Delta
commit as the data it describes, and hands the source the committed position on
the next run, so a source never has to remember anything itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from ..errors import HeadwaterError

if TYPE_CHECKING:
    from ..config import ProjectConfig
    from ..engine.interval import Interval
    from ..tables.delta import DeltaTarget

Position = Any  # JSON-serialisable


@dataclass
class Increment:
    """Rows that arrived after a position, and the position just after them."""

    data: pa.RecordBatchReader | pa.Table
    position: Position
    # Commit the new position even when no row arrived (files consumed, offsets moved).
    advances: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    # Rows that could not be read (malformed lines...), for the table's quarantine:
    # see headwater.engine.quarantine.rejected_rows.
    rejected: pa.Table | None = None

    def reader(self) -> pa.RecordBatchReader:
        if isinstance(self.data, pa.Table):
            return pa.RecordBatchReader.from_batches(self.data.schema, self.data.to_batches())
        return self.data


@dataclass
class ReadContext:
    """What a source may use while reading."""

    table: str
    project_root: Path
    run_ts: datetime
    chunk_rows: int = 500_000
    full_refresh: bool = False
    resolve: Callable[[str], DeltaTarget] | None = None
    config: ProjectConfig | None = None
    # An interval run asks the source for this interval's rows instead of what is new.
    interval: Interval | None = None

    def connection(self, name: str) -> dict[str, Any]:
        """Settings of connection `name` from the project (secrets resolved)."""
        if self.config is None:
            raise HeadwaterError(
                f"table {self.table}: connection {name!r} needs a project configuration"
            )
        return self.config.connection(name)


class Source(ABC):
    """A connector. One module per connector under `headwater.sources`."""

    kind: ClassVar[str]
    # Whether read() honours ctx.interval (re-reading an interval of event time).
    reads_intervals: ClassVar[bool] = False

    @abstractmethod
    def describe(self) -> str:
        """One line naming what is read (never secrets)."""

    @abstractmethod
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        """Increments after `position` (None: from the beginning), in order.

        Each increment's position must be resumable: if the process dies after
        committing increment k, reading from its position yields k+1 onwards.
        """

    def acknowledge(self, position: Position, ctx: ReadContext) -> None:  # noqa: B027 - optional hook
        """Called after the commit that holds `position`: the source may release
        what came before it (an optimisation; replay from the committed position
        must always be safe)."""

    def upstream_tables(self) -> list[str]:
        """Tables of the project this source reads (edges of the table graph)."""
        return []

    def changes_read(self) -> list[str]:
        """Tables whose change feed this source reads (they then record their changes)."""
        return []
