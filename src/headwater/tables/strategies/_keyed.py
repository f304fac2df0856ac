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
import os
import threading
import time
import uuid
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

from ..._sql import cols, key_match, q, scalar
from ...errors import DataError, SchemaError
from ..delta import is_local
from ..stats import delta_stats
from ..writer import partition_value_text
from .base import (
    CHANGE_TYPE,
    COMMIT_VERSION,
    StagedWrite,
    WriteContext,
    WriteStrategy,
    remove_action,
    start_run_info,
)

# Rows of key columns matched per semi-join in the locate pass (bounds its memory).
LOCATE_GROUP_ROWS = 4 << 20
# Rows per batch while a touched file is streamed into its replacement.
REWRITE_BATCH = 1 << 16
ARRIVAL = "__hw_arrival"
KEEP = "__hw_keep"
# Row group size of files DuckDB rewrites.
DUCKDB_ROW_GROUP_ROWS = 122_880
_DUCKDB_CODECS = {
    "zstd": "COMPRESSION zstd, COMPRESSION_LEVEL 1",  # level 3, DuckDB's default, is ~25% slower
    "snappy": "COMPRESSION snappy",
    "gzip": "COMPRESSION gzip",
    "lz4": "COMPRESSION lz4_raw",
    "none": "COMPRESSION uncompressed",
}
Outcome = tuple[list[AddAction], Counter[str], "pa.Table | None"]
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
        """Create tables `apply_keys` (keys whose rows change) and view `to_insert` (table columns)."""
        con, keys = ctx.con, ctx.options.keys
        con.execute(
            f"CREATE OR REPLACE TABLE pairs AS SELECT {cols(keys, 's')}, ({self.applies(ctx)}) AS __hw_applies "
            f"FROM located t JOIN src s ON {key_match(keys, 't', 's')}"
        )
        con.execute(
            f"CREATE OR REPLACE TABLE apply_keys AS SELECT DISTINCT {cols(keys)} FROM pairs WHERE __hw_applies"
        )
        con.execute(
            f"CREATE OR REPLACE VIEW fresh AS SELECT s.* FROM src s "
            f"WHERE NOT EXISTS (SELECT 1 FROM located t WHERE {key_match(keys, 't', 's')})"
        )
        con.execute(f"CREATE OR REPLACE VIEW to_insert AS {self.inserts(ctx)}")

    def match_mask(self, ctx: WriteContext, batch: pa.RecordBatch) -> pa.Array | None:
        """Arrow form of `match_condition` for the fast path (None: no restriction)."""
        return None

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
        _release_memory()  # reading and conforming the increment leaves freed buffers behind
        incoming = incoming.append_column(ARRIVAL, pa.array(range(incoming.num_rows), pa.int64()))
        columns = incoming.schema.names
        self.validate_increment_table(ctx, incoming)
        con.register("incoming", incoming)
        start_run_info(ctx)
        try:
            self.validate_increment(ctx, columns)
            self._prepare_source(ctx, incoming)
        finally:
            con.unregister("incoming")
        del incoming  # `src` holds what is needed
        try:
            return self._stage(ctx)
        finally:
            with contextlib.suppress(Exception):  # registered only once located
                con.unregister("located")

    def validate_increment_table(self, ctx: WriteContext, incoming: pa.Table) -> None:
        self._check_null_keys(ctx, incoming)

    def _stage(self, ctx: WriteContext) -> StagedWrite:
        con, keys = ctx.con, ctx.options.keys
        staged = StagedWrite(self.operation)
        staged.metrics["rows_in"] += ctx.rows_considered

        files = self._candidate_files(ctx)
        located = self._locate(ctx, files)
        con.register("located", located)
        _release_memory()
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
        if touched:
            by_path = {unquote(p): p for p in ctx.live_files().column("path").to_pylist()}
            live = {r["path"]: r for r in ctx.live_files().to_pylist()}
            for logged, outcome in zip(
                (by_path[r] for r in touched),
                self._rewrite_all(ctx, [by_path[r] for r in touched], live),
                strict=True,
            ):
                if outcome is None:
                    continue
                adds, metrics, change_rows = outcome
                staged.adds += adds
                staged.metrics.update(metrics)
                staged.removes.append(remove_action(live[logged]))
                if change_rows is not None:
                    changes.append(change_rows)

        insert_writer = ctx.new_writer()
        inserted = con.sql("SELECT * FROM to_insert").to_arrow_reader(1 << 17)
        for batch in inserted:
            insert_writer.write(batch)
            staged.metrics["inserted"] += batch.num_rows
            if staged.removes and ctx.record_changes:
                changes.append(_with_change_type(pa.Table.from_batches([batch]), "insert"))
        staged.adds += insert_writer.close()
        if staged.removes and changes and ctx.record_changes:
            change_writer = ctx.change_writer()
            for table in changes:
                change_writer.write(table)
            change_writer.close()
            staged.change_files += change_writer.paths_written
        return staged

    def _rewrite_all(
        self, ctx: WriteContext, files: list[str], live: dict[str, dict[str, Any]]
    ) -> list[Outcome | None]:
        """Rewrite touched files: in DuckDB where it can read them, else by streaming Arrow."""
        in_duckdb = [f for f in files if self._duckdb_can_rewrite(ctx, f)]
        results: dict[str, Outcome | None] = {}
        if in_duckdb:
            results.update(self._rewrite_in_duckdb(ctx, in_duckdb, live))
        pending = [f for f in files if f not in results]
        if pending:
            results.update(zip(pending, self._rewrite_streaming(ctx, pending), strict=True))
        return [results[f] for f in files]

    def _duckdb_can_rewrite(self, ctx: WriteContext, logged: str) -> bool:
        """Local files whose columns are exactly the table's (not written under an older schema)."""
        keys, partition_by = ctx.options.keys, ctx.partition_by
        if not is_local(ctx.target.uri) or set(keys) & set(partition_by):
            return False
        _, root = ctx.target.filesystem()
        file_schema = pa.schema([f for f in ctx.schema if f.name not in partition_by])
        return _types(pq.read_schema(f"{root}/{unquote(logged)}")) == _types(file_schema)

    def _rewrite_in_duckdb(
        self, ctx: WriteContext, files: list[str], live: dict[str, dict[str, Any]]
    ) -> dict[str, Outcome | None]:
        """Rewrite files Parquet-to-Parquet in DuckDB: parallel within a file, memory-limited."""
        con, keys, partition_by = ctx.con, ctx.options.keys, ctx.partition_by
        _, root = ctx.target.filesystem()
        file_schema = pa.schema([f for f in ctx.schema if f.name not in partition_by])
        # Keys located in each file (for SCD2, of its current versions only).
        touched = con.sql(
            f"SELECT t.{q(FILE)}, {cols(keys, 't')} FROM located t SEMI JOIN apply_keys a "
            f"ON {key_match(keys, 't', 'a')} WHERE {self.match_condition(ctx, 't')}"
        ).to_arrow_table()
        results: dict[str, Outcome | None] = {}
        for logged in files:
            relative = unquote(logged)
            file_keys = touched.filter(pc.equal(touched.column(FILE), relative)).select(list(keys))
            con.register("file_keys", file_keys)
            try:
                results[logged] = self._rewrite_one_in_duckdb(
                    ctx, relative, f"{root}/{relative}", file_schema, live[logged]
                )
            finally:
                con.unregister("file_keys")
        return results

    def _rewrite_one_in_duckdb(
        self,
        ctx: WriteContext,
        relative: str,
        source: str,
        file_schema: pa.Schema,
        live_row: dict[str, Any],
    ) -> Outcome | None:
        """One file: its touched rows are resolved, the others copied, in one COPY."""
        con, keys, partition_by = ctx.con, ctx.options.keys, ctx.partition_by
        if len(keys) == 1:
            exists = f"t.{q(keys[0])} IN (SELECT {q(keys[0])} FROM file_keys)"
        else:
            exists = f"EXISTS (SELECT 1 FROM file_keys k WHERE {key_match(keys, 't', 'k')})"
        matched = f"coalesce({exists} AND {self.match_condition(ctx, 't')}, FALSE)"
        # hive_partitioning=false: partition values come from the log, not folder names.
        scan = "read_parquet($1, hive_partitioning=false)"
        old = con.sql(f"SELECT * FROM {scan} t WHERE {matched}", params=[source]).to_arrow_table()
        for column in partition_by:
            value = pa.scalar(live_row.get(f"partition.{column}"), ctx.schema.field(column).type)
            old = old.append_column(column, pa.repeat(value, old.num_rows))
        con.register("old", old.select(ctx.schema.names).cast(ctx.schema))
        # Resolve against this file's source rows only, not the whole increment.
        whole = ctx.shared["src"]
        con.register(
            "src",
            con.sql(
                f"SELECT s.* FROM src s SEMI JOIN file_keys k ON {key_match(keys, 's', 'k')}"
            ).to_arrow_table(),
        )
        try:
            replacement_sql, change_sql = self.resolve(ctx)
            change_rows, real = self._changes(ctx, con, change_sql)
            if not real:
                return None
            replacement = con.sql(replacement_sql).to_arrow_table()
        finally:
            con.register("src", whole)
            con.unregister("old")
        adds: list[AddAction] = []
        if partition_by:
            # An update may move a row to another partition (a changed partition column):
            # replacement rows are written by their own partition values, not the file's.
            writer = ctx.new_writer()
            writer.write(replacement.cast(ctx.schema))
            adds += writer.close()
            union, copied = "", replacement.num_rows
        else:
            union, copied = f" UNION ALL SELECT {cols(file_schema.names)} FROM replacement", 0
        replacement = replacement.select(file_schema.names).cast(file_schema)
        folder = relative.rsplit("/", 1)[0] + "/" if "/" in relative else ""
        new_relative = f"{folder}part-{uuid.uuid4()}-c000.{ctx.compression}.parquet"
        fs, root = ctx.target.filesystem()
        target = f"{root}/{new_relative}"
        codec = _DUCKDB_CODECS.get(ctx.compression, "COMPRESSION snappy")
        con.register("replacement", replacement)
        try:
            con.execute(
                f"COPY (SELECT {cols(file_schema.names, 't')} FROM {scan} t WHERE NOT {matched}{union}) "
                f"TO $2 (FORMAT parquet, {codec}, ROW_GROUP_SIZE {DUCKDB_ROW_GROUP_ROWS})",
                [source, target],
            )
        finally:
            con.unregister("replacement")
        metadata = pq.read_metadata(target)
        if _types(metadata.schema.to_arrow_schema()) != _types(file_schema):
            fs.delete_file(target)
            # Input and replacement have exactly the table's types: this would be a bug.
            raise SchemaError(
                f"table {ctx.table}: rewriting {relative} produced other column types than the table's",
                "nothing was committed; please report this with the table's schema",
            )
        metrics: Counter[str] = Counter()
        metrics["rows_copied"] += metadata.num_rows - (replacement.num_rows - copied)
        for kind, n in real.items():
            metrics[{"update_postimage": "updated", "delete": "deleted"}.get(kind, "changed")] += n
        metrics["files_rewritten"] += 1
        if metadata.num_rows == 0:
            fs.delete_file(target)  # every row of the file was replaced elsewhere or deleted
            return adds, metrics, change_rows
        adds.append(
            AddAction(
                path=quote(new_relative, safe="/=_.-"),
                size=os.path.getsize(target),
                partition_values={
                    c: partition_value_text(live_row.get(f"partition.{c}")) for c in partition_by
                },
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=delta_stats(metadata, file_schema),
            )
        )
        return adds, metrics, change_rows

    def _changes(
        self, ctx: WriteContext, con: duckdb.DuckDBPyConnection, change_sql: str
    ) -> tuple[pa.Table | None, dict[str, int]]:
        """The change rows (when recorded) and their counts by kind, pre-images aside."""
        if ctx.record_changes:
            change_rows = con.sql(change_sql).to_arrow_table()
            counts = [
                (e["values"], e["counts"])
                for e in pc.value_counts(change_rows.column(CHANGE_TYPE)).to_pylist()
            ]
        else:
            # Only whether (and how) the file changes matters: count, keep nothing.
            change_rows = None
            counts = con.execute(
                f"SELECT _change_type, count(*) FROM ({change_sql}) GROUP BY 1"
            ).fetchall()
        return change_rows, {kind: int(n) for kind, n in counts if kind != "update_preimage"}

    def _rewrite_streaming(self, ctx: WriteContext, files: list[str]) -> list[Outcome | None]:
        """Rewrite files by streaming them through Arrow, several at once."""
        keys = ctx.options.keys
        # One-column keys are matched with an Arrow hash lookup while streaming a
        # file, against only the keys located in that file; other keys go through
        # a DuckDB join.
        per_file: dict[str, pa.Array] = {}
        if len(keys) == 1:
            hits = ctx.con.sql(
                f"SELECT t.{q(FILE)}, t.{q(keys[0])} FROM located t SEMI JOIN apply_keys a "
                f"ON {key_match(keys, 't', 'a')} WHERE {self.match_condition(ctx, 't')}"
            ).to_arrow_table()
            file_column = hits.column(FILE)
            for logged in files:
                matched = hits.filter(pc.equal(file_column, unquote(logged)))
                per_file[logged] = matched.column(keys[0]).combine_chunks()
        workers = max(1, min(ctx.threads, len(files)))
        if workers == 1:
            return [self._rewrite_file(ctx, ctx.con, f, per_file.get(f)) for f in files]
        with ThreadPoolExecutor(workers) as pool:
            cursors = [ctx.cursor() for _ in range(workers)]
            try:
                futures = [
                    pool.submit(self._rewrite_file, ctx, cursors[i % workers], f, per_file.get(f))
                    for i, f in enumerate(files)
                ]
                return [f.result() for f in futures]
            finally:
                for cursor in cursors:
                    cursor.close()

    def _touched_batches(
        self,
        ctx: WriteContext,
        con: duckdb.DuckDBPyConnection,
        dataset: ds.Dataset,
        fast_keys: pa.Array | None,
    ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
        """(untouched rows, touched rows) of a file, batch by batch."""
        keys, table_cols = ctx.options.keys, ctx.schema.names
        if fast_keys is not None:
            # Little readahead: a file is streamed, not loaded, so memory stays bounded.
            batches = dataset.to_batches(
                columns=table_cols,
                batch_size=REWRITE_BATCH,
                batch_readahead=1,
                fragment_readahead=1,
                # Files are rewritten side by side; within one, decode on this thread.
                use_threads=False,
            )
            for batch in batches:
                mask = pc.is_in(batch.column(keys[0]), value_set=fast_keys)
                extra = self.match_mask(ctx, batch)
                if extra is not None:
                    mask = pc.and_(mask, extra)
                yield batch.filter(pc.invert(mask)), batch.filter(mask)
            return
        name = f"filedata_{threading.get_ident()}"
        con.register(name, dataset)
        try:
            reader = con.sql(
                f"SELECT {cols(table_cols, 't')}, (a.__hw_k IS NOT NULL AND {self.match_condition(ctx, 't')}) AS {MATCHED} "
                f"FROM {name} t LEFT JOIN (SELECT {cols(keys)}, TRUE AS __hw_k FROM apply_keys) a "
                f"ON {key_match(keys, 't', 'a')}"
            ).to_arrow_reader(1 << 17)
            for batch in reader:
                matched = batch.column(MATCHED)
                yield (
                    batch.filter(pc.invert(matched)).drop_columns([MATCHED]),
                    batch.filter(matched).drop_columns([MATCHED]),
                )
        finally:
            con.unregister(name)

    def _rewrite_file(
        self,
        ctx: WriteContext,
        con: duckdb.DuckDBPyConnection,
        logged_path: str,
        fast_keys: pa.Array | None,
    ) -> Outcome | None:
        """Stream one touched file into its replacement; None if nothing in it changes."""
        dataset = ctx.target.dataset([logged_path], ctx.snapshot)
        writer = ctx.new_writer()
        metrics: Counter[str] = Counter()
        old_parts: list[pa.RecordBatch] = []
        try:
            for kept, touched in self._touched_batches(ctx, con, dataset, fast_keys):
                if kept.num_rows:
                    writer.write(kept)
                    metrics["rows_copied"] += kept.num_rows
                if touched.num_rows:
                    old_parts.append(touched)
            # Files may carry the schema with other nullability or metadata: cast to the table's.
            old = (
                pa.Table.from_batches(old_parts).cast(ctx.schema)
                if old_parts
                else ctx.schema.empty_table()
            )
            con.register("old", old)
            try:
                replacement_sql, change_sql = self.resolve(ctx)
                change_rows, real = self._changes(ctx, con, change_sql)
                if not real:
                    writer.abort()
                    return None
                writer.write(con.sql(replacement_sql).to_arrow_table())
            finally:
                con.unregister("old")
            adds = writer.close()
        except BaseException:
            writer.abort()
            raise
        for kind, n in real.items():
            metrics[{"update_postimage": "updated", "delete": "deleted"}.get(kind, "changed")] += n
        metrics["files_rewritten"] += 1
        _release_memory()
        return adds, metrics, change_rows

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

    def _prepare_source(self, ctx: WriteContext, incoming: pa.Table) -> None:
        """`src`: the increment with the strategy's columns, one row per key (unless kept).

        Only the new columns are computed in DuckDB and attached to the Arrow
        increment, which is not copied; duplicate keys are resolved on keys and
        order columns alone, and only when there are any.
        """
        con, keys = ctx.con, ctx.options.keys
        columns = incoming.schema.names
        order = self.order_columns(ctx, columns)
        for column in order:
            if column not in columns:
                raise DataError(
                    f"table {ctx.table}: order column {column!r} is missing from the increment",
                    "select it in the transform",
                )
        computed = {
            **self.source_columns(ctx, columns),
            DELETE: self.delete_expression(ctx, columns),
            KEEP: self.keep_expression(ctx, columns),
        }
        projection = ", ".join(f"{sql} AS {q(name)}" for name, sql in computed.items())
        added = con.sql(f"SELECT i.{ARRIVAL}, {projection} FROM incoming i").to_arrow_table()
        if not added.column(ARRIVAL).equals(incoming.column(ARRIVAL)):
            # DuckDB keeps the input's order for a projection; should it not, realign.
            added = added.sort_by(ARRIVAL)
        src = incoming
        for name in computed:
            src = src.append_column(name, added.column(name))
        keep = src.column(KEEP)
        src = src.drop_columns([KEEP])
        if keep.null_count or not pc.all(keep).as_py():
            src = src.filter(pc.fill_null(keep, False))
        ctx.rows_considered = src.num_rows
        mode = self.duplicate_mode(ctx)
        if mode == "keep":
            ctx.share("src", src)
            return
        ctx.share("src_all", src)
        dupes = con.sql(
            f"SELECT {cols(keys)}, count(*) AS n FROM src_all GROUP BY ALL HAVING count(*) > 1 ORDER BY n DESC LIMIT 1"
        ).fetchall()
        if not dupes:
            ctx.share("src", src)
            return
        if mode == "collapse" and not order:
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
        winners = (
            con.sql(
                f"SELECT {ARRIVAL} FROM src_all "
                f"QUALIFY row_number() OVER (PARTITION BY {cols(keys)} ORDER BY {ordering}) = 1"
            )
            .to_arrow_table()
            .column(0)
        )
        ctx.share("src", src.filter(pc.is_in(src.column(ARRIVAL), value_set=winners)))

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
        """Key columns (and guard columns) of target rows in `files` that may match.

        Reads only those columns, file by file, and matches them against the
        incoming keys with one semi-join per group of files.
        """
        keys = list(ctx.options.keys)
        wanted = keys + [c for c in self.locate_columns(ctx) if c not in keys]
        schema = pa.schema([ctx.schema.field(c) for c in wanted] + [pa.field(FILE, pa.string())])
        if not files:
            return schema.empty_table()
        dataset = ctx.target.dataset(files, ctx.snapshot)
        extra = self.locate_filter(ctx)
        found: list[pa.Table] = []
        group: list[pa.Table] = []
        paths: list[str] = []
        rows = 0

        def match_group() -> None:
            nonlocal group, rows
            if not group:
                return
            # A DuckDB semi-join: several times faster than Arrow's is_in on millions of keys.
            name = "locate_part"
            ctx.con.register(name, pa.concat_tables(group))
            try:
                hits = ctx.con.sql(
                    f"SELECT p.* FROM {name} p SEMI JOIN src s ON p.{q(keys[0])} = s.{q(keys[0])}"
                ).to_arrow_table()
            finally:
                ctx.con.unregister(name)
            names = pc.take(pa.array(paths, pa.string()), hits.column("__hw_fi"))
            found.append(hits.drop_columns(["__hw_fi"]).append_column(FILE, names).cast(schema))
            group, rows = [], 0

        for fragment in dataset.get_fragments():
            part = ds.Scanner.from_fragment(
                fragment, schema=dataset.schema, columns=wanted, filter=extra
            ).to_table()
            index = pa.repeat(pa.scalar(len(paths), pa.int32()), part.num_rows)
            group.append(part.append_column("__hw_fi", index))
            paths.append(fragment.path.lstrip("/"))
            rows += part.num_rows
            if rows >= LOCATE_GROUP_ROWS:
                match_group()
        match_group()
        return pa.concat_tables(found) if found else schema.empty_table()


def _types(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]


def _release_memory() -> None:
    """Return Arrow's freed memory to the system between phases (keeps peak RSS honest)."""
    pa.default_memory_pool().release_unused()


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


def _with_change_type(table: pa.Table, kind: str) -> pa.Table:
    return table.append_column(CHANGE_TYPE, pa.array([kind] * table.num_rows, pa.string()))
