"""Micro-batches: what each input delivers after its committed position, bounded.

A micro-batch takes one increment from each input (at most `max_records` rows:
the source is asked for chunks of that size). An upstream Delta table is read
commit by commit, whole commits only, until `max_records` rows or `max_bytes`
are reached, so its micro-batches end at a version.

A replay reads exactly up to positions recorded before a crash (see
`docs/streaming.md`, Exactly-once): sources that define
`read_until(position, until, ctx)` are asked for that; for the others the
engine reads increments until one ends at the recorded position.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import HeadwaterError
from ..sources.base import Increment, Position, ReadContext, Source
from ..sources.delta import DeltaSource
from ..sources.upstream import Upstream
from ..tables.change_feed import read_changes
from ..tables.delta import DeltaTarget
from ..tables.strategies.base import CHANGE_TYPE, COMMIT_VERSION
from .spec import Stream

EVENT_KINDS = ("insert", "update_postimage")


@dataclass
class MicroBatch:
    """One increment per input that delivered one (aliases in declaration order)."""

    increments: dict[str, Increment]

    @property
    def positions(self) -> dict[str, Any]:
        return {alias: inc.position for alias, inc in self.increments.items()}


def micro_batches(
    inputs: dict[str, Source],
    stream: Stream,
    positions: dict[str, Any],
    ctx: ReadContext,
    until: dict[str, Any] | None = None,
) -> Iterator[MicroBatch]:
    """Micro-batches after `positions`; with `until`, exactly one up to those positions."""
    bounded = replace(ctx, chunk_rows=stream.max_records, full_refresh=False)
    if until is not None:
        yield MicroBatch(
            {
                alias: _read_until(
                    alias, source, positions.get(alias), until[alias], bounded, stream
                )
                for alias, source in inputs.items()
                if alias in until and until[alias] != positions.get(alias)
            }
        )
        return
    readers = {
        alias: _increments(source, positions.get(alias), bounded, stream)
        for alias, source in inputs.items()
    }
    while readers:
        batch: dict[str, Increment] = {}
        for alias in list(readers):
            found = next(readers[alias], None)
            if found is None:
                del readers[alias]
            else:
                batch[alias] = found
        if batch:
            yield MicroBatch(batch)


def _increments(
    source: Source, position: Position | None, ctx: ReadContext, stream: Stream
) -> Iterator[Increment]:
    target = _delta_target(source, ctx)
    if target is not None:
        yield from _delta_increments(target, position, stream, None)
    else:
        yield from source.read(position, ctx)


def _read_until(
    alias: str,
    source: Source,
    position: Position | None,
    until: Position,
    ctx: ReadContext,
    stream: Stream,
) -> Increment:
    target = _delta_target(source, ctx)
    if target is not None:
        found = list(_delta_increments(target, position, stream, int(until["version"])))
    elif hasattr(source, "read_until"):
        found = list(source.read_until(position, until, ctx))
    else:
        found = []
        for increment in source.read(position, ctx):
            found.append(increment)
            if _same(increment.position, until):
                break
    if not found or not _same(found[-1].position, until):
        raise HeadwaterError(
            f"table {ctx.table}: cannot read input {alias} ({source.describe()}) again up to the "
            f"position a crashed micro-batch recorded ({json.dumps(until)[:200]})",
            "the source cannot replay exactly; give it read_until(), or rebuild with --full-refresh",
        )
    return _concat(found)


def _same(a: Position, b: Position) -> bool:
    return bool(
        json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    )


def _concat(increments: list[Increment]) -> Increment:
    if len(increments) == 1:
        return increments[0]
    tables = [_table(i.data) for i in increments]
    rejected = [i.rejected for i in increments if i.rejected is not None]
    info: dict[str, Any] = {}
    for i in increments:
        info.update(i.info)
    return Increment(
        pa.concat_tables(tables, promote_options="permissive"),
        increments[-1].position,
        advances=any(i.advances for i in increments),
        info=info,
        rejected=pa.concat_tables(rejected, promote_options="permissive") if rejected else None,
    )


def _table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    return pa.Table.from_batches(list(data.to_batches()))


# -- Delta inputs -----------------------------------------------------------------------


def _delta_target(source: Source, ctx: ReadContext) -> DeltaTarget | None:
    if isinstance(source, Upstream):
        assert ctx.resolve is not None
        return ctx.resolve(source.table)
    if isinstance(source, DeltaSource):
        return source._target(ctx)
    return None


def _delta_increments(
    target: DeltaTarget, position: Position | None, stream: Stream, until: int | None
) -> Iterator[Increment]:
    """Whole commits after `position`, grouped into micro-batches of bounded size."""
    snapshot = target.refresh().load()
    if snapshot is None:
        return
    end = snapshot.version() if until is None else until
    done = -1 if position is None else int(position["version"])
    while done < end:
        tables: list[pa.Table] = []
        rows = size = 0
        version = done
        while version < end and rows < stream.max_records and size < stream.max_bytes:
            reader, _ = read_changes(target, version, version + 1)
            events = _events(reader.read_all())
            version += 1
            tables.append(events)
            rows += events.num_rows
            size += events.nbytes
        data = pa.concat_tables(tables, promote_options="permissive")
        yield Increment(data, {"version": version}, info={"upstream_version": version})
        done = version


def _events(changes: pa.Table) -> pa.Table:
    """Rows of a change feed that are events: inserts and new images of updates."""
    if CHANGE_TYPE in changes.schema.names:
        changes = changes.filter(pc.is_in(changes.column(CHANGE_TYPE), pa.array(EVENT_KINDS)))
    drop = [c for c in (CHANGE_TYPE, COMMIT_VERSION) if c in changes.schema.names]
    return changes.drop_columns(drop)
