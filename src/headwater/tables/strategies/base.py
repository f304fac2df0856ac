"""What every write strategy shares: options, the staged write, the write context.

A strategy turns one increment into a *staged write*: data files already on
storage plus the add/remove actions that would publish them. The engine commits
the staged write together with the new source position in one Delta commit.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import duckdb
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.transaction import AddAction, RemoveAction

from ...errors import ConfigError
from ..databases import POOL, Lease
from ..delta import DeltaTarget
from ..writer import FileWriter, partition_value_text

if TYPE_CHECKING:
    from ...engine.interval import Interval

# Columns a Delta change feed adds; they steer the write and are never stored.
CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"
COMMIT_TIMESTAMP = "_commit_timestamp"
CHANGE_COLUMNS = (CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP)
CHANGE_DATA_DIR = "_change_data"


@dataclass(frozen=True)
class WriteOptions:
    """Everything a table declares about how increments are written."""

    keys: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    # Duplicate keys within one increment collapse to the row with the greatest
    # order value; without an order they are rejected.
    order_by: str | None = None
    # merge: a row is replaced only by a strictly newer version.
    version_column: str | None = None
    # scd1/scd2: the columns whose change makes a new version (default: all non-key).
    tracked_columns: tuple[str, ...] | None = None
    # scd2: validity starts at this column's value instead of the run's timestamp.
    valid_from_column: str | None = None
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    is_current: str = "is_current"
    row_hash: str = "row_hash"
    # cdc-apply: log order and operation columns.
    sequence_by: str | None = None
    op_column: str = "_op"
    deletes: Literal["hard", "soft"] = "hard"
    deleted_at: str = "_deleted_at"

    def with_(self, **changes: Any) -> WriteOptions:
        return replace(self, **changes)


@dataclass
class StagedWrite:
    """Files written and the actions that would publish them; nothing is visible yet."""

    operation: str
    adds: list[AddAction] = field(default_factory=list)
    removes: list[RemoveAction] = field(default_factory=list)
    change_files: list[str] = field(default_factory=list)
    metrics: Counter[str] = field(default_factory=Counter)

    @property
    def is_empty(self) -> bool:
        return not self.adds and not self.removes

    def written_paths(self) -> list[str]:
        return [a.path for a in self.adds] + list(self.change_files)

    def merge(self, other: StagedWrite) -> None:
        self.adds += other.adds
        self.removes += other.removes
        self.change_files += other.change_files
        self.metrics.update(other.metrics)


@dataclass
class WriteContext:
    """What a strategy may use while staging one increment."""

    table: str
    target: DeltaTarget
    snapshot: DeltaTable | None
    schema: pa.Schema  # the table's schema after this write (data + strategy columns)
    options: WriteOptions
    run_ts: datetime
    run_id: str
    target_file_size: int = 128 << 20
    compression: str = "snappy"
    full_refresh: bool = False
    # Write change records for rewrites (someone reads this table's changes).
    record_changes: bool = True
    threads: int = 2
    memory_limit: str = "1GB"
    # An interval run: partitions inside it are replaced even if the output has no rows for them.
    interval: Interval | None = None
    # Arrow tables visible by name to the connection and every cursor of it.
    shared: dict[str, pa.Table] = field(default_factory=dict)
    rows_considered: int = 0
    _lease: Lease | None = None

    @property
    def partition_by(self) -> tuple[str, ...]:
        return self.options.partition_by

    @property
    def exists(self) -> bool:
        return self.snapshot is not None

    def live_files(self) -> pa.Table:
        """Files of the snapshot this write builds on (none under a full refresh)."""
        if self.snapshot is None or self.full_refresh:
            return pa.table({"path": pa.array([], pa.string())})
        return self.target.add_actions

    def new_writer(
        self, schema: pa.Schema | None = None, subdir: str = "", partitioned: bool = True
    ) -> FileWriter:
        return self.target.writer(
            schema or self.schema,
            self.partition_by if partitioned else (),
            self.target_file_size,
            self.compression,
            subdir,
        )

    def change_writer(self) -> FileWriter:
        schema = self.schema.append(pa.field(CHANGE_TYPE, pa.string()))
        return self.new_writer(schema, subdir=CHANGE_DATA_DIR, partitioned=False)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._lease is None:
            # A pooled database: opening one costs more than many small writes do.
            self._lease = POOL.borrow(
                self.threads,
                self.memory_limit,
                os.path.join(tempfile.gettempdir(), "headwater-duckdb"),
            )
        return self._lease.con

    def share(self, name: str, table: pa.Table) -> None:
        """Make an Arrow table visible to SQL as `name`, here and in every cursor."""
        self.shared[name] = table
        self.con.register(name, table)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for another thread, seeing the same tables and shared data."""
        cursor = self.con.cursor()
        for name, table in self.shared.items():
            cursor.register(name, table)
        return cursor

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.shared.clear()


def remove_action(row: dict[str, Any]) -> RemoveAction:
    partitions = {k[len("partition.") :]: v for k, v in row.items() if k.startswith("partition.")}
    return RemoveAction(
        path=row["path"],
        data_change=True,
        deletion_timestamp=int(time.time() * 1000),
        size=row.get("size_bytes"),
        partition_values={k: partition_value_text(v) for k, v in partitions.items()} or None,
    )


class WriteStrategy(ABC):
    """One way of applying an increment to a table. Subclasses live one per module."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    # All chunks of one run are committed together (the strategy replaces data).
    whole_run: ClassVar[bool] = False
    requires_keys: ClassVar[bool] = False
    requires_partitions: ClassVar[bool] = False

    def check(self, table: str, options: WriteOptions) -> None:
        """Reject option combinations that cannot work, naming the table."""
        if self.requires_keys and not options.keys:
            raise ConfigError(
                f"table {table}: strategy {self.name!r} needs keys",
                "add keys=[...] to the declaration",
            )
        if self.requires_partitions and not options.partition_by:
            raise ConfigError(
                f"table {table}: strategy {self.name!r} needs partition_by",
                "add partition_by=[...] to the declaration",
            )

    def managed_columns(self, options: WriteOptions, data_schema: pa.Schema) -> list[pa.Field]:
        """Columns the strategy adds and maintains (validity, hashes, audit times)."""
        return []

    def control_columns(self, options: WriteOptions) -> set[str]:
        """Input columns that steer the write but are not stored."""
        return set(CHANGE_COLUMNS)

    @abstractmethod
    def stage(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        """Write files for `data` (conformed to the table schema plus control columns)."""

    def stage_with_refresh(self, ctx: WriteContext, data: pa.RecordBatchReader) -> StagedWrite:
        """`stage`, plus removing every live file when the run is a full refresh."""
        staged = self.stage(ctx, data)
        if ctx.full_refresh and ctx.snapshot is not None:
            staged.removes = [remove_action(r) for r in ctx.target.add_actions.to_pylist()]
            staged.change_files = []  # a full refresh is a rewrite: readers take removes and adds
        return staged


RUN_TS = "(SELECT ts FROM run_info)"


def start_run_info(ctx: WriteContext) -> None:
    """Bind the run's timestamp once; SQL refers to it as RUN_TS."""
    ctx.con.execute("SET TimeZone='UTC'")
    ctx.con.execute(
        "CREATE OR REPLACE TABLE run_info AS SELECT CAST(? AS TIMESTAMPTZ) AS ts",
        [ctx.run_ts.isoformat()],
    )


def write_rows(
    ctx: WriteContext, data: pa.RecordBatchReader, operation: str = "WRITE"
) -> StagedWrite:
    """Write every stored row of `data` into new files (what non-keyed strategies add)."""
    staged = StagedWrite(operation)
    writer = ctx.new_writer()
    for batch in stored_rows(ctx, data):
        writer.write(batch)
        staged.metrics["inserted"] += batch.num_rows
    staged.metrics["rows_in"] += staged.metrics["inserted"]
    staged.adds = writer.close()
    return staged


def stored_rows(ctx: WriteContext, data: pa.RecordBatchReader) -> Any:
    """Batches of the rows a non-keyed strategy stores: no pre-images or deletes, table columns only."""
    import pyarrow.compute as pc

    for batch in data:
        if CHANGE_TYPE in batch.schema.names:
            kind = batch.column(CHANGE_TYPE)
            keep = pc.fill_null(
                pc.invert(pc.is_in(kind, pa.array(["update_preimage", "delete"]))), True
            )
            batch = batch.filter(keep)
        if batch.num_rows:
            yield batch.select(ctx.schema.names)
