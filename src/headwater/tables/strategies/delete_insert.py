"""delete-insert: replace all rows of each incoming key with the incoming rows.

For keys that own several rows (the lines of an order, the readings of a day),
the increment carries the complete new set for each key it mentions: existing
rows of those keys are deleted and the new ones inserted, in one commit.
"""

from __future__ import annotations

from ..._sql import cols
from ._keyed import DELETE, KeyedStrategy
from .base import WriteContext


class DeleteInsert(KeyedStrategy):
    name = "delete-insert"
    summary = "replace all rows of each incoming key"
    operation = "DELETE-INSERT"
    duplicates = "keep"

    def inserts(self, ctx: WriteContext) -> str:
        return f"SELECT {cols(ctx.schema.names)} FROM src WHERE NOT {DELETE}"

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        table = cols(ctx.schema.names)
        return (
            f"SELECT {table} FROM old WHERE FALSE",
            f"SELECT {table}, 'delete' AS _change_type FROM old",
        )

    def skipped(self, ctx: WriteContext) -> int:
        return 0
