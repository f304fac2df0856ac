"""The machinery shared by strategies that write by key.

Merge, SCD1, SCD2, CDC-apply, delete-insert and insert-if-absent all follow the
same plan, so that their cost grows with the increment rather than the table:

1. *prepare*: the increment becomes the view `src` (duplicate keys collapsed by
   order or rejected, NULL keys rejected, deletes flagged).
2. *prune*: candidate files are those whose partition values and key min/max
   statistics admit at least one incoming key.
3. *locate*: only the key columns (and what the guard needs) of candidate files
   are read, giving the exact set of target rows the increment touches.
4. *plan*: the strategy decides which keys change existing rows (`apply_keys`)
   and which rows are new (`to_insert`).
5. *rewrite*: each touched file is streamed once; untouched rows are copied, the
   touched ones are resolved by the strategy. A file whose rows turn out not to
   change is left alone, so replaying an increment rewrites nothing.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from typing import ClassVar, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..._sql import cols, key_match, q, scalar
from ...errors import DataError
from .base import (
    CHANGE_TYPE,
    COMMIT_VERSION,
    StagedWrite,
    WriteContext,
    WriteStrategy,
    remove_action,
    start_run_info,
)

ARRIVAL = "__hw_arrival"
DELETE = "__hw_delete"
FILE = "__hw_file"
MATCHED = "__hw_matched"


class KeyedStrategy(WriteStrategy):
    """Base for strategies that apply an increment to existing rows by key."""

    requires_keys = True
    operation: ClassVar[str] = "MERGE"
    # How duplicate keys within one increment are treated:
    # collapse: keep the row with the greatest order value (error without an order);
    # first: keep the earliest; keep: allow many rows per key.
    duplicates: ClassVar[Literal["collapse", "first", "keep"]] = "collapse"

    # -- hooks -------------------------------------------------------------
    def duplicate_mode(self, ctx: WriteContext) -> Literal["collapse", "first", "keep"]:
        return self.duplicates

    def order_columns(self, ctx: WriteContext, columns: list[str]) -> list[str]:
        """Columns that order rows of one key, oldest first."""
        if ctx.options.order_by:
            return [ctx.options.order_by]
        if ctx.options.version_column:
            return [ctx.options.version_column]
        if COMMIT_VERSION in columns:
            return [COMMIT_VERSION]
        return []

    def source_columns(self, ctx: WriteContext, columns: list[str]) -> dict[str, str]:
        """Extra computed columns of `src` (name -> SQL over the increment `i`)."""
        return {}

    def validate_increment(self, ctx: WriteContext, columns: list[str]) -> None:
        """Reject an increment the strategy cannot apply (checked before anything is written)."""

    def delete_expression(self, ctx: WriteContext, columns: list[str]) -> str:
        """SQL over the increment `i`: true when the row asks for deletion."""
        return (
            f"coalesce(i.{q(CHANGE_TYPE)} = 'delete', FALSE)" if CHANGE_TYPE in columns else "FALSE"
        )

    def keep_expression(self, ctx: WriteContext, columns: list[str]) -> str:
        """SQL over the increment `i`: rows to consider at all (pre-images are not)."""
        return (
            f"coalesce(i.{q(CHANGE_TYPE)} <> 'update_preimage', TRUE)"
            if CHANGE_TYPE in columns
            else "TRUE"
        )

    def locate_columns(self, ctx: WriteContext) -> list[str]:
        """Target columns read in the locate pass besides the keys."""
        return []

    def locate_filter(self, ctx: WriteContext) -> ds.Expression | None:
        return None

    def match_condition(self, ctx: WriteContext, alias: str) -> str:
        """SQL restricting which target rows of a key are touched (e.g. current versions)."""
        return "TRUE"

    def applies(self, ctx: WriteContext) -> str:
        """SQL over located target `t` and `src` `s`: does `s` change `t`?"""
        return "TRUE"

    def plan(self, ctx: WriteContext) -> None:
        """Create views `apply_keys` (keys whose rows change) and `to_insert` (table columns)."""
        con, keys = ctx.con, ctx.options.keys
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE pairs AS SELECT {cols(keys, 's')}, ({self.applies(ctx)}) AS __hw_applies "
            f"FROM located t JOIN src s ON {key_match(keys, 't', 's')}"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW apply_keys AS SELECT DISTINCT {cols(keys)} FROM pairs WHERE __hw_applies"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW fresh AS SELECT s.* FROM src s "
            f"WHERE NOT EXISTS (SELECT 1 FROM located t WHERE {key_match(keys, 't', 's')})"
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW to_insert AS {self.inserts(ctx)}")

    def skipped(self, ctx: WriteContext) -> int:
        """Increment rows ignored because the target already holds newer data."""
        return int(scalar(ctx.con, "SELECT count(*) FROM pairs WHERE NOT __hw_applies"))

    @abstractmethod
    def inserts(self, ctx: WriteContext) -> str:
        """SELECT of the rows to insert (table columns, in order), usually over `fresh`."""

    @abstractmethod
    def resolve(self, ctx: WriteContext) -> tuple[str, str]:
        """SELECTs over `old` (touched target rows) and `src`: (replacement rows, change rows).

        Change rows carry the table columns plus `_change_type`; a file whose
        resolution yields no change rows other than pre-images is left untouched.
        """

    # -- shared steps ------------------------------------------------------
    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        con = ctx.con
        incoming = data.read_all()
        incoming = incoming.append_column(ARRIVAL, pa.array(range(incoming.num_rows), pa.int64()))
        con.register("incoming", incoming)
        start_run_info(ctx)
        try:
            staged = self._stage(ctx, incoming)
        finally:
            for name in ("incoming", "located", "old"):
                with contextlib.suppress(Exception):  # a view that was never registered
                    con.unregister(name)
        return staged

    def _stage(self, ctx: WriteContext, incoming: pa.Table) -> StagedWrite:
        con, keys = ctx.con, ctx.options.keys
        columns = incoming.schema.names
        self.validate_increment(ctx, columns)
        self._check_null_keys(ctx, incoming)
        self._prepare_source(ctx, columns)
        staged = StagedWrite(self.operation)
        # Rows considered (a change feed's pre-images are not).
        considered = "src" if self.duplicate_mode(ctx) == "keep" else "src_all"
        staged.metrics["rows_in"] += int(scalar(con, f"SELECT count(*) FROM {considered}"))

        files = self._candidate_files(ctx)
        located = self._locate(ctx, files)
        con.register("located", located)
        self.plan(ctx)
        staged.metrics["skipped_older"] += self.skipped(ctx)

        touched = [
            r[0]
            for r in con.sql(
                f"SELECT DISTINCT t.{q(FILE)} FROM located t JOIN apply_keys a ON {key_match(keys, 't', 'a')} "
                f"AND {self.match_condition(ctx, 't')} ORDER BY 1"
            ).fetchall()
        ]
        changes: list[pa.Table] = []
        by_path = {unquote(p): p for p in ctx.live_files().column("path").to_pylist()}
        live = {r["path"]: r for r in ctx.live_files().to_pylist()} if touched else {}
        for relative in touched:
            logged = by_path[relative]
            replaced = self._rewrite_file(ctx, logged, staged, changes)
            if replaced:
                staged.removes.append(remove_action(live[logged]))

        insert_writer = ctx.new_writer()
        inserted = con.sql("SELECT * FROM to_insert").to_arrow_reader(1 << 17)
        for batch in inserted:
            insert_writer.write(batch)
            staged.metrics["inserted"] += batch.num_rows
            if staged.removes:
                changes.append(_with_change_type(pa.Table.from_batches([batch]), "insert"))
        insert_adds = insert_writer.close()
        staged.adds += insert_adds
        if staged.removes and changes and ctx.record_changes:
            change_writer = ctx.change_writer()
            for table in changes:
                change_writer.write(table)
            change_writer.close()
            staged.change_files += change_writer.paths_written
        return staged

    def _check_null_keys(self, ctx: WriteContext, incoming: pa.Table) -> None:
        for key in ctx.options.keys:
            if key not in incoming.schema.names:
                raise DataError(
                    f"table {ctx.table}: key column {key!r} is missing from the increment",
                    "select it in the transform",
                )
            nulls = incoming.column(key).null_count
            if nulls:
                raise DataError(
                    f"table {ctx.table}: {nulls} row(s) have NULL in key column {key!r}",
                    "filter or fill them in the transform; a row without a key cannot be matched",
                )

    def _prepare_source(self, ctx: WriteContext, columns: list[str]) -> None:
        con, keys = ctx.con, ctx.options.keys
        order = self.order_columns(ctx, columns)
        for column in order:
            if column not in columns:
                raise DataError(
                    f"table {ctx.table}: order column {column!r} is missing from the increment",
                    "select it in the transform",
                )
        extra = self.source_columns(ctx, columns)
        computed = "".join(f", {sql} AS {q(name)}" for name, sql in extra.items())
        base = (
            f"SELECT i.*{computed}, {self.delete_expression(ctx, columns)} AS {DELETE} "
            f"FROM incoming i WHERE {self.keep_expression(ctx, columns)}"
        )
        mode = self.duplicate_mode(ctx)
        if mode == "keep":
            con.execute(f"CREATE OR REPLACE TEMP VIEW src AS {base}")
            return
        con.execute(f"CREATE OR REPLACE TEMP VIEW src_all AS {base}")
        dupes = con.sql(
            f"SELECT {cols(keys)}, count(*) AS n FROM src_all GROUP BY ALL HAVING count(*) > 1 ORDER BY n DESC LIMIT 1"
        ).fetchall()
        if dupes and mode == "collapse" and not order:
            total = scalar(
                con,
                f"SELECT count(*) FROM (SELECT 1 FROM src_all GROUP BY {cols(keys)} HAVING count(*) > 1)",
            )
            example = ", ".join(f"{k}={v!r}" for k, v in zip(keys, dupes[0][:-1], strict=True))
            raise DataError(
                f"table {ctx.table}: {total} key(s) occur more than once in one increment "
                f"(e.g. {example}: {dupes[0][-1]} rows)",
                "declare order_by=... to keep the latest row per key, or de-duplicate in the transform",
            )
        direction = "ASC" if mode == "first" else "DESC"
        # Oldest first for "first", newest first for "collapse"; a NULL order value never wins.
        ordering = ", ".join(
            [f"{q(c)} {direction} NULLS LAST" for c in order] + [f"{ARRIVAL} {direction}"]
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW src AS SELECT * FROM src_all "
            f"QUALIFY row_number() OVER (PARTITION BY {cols(keys)} ORDER BY {ordering}) = 1"
        )

    def _candidate_files(self, ctx: WriteContext) -> list[str]:
        """Files whose partition values and key statistics admit an incoming key."""
        files = ctx.live_files()
        if files.num_rows == 0:
            return []
        con, keys = ctx.con, ctx.options.keys
        names = set(files.schema.names)
        conditions = []
        for key in keys:
            if key in ctx.partition_by and f"partition.{key}" in names:
                conditions.append(f"f.{q('partition.' + key)} IS NOT DISTINCT FROM s.{q(key)}")
            elif f"min.{key}" in names and f"max.{key}" in names:
                lo, hi = f"f.{q('min.' + key)}", f"f.{q('max.' + key)}"
                if pa.types.is_timestamp(files.schema.field(f"max.{key}").type):
                    hi = f"({hi} + INTERVAL 1 MILLISECOND)"  # timestamp statistics may be truncated to ms
                conditions.append(
                    f"({lo} IS NULL OR {hi} IS NULL OR s.{q(key)} BETWEEN {lo} AND {hi})"
                )
        if not conditions:
            return files.column("path").to_pylist()  # type: ignore[no-any-return]
        stats = files.select(
            [
                c
                for c in files.schema.names
                if c == "path" or c.startswith(("min.", "max.", "partition."))
            ]
        )
        con.register("file_stats", stats)
        try:
            rows = con.sql(
                f"SELECT f.path FROM file_stats f WHERE EXISTS (SELECT 1 FROM src s WHERE {' AND '.join(conditions)})"
            ).fetchall()
        finally:
            con.unregister("file_stats")
        return [r[0] for r in rows]

    def _locate(self, ctx: WriteContext, files: list[str]) -> pa.Table:
        """Key columns (and guard columns) of target rows in `files` that may match."""
        keys = list(ctx.options.keys)
        wanted = keys + [c for c in self.locate_columns(ctx) if c not in keys]
        schema = pa.schema([ctx.schema.field(c) for c in wanted] + [pa.field(FILE, pa.string())])
        if not files:
            return schema.empty_table()
        dataset = ctx.target.dataset(files, ctx.snapshot)
        first_keys = (
            ctx.con.sql(f"SELECT DISTINCT {q(keys[0])} FROM src").to_arrow_table().column(0)
        )
        condition: ds.Expression = ds.field(keys[0]).isin(first_keys.combine_chunks())
        extra = self.locate_filter(ctx)
        if extra is not None:
            condition = condition & extra
        # The special column __filename is only available by name, not as an expression.
        located = dataset.to_table(columns=[*wanted, "__filename"], filter=condition)
        relative = pa.array(
            [_relative(p) for p in located.column("__filename").to_pylist()], pa.string()
        )
        located = located.drop_columns(["__filename"]).append_column(FILE, relative)
        return located.cast(schema)

    def _rewrite_file(
        self, ctx: WriteContext, logged_path: str, staged: StagedWrite, changes: list[pa.Table]
    ) -> bool:
        """Stream one touched file into its replacement; False if nothing in it changes."""
        con, keys = ctx.con, ctx.options.keys
        table_cols = ctx.schema.names
        con.register("filedata", ctx.target.dataset([logged_path], ctx.snapshot))
        writer = ctx.new_writer()
        old_parts: list[pa.RecordBatch] = []
        copied = 0
        try:
            reader = con.sql(
                f"SELECT {cols(table_cols, 't')}, (a.__hw_k IS NOT NULL AND {self.match_condition(ctx, 't')}) AS {MATCHED} "
                f"FROM filedata t LEFT JOIN (SELECT DISTINCT {cols(keys)}, TRUE AS __hw_k FROM apply_keys) a "
                f"ON {key_match(keys, 't', 'a')}"
            ).to_arrow_reader(1 << 17)
            for batch in reader:
                matched = batch.column(MATCHED)
                kept = batch.filter(pc.invert(matched)).drop_columns([MATCHED])
                if kept.num_rows:
                    writer.write(kept)
                    copied += kept.num_rows
                touched = batch.filter(matched).drop_columns([MATCHED])
                if touched.num_rows:
                    old_parts.append(touched)
        finally:
            con.unregister("filedata")
        old = pa.Table.from_batches(old_parts, schema=ctx.schema)
        con.register("old", old)
        replacement_sql, change_sql = self.resolve(ctx)
        change_rows = con.sql(change_sql).to_arrow_table()
        real = change_rows.filter(pc.not_equal(change_rows.column(CHANGE_TYPE), "update_preimage"))
        if real.num_rows == 0:
            writer.abort()
            staged.metrics["unchanged"] += old.num_rows
            return False
        replacement = con.sql(replacement_sql).to_arrow_table()
        writer.write(replacement)
        staged.adds += writer.close()
        counts = pc.value_counts(real.column(CHANGE_TYPE)).to_pylist()
        for entry in counts:
            kind = {"update_postimage": "updated", "delete": "deleted"}.get(
                entry["values"], "changed"
            )
            staged.metrics[kind] += entry["counts"]
        staged.metrics["files_rewritten"] += 1
        staged.metrics["rows_copied"] += copied
        changes.append(change_rows)
        return True


def incoming_types(ctx: WriteContext) -> dict[str, str]:
    """DuckDB type names of the increment's columns (for type-aware hashing)."""
    relation = ctx.con.sql("SELECT * FROM incoming LIMIT 0")
    return {name: str(dtype) for name, dtype in zip(relation.columns, relation.types, strict=True)}


def tracked_columns(ctx: WriteContext, data_columns: list[str]) -> list[str]:
    """Columns whose change counts as a change: declared, or all but keys and ordering."""
    opts = ctx.options
    if opts.tracked_columns is not None:
        return list(opts.tracked_columns)
    skip = {*opts.keys, opts.order_by, opts.valid_from_column}
    return [c for c in data_columns if c not in skip]


def _relative(path: str) -> str:
    return path.lstrip("/")


def _with_change_type(table: pa.Table, kind: str) -> pa.Table:
    return table.append_column(CHANGE_TYPE, pa.array([kind] * table.num_rows, pa.string()))
