"""scd2 (slowly changing dimension, type 2): keep every version of a row.

Each key has at most one current version (`is_current`, `valid_to` NULL). When
the hash of the tracked columns changes, the current version is closed
(`valid_to` = the new version's `valid_from`) and the new one inserted. A delete
closes the current version without a successor. `valid_from` is the run's
timestamp (constant for the whole run) or, with `valid_from_column`, the
change's own time, in which case one increment may carry several versions of a
key and each becomes its own row, in order.

The hash is NULL-safe and length-prefixed, so (NULL, 'a') and ('a', NULL) differ.
Versions not newer than the current one are ignored, and a version equal to its
predecessor is no change, so replaying an increment leaves the table as it was.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..._sql import canonical_hash, cols, key_match, q, scalar
from ...errors import ConfigError
from ._keyed import ARRIVAL, DELETE, KeyedStrategy, incoming_types, tracked_columns
from .base import RUN_TS, WriteContext, WriteOptions

HASH = "__hw_hash"
VALID_FROM = "__hw_vf"


class Scd2(KeyedStrategy):
    name = "scd2"
    summary = "keep every version with valid_from/valid_to/is_current"
    operation = "MERGE"

    def check(self, table: str, options: WriteOptions) -> None:
        super().check(table, options)
        names = [options.valid_from, options.valid_to, options.is_current, options.row_hash]
        if len(set(names)) != len(names):
            raise ConfigError(f"table {table}: scd2 column names must differ: {names}")

    def managed_columns(self, options: WriteOptions, data_schema: pa.Schema) -> list[pa.Field]:
        vf_type = pa.timestamp("us", "UTC")
        if options.valid_from_column and options.valid_from_column in data_schema.names:
            vf_type = data_schema.field(options.valid_from_column).type
        return [
            pa.field(options.valid_from, vf_type),
            pa.field(options.valid_to, vf_type),
            pa.field(options.is_current, pa.bool_()),
            pa.field(options.row_hash, pa.string()),
        ]

    def duplicate_mode(self, ctx: WriteContext) -> Literal["collapse", "first", "keep"]:
        return "keep" if ctx.options.valid_from_column else "collapse"

    def _data_columns(self, ctx: WriteContext) -> list[str]:
        managed = {f.name for f in self.managed_columns(ctx.options, ctx.schema)}
        return [c for c in ctx.schema.names if c not in managed]

    def source_columns(self, ctx: WriteContext, columns: list[str]) -> dict[str, str]:
        tracked = tracked_columns(ctx, self._data_columns(ctx))
        column = ctx.options.valid_from_column
        return {
            HASH: canonical_hash(tracked, incoming_types(ctx), "i"),
            VALID_FROM: f"i.{q(column)}" if column else RUN_TS,
        }

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        o = ctx.options
        return [o.row_hash, o.valid_from, o.is_current]

    def locate_filter(self, ctx: WriteContext) -> ds.Expression | None:
        return ds.field(ctx.options.is_current) == True  # noqa: E712 - an Arrow expression

    def match_condition(self, ctx: WriteContext, alias: str) -> str:
        return f"coalesce({alias}.{q(ctx.options.is_current)}, FALSE)"

    def match_mask(self, ctx: WriteContext, batch: pa.RecordBatch) -> pa.Array | None:
        return pc.fill_null(batch.column(ctx.options.is_current), False)

    def plan(self, ctx: WriteContext) -> None:
        con, keys, o = ctx.con, ctx.options.keys, ctx.options
        k = cols(keys)
        con.execute(
            f"CREATE OR REPLACE TABLE cur AS SELECT {cols(keys, 't')}, t.{q(o.row_hash)} AS __hw_h, "
            f"t.{q(o.valid_from)} AS __hw_cvf FROM located t"
        )
        # The effective versions per key, oldest first: newer than the current
        # version, and each different from its predecessor.
        con.execute(
            f"""CREATE OR REPLACE TABLE ev AS
            WITH s AS (
                SELECT s.*, c.__hw_h, c.__hw_cvf FROM src s LEFT JOIN cur c ON {key_match(keys, "s", "c")}
                WHERE c.__hw_cvf IS NULL OR s.{VALID_FROM} > c.__hw_cvf
                QUALIFY row_number() OVER (PARTITION BY {cols(keys, "s")}, s.{VALID_FROM} ORDER BY s.{ARRIVAL} DESC) = 1
            ), seq AS (
                SELECT *, lag({HASH}) OVER w AS __hw_prev_hash, lag({DELETE}) OVER w AS __hw_prev_del,
                       row_number() OVER w AS __hw_n
                FROM s WINDOW w AS (PARTITION BY {k} ORDER BY {VALID_FROM}, {ARRIVAL})
            ), based AS (
                SELECT *, CASE WHEN __hw_n = 1 THEN __hw_h WHEN __hw_prev_del THEN NULL
                               ELSE __hw_prev_hash END AS __hw_base
                FROM seq
            )
            SELECT * FROM based
            WHERE ({DELETE} AND __hw_base IS NOT NULL) OR (NOT {DELETE} AND {HASH} IS DISTINCT FROM __hw_base)"""
        )
        con.execute(
            f"CREATE OR REPLACE TABLE apply_keys AS SELECT {k}, min({VALID_FROM}) AS __hw_close_at "
            f"FROM ev WHERE __hw_h IS NOT NULL GROUP BY {k}"
        )
        con.execute(f"CREATE OR REPLACE VIEW to_insert AS {self.inserts(ctx)}")

    def skipped(self, ctx: WriteContext) -> int:
        return int(scalar(ctx.con, "SELECT (SELECT count(*) FROM src) - (SELECT count(*) FROM ev)"))

    def inserts(self, ctx: WriteContext) -> str:
        o, keys = ctx.options, ctx.options.keys
        out = []
        for column in ctx.schema.names:
            if column == o.valid_from:
                out.append(f"e.{VALID_FROM} AS {q(column)}")
            elif column == o.valid_to:
                out.append(f"e.__hw_next AS {q(column)}")
            elif column == o.is_current:
                out.append(f"(e.__hw_next IS NULL) AS {q(column)}")
            elif column == o.row_hash:
                out.append(f"e.{HASH} AS {q(column)}")
            else:
                out.append(f"e.{q(column)}")
        return (
            f"SELECT {', '.join(out)} FROM (SELECT *, lead({VALID_FROM}) OVER "
            f"(PARTITION BY {cols(keys)} ORDER BY {VALID_FROM}, {ARRIVAL}) AS __hw_next FROM ev) e WHERE NOT e.{DELETE}"
        )

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        o, keys = ctx.options, ctx.options.keys
        closed = []
        for column in ctx.schema.names:
            if column == o.valid_to:
                closed.append(f"a.__hw_close_at AS {q(column)}")
            elif column == o.is_current:
                closed.append(f"FALSE AS {q(column)}")
            else:
                closed.append(f"o.{q(column)}")
        join = f"FROM old o JOIN apply_keys a ON {key_match(keys, 'o', 'a')}"
        replacement = f"SELECT {', '.join(closed)} {join}"
        changes = (
            f"SELECT {cols(ctx.schema.names, 'o')}, 'update_preimage' AS _change_type {join} "
            f"UNION ALL SELECT {', '.join(closed)}, 'update_postimage' AS _change_type {join}"
        )
        return replacement, changes
