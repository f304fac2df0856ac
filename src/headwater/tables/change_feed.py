"""What changed in a table between two versions, as rows with `_change_type`.

For each commit in the range, the most precise record available is used:
1. Headwater's change-data files, listed in the commit's metadata (written by
   strategies that rewrite files: merge, SCD, CDC-apply, delete-insert);
2. Delta change-data-feed files (`cdc` actions) written by other engines;
3. otherwise the commit's data-changing actions: added files are inserts (this
   is all an append-only table needs) and removed files are deletes.
Commits that change no data (compaction, z-order) contribute nothing.

Rows carry `_change_type` (insert, update_preimage, update_postimage, delete)
and `_commit_version`, like Delta's change data feed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import HeadwaterError
from .delta import DeltaTarget
from .delta_types import conform_batch
from .log import CommitActions, file_path, read_commit
from .strategies.base import CHANGE_TYPE, COMMIT_VERSION

READ_BATCH = 1 << 16


def change_schema(table_schema: pa.Schema) -> pa.Schema:
    return table_schema.append(pa.field(CHANGE_TYPE, pa.string())).append(
        pa.field(COMMIT_VERSION, pa.int64())
    )


def read_changes(target: DeltaTarget, after: int, upto: int) -> tuple[pa.RecordBatchReader, bool]:
    """Changes of commits `after` < version <= `upto`, streamed in commit order.

    Also says whether any commit in the range changed data at all (a range of
    only compactions has nothing to read).
    """
    table = target.load(upto)
    assert table is not None
    schema = pa.schema(table.schema())
    partition_by = tuple(table.metadata().partition_columns)
    out_schema = change_schema(schema)
    commits = [read_commit(target, v) for v in range(after + 1, upto + 1)]
    for commit in commits:
        for add in commit.adds:
            if add.get("deletionVector"):
                raise HeadwaterError(
                    f"table {target.name}: commit {commit.version} uses deletion vectors, which the change reader does not apply",
                    "enable the change data feed on that table, or rebuild the reader with --full-refresh",
                )

    def batches() -> Iterator[pa.RecordBatch]:
        for commit in commits:
            for part in _commit_parts(commit):
                path, kind, partitions = part
                for batch in _read_file(target, path, partitions, schema, partition_by):
                    yield _label(batch, kind, commit.version, out_schema, target.name)

    changed = any(_commit_parts(c) for c in commits)
    return pa.RecordBatchReader.from_batches(out_schema, batches()), changed


def _commit_parts(commit: CommitActions) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(file, change type or None when the file carries its own, partition values) of one commit."""
    recorded = commit.headwater.get("change_files")
    if recorded:
        return [(p, None, {}) for p in recorded]
    if commit.cdc:
        return [(file_path(c), None, c.get("partitionValues") or {}) for c in commit.cdc]
    parts: list[tuple[str, str | None, dict[str, Any]]] = []
    for remove in commit.removes:
        if remove.get("dataChange", True):
            parts.append((file_path(remove), "delete", remove.get("partitionValues") or {}))
    for add in commit.adds:
        if add.get("dataChange", True):
            parts.append((file_path(add), "insert", add.get("partitionValues") or {}))
    return parts


def _read_file(
    target: DeltaTarget,
    path: str,
    partitions: dict[str, Any],
    schema: pa.Schema,
    partition_by: tuple[str, ...],
) -> Iterator[pa.RecordBatch]:
    fs, root = target.filesystem()
    full = f"{root}/{path}" if root else path
    try:
        parquet = pq.ParquetFile(fs.open_input_file(full))
    except (FileNotFoundError, OSError) as exc:
        raise HeadwaterError(
            f"table {target.name}: data file {path} needed for its change feed is gone (vacuumed)",
            "rebuild the reading table with --full-refresh",
        ) from exc
    for batch in parquet.iter_batches(batch_size=READ_BATCH):
        for column in partition_by:
            if column in batch.schema.names:
                continue
            value = partitions.get(column)
            batch = batch.append_column(
                column, _partition_array(value, schema.field(column).type, batch.num_rows)
            )
        yield batch


def _partition_array(text: str | None, dtype: pa.DataType, length: int) -> pa.Array:
    if text is None:
        return pa.nulls(length, dtype)
    if pa.types.is_timestamp(dtype) and dtype.tz is not None:
        value = pc.cast(pc.cast(pa.array([text]), pa.timestamp("us")), dtype)
    else:
        value = pc.cast(pa.array([text]), dtype)
    return pa.repeat(value[0], length)


def _label(
    batch: pa.RecordBatch, kind: str | None, version: int, schema: pa.Schema, name: str
) -> pa.RecordBatch:
    n = batch.num_rows
    if kind is not None or CHANGE_TYPE not in batch.schema.names:
        if CHANGE_TYPE in batch.schema.names:
            batch = batch.drop_columns([CHANGE_TYPE])
        batch = batch.append_column(CHANGE_TYPE, pa.array([kind or "insert"] * n, pa.string()))
    if COMMIT_VERSION in batch.schema.names:
        batch = batch.drop_columns([COMMIT_VERSION])
    batch = batch.append_column(COMMIT_VERSION, pa.array([version] * n, pa.int64()))
    return conform_batch(batch, schema, name)
