"""append: add every row of the increment.

Replaying the same increment is prevented by the commit protocol (its batch is
already in the table's log); to drop duplicates arriving in *new* increments,
use insert-if-absent.
"""

from __future__ import annotations

import pyarrow as pa

from .base import StagedWrite, WriteContext, WriteStrategy, write_rows


class Append(WriteStrategy):
    name = "append"
    summary = "add every row"

    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        return write_rows(ctx, data)
