"""Table maintenance: compaction (optionally z-ordered), vacuum, checkpoints, health.

Every commit made here changes no data (`dataChange=false`): readers of the
table's changes see nothing new, and each commit repeats the table's latest
batch and input positions so they stay near the head of the log.

    compact    bin-pack small files into files of about the target size
    vacuum     delete files no snapshot within the retention needs (removed
               data files, Headwater's old change-data files, leftovers of
               crashed runs); 7 days at least unless forced
    checkpoint write a checkpoint of the latest version, so opening the table
               reads one Parquet file instead of replaying every commit
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties
from deltalake.exceptions import CommitFailedError, DeltaError

from ..engine.commit import carry_forward
from ..engine.lock import table_lock
from ..engine.position import META_KEY
from ..errors import HeadwaterError
from .delta import DeltaTarget

DEFAULT_TARGET_SIZE = 128 << 20
# Delta's own default for deletedFileRetentionDuration: a reader or writer that
# started within this window may still need the files vacuum would delete.
RETENTION_FLOOR_HOURS = 7 * 24
# How many recent commits are searched for the table's app id or its last z-order.
HISTORY_SCAN = 32
# Commits that leave data and file layout as they were.
_LAYOUT_NEUTRAL = frozenset({"VACUUM START", "VACUUM END"})


@dataclass
class TableHealth:
    version: int
    files: int
    bytes: int
    rows: int
    mean_file_bytes: float
    small_files: int
    small_file_ratio: float
    partitions: int


@dataclass
class MaintenanceReport:
    table: str
    files_before: int
    files_after: int
    files_compacted: int  # in a dry run: the files compaction would rewrite
    zordered: bool
    vacuumed: list[str]
    checkpoint_version: int | None
    health_before: TableHealth
    health_after: TableHealth


def small_file_limit(target_file_size: int) -> int:
    # A file under a quarter of the target merges with at least three others
    # into one target-sized file, so rewriting it cuts the file count by 4x or
    # more; bigger files gain too little from a rewrite to count as a problem.
    return target_file_size // 4


def table_health(target: DeltaTarget, target_file_size: int = DEFAULT_TARGET_SIZE) -> TableHealth:
    """File count, sizes, rows and small files of the latest snapshot."""
    _check_size(target, target_file_size, "target_file_size")
    version = target.refresh().table.version()
    actions = target.add_actions
    files = actions.num_rows
    if files == 0:
        return TableHealth(version, 0, 0, 0, 0.0, 0, 0.0, 0)
    sizes = actions.column("size_bytes")
    total = int(pc.sum(sizes).as_py() or 0)
    rows = 0
    if "num_records" in actions.column_names:
        # Files written without statistics count as zero rows rather than failing.
        rows = int(pc.sum(actions.column("num_records")).as_py() or 0)
    small = int(pc.sum(pc.less(sizes, small_file_limit(target_file_size))).as_py() or 0)
    partition_columns = [c for c in actions.column_names if c.startswith("partition.")]
    partitions = (
        actions.select(partition_columns).group_by(partition_columns).aggregate([]).num_rows
        if partition_columns
        else 1
    )
    return TableHealth(
        version=version,
        files=files,
        bytes=total,
        rows=rows,
        mean_file_bytes=total / files,
        small_files=small,
        small_file_ratio=small / files,
        partitions=partitions,
    )


def compact(
    target: DeltaTarget,
    *,
    target_size: int = DEFAULT_TARGET_SIZE,
    zorder_by: Sequence[str] = (),
    app_id: str | None = None,
) -> dict[str, int]:
    """Rewrite small files into files of about `target_size` bytes, clustered
    by `zorder_by` when given. Returns counts of files and bytes removed and added.

    A z-order rewrites every file, so it is skipped when the table's latest
    layout commit is already a z-order by the same columns.
    """
    _check_size(target, target_size, "target_size")
    columns = list(zorder_by)
    table = target.refresh().table
    if columns:
        _check_zorder_columns(target, columns)
    operation = _zorder_operation(columns) if columns else "compact"
    app = app_id if app_id is not None else _app_of(target)
    if columns and _is_zordered(target, columns):
        return _compact_result({}, table.version(), zordered=False)
    properties = carry_forward(target, app, operation)
    try:
        with table_lock(target, operation):
            table = target.refresh().table
            if columns:
                metrics = table.optimize.z_order(
                    columns, target_size=target_size, commit_properties=properties
                )
            else:
                metrics = table.optimize.compact(
                    target_size=target_size, commit_properties=properties
                )
    except CommitFailedError as exc:
        raise HeadwaterError(
            f"table {target.name}: {operation} conflicted with a concurrent commit",
            "run maintenance again; it starts from the table's new state",
        ) from exc
    except DeltaError as exc:
        raise HeadwaterError(
            f"table {target.name}: {operation} failed: {_first_line(exc)}"
        ) from exc
    version = target.refresh().table.version()
    return _compact_result(
        metrics, version, zordered=bool(columns) and metrics["numFilesAdded"] > 0
    )


def vacuum(
    target: DeltaTarget,
    *,
    retention_hours: float = RETENTION_FLOOR_HOURS,
    force: bool = False,
    dry_run: bool = False,
    app_id: str | None = None,
) -> list[str]:
    """Delete files that no version within `retention_hours` needs; return their
    paths (relative to the table), or with `dry_run` the paths it would delete.

    Deleted are: data files removed from the table longer ago than the retention,
    and unreferenced files older than it, which covers Headwater's change-data
    files under `_change_data/` and files left by runs that crashed before their
    commit. Files of the current snapshot are never deleted.
    """
    _check_retention(target, retention_hours, force)
    target.refresh()
    properties: CommitProperties | None = None
    if not dry_run:
        properties = carry_forward(
            target, app_id if app_id is not None else _app_of(target), "vacuum"
        )
    try:
        # Full mode also deletes unreferenced files (change data, crash leftovers),
        # judging them by age; removed files still inside the retention are kept.
        with table_lock(target, "vacuum"):
            deleted = target.refresh().table.vacuum(
                # delta-rs takes whole hours; rounding up never deletes more than asked.
                retention_hours=math.ceil(retention_hours),
                dry_run=dry_run,
                enforce_retention_duration=not force,
                full=True,
                commit_properties=properties,
            )
    except DeltaError as exc:
        if "retention" in str(exc).lower():
            raise HeadwaterError(
                f"table {target.name}: vacuum retention {retention_hours:g} h is below the table's "
                f"configured retention: {_first_line(exc)}",
                "use --force to vacuum anyway",
            ) from exc
        raise HeadwaterError(f"table {target.name}: vacuum failed: {_first_line(exc)}") from exc
    target.refresh()
    return sorted(deleted)


def checkpoint(target: DeltaTarget) -> int:
    """Checkpoint the latest version (if not already) and return that version."""
    table = target.refresh().table
    version = table.version()
    if _last_checkpoint(target) != version:
        table.create_checkpoint()
    return version


def maintain_table(
    target: DeltaTarget,
    *,
    app_id: str | None = None,
    target_size: int = DEFAULT_TARGET_SIZE,
    zorder_by: Sequence[str] = (),
    retention_hours: float = RETENTION_FLOOR_HOURS,
    force: bool = False,
    dry_run: bool = False,
) -> MaintenanceReport:
    """Compact (z-ordered when columns are given), vacuum, then checkpoint.

    With `dry_run` nothing is written or deleted: the report counts the files
    compaction would rewrite and lists the files vacuum would delete.
    """
    # Refuse a too-short retention before compacting, so a refusal changes nothing.
    _check_retention(target, retention_hours, force)
    health_before = table_health(target, target_size)
    if dry_run:
        columns = list(zorder_by)
        if columns:
            _check_zorder_columns(target, columns)
        zorder = bool(columns) and not _is_zordered(target, columns)
        vacuumed = vacuum(
            target, retention_hours=retention_hours, force=force, dry_run=True, app_id=app_id
        )
        return MaintenanceReport(
            table=target.name,
            files_before=health_before.files,
            files_after=health_before.files,
            files_compacted=_compaction_candidates(target, target_size, zorder),
            zordered=False,
            vacuumed=vacuumed,
            checkpoint_version=None,
            health_before=health_before,
            health_after=health_before,
        )
    compacted = compact(target, target_size=target_size, zorder_by=zorder_by, app_id=app_id)
    vacuumed = vacuum(target, retention_hours=retention_hours, force=force, app_id=app_id)
    version = checkpoint(target)
    health_after = table_health(target, target_size)
    return MaintenanceReport(
        table=target.name,
        files_before=health_before.files,
        files_after=health_after.files,
        files_compacted=compacted["files_removed"],
        zordered=bool(compacted["zordered"]),
        vacuumed=vacuumed,
        checkpoint_version=version,
        health_before=health_before,
        health_after=health_after,
    )


# -- helpers -------------------------------------------------------------------
def _check_size(target: DeltaTarget, size: int, what: str) -> None:
    if size <= 0:
        raise HeadwaterError(f"table {target.name}: {what} must be positive, not {size}")


def _check_retention(target: DeltaTarget, hours: float, force: bool) -> None:
    if hours < 0:
        raise HeadwaterError(f"table {target.name}: vacuum retention cannot be negative")
    if hours < RETENTION_FLOOR_HOURS and not force:
        raise HeadwaterError(
            f"table {target.name}: vacuum retention {hours:g} h is below the "
            f"{RETENTION_FLOOR_HOURS} h safety floor",
            "readers and time travel inside the window would lose files; use --force to vacuum anyway",
        )


def _check_zorder_columns(target: DeltaTarget, columns: list[str]) -> None:
    schema = target.schema
    names = set(schema.names) if schema is not None else set()
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise HeadwaterError(
            f"table {target.name}: cannot z-order by {', '.join(unknown)}: no such column",
            f"columns are: {', '.join(sorted(names))}",
        )
    partitioned = [c for c in columns if c in target.partition_by]
    if partitioned:
        raise HeadwaterError(
            f"table {target.name}: cannot z-order by partition column(s) {', '.join(partitioned)}",
            "files are already split by partition; z-order by other columns",
        )


def _app_of(target: DeltaTarget) -> str | None:
    """The Headwater app id that writes this table, from its recent commits."""
    for entry in target.table.history(HISTORY_SCAN):
        meta = entry.get(META_KEY)
        if isinstance(meta, dict) and isinstance(meta.get("app"), str):
            return str(meta["app"])
    return None


def _zorder_operation(columns: Sequence[str]) -> str:
    return f"z-order by {', '.join(columns)}"


def _is_zordered(target: DeltaTarget, columns: Sequence[str]) -> bool:
    """Whether the latest commit that changed files was a z-order by `columns`."""
    for entry in target.table.history(HISTORY_SCAN):
        if entry.get("operation") in _LAYOUT_NEUTRAL:
            continue
        meta = entry.get(META_KEY)
        return isinstance(meta, dict) and meta.get("operation") == _zorder_operation(columns)
    return False


def _compaction_candidates(target: DeltaTarget, target_size: int, zorder: bool) -> int:
    """Files a compaction would rewrite: every file for a z-order, otherwise
    the files under the target size in partitions holding two or more of them."""
    actions = target.add_actions
    if zorder or actions.num_rows == 0:
        return int(actions.num_rows)
    partition_columns = [c for c in actions.column_names if c.startswith("partition.")]
    small = actions.filter(pc.less(actions.column("size_bytes"), target_size))
    if small.num_rows == 0:
        return 0
    if not partition_columns:
        return int(small.num_rows) if small.num_rows > 1 else 0
    counts = (
        small.select([*partition_columns, "size_bytes"])
        .group_by(partition_columns)
        .aggregate([("size_bytes", "count")])
    )
    per_partition: pa.Array = counts.column("size_bytes_count")
    return int(pc.sum(pc.if_else(pc.greater(per_partition, 1), per_partition, 0)).as_py() or 0)


def _last_checkpoint(target: DeltaTarget) -> int | None:
    try:
        lines = target.read_json("_delta_log/_last_checkpoint")
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None
    return int(lines[0]["version"]) if lines and "version" in lines[0] else None


def _compact_result(metrics: dict[str, Any], version: int, *, zordered: bool) -> dict[str, int]:
    added = json.loads(metrics.get("filesAdded") or "{}")
    removed = json.loads(metrics.get("filesRemoved") or "{}")
    return {
        "files_removed": int(metrics.get("numFilesRemoved", 0)),
        "files_added": int(metrics.get("numFilesAdded", 0)),
        "bytes_removed": int(removed.get("totalSize", 0)),
        "bytes_added": int(added.get("totalSize", 0)),
        "partitions_optimized": int(metrics.get("partitionsOptimized", 0)),
        "files_considered": int(metrics.get("totalConsideredFiles", 0)),
        "files_skipped": int(metrics.get("totalFilesSkipped", 0)),
        "zordered": int(zordered),
        "version": version,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
