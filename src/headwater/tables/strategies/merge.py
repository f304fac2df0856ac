"""merge (upsert): insert new keys, replace existing rows, delete on request.

- A version column guards the target: a row is replaced only by a strictly newer
  version (a delete by a version at least as new), so replays and late, older
  data never move a row backwards.
- Duplicate keys in one increment collapse to the latest by `order_by` (or the
  version column, or the change feed's commit version) and are rejected when no
  order is declared, so a key never matches several source rows.
- Rows flagged as deletes (`_change_type = 'delete'` from a change feed) delete
  the target row, or stamp `_deleted_at` when deletes are soft.
- A source row identical to the target row changes nothing, and a file whose
  rows do not change is not rewritten.
"""

from __future__ import annotations

import pyarrow as pa

from ..._sql import cols, q, same_values
from ._keyed import DELETE, KeyedStrategy
from .base import RUN_TS, WriteContext, WriteOptions


class Merge(KeyedStrategy):
    name = "merge"
    summary = "upsert by key, guarded by version"
    operation = "MERGE"

    def guard_column(self, options: WriteOptions) -> str | None:
        return options.version_column

    def managed_columns(self, options: WriteOptions, data_schema: pa.Schema) -> list[pa.Field]:
        if options.deletes == "soft":
            return [pa.field(options.deleted_at, pa.timestamp("us", "UTC"))]
        return []

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        guard = self.guard_column(ctx.options)
        return [guard] if guard else []

    def applies(self, ctx: WriteContext) -> str:
        guard = self.guard_column(ctx.options)
        if not guard:
            return "TRUE"
        g = q(guard)
        return f"(t.{g} IS NULL OR (s.{g} IS NOT NULL AND (s.{g} > t.{g} OR (s.{DELETE} AND s.{g} >= t.{g}))))"

    # -- row shapes ----------------------------------------------------------
    def _data_columns(self, ctx: WriteContext) -> list[str]:
        managed = {f.name for f in self.managed_columns(ctx.options, ctx.schema)}
        return [c for c in ctx.schema.names if c not in managed]

    def upserted(self, ctx: WriteContext, new: str, old: str | None) -> str:
        """Table columns of the row written for an insert or update from `new`."""
        opts = ctx.options
        out = []
        for column in ctx.schema.names:
            if opts.deletes == "soft" and column == opts.deleted_at:
                out.append(f"CAST(NULL AS TIMESTAMPTZ) AS {q(column)}")
            else:
                out.append(f"{new}.{q(column)}")
        return ", ".join(out)

    def soft_deleted(self, ctx: WriteContext) -> str:
        """Table columns of a soft-deleted row: the old values, stamped and re-versioned."""
        opts, guard = ctx.options, self.guard_column(ctx.options)
        out = []
        for column in ctx.schema.names:
            if column == opts.deleted_at:
                out.append(f"coalesce(o.{q(column)}, {RUN_TS}) AS {q(column)}")
            elif column == guard:
                out.append(f"s.{q(column)}")
            else:
                out.append(f"o.{q(column)}")
        return ", ".join(out)

    def unchanged(self, ctx: WriteContext) -> str:
        """SQL over `o` (target) and `s` (source): the update would change nothing."""
        keys = set(ctx.options.keys)
        same = same_values([c for c in self._data_columns(ctx) if c not in keys], "o", "s")
        if ctx.options.deletes == "soft":
            same += f" AND o.{q(ctx.options.deleted_at)} IS NULL"
        return f"({same})"

    # -- the strategy hooks --------------------------------------------------
    def inserts(self, ctx: WriteContext) -> str:
        return f"SELECT {self.upserted(ctx, 's', None)} FROM fresh s WHERE NOT s.{DELETE}"

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        tc = ctx.schema.names
        keys = ctx.options.keys
        join = "FROM old o JOIN src s ON " + " AND ".join(
            f"o.{q(k)} IS NOT DISTINCT FROM s.{q(k)}" for k in keys
        )
        same = self.unchanged(ctx)
        soft = ctx.options.deletes == "soft"
        replacement = [
            f"SELECT {cols(tc, 'o')} {join} WHERE NOT s.{DELETE} AND {same}",
            f"SELECT {self.upserted(ctx, 's', 'o')} {join} WHERE NOT s.{DELETE} AND NOT {same}",
        ]
        changes = [
            f"SELECT {cols(tc, 'o')}, 'update_preimage' AS _change_type {join} WHERE NOT s.{DELETE} AND NOT {same}",
            f"SELECT {self.upserted(ctx, 's', 'o')}, 'update_postimage' AS _change_type {join} WHERE NOT s.{DELETE} AND NOT {same}",
        ]
        if soft:
            already = f"o.{q(ctx.options.deleted_at)} IS NOT NULL"
            replacement.append(f"SELECT {self.soft_deleted(ctx)} {join} WHERE s.{DELETE}")
            changes += [
                f"SELECT {cols(tc, 'o')}, 'update_preimage' AS _change_type {join} WHERE s.{DELETE} AND NOT {already}",
                f"SELECT {self.soft_deleted(ctx)}, 'update_postimage' AS _change_type {join} WHERE s.{DELETE} AND NOT {already}",
            ]
        else:
            changes.append(
                f"SELECT {cols(tc, 'o')}, 'delete' AS _change_type {join} WHERE s.{DELETE}"
            )
        return " UNION ALL ".join(replacement), " UNION ALL ".join(changes)
