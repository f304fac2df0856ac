"""The commit: data files, the table's new batch number and its input positions,
published together in one Delta commit.

Delta's optimistic concurrency decides between concurrent writers: a commit
whose transaction id (appId + batch) another writer already used, or that
removes a file another writer removed, fails and the run is retried from the
table's new state. Nothing is ever committed twice for the same batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import create_table_with_add_actions

from ..tables.delta import DeltaTarget
from ..tables.strategies import StagedWrite
from .position import META_KEY


class ConflictRetry(Exception):
    """A concurrent commit won; the run must start again from the new state."""


@dataclass
class CommitRequest:
    app: str
    batch: int
    run_id: str
    run_ts: str
    table: str
    positions: dict[str, Any]
    strategy: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    description: str = ""
    full_refresh: bool = False
    max_retries: int = 15
    checkpoint_interval: int = 100
    interval: list[str] | None = None  # [start, end) of an interval run
    side_versions: dict[str, int] = field(default_factory=dict)  # side table -> its version
    # A streaming table's checkpoint (watermarks, state version...): docs/streaming.md.
    stream: dict[str, Any] | None = None
    # What each input's source measured for this batch (CDC lag, retained WAL...).
    source_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def metadata(self, staged: StagedWrite) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "app": self.app,
            "batch": self.batch,
            "run_id": self.run_id,
            "run_ts": self.run_ts,
            "positions": self.positions,
            "strategy": self.strategy,
            "operation": staged.operation,
            "metrics": {k: int(v) for k, v in sorted(staged.metrics.items()) if v},
        }
        if staged.change_files:
            meta["change_files"] = staged.change_files
        if self.full_refresh:
            meta["full_refresh"] = True
        if self.interval:
            meta["interval"] = self.interval
        if self.side_versions:
            meta["side_versions"] = self.side_versions
        if self.stream is not None:
            meta["stream"] = self.stream
        if self.source_metrics:
            meta["source_metrics"] = self.source_metrics
        return {META_KEY: meta}


def commit(
    target: DeltaTarget, snapshot: DeltaTable | None, staged: StagedWrite, request: CommitRequest
) -> None:
    """Publish `staged` with the request's batch and positions, or raise ConflictRetry."""
    properties = CommitProperties(
        custom_metadata=request.metadata(staged),
        app_transactions=[Transaction(request.app, request.batch, int(time.time() * 1000))],
        max_commit_retries=request.max_retries,
    )
    if snapshot is not None and staged.removes:
        _check_removes_still_live(target, snapshot.version(), staged)
    try:
        if snapshot is None:
            create_table_with_add_actions(
                target.uri,
                Schema.from_arrow(request.schema),
                staged.adds,
                mode="error",
                partition_by=list(request.partition_by) or None,
                name=request.table,
                description=request.description or None,
                configuration={"delta.checkpointInterval": str(request.checkpoint_interval)},
                storage_options=target.storage_options or None,
                commit_properties=properties,
            )
        else:
            snapshot.create_write_transaction(
                [*staged.removes, *staged.adds],
                "append",
                request.schema,
                partition_by=list(request.partition_by) or None,
                commit_properties=properties,
            )
    except CommitFailedError as exc:
        raise ConflictRetry(str(exc)) from exc
    except DeltaError as exc:
        if snapshot is None and "exist" in str(exc).lower():
            raise ConflictRetry(str(exc)) from exc  # another writer created the table first
        raise


def carry_forward(target: DeltaTarget, app: str | None, operation: str) -> CommitProperties:
    """Commit properties for maintenance commits that repeat the latest positions,
    so a table's position stays near the head of its log."""
    from .position import read_committed_state

    if app is None:
        return CommitProperties(custom_metadata={META_KEY: {"operation": operation}})
    state = read_committed_state(target, app)
    if state.batch == 0:
        return CommitProperties(custom_metadata={META_KEY: {"operation": operation}})
    meta: dict[str, Any] = {
        "app": app,
        "batch": state.batch,
        "positions": state.positions,
        "operation": operation,
    }
    if state.side_versions:
        meta["side_versions"] = state.side_versions
    if state.stream is not None:
        meta["stream"] = state.stream
    return CommitProperties(custom_metadata={META_KEY: meta})


def _check_removes_still_live(target: DeltaTarget, read_version: int, staged: StagedWrite) -> None:
    """Refuse to commit if a commit since `read_version` removed a file this write removes.

    delta-rs does not report this conflict when the other commit is a compaction
    (dataChange=false); committing anyway would keep the old rows alive in the
    compacted file next to their replacements.
    """
    from ..tables.log import commit_exists, read_commit

    if not commit_exists(target, read_version + 1):
        return  # nothing committed since the snapshot (a look at one file, not the whole log)
    latest = DeltaTable(target.uri, storage_options=target.storage_options or None).version()
    if latest == read_version:
        return
    ours = {r.path for r in staged.removes}
    for version in range(read_version + 1, latest + 1):
        removed = {r["path"] for r in read_commit(target, version).removes}
        if removed & ours:
            raise ConflictRetry(f"commit {version} removed files this write was replacing")
