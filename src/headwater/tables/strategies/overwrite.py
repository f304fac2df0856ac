"""overwrite: replace the whole table with the run's output, atomically."""

from __future__ import annotations

import pyarrow as pa

from .base import StagedWrite, WriteContext, WriteStrategy, remove_action, write_rows


class Overwrite(WriteStrategy):
    name = "overwrite"
    summary = "replace the whole table"
    whole_run = True

    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        staged = write_rows(ctx, data)
        staged.removes = [remove_action(r) for r in ctx.live_files().to_pylist()]
        staged.metrics["deleted_files"] += len(staged.removes)
        return staged
