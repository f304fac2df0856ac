"""replace-partition: the partitions present in the run's output are replaced whole.

Partitions the output does not mention are untouched, so re-running one day
rewrites exactly that day (the idempotent way to reprocess an interval). In an
interval run (`--start/--end`) every partition of the first, temporal partition
column inside the interval is replaced, also one the output no longer has.
"""

from __future__ import annotations

import pyarrow as pa

from ..writer import partition_value_text
from .base import StagedWrite, WriteContext, WriteStrategy, remove_action, write_rows


class ReplacePartition(WriteStrategy):
    name = "replace-partition"
    summary = "replace the partitions the increment covers"
    whole_run = True
    requires_partitions = True

    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        staged = write_rows(ctx, data)
        replaced = {_key(a.partition_values, ctx.partition_by) for a in staged.adds}
        first = ctx.partition_by[0]
        temporal = pa.types.is_temporal(ctx.schema.field(first).type)
        for row in ctx.live_files().to_pylist():
            logged = {c: partition_value_text(row.get(f"partition.{c}")) for c in ctx.partition_by}
            # An interval run replaces every partition inside the interval, also
            # those whose rows all disappeared from the output.
            in_interval = (
                ctx.interval is not None
                and temporal
                and ctx.interval.contains(row.get(f"partition.{first}"))
            )
            if _key(logged, ctx.partition_by) in replaced or in_interval:
                staged.removes.append(remove_action(row))
        staged.metrics["partitions_replaced"] += len(replaced)
        return staged


def _key(values: object, columns: tuple[str, ...]) -> tuple[str | None, ...]:
    mapping = dict(values)  # type: ignore[call-overload]
    return tuple(mapping.get(c) for c in columns)
