"""Table maintenance on real Delta tables: compaction, z-order, vacuum, checkpoints, health."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater.declare import TableSpec, table
from headwater.engine.position import read_committed_state
from headwater.engine.run import Runner
from headwater.errors import HeadwaterError
from headwater.project import Project
from headwater.sources.memory import MemorySource, memory
from headwater.tables.delta import DeltaTarget
from headwater.tables.log import read_commit
from headwater.tables.maintenance import (
    checkpoint,
    compact,
    maintain_table,
    table_health,
    vacuum,
)

MONTH = 30 * 24 * 3600


@dataclass
class Pipeline:
    project: Project
    source: MemorySource
    bronze: TableSpec

    @property
    def target(self) -> DeltaTarget:
        return self.project.target("bronze.t").refresh()

    def run(self) -> dict[str, Any]:
        return {r.table: r for r in Runner(self.project).run()}


def _batch(start: int, partitioned: bool = False) -> list[dict[str, Any]]:
    """Three new keys plus an update of key 0, so each merge also rewrites a file."""
    rows: list[dict[str, Any]] = [
        {"id": i, "x": i % 5, "v": f"v{i}"} for i in range(start, start + 3)
    ]
    if start:
        rows.append({"id": 0, "x": 0, "v": f"updated at {start}"})
    if partitioned:
        for row in rows:
            row["p"] = "even" if row["id"] % 2 == 0 else "odd"
    return rows


@pytest.fixture
def make_pipeline(declarations: list[TableSpec], tmp_path: Path) -> Any:
    def make(batches: int = 6, partitioned: bool = False) -> Pipeline:
        source = memory([_batch(3 * b, partitioned) for b in range(batches)])
        table(
            "bronze.t",
            source=source,
            strategy="merge",
            keys=["id"],
            partition_by=["p"] if partitioned else [],
        )
        # A reader of bronze's changes, so merges also write change-data files.
        table("silver.t", inputs=["bronze.t"], strategy="merge", keys=["id"])
        project = Project.of_specs(tmp_path, list(declarations))
        pipeline = Pipeline(project, source, project.spec("bronze.t"))
        results = pipeline.run()
        assert all(r.status == "committed" for r in results.values()), results
        return pipeline

    return make


def rows(target: DeltaTarget, version: int | None = None) -> list[dict[str, Any]]:
    table = target.load(version) if version is not None else target.refresh().table
    assert table is not None
    return sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


def root_of(target: DeltaTarget) -> Path:
    return Path(target.filesystem()[1])


def live_files(target: DeltaTarget) -> set[str]:
    return set(target.refresh().add_actions.column("path").to_pylist())


def files_on_disk(target: DeltaTarget) -> set[str]:
    root = root_of(target)
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.parquet")
        if "_delta_log" not in p.relative_to(root).parts
    }


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- compaction ------------------------------------------------------------------
@pytest.mark.parametrize("pass_app_id", [True, False], ids=["app-id", "app-id-from-log"])
def test_compaction_changes_no_data_and_keeps_positions(
    make_pipeline: Any, pass_app_id: bool
) -> None:
    pipeline = make_pipeline()
    target, app = pipeline.target, pipeline.bronze.app_id
    before = rows(target)
    files_before = table_health(target).files
    state_before = read_committed_state(target, app)
    assert files_before > 5

    result = compact(target, app_id=app if pass_app_id else None)

    assert result["files_removed"] == files_before
    assert result["files_added"] == 1
    assert table_health(target).files == 1
    assert rows(target) == before
    # The compaction commit repeats batch and positions, so they sit at the head of the log.
    state_after = read_committed_state(target, app)
    assert (state_after.batch, state_after.positions) == (
        state_before.batch,
        state_before.positions,
    )
    assert state_after.version == result["version"] == target.version
    commit = read_commit(target, result["version"])
    assert commit.adds and commit.removes
    assert not any(a.get("dataChange", True) for a in commit.adds + commit.removes)

    # Readers of the table's changes see nothing new...
    again = pipeline.run()
    assert {r.status for r in again.values()} == {"up-to-date"}
    assert sum(r.commits for r in again.values()) == 0
    # ...and read only the new rows once new data arrives after the compaction.
    pipeline.source.batches.append(pa.Table.from_pylist(_batch(100)))
    later = pipeline.run()
    assert later["silver.t"].status == "committed"
    # The three new keys and the update of key 0, nothing older.
    assert (later["silver.t"].metrics["inserted"], later["silver.t"].metrics["updated"]) == (3, 1)
    assert rows(pipeline.project.target("silver.t")) == rows(target)


def test_compaction_bins_per_partition_and_honours_target_size(make_pipeline: Any) -> None:
    pipeline = make_pipeline(partitioned=True)
    target = pipeline.target
    before = rows(target)
    version = target.version

    # Every file is already at least 1 byte: nothing is small enough to rewrite.
    assert compact(target, target_size=1)["files_removed"] == 0
    assert target.refresh().version == version

    result = compact(target)
    health = table_health(target)
    assert (health.files, health.partitions) == (2, 2)
    assert result["partitions_optimized"] == 2
    assert rows(target) == before
    # Nothing left to do: a second compaction makes no commit.
    assert compact(target)["files_removed"] == 0
    assert target.refresh().version == result["version"]


def test_zorder_rewrites_once_until_new_data_arrives(make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    target = pipeline.target
    before = rows(target)

    first = compact(target, zorder_by=["x", "id"])
    assert first["zordered"] == 1
    assert table_health(target).files == 1
    assert rows(target) == before
    assert read_committed_state(target, pipeline.bronze.app_id).version == first["version"]

    # Already z-ordered by these columns and nothing written since: no rewrite.
    second = compact(target, zorder_by=["x", "id"])
    assert (second["zordered"], second["version"]) == (0, first["version"])
    # Vacuum's commits change no layout, so the table still counts as z-ordered.
    assert vacuum(target, retention_hours=0, force=True)
    vacuumed_version = target.refresh().version
    assert vacuumed_version is not None and vacuumed_version > first["version"]
    assert compact(target, zorder_by=["x", "id"])["zordered"] == 0
    assert maintain_table(target, zorder_by=["x", "id"], dry_run=True).files_compacted == 0
    assert target.refresh().version == vacuumed_version
    # Other columns, or new data, order the table again.
    pipeline.source.batches.append(pa.Table.from_pylist(_batch(200)))
    pipeline.run()
    third = compact(target, zorder_by=["x", "id"])
    assert third["zordered"] == 1 and third["version"] > first["version"]
    assert rows(target) == rows(pipeline.project.target("silver.t"))


def test_zorder_rejects_unknown_and_partition_columns(make_pipeline: Any) -> None:
    target = make_pipeline(batches=2, partitioned=True).target
    with pytest.raises(HeadwaterError, match=r"table bronze\.t: cannot z-order by nope"):
        compact(target, zorder_by=["nope"])
    with pytest.raises(HeadwaterError, match="partition column"):
        compact(target, zorder_by=["p"])


# -- vacuum --------------------------------------------------------------------------
def test_vacuum_below_the_floor_needs_force(make_pipeline: Any) -> None:
    target = make_pipeline(batches=3).target
    version = target.version
    with pytest.raises(HeadwaterError) as caught:
        vacuum(target, retention_hours=24)
    assert "bronze.t" in caught.value.message and "168" in caught.value.message
    assert caught.value.hint is not None and "--force" in caught.value.hint
    assert "\n" not in str(caught.value)
    # maintain_table refuses before compacting anything.
    with pytest.raises(HeadwaterError):
        maintain_table(target, retention_hours=0)
    assert target.refresh().version == version


def test_vacuum_keeps_removed_files_for_the_retention_then_deletes_them(
    make_pipeline: Any,
) -> None:
    pipeline = make_pipeline()
    target = pipeline.target
    before_compaction = target.version
    content = rows(target)
    compact(target)
    live = live_files(target)

    # Files removed moments ago are still needed to read recent versions.
    assert vacuum(target) == []
    assert rows(target, before_compaction) == content

    unreferenced = files_on_disk(target) - live
    planned = vacuum(target, retention_hours=0, force=True, dry_run=True)
    assert set(planned) == unreferenced
    assert files_on_disk(target) >= unreferenced  # a dry run deletes nothing

    deleted = vacuum(target, retention_hours=0, force=True, app_id=pipeline.bronze.app_id)
    assert deleted == planned
    assert files_on_disk(target) == live
    assert rows(target) == content
    state = read_committed_state(target, pipeline.bronze.app_id)
    assert state.version == target.version  # vacuum's commits carry the positions too


def test_vacuum_removes_old_change_data_and_crash_leftovers_only(make_pipeline: Any) -> None:
    target = make_pipeline().target
    root = root_of(target)
    change_files = sorted((root / "_change_data").glob("*.parquet"))
    assert len(change_files) >= 2
    old_change, recent_change = change_files[0], change_files[1]
    age(old_change, MONTH)
    # A data file a crashed run wrote but never committed, long ago and just now.
    some_live = root / sorted(live_files(target))[0]
    old_leftover, new_leftover = (
        root / "part-crashed-old.parquet",
        root / "part-crashed-new.parquet",
    )
    shutil.copy(some_live, old_leftover)
    shutil.copy(some_live, new_leftover)
    age(old_leftover, MONTH)
    content = rows(target)

    expected = sorted(
        [old_change.relative_to(root).as_posix(), old_leftover.relative_to(root).as_posix()]
    )
    assert vacuum(target, dry_run=True) == expected
    assert old_change.exists() and old_leftover.exists()

    assert vacuum(target) == expected
    assert not old_change.exists() and not old_leftover.exists()
    assert recent_change.exists() and new_leftover.exists()
    assert all((root / p).exists() for p in live_files(target))
    assert rows(target) == content


# -- checkpoint and health -------------------------------------------------------------
def test_checkpoint_keeps_the_table_readable(make_pipeline: Any) -> None:
    pipeline = make_pipeline(batches=4)
    target = pipeline.target
    app = pipeline.bronze.app_id
    content, state = rows(target), read_committed_state(target, app)

    version = checkpoint(target)
    assert version == target.version
    log_dir = root_of(target) / "_delta_log"
    written = log_dir / f"{version:020d}.checkpoint.parquet"
    assert written.exists()
    assert target.read_json("_delta_log/_last_checkpoint")[0]["version"] == version

    fresh = DeltaTarget(target.uri, target.name)
    assert rows(fresh) == content
    assert read_committed_state(fresh, app) == state
    # Checkpointing the same version again writes nothing.
    stamp = written.stat().st_mtime_ns
    assert checkpoint(target) == version
    assert written.stat().st_mtime_ns == stamp
    assert {r.status for r in pipeline.run().values()} == {"up-to-date"}


def test_table_health_counts_files_rows_and_small_files(make_pipeline: Any) -> None:
    target = make_pipeline(partitioned=True).target
    actions = target.add_actions
    sizes = sorted(actions.column("size_bytes").to_pylist())
    root = root_of(target)

    health = table_health(target)
    assert health.version == target.version
    assert health.files == len(sizes) > 2
    assert health.bytes == sum(sizes) == sum((root / p).stat().st_size for p in live_files(target))
    assert health.rows == len(rows(target))
    assert health.partitions == 2
    assert health.mean_file_bytes == pytest.approx(sum(sizes) / len(sizes))
    assert (health.small_files, health.small_file_ratio) == (len(sizes), 1.0)

    # Small means under a quarter of the target size.
    middle = sizes[len(sizes) // 2]
    expected = sum(1 for s in sizes if s < middle)
    quarter = table_health(target, target_file_size=4 * middle)
    assert quarter.small_files == expected < len(sizes)
    assert quarter.small_file_ratio == pytest.approx(expected / len(sizes))


# -- maintain_table --------------------------------------------------------------------
def test_maintain_table_dry_run_changes_nothing(make_pipeline: Any) -> None:
    target = make_pipeline().target
    version, on_disk = target.version, files_on_disk(target)
    log = sorted(p.name for p in (root_of(target) / "_delta_log").iterdir())

    report = maintain_table(target, retention_hours=0, force=True, dry_run=True)

    assert target.refresh().version == version
    assert files_on_disk(target) == on_disk
    assert sorted(p.name for p in (root_of(target) / "_delta_log").iterdir()) == log
    assert report.files_before == report.files_after == len(live_files(target))
    assert report.files_compacted == report.files_before  # all small, one partition
    assert set(report.vacuumed) == on_disk - live_files(target)
    assert report.checkpoint_version is None
    assert report.health_after == report.health_before


def test_maintain_table_compacts_vacuums_and_checkpoints(make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    target, app = pipeline.target, pipeline.bronze.app_id
    content, state = rows(target), read_committed_state(target, app)
    live_before = live_files(target)

    report = maintain_table(target, app_id=app, zorder_by=["x"], retention_hours=0, force=True)

    assert report.table == "bronze.t"
    assert report.files_before == len(live_before) and report.files_after == 1
    assert report.files_compacted == len(live_before)
    assert report.zordered
    assert live_before <= set(report.vacuumed)  # compacted away, then vacuumed at 0 h
    assert files_on_disk(target) == live_files(target)
    assert report.checkpoint_version == target.version
    assert report.health_after.files == 1 and report.health_after.rows == len(content)
    assert rows(target) == content
    after = read_committed_state(target, app)
    assert (after.batch, after.positions) == (state.batch, state.positions)
    assert {r.status for r in pipeline.run().values()} == {"up-to-date"}
