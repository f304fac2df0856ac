"""An upstream Delta table as an input: its changes since the version last processed.

Position: `{"version": N}`, the upstream version the reading table has consumed.
The first run (and a full refresh) reads the upstream snapshot; later runs read
only the commits after N, through the change feed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pyarrow as pa

from ..errors import HeadwaterError
from ..tables.change_feed import read_changes
from .base import Increment, Position, ReadContext, Source

Mode = Literal["changes", "snapshot"]


class Upstream(Source):
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

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        assert ctx.resolve is not None
        target = ctx.resolve(self.table)
        snapshot = target.load()
        if snapshot is None:
            raise HeadwaterError(
                f"table {ctx.table} reads {self.table}, which has not been built yet",
                f"run {self.table} first (`headwater run` builds tables in dependency order)",
            )
        version = snapshot.version()
        done = None if (position is None or ctx.full_refresh) else int(position["version"])
        if done is not None and done >= version:
            return
        if self.mode == "snapshot" or done is None:
            data: pa.RecordBatchReader = (
                snapshot.to_pyarrow_dataset().scanner(batch_size=1 << 16).to_reader()
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
