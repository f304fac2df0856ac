"""accumulate: an accumulating-snapshot fact, one row per process instance.

    table("gold.order_lifecycle", inputs=["silver.order_events"], keys=["order_id"],
          strategy=accumulate(milestones=["ordered_at", "paid_at", "shipped_at",
                                          "delivered_at"]))

Events of a process (an order: placed, paid, shipped, delivered) arrive as rows
that carry the key and whichever columns that event knows, the others NULL.
They are folded into the key's one row:

- a milestone keeps its earliest value (`keep="last"`: its latest): a later
  event never erases one already set, and min/max do not depend on arrival
  order, so out-of-order or replayed events end with the same row;
- any other column takes the newest non-NULL value, newest by `version_column`
  (or `order_by`, or a change feed's commit order, or arrival); an event older
  than the stored row only fills columns that are still NULL. The version
  column itself keeps its greatest value.

Several events of one key in one increment are folded together first. A delete
from a change feed removes the row; events after it in the same increment start
it afresh. Plain `strategy="accumulate"` takes `tracked_columns` as milestones,
or else every date and timestamp column.

Idempotent: folding the same events in again changes nothing and rewrites no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from ..._sql import cols, key_match, q
from ...errors import ConfigError
from ._keyed import ARRIVAL, DELETE, KeyedStrategy
from .base import COMMIT_VERSION, WriteContext, WriteOptions
from .dimension import check_key_partitions

FOUND = "__hw_found"


@dataclass(frozen=True)
class AccumulateConfig:
    milestones: tuple[str, ...] | None = None
    keep: Literal["first", "last"] = "first"

    def describe(self) -> str:
        parts = []
        if self.milestones is not None:
            parts.append("milestones=" + "|".join(self.milestones))
        if self.keep != "first":
            parts.append(f"keep={self.keep}")
        return f"accumulate({','.join(parts)})" if parts else "accumulate"


class Accumulate(KeyedStrategy):
    name = "accumulate"
    summary = "accumulating snapshot: milestones filled as events arrive, never erased"
    operation = "MERGE"
    duplicates = "keep"  # several events of a key in one increment are folded, not collapsed

    def __init__(self, config: AccumulateConfig | None = None) -> None:
        self.config = config or AccumulateConfig()

    def check(self, table: str, options: WriteOptions) -> None:
        super().check(table, options)
        milestones = self.config.milestones or ()
        clash = sorted(set(milestones) & {*options.keys, options.version_column, options.order_by})
        if clash:
            raise ConfigError(
                f"table {table}: {clash} cannot be a milestone (a key or the ordering column)",
                "milestones are the process's date/time columns, e.g. paid_at",
            )
        if options.deletes != "hard":
            raise ConfigError(
                f"table {table}: strategy 'accumulate' removes the row on a delete",
                "drop deletes='soft'",
            )
        check_key_partitions(table, "accumulate", options)

    # -- roles of columns ----------------------------------------------------------
    def _order(self, ctx: WriteContext) -> str | None:
        """The stored column that orders events (None: arrival / commit order)."""
        column = ctx.options.version_column or ctx.options.order_by
        return column if column in ctx.schema.names else None

    def _milestones(self, ctx: WriteContext) -> list[str]:
        opts = ctx.options
        declared = self.config.milestones
        if declared is None and opts.tracked_columns is not None:
            declared = tuple(opts.tracked_columns)
        if declared is not None:
            return list(declared)
        skip = {*opts.keys, opts.version_column, opts.order_by}
        return [
            f.name
            for f in ctx.schema
            if f.name not in skip and (pa.types.is_timestamp(f.type) or pa.types.is_date(f.type))
        ]

    def _data_columns(self, ctx: WriteContext) -> list[str]:
        return [c for c in ctx.schema.names if c not in ctx.options.keys]

    # -- hooks -------------------------------------------------------------------------
    def validate_increment(self, ctx: WriteContext, columns: list[str]) -> None:
        missing = [c for c in self._milestones(ctx) if c not in ctx.schema.names]
        if missing:
            raise ConfigError(
                f"table {ctx.table}: milestone column(s) {missing} are not in the data",
                "select them in the transform (NULL where an event does not set them)",
            )

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        return self._data_columns(ctx)

    def plan(self, ctx: WriteContext) -> None:
        con, keys = ctx.con, ctx.options.keys
        milestones = set(self._milestones(ctx))
        order = self._order(ctx)
        data = self._data_columns(ctx)
        src_columns = [r[0] for r in con.execute("DESCRIBE src").fetchall()]
        # Events oldest first: by the ordering column, then commit order, then arrival.
        ordering = [q(c) + " NULLS FIRST" for c in (order,) if c]
        if COMMIT_VERSION in src_columns:
            ordering.append(f"{q(COMMIT_VERSION)} NULLS FIRST")
        ordering.append(ARRIVAL)
        fold = "min" if self.config.keep == "first" else "max"
        folded = []
        for column in data:
            c = q(column)
            if column in milestones:
                folded.append(f"{fold}({c}) FILTER (WHERE __hw_live) AS {c}")
            elif column == order:
                folded.append(f"max({c}) FILTER (WHERE __hw_live) AS {c}")
            else:
                folded.append(
                    f"last({c} ORDER BY {', '.join(ordering)}) "
                    f"FILTER (WHERE __hw_live AND {c} IS NOT NULL) AS {c}"
                )
        # The increment's events per key: those after the key's last delete, folded.
        con.execute(
            f"""CREATE OR REPLACE TABLE acc AS
            WITH marked AS (
                SELECT *, max(CASE WHEN {DELETE} THEN {ARRIVAL} END)
                          OVER (PARTITION BY {cols(keys)}) AS __hw_last_delete
                FROM src
            ), live AS (
                SELECT *, (NOT {DELETE} AND (__hw_last_delete IS NULL
                           OR {ARRIVAL} > __hw_last_delete)) AS __hw_live
                FROM marked
            )
            SELECT {cols(keys)}, bool_or(__hw_last_delete IS NOT NULL) AS __hw_reset,
                   count(*) FILTER (WHERE __hw_live) AS __hw_events
                   {"".join(", " + f for f in folded)}
            FROM live GROUP BY ALL"""
        )
        # Newer: the folded events are at least as new as the stored row.
        newer = "TRUE"
        if order:
            o = q(order)
            newer = f"(t.{o} IS NULL OR a.{o} IS NULL OR a.{o} >= t.{o})"
        merged = []
        for i, column in enumerate(data):
            c = q(column)
            if column in milestones:
                combine = "least" if self.config.keep == "first" else "greatest"
                value = f"{combine}(t.{c}, a.{c})"
            elif column == order:
                value = f"greatest(t.{c}, a.{c})"
            else:
                value = (
                    f"CASE WHEN {newer} THEN coalesce(a.{c}, t.{c}) ELSE coalesce(t.{c}, a.{c}) END"
                )
            merged.append(
                f"CASE WHEN a.__hw_reset THEN a.{c} ELSE {value} END AS {q(f'__hw_n{i}')}"
            )
        changed = " OR ".join(
            f"{q(f'__hw_n{i}')} IS DISTINCT FROM {q(f'__hw_t{i}')}" for i in range(len(data))
        )
        olds = "".join(f", t.{q(c)} AS {q(f'__hw_t{i}')}" for i, c in enumerate(data))
        con.execute(
            f"""CREATE OR REPLACE TABLE dec AS
            WITH j AS (
                SELECT {cols(keys, "a")}, a.__hw_reset, a.__hw_events,
                       coalesce(t.{FOUND}, FALSE) AS __hw_found_
                       {"".join(", " + m for m in merged)} {olds}
                FROM acc a LEFT JOIN (
                    SELECT *, TRUE AS {FOUND} FROM located
                    QUALIFY row_number() OVER (PARTITION BY {cols(keys)}) = 1
                ) t ON {key_match(keys, "a", "t")}
            )
            SELECT *, (__hw_reset AND __hw_events = 0) AS __hw_gone,
                   (__hw_found_ AND ((__hw_reset AND __hw_events = 0) OR {changed or "FALSE"})) AS __hw_applies
            FROM j"""
        )
        con.execute("CREATE OR REPLACE TABLE apply_keys AS SELECT * FROM dec WHERE __hw_applies")
        con.execute(f"CREATE OR REPLACE VIEW to_insert AS {self.inserts(ctx)}")

    def skipped(self, ctx: WriteContext) -> int:
        return 0  # events are folded in, never discarded as older

    def inserts(self, ctx: WriteContext) -> str:
        data = {c: i for i, c in enumerate(self._data_columns(ctx))}
        out = [
            f"d.{q(f'__hw_n{data[c]}')} AS {q(c)}" if c in data else f"d.{q(c)}"
            for c in ctx.schema.names
        ]
        return f"SELECT {', '.join(out)} FROM dec d WHERE NOT d.__hw_found_ AND d.__hw_events > 0"

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        data = {c: i for i, c in enumerate(self._data_columns(ctx))}
        names = ctx.schema.names
        new = ", ".join(
            f"a.{q(f'__hw_n{data[c]}')} AS {q(c)}" if c in data else f"o.{q(c)}" for c in names
        )
        changed = (
            " OR ".join(f"a.{q(f'__hw_n{i}')} IS DISTINCT FROM o.{q(c)}" for c, i in data.items())
            or "FALSE"
        )
        join = f"FROM old o JOIN apply_keys a ON {key_match(ctx.options.keys, 'o', 'a')}"
        replacement = f"SELECT {new} {join} WHERE NOT a.__hw_gone"
        changes = (
            f"SELECT {cols(names, 'o')}, 'update_preimage' AS _change_type {join} "
            f"WHERE NOT a.__hw_gone AND ({changed}) "
            f"UNION ALL SELECT {new}, 'update_postimage' AS _change_type {join} "
            f"WHERE NOT a.__hw_gone AND ({changed}) "
            f"UNION ALL SELECT {cols(names, 'o')}, 'delete' AS _change_type {join} WHERE a.__hw_gone"
        )
        return replacement, changes


def accumulate(
    milestones: list[str] | tuple[str, ...] | None = None,
    *,
    keep: Literal["first", "last"] = "first",
) -> Accumulate:
    """The `accumulate` strategy with these options, for `table(..., strategy=accumulate(...))`.

    `milestones`: the columns set once per process instance (default: every date
    and timestamp column); `keep`: which value of a milestone wins when events
    disagree, the earliest ("first") or the latest ("last").
    """
    if keep not in ("first", "last"):
        raise ConfigError(f"accumulate: keep must be 'first' or 'last', not {keep!r}")
    if milestones is not None and not milestones:
        raise ConfigError("accumulate: milestones=[] lists no column")
    config = AccumulateConfig(tuple(milestones) if milestones is not None else None, keep)
    return Accumulate(config)


__all__ = ["Accumulate", "AccumulateConfig", "accumulate"]
