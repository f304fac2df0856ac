"""scd1 (slowly changing dimension, type 1): overwrite changed attributes, keep no history.

A hash of the tracked columns decides whether a row changed; rows whose tracked
values are unchanged are left alone (no rewrite, no new `_updated_at`).
`_loaded_at` records when a key first arrived, `_updated_at` when its tracked
values last changed (both the run's timestamp, constant within a run).
"""

from __future__ import annotations

import pyarrow as pa

from ..._sql import canonical_hash, q
from ._keyed import DELETE, incoming_types, tracked_columns
from .base import RUN_TS, WriteContext, WriteOptions
from .merge import Merge

HASH = "__hw_hash"
LOADED_AT = "_loaded_at"
UPDATED_AT = "_updated_at"


class Scd1(Merge):
    name = "scd1"
    summary = "overwrite changed attributes, no history"

    def managed_columns(self, options: WriteOptions, data_schema: pa.Schema) -> list[pa.Field]:
        return [
            pa.field(options.row_hash, pa.string()),
            pa.field(LOADED_AT, pa.timestamp("us", "UTC")),
            pa.field(UPDATED_AT, pa.timestamp("us", "UTC")),
            *super().managed_columns(options, data_schema),
        ]

    def source_columns(self, ctx: WriteContext, columns: list[str]) -> dict[str, str]:
        tracked = tracked_columns(ctx, self._data_columns(ctx))
        return {HASH: canonical_hash(tracked, incoming_types(ctx), "i")}

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        return [ctx.options.row_hash, *super().locate_columns(ctx)]

    def applies(self, ctx: WriteContext) -> str:
        changed = f"(s.{DELETE} OR s.{HASH} IS DISTINCT FROM t.{q(ctx.options.row_hash)})"
        return f"({changed} AND {super().applies(ctx)})"

    def upserted(self, ctx: WriteContext, new: str, old: str | None) -> str:
        opts = ctx.options
        out = []
        for column in ctx.schema.names:
            if column == opts.row_hash:
                out.append(f"{new}.{HASH} AS {q(column)}")
            elif column == LOADED_AT:
                out.append(
                    f"coalesce({old}.{q(column)}, {RUN_TS}) AS {q(column)}"
                    if old
                    else f"{RUN_TS} AS {q(column)}"
                )
            elif column == UPDATED_AT:
                out.append(f"{RUN_TS} AS {q(column)}")
            elif opts.deletes == "soft" and column == opts.deleted_at:
                out.append(f"CAST(NULL AS TIMESTAMPTZ) AS {q(column)}")
            else:
                out.append(f"{new}.{q(column)}")
        return ", ".join(out)

    def unchanged(self, ctx: WriteContext) -> str:
        same = f"o.{q(ctx.options.row_hash)} IS NOT DISTINCT FROM s.{HASH}"
        if ctx.options.deletes == "soft":
            same += f" AND o.{q(ctx.options.deleted_at)} IS NULL"
        return f"({same})"
