"""A Delta table as an input: its changes since the version last processed.

Position: `{"version": N}`, the upstream version the reading table has consumed.
The first run (and a full refresh) reads the upstream snapshot; later runs read
only the commits after N, through the change feed. `Upstream` names a table of
the project; `DeltaSource` (module `delta`) any Delta table by URI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pyarrow as pa

from ..errors import HeadwaterError
from ..tables.change_feed import read_changes
from ..tables.delta import DeltaTarget
from .base import Increment, Position, ReadContext, Source

Mode = Literal["changes", "snapshot"]


def read_delta_input(
    target: DeltaTarget, mode: Mode, position: Position | None, ctx: ReadContext
) -> Iterator[Increment]:
    """The increment of one Delta input after `position` (nothing when it has no new version)."""
    snapshot = target.load()
    if snapshot is None:
        # Not built yet (its source has had nothing to load so far): nothing new to read.
        return
    version = snapshot.version()
    done = None if (position is None or ctx.full_refresh) else int(position["version"])
    if done is not None and done >= version:
        return
    if mode == "snapshot" or done is None:
        data: pa.RecordBatchReader = (
            target.dataset(table=snapshot).scanner(batch_size=1 << 16).to_reader()
        )
        yield Increment(
            data, {"version": version}, info={"upstream_version": version, "snapshot": True}
        )
        return
    changes, changed = read_changes(target, done, version)
    # A range of commits that change no data (compaction) is not worth a commit of its own.
    yield Increment(
        changes,
        {"version": version},
        advances=changed,
        info={"upstream_version": version, "from_version": done},
    )


class Upstream(Source):
    """Another table of the project."""

    kind = "table"

    def __init__(self, table: str, mode: Mode = "changes") -> None:
        if mode not in ("changes", "snapshot"):
            raise HeadwaterError(
                f"input {table}: mode must be 'changes' or 'snapshot', not {mode!r}"
            )
        self.table = table
        self.mode: Mode = mode

    def describe(self) -> str:
        return f"{self.mode} of {self.table}"

    def upstream_tables(self) -> list[str]:
        return [self.table]

    def changes_read(self) -> list[str]:
        return [self.table] if self.mode == "changes" else []

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        assert ctx.resolve is not None
        yield from read_delta_input(ctx.resolve(self.table), self.mode, position, ctx)
