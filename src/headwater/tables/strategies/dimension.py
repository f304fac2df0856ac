"""dimension: a dimension table with an SCD type chosen per attribute.

    table("gold.dim_customer", inputs=["silver.customers"], keys=["customer_id"],
          strategy=dimension(scd={"birth_date": 0, "name": 1, "segment": 2,
                                  "city": 3, "country": 6},
                             surrogate_key="customer_key"))

Each key has versions (`valid_from`, `valid_to`, `is_current`, as in scd2). The
types say what a change of an attribute does:

- 0: nothing: the first value is kept (a NULL is "not known yet" and is filled
  once). With `on_type0_change="error"` a change fails the run instead.
- 1: overwritten on every version of the key.
- 2: a new version (the current one is closed at the run's timestamp).
- 3: overwritten on every version, the value it replaces kept in `previous_<col>`.
- 6: a new version (as 2), and `current_<col>` holds the latest value on every
  version of the key.

Types 0, 1, 3 and the `current_` columns are key-level: equal on all versions.
Unlisted attributes take `default` (1), or 2 when they are in `tracked_columns`.

`row_hash` hashes the type 2/6 attributes (NULL-safe). Validity comes from the
run's timestamp, constant for the run: several changes of a key within one run
(several chunks) update the version that run opened rather than leaving
zero-length versions. A delete from a change feed closes the current version.

The surrogate key is the deterministic key of the business keys
(headwater.transform.dimensional), equal on every version and to what a fact
computes from the same natural key; `version_key` optionally adds a per-version
key (business keys + valid_from).

Inferred members: rows carrying the control column `_inferred` = TRUE are
placeholders (see `with_inferred_members`). One is inserted only when its key is
absent (`is_inferred` = TRUE) and never touches an existing row; the real row
later overwrites the placeholder in place, every attribute type included, so
its surrogate and version keys stay.

Idempotent: a replayed increment finds nothing different and rewrites no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from ..._sql import canonical_hash, cols, key_match, q, scalar
from ...errors import ConfigError, DataError
from ..delta_types import to_delta_type
from ._keyed import ARRIVAL, DELETE, KeyedStrategy, incoming_types
from .base import CHANGE_COLUMNS, RUN_TS, StagedWrite, WriteContext, WriteOptions

INFERRED = "_inferred"  # the control column of placeholder rows (dimensional.INFERRED)
SCD_TYPES = (0, 1, 2, 3, 6)
HASH = "__hw_hash"
SK = "__hw_sk"
INF = "__hw_inf"
FOUND = "__hw_found"


@dataclass(frozen=True)
class DimensionConfig:
    """How a dimension table treats its attributes (see the module docstring)."""

    scd: tuple[tuple[str, int], ...] = ()
    default: int = 1
    surrogate_key: str | None = "surrogate_key"
    version_key: str | None = None
    on_type0_change: Literal["keep", "error"] = "keep"
    previous_prefix: str = "previous_"
    current_prefix: str = "current_"
    is_inferred: str = "is_inferred"

    def previous(self, column: str) -> str:
        return self.previous_prefix + column

    def current(self, column: str) -> str:
        return self.current_prefix + column

    def describe(self) -> str:
        """Stable text naming the configuration (the registered strategy's name)."""
        parts = [f"{c}={t}" for c, t in sorted(self.scd)]
        defaults = DimensionConfig()
        for option in (
            "default",
            "surrogate_key",
            "version_key",
            "on_type0_change",
            "previous_prefix",
            "current_prefix",
            "is_inferred",
        ):
            value = getattr(self, option)
            if value != getattr(defaults, option):
                parts.append(f"{option}={value}")
        return f"dimension({','.join(parts)})" if parts else "dimension"


@dataclass(frozen=True)
class _Layout:
    """The roles of a dimension table's columns."""

    keys: tuple[str, ...]
    types: dict[str, int]  # data column -> SCD type
    key_level: list[str]  # stored columns equal on every version, in table order
    version_level: list[str]  # type 2 and 6 attributes

    def of_type(self, *types: int) -> list[str]:
        return [c for c, t in self.types.items() if t in types]


class Dimension(KeyedStrategy):
    name = "dimension"
    summary = "SCD type per attribute (0/1/2/3/6), surrogate keys, inferred members"
    operation = "MERGE"

    def __init__(self, config: DimensionConfig | None = None) -> None:
        self.config = config or DimensionConfig()

    # -- declaration ---------------------------------------------------------------
    def check(self, table: str, options: WriteOptions) -> None:
        super().check(table, options)
        cfg = self.config
        listed = {c for c, _ in cfg.scd}
        in_keys = sorted(listed & set(options.keys))
        if in_keys:
            raise ConfigError(
                f"table {table}: key column(s) {in_keys} cannot have an SCD type",
                "keys identify the member; list only attributes in scd={...}",
            )
        if options.valid_from_column:
            raise ConfigError(
                f"table {table}: strategy 'dimension' takes validity from the run's timestamp",
                "drop valid_from_column, or use strategy='scd2' for event-time validity",
            )
        if options.deletes != "hard":
            raise ConfigError(
                f"table {table}: strategy 'dimension' closes the current version on a delete",
                "drop deletes='soft'",
            )
        check_key_partitions(table, "dimension", options)
        for column, kind in cfg.scd:
            if (
                options.tracked_columns is not None
                and column in options.tracked_columns
                and kind != 2
            ):
                raise ConfigError(
                    f"table {table}: column {column!r} is SCD type {kind} but also in tracked_columns",
                    "tracked_columns lists type 2 attributes; keep it in one place",
                )
        names = [
            options.valid_from,
            options.valid_to,
            options.is_current,
            options.row_hash,
            cfg.is_inferred,
            *[n for n in (cfg.surrogate_key, cfg.version_key) if n],
            *[cfg.previous(c) for c, t in cfg.scd if t == 3],
            *[cfg.current(c) for c, t in cfg.scd if t == 6],
        ]
        clashes = sorted({n for n in names if names.count(n) > 1} | (set(names) & listed))
        if clashes:
            raise ConfigError(
                f"table {table}: dimension column names collide: {clashes}",
                "rename the managed columns (scd2_columns=..., surrogate_key=..., prefixes)",
            )

    def managed_columns(self, options: WriteOptions, data_schema: pa.Schema) -> list[pa.Field]:
        cfg, ts = self.config, pa.timestamp("us", "UTC")
        fields = [pa.field(n, pa.string()) for n in (cfg.surrogate_key, cfg.version_key) if n]
        # Columns the data lacks are reported, naming the table, when the increment is staged.
        present = set(data_schema.names)
        for column, kind in cfg.scd:
            if kind in (3, 6) and column in present:
                name = cfg.previous(column) if kind == 3 else cfg.current(column)
                fields.append(pa.field(name, to_delta_type(data_schema.field(column).type)))
        return [
            *fields,
            pa.field(options.valid_from, ts),
            pa.field(options.valid_to, ts),
            pa.field(options.is_current, pa.bool_()),
            pa.field(cfg.is_inferred, pa.bool_()),
            pa.field(options.row_hash, pa.string()),
        ]

    def control_columns(self, options: WriteOptions) -> set[str]:
        return {*CHANGE_COLUMNS, INFERRED}

    # -- the table's layout ----------------------------------------------------------
    def _layout(self, ctx: WriteContext) -> _Layout:
        cfg, opts = self.config, ctx.options
        managed = {f.name for f in self.managed_columns(opts, ctx.schema)}
        explicit = dict(cfg.scd)
        tracked = set(opts.tracked_columns or ())
        types: dict[str, int] = {}
        for column in ctx.schema.names:
            if column in managed or column in opts.keys:
                continue
            if column in explicit:
                types[column] = explicit[column]
            elif column in tracked and column not in (opts.order_by, opts.version_column):
                types[column] = 2
            else:
                types[column] = cfg.default
        derived = {cfg.previous(c) for c, t in types.items() if t == 3} | {
            cfg.current(c) for c, t in types.items() if t == 6
        }
        key_level = [c for c in ctx.schema.names if types.get(c) in (0, 1, 3) or c in derived]
        version_level = [c for c in ctx.schema.names if types.get(c) in (2, 6)]
        return _Layout(tuple(opts.keys), types, key_level, version_level)

    def _new_key_level(self, ctx: WriteContext, layout: _Layout) -> dict[str, str]:
        """SQL over `s` (src) and `c` (the key's latest version, NULL when new):
        the value of each key-level column after the row is applied."""
        cfg = self.config
        found, inferred = f"c.{FOUND}", f"coalesce(c.{q(cfg.is_inferred)}, FALSE)"
        out: dict[str, str] = {}
        for column, kind in layout.types.items():
            col = q(column)
            if kind == 0:
                out[column] = (
                    f"CASE WHEN {found} IS NULL OR {inferred} OR c.{col} IS NULL "
                    f"THEN s.{col} ELSE c.{col} END"
                )
            elif kind in (1, 3):
                out[column] = f"s.{col}"
            if kind == 3:
                prev = q(cfg.previous(column))
                out[cfg.previous(column)] = (
                    f"CASE WHEN {found} AND NOT {inferred} AND s.{col} IS DISTINCT FROM c.{col} "
                    f"THEN c.{col} ELSE c.{prev} END"
                )
            if kind == 6:
                out[cfg.current(column)] = f"s.{col}"
        return out

    # -- hooks -------------------------------------------------------------------------
    def validate_increment(self, ctx: WriteContext, columns: list[str]) -> None:
        for column, kind in self.config.scd:
            if column not in ctx.schema.names:
                raise DataError(
                    f"table {ctx.table}: dimension attribute {column!r} (SCD type {kind}) is not in the data",
                    "select it in the transform, or remove it from scd={...}",
                )

    def source_columns(self, ctx: WriteContext, columns: list[str]) -> dict[str, str]:
        from ...transform.dimensional import key_columns_expression

        layout = self._layout(ctx)
        return {
            HASH: canonical_hash(layout.version_level, incoming_types(ctx), "i"),
            SK: key_columns_expression(list(ctx.options.keys), "i"),
            INF: f"coalesce(i.{q(INFERRED)}, FALSE)" if INFERRED in columns else "FALSE",
        }

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        opts, layout = ctx.options, self._layout(ctx)
        wanted = [
            opts.valid_from,
            opts.is_current,
            self.config.is_inferred,
            opts.row_hash,
            *layout.key_level,
        ]
        if opts.version_column and opts.version_column not in wanted:
            wanted.append(opts.version_column)
        return wanted

    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        if INFERRED in data.schema.names:
            data = self._settle_placeholders(ctx, data.read_all())
        staged = super().stage(ctx, data)
        counts = ctx.con.execute(
            f"SELECT count(*) FILTER (WHERE __hw_insert AND {INF}), "
            f"count(*) FILTER (WHERE __hw_applies AND __hw_cinf AND NOT {DELETE}), "
            "count(*) FILTER (WHERE __hw_applies AND __hw_newver), "
            "count(*) FILTER (WHERE __hw_type0) FROM dec"
        ).fetchall()[0]
        for metric, n in zip(
            ("inferred_inserted", "inferred_filled", "versions_added", "type0_kept"),
            counts,
            strict=True,
        ):
            if n:
                staged.metrics[metric] += int(n)
        return staged

    def _settle_placeholders(self, ctx: WriteContext, table: pa.Table) -> pa.RecordBatchReader:
        """Drop placeholders whose key has a real row in the increment; one per key."""
        keys = list(ctx.options.keys)
        if any(k not in table.schema.names for k in keys):
            # The missing key is reported, naming the table, when the increment is prepared.
            return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
        flag = pc.fill_null(table.column(INFERRED), False)
        indexed = table.select(keys).append_column(INFERRED, flag)
        indexed = indexed.append_column(ARRIVAL, pa.array(range(table.num_rows), pa.int64()))
        ctx.con.register("settle", indexed)
        try:
            drop = ctx.con.sql(
                f"SELECT p.{ARRIVAL} FROM settle p WHERE p.{q(INFERRED)} AND ("
                f"EXISTS (SELECT 1 FROM settle r WHERE NOT r.{q(INFERRED)} AND {key_match(keys, 'r', 'p')}) "
                f"OR p.{ARRIVAL} <> (SELECT min(x.{ARRIVAL}) FROM settle x "
                f"WHERE x.{q(INFERRED)} AND {key_match(keys, 'x', 'p')}))"
            ).to_arrow_table()
        finally:
            ctx.con.unregister("settle")
        if drop.num_rows:
            keep = pc.invert(pc.is_in(indexed.column(ARRIVAL), value_set=drop.column(0)))
            table = table.filter(keep)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    def plan(self, ctx: WriteContext) -> None:
        con, opts, cfg = ctx.con, ctx.options, self.config
        layout = self._layout(ctx)
        keys = layout.keys
        vf, ic = q(opts.valid_from), q(opts.is_current)
        con.execute(
            f"CREATE OR REPLACE TABLE cur AS SELECT *, TRUE AS {FOUND} FROM located "
            f"QUALIFY row_number() OVER (PARTITION BY {cols(keys)} "
            f"ORDER BY {vf} DESC NULLS LAST, coalesce({ic}, FALSE) DESC) = 1"
        )
        new_values = self._new_key_level(ctx, layout)
        guard = "TRUE"
        if opts.version_column:
            g = q(opts.version_column)
            guard = (
                f"(c.{g} IS NULL OR (s.{g} IS NOT NULL AND "
                f"(s.{g} > c.{g} OR (s.{DELETE} AND s.{g} >= c.{g}))))"
            )
        type0 = [
            f"(c.{q(c)} IS NOT NULL AND s.{q(c)} IS DISTINCT FROM c.{q(c)})"
            for c in layout.of_type(0)
        ]
        kvals = ", ".join(
            f"{new_values[c]} AS {q(f'__hw_k{i}')}, c.{q(c)} AS {q(f'__hw_c{i}')}"
            for i, c in enumerate(layout.key_level)
        )
        kchanged = (
            " OR ".join(
                f"{q(f'__hw_k{i}')} IS DISTINCT FROM {q(f'__hw_c{i}')}"
                for i in range(len(layout.key_level))
            )
            or "FALSE"
        )
        con.execute(
            f"""CREATE OR REPLACE TABLE dec AS
            WITH j AS (
                SELECT s.*, coalesce(c.{FOUND}, FALSE) AS __hw_found_,
                       coalesce(c.{q(cfg.is_inferred)}, FALSE) AS __hw_cinf,
                       coalesce(c.{ic}, FALSE) AS __hw_open,
                       c.{vf} AS __hw_cvf, c.{q(opts.row_hash)} AS __hw_chash,
                       {guard} AS __hw_guard,
                       ({" OR ".join(type0) or "FALSE"}) AS __hw_t0any
                       {", " + kvals if kvals else ""}
                FROM src s LEFT JOIN cur c ON {key_match(keys, "s", "c")}
            ), f AS (
                SELECT *, (__hw_open AND (__hw_cinf OR __hw_cvf = {RUN_TS})) AS __hw_inplace,
                       ({HASH} IS DISTINCT FROM __hw_chash) AS __hw_vchanged,
                       ({kchanged}) AS __hw_kchanged
                FROM j
            ), g AS (
                SELECT *,
                       (__hw_found_ AND NOT {DELETE}
                        AND (NOT __hw_open OR (__hw_vchanged AND NOT __hw_inplace))) AS __hw_newver,
                       (__hw_found_ AND NOT {DELETE} AND __hw_inplace
                        AND (__hw_vchanged OR __hw_cinf)) AS __hw_overwrite
                FROM f
            )
            SELECT *,
                   (__hw_open AND ({DELETE} OR __hw_newver)) AS __hw_close,
                   (__hw_found_ AND NOT {INF} AND __hw_guard AND (
                        (NOT {DELETE} AND __hw_kchanged) OR __hw_newver OR __hw_overwrite
                        OR ({DELETE} AND __hw_open))) AS __hw_applies,
                   (NOT __hw_found_ AND NOT {DELETE}) AS __hw_insert,
                   (__hw_found_ AND NOT {INF} AND __hw_guard AND NOT {DELETE} AND NOT __hw_cinf
                    AND __hw_t0any) AS __hw_type0
            FROM g"""
        )
        if cfg.on_type0_change == "error":
            self._reject_type0_changes(ctx, layout)
        con.execute("CREATE OR REPLACE TABLE apply_keys AS SELECT * FROM dec WHERE __hw_applies")
        con.execute(f"CREATE OR REPLACE VIEW to_insert AS {self.inserts(ctx)}")

    def _reject_type0_changes(self, ctx: WriteContext, layout: _Layout) -> None:
        con, keys = ctx.con, layout.keys
        for column in layout.of_type(0):
            i = layout.key_level.index(column)
            col, old = q(column), q(f"__hw_c{i}")
            where = f"__hw_type0 AND {old} IS NOT NULL AND {col} IS DISTINCT FROM {old}"
            n = int(scalar(con, f"SELECT count(*) FROM dec WHERE {where}"))
            if not n:
                continue
            example = con.execute(
                f"SELECT {cols(keys)}, {old}, {col} FROM dec WHERE {where} ORDER BY ALL LIMIT 1"
            ).fetchall()[0]
            key = ", ".join(f"{k}={v!r}" for k, v in zip(keys, example, strict=False))
            raise DataError(
                f"table {ctx.table}: {n} row(s) change SCD type 0 attribute {column!r} "
                f"(e.g. {key}: {example[-2]!r} -> {example[-1]!r})",
                "type 0 attributes keep their first value: correct the source, "
                "or declare the attribute type 1, or on_type0_change='keep'",
            )

    def skipped(self, ctx: WriteContext) -> int:
        """Rows older than the stored version (version_column) or placeholders of known keys."""
        return int(
            scalar(
                ctx.con,
                f"SELECT count(*) FROM dec WHERE __hw_found_ AND (NOT __hw_guard OR {INF})",
            )
        )

    def inserts(self, ctx: WriteContext) -> str:
        from ...transform.dimensional import key_expression

        opts, cfg, layout = ctx.options, self.config, self._layout(ctx)
        key_level = {c: i for i, c in enumerate(layout.key_level)}
        out = []
        for column in ctx.schema.names:
            name = q(column)
            if column in key_level:
                out.append(f"d.{q(f'__hw_k{key_level[column]}')} AS {name}")
            elif column == cfg.surrogate_key:
                out.append(f"d.{SK} AS {name}")
            elif column == cfg.version_key:
                parts = [f"d.{q(k)}" for k in opts.keys] + [RUN_TS]
                out.append(f"{key_expression(parts)} AS {name}")
            elif column == opts.valid_from:
                out.append(f"{RUN_TS} AS {name}")
            elif column == opts.valid_to:
                out.append(f"CAST(NULL AS TIMESTAMPTZ) AS {name}")
            elif column == opts.is_current:
                out.append(f"TRUE AS {name}")
            elif column == cfg.is_inferred:
                out.append(f"(d.__hw_insert AND d.{INF}) AS {name}")
            elif column == opts.row_hash:
                out.append(f"d.{HASH} AS {name}")
            else:
                out.append(f"d.{name}")
        return (
            f"SELECT {', '.join(out)} FROM dec d "
            f"WHERE d.__hw_insert OR (d.__hw_applies AND d.__hw_newver)"
        )

    def _replaced(self, ctx: WriteContext) -> list[tuple[str, str]]:
        """(column, SQL over `o` (a touched row) and `a` (its key's decision)) for each column."""
        opts, cfg, layout = ctx.options, self.config, self._layout(ctx)
        key_level = {c: i for i, c in enumerate(layout.key_level)}
        is_open = f"coalesce(o.{q(opts.is_current)}, FALSE)"
        overwrite = f"{is_open} AND a.__hw_overwrite"
        close = f"{is_open} AND a.__hw_close"
        out = []
        for column in ctx.schema.names:
            name = q(column)
            if column in key_level:
                # A delete only closes the version; its row image changes no attribute.
                new = q(f"__hw_k{key_level[column]}")
                expr = f"CASE WHEN a.{DELETE} THEN o.{name} ELSE a.{new} END"
            elif column in layout.version_level:
                expr = f"CASE WHEN {overwrite} THEN a.{name} ELSE o.{name} END"
            elif column == opts.valid_to:
                expr = f"CASE WHEN {close} THEN {RUN_TS} ELSE o.{name} END"
            elif column == opts.is_current:
                expr = f"CASE WHEN {close} THEN FALSE ELSE o.{name} END"
            elif column == cfg.is_inferred:
                expr = f"CASE WHEN {overwrite} THEN FALSE ELSE o.{name} END"
            elif column == opts.row_hash:
                expr = f"CASE WHEN {overwrite} THEN a.{HASH} ELSE o.{name} END"
            else:  # keys, surrogate keys, valid_from
                expr = f"o.{name}"
            out.append((column, expr))
        return out

    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        replaced = self._replaced(ctx)
        new = ", ".join(f"{expr} AS {q(column)}" for column, expr in replaced)
        changed = " OR ".join(
            f"({expr}) IS DISTINCT FROM o.{q(column)}" for column, expr in replaced
        )
        join = f"FROM old o JOIN apply_keys a ON {key_match(ctx.options.keys, 'o', 'a')}"
        replacement = f"SELECT {new} {join}"
        changes = (
            f"SELECT {cols(ctx.schema.names, 'o')}, 'update_preimage' AS _change_type {join} WHERE {changed} "
            f"UNION ALL SELECT {new}, 'update_postimage' AS _change_type {join} WHERE {changed}"
        )
        return replacement, changes


def check_key_partitions(table: str, strategy: str, options: WriteOptions) -> None:
    """Only key columns may partition: attributes change on rows already written, and a
    touched file is rewritten in place, so a row cannot move to another partition."""
    outside = [c for c in options.partition_by if c not in options.keys]
    if outside:
        raise ConfigError(
            f"table {table}: strategy {strategy!r} can be partitioned by key columns only, not {outside}",
            "partition by a key column, or drop partition_by",
        )


def dimension(
    scd: dict[str, int] | None = None,
    *,
    default: int = 1,
    surrogate_key: str | None = "surrogate_key",
    version_key: str | None = None,
    on_type0_change: Literal["keep", "error"] = "keep",
    previous_prefix: str = "previous_",
    current_prefix: str = "current_",
    is_inferred: str = "is_inferred",
) -> Dimension:
    """The `dimension` strategy with these options, for `table(..., strategy=dimension(...))`.

    `scd` maps attributes to their SCD type (0, 1, 2, 3 or 6); unlisted ones
    take `default` (0, 1 or 2).
    """
    types = dict(scd or {})
    bad = {c: t for c, t in types.items() if t not in SCD_TYPES}
    if bad:
        raise ConfigError(
            f"dimension: unknown SCD type(s) {bad}", "choose 0, 1, 2, 3 or 6 for each attribute"
        )
    if default not in (0, 1, 2):
        raise ConfigError(
            f"dimension: default SCD type must be 0, 1 or 2, not {default!r}",
            "types 3 and 6 add columns: list those attributes in scd={...}",
        )
    if on_type0_change not in ("keep", "error"):
        raise ConfigError("dimension: on_type0_change must be 'keep' or 'error'")
    config = DimensionConfig(
        tuple(sorted(types.items())),
        default,
        surrogate_key,
        version_key,
        on_type0_change,
        previous_prefix,
        current_prefix,
        is_inferred,
    )
    return Dimension(config)


__all__ = ["Dimension", "DimensionConfig", "dimension"]
