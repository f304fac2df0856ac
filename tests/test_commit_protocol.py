"""The commit protocol: data, batch number and positions in one Delta commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater import table
from headwater.engine.commit import CommitRequest, ConflictRetry, commit
from headwater.engine.position import read_committed_state
from headwater.tables.strategies import StagedWrite, WriteContext, get_strategy

from .conftest import write_pipeline
from .lake import Feed, Lake


def test_positions_are_read_back_from_the_tables_own_commit(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="append"))
    feed.push([{"x": 1}], [{"x": 2}])
    lake.run()
    target = lake.target("bronze.t")
    state = read_committed_state(target, "headwater/bronze.t")
    assert state.batch == 2 and state.positions == {"source": {"next": 2}} and state.version == 1
    # The batch number is a Delta transaction action: any Delta reader sees it.
    assert DeltaTable(target.uri).transaction_version("headwater/bronze.t") == 2
    commit_info = DeltaTable(target.uri).history(1)[0]["headwater"]
    assert (
        commit_info["positions"] == {"source": {"next": 2}}
        and commit_info["metrics"]["inserted"] == 1
    )


def test_a_batch_number_cannot_be_committed_twice(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="append"))
    feed.push([{"x": 1}])
    lake.run()
    target = lake.target("bronze.t")
    snapshot = target.table
    version = snapshot.version()

    def stage() -> StagedWrite:
        schema = pa.schema([("x", pa.int64())])
        ctx = WriteContext(
            "bronze.t", target, snapshot, schema, lake.specs[0].options, datetime.now(UTC), "r"
        )
        data = pa.RecordBatchReader.from_batches(schema, pa.table({"x": [9]}).to_batches())
        return get_strategy("append").stage(ctx, data)

    request = CommitRequest(
        "headwater/bronze.t",
        2,
        "run-a",
        "",
        "bronze.t",
        {"source": {"next": 2}},
        "append",
        pa.schema([("x", pa.int64())]),
        (),
    )
    commit(target, snapshot, stage(), request)
    # Another writer that read the same snapshot tries to commit the same batch: refused.
    with pytest.raises(ConflictRetry):
        commit(target, snapshot, stage(), CommitRequest(**{**request.__dict__, "run_id": "run-b"}))
    after = target.refresh().table
    assert after.version() == version + 1
    assert sorted(after.to_pyarrow_table().column("x").to_pylist()) == [1, 9]


RACE_PIPELINE = """
from headwater import table
from headwater.sources import files
table("bronze.events", source=files("landing/*.ndjson"), strategy="append")
"""

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run(["bronze.events"])
print(json.dumps([[r.table, r.status, r.commits, r.error] for r in results]))
"""


def test_concurrent_runs_of_one_table_commit_each_increment_once(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text("")
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "race", RACE_PIPELINE)
    (tmp_path / "landing").mkdir()
    for n in range(5):
        rows = [json.dumps({"event_id": f"{n}-{i}", "kind": "k"}) for i in range(10)]
        (tmp_path / "landing" / f"e{n}.ndjson").write_text("\n".join(rows))
    # Both processes stage the same increment, then pause before committing, so
    # their commits race: Delta lets exactly one win; the other starts again,
    # finds the files already loaded and commits nothing.
    env = {**os.environ, "HEADWATER_FAILPOINTS": "after_stage=sleep:1.5"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [json.loads(out)[0] for out, _ in outputs]
    assert sorted(r[2] for r in results) == [0, 1], (
        results
    )  # one committed, one had nothing left to do
    assert all(r[1] in ("committed", "up-to-date") for r in results), results
    events = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "events")).to_pyarrow_table()
    assert events.num_rows == 50 and len(set(events.column("event_id").to_pylist())) == 50


def test_a_run_that_changes_nothing_makes_no_commit(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="merge", keys=["id"]))
    lake.declare(lambda: table("silver.t", inputs=["bronze.t"], strategy="merge", keys=["id"]))
    feed.push([{"id": 1}])
    lake.run()
    versions = (lake.version("bronze.t"), lake.version("silver.t"))
    results = lake.run()
    assert [r.status for r in results] == ["up-to-date", "up-to-date"]
    assert (lake.version("bronze.t"), lake.version("silver.t")) == versions


def _merge_table_with_many_files(tmp_path: Path) -> tuple[Lake, Feed]:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="merge", keys=["id"]))
    for start in range(0, 40, 10):
        feed.push([{"id": i, "v": "old"} for i in range(start, start + 10)])
    lake.run()
    feed.push([{"id": 0, "v": "new"}, {"id": 25, "v": "new"}])
    return lake, feed


@pytest.mark.parametrize("compactor", ["headwater", "another engine"])
def test_a_compaction_during_a_merge_never_duplicates_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compactor: str
) -> None:
    """delta-rs does not see a compaction as conflicting with a merge that removes
    the same files; Headwater's lock and pre-commit check must."""
    import threading
    import time

    from headwater.tables.maintenance import compact

    lake, _ = _merge_table_with_many_files(tmp_path)
    target = lake.target("bronze.t")
    monkeypatch.setenv("HEADWATER_FAILPOINTS", "after_stage=sleep:1.5")

    def compaction() -> None:
        time.sleep(0.5)  # while the merge is staged and waiting to commit
        if compactor == "headwater":
            compact(lake.project.target("bronze.t"))
        else:
            DeltaTable(target.uri).optimize.compact()

    thread = threading.Thread(target=compaction)
    thread.start()
    (run,) = lake.run()
    thread.join()
    rows = lake.rows("bronze.t", "id")
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert {r["id"]: r["v"] for r in rows if r["v"] == "new"} == {0: "new", 25: "new"}
    assert run.status == "committed"
