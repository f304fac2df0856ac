"""append: add every row of the increment.

Replaying the same increment is prevented by the commit protocol (its batch is
already in the table's log); to drop duplicates arriving in *new* increments,
use insert-if-absent.
"""

from __future__ import annotations

import pyarrow as pa

from .base import StagedWrite, WriteContext, WriteStrategy, stored_rows


class Append(WriteStrategy):
    name = "append"
    summary = "add every row"

    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        staged = StagedWrite("WRITE")
        writer = ctx.new_writer()
        for batch in stored_rows(ctx, data):
            writer.write(batch)
            staged.metrics["inserted"] += batch.num_rows
        staged.metrics["rows_in"] += staged.metrics["inserted"]
        staged.adds = writer.close()
        return staged
