"""insert-if-absent: insert rows whose key (an event id) the table does not hold yet.

At-least-once sources deliver some events twice; keyed on the event id, a
redelivered event is dropped, both within one increment (the first arrival, or
the lowest `order_by`, is kept) and against the table. Existing rows are never
changed, so no file is rewritten.
"""

from __future__ import annotations

from ..._sql import cols, scalar
from ._keyed import DELETE, KeyedStrategy
from .base import WriteContext


class InsertIfAbsent(KeyedStrategy):
    name = "insert-if-absent"
    summary = "insert rows with unseen keys (dedup on event id)"
    operation = "WRITE"
    duplicates = "first"

    def applies(self, ctx: WriteContext) -> str:
        return "FALSE"

    def inserts(self, ctx: WriteContext) -> str:
        return f"SELECT {cols(ctx.schema.names)} FROM fresh WHERE NOT {DELETE}"

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        raise AssertionError("insert-if-absent never rewrites a file")

    def skipped(self, ctx: WriteContext) -> int:
        return int(scalar(ctx.con, "SELECT count(*) FROM pairs"))
