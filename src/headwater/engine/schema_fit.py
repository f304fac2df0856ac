"""Fitting an increment to its table: the schema policy, schema changes, conforming.

Used for every write the engine makes (a table's own, and its side outputs):
plan how the increment's columns fit the table, commit the schema change the
policy allows (added columns; widened types rewrite the table), and conform
every batch to the table's types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pyarrow as pa
from deltalake import Field, write_deltalake

from ..tables.delta import DeltaTarget
from ..tables.delta_types import conform_batch, to_delta_schema
from ..tables.schema_policy import SchemaPlan, plan_schema
from ..tables.strategies import WriteOptions, WriteStrategy
from .commit import carry_forward

READ_BATCH = 1 << 17


def fit_increment(
    table: str,
    policy: str,
    target: DeltaTarget,
    reader: pa.RecordBatchReader,
    strategy: WriteStrategy,
    options: WriteOptions,
    app_id: str | None,
    metrics: Counter[str],
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[SchemaPlan, pa.RecordBatchReader]:
    """The schema plan, and the increment conformed to the table (plus control columns)."""
    managed = strategy.managed_columns(options, reader.schema)
    control = strategy.control_columns(options)
    # Even a full refresh keeps the table's columns: readers may depend on them,
    # and Delta cannot drop them in a data commit.
    current = target.schema
    plan = plan_schema(table, policy, current, reader.schema, managed, control)
    if current is not None and plan.changes_table:
        evolve_table(table, target, plan, app_id, metrics, progress)
    managed_names = {f.name for f in managed}
    data_fields = [f for f in plan.table_schema if f.name not in managed_names]
    control_fields = list(
        to_delta_schema(pa.schema([f for f in reader.schema if f.name in control]))
    )
    conformed_schema = pa.schema(data_fields + control_fields)
    renames = plan.renames

    def conformed() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            if renames:
                batch = batch.rename_columns([renames.get(n, n) for n in batch.schema.names])
            yield conform_batch(batch, conformed_schema, table)

    return plan, pa.RecordBatchReader.from_batches(conformed_schema, conformed())


def evolve_table(
    table: str,
    target: DeltaTarget,
    plan: SchemaPlan,
    app_id: str | None,
    metrics: Counter[str],
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Apply a schema change as its own commit before the data commit."""
    if plan.widen:
        progress(f"widening {', '.join(plan.widen)} (rewrites the table)")
        snapshot = target.table
        widened = pa.schema(
            [
                pa.field(f.name, plan.widen.get(f.name, f.type), True)
                for f in pa.schema(snapshot.schema())
            ]
        )
        scanner = target.dataset(table=snapshot).scanner(batch_size=READ_BATCH)
        rows = (conform_batch(b, widened, table) for b in scanner.to_batches())
        write_deltalake(
            target.uri,
            pa.RecordBatchReader.from_batches(widened, rows),
            mode="overwrite",
            schema_mode="overwrite",
            partition_by=list(target.partition_by) or None,
            storage_options=target.storage_options or None,
            commit_properties=carry_forward(target, app_id, "widen columns"),
        )
        target.refresh()
        metrics["columns_widened"] += len(plan.widen)
    if plan.add_columns:
        present = {f.name.lower() for f in pa.schema(target.table.schema())}
        fields = [Field.from_arrow(f) for f in plan.add_columns if f.name.lower() not in present]
        if fields:
            target.table.alter.add_columns(
                fields, commit_properties=carry_forward(target, app_id, "add columns")
            )
            metrics["columns_added"] += len(fields)
        target.refresh()
