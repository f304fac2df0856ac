"""Side outputs (state, late events...): committed before the main commit, read back at the
version the main table recorded, never twice after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable

from headwater.tables.maintenance import compact

from .conftest import write_pipeline

PIPELINE = '''
import pyarrow as pa
from headwater import table
from headwater.engine.side_outputs import Outputs, SideOutput
from headwater.sources import files

table("bronze.events", source=files("in/*.ndjson"), strategy="append")


@table("silver.running", inputs=["bronze.events"], strategy="merge", keys=["k"])
def running(ctx, events):
    """A running count per key, kept in the table's state between runs."""
    previous = ctx.side("state")
    if previous is None:
        counted = ctx.sql("SELECT k, count(*) AS n FROM events GROUP BY k")
    else:
        ctx.con.register("previous", previous.to_arrow_table())
        counted = ctx.sql(
            "SELECT k, coalesce(p.n, 0) + coalesce(e.n, 0) AS n "
            "FROM (SELECT k, count(*) AS n FROM events GROUP BY k) e FULL JOIN previous p USING (k)"
        )
    state = counted.to_arrow_table()
    return Outputs(rows=state, side={"state": SideOutput(state, "overwrite")})
'''

DRIVER = """
import sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def make(root: Path) -> None:
    (root / "headwater.toml").write_text("")
    (root / "pipelines").mkdir()
    write_pipeline(root, "running", PIPELINE)
    (root / "in").mkdir()


def drop(root: Path, name: str, keys: list[str]) -> None:
    (root / "in" / f"{name}.ndjson").write_text("".join(json.dumps({"k": k}) + "\n" for k in keys))


def run(root: Path, failpoint: str | None = None) -> int:
    env = {**os.environ, **({"HEADWATER_FAILPOINTS": failpoint} if failpoint else {})}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)], env=env, timeout=120
    ).returncode


def counts(root: Path) -> dict[str, int]:
    table = DeltaTable(str(root / "warehouse" / "silver" / "running")).to_pyarrow_table()
    return dict(zip(table.column("k").to_pylist(), table.column("n").to_pylist(), strict=True))


def test_state_carries_across_runs_and_a_crash_counts_nothing_twice(tmp_path: Path) -> None:
    make(tmp_path)
    drop(tmp_path, "1", ["a", "a", "b"])
    assert run(tmp_path) == 0
    assert counts(tmp_path) == {"a": 2, "b": 1}
    drop(tmp_path, "2", ["a", "c"])
    # Dies after the state of batch 2 is committed, before the table's own commit.
    assert run(tmp_path, "after_quarantine@2") == -signal.SIGKILL
    state_table = DeltaTable(str(tmp_path / "warehouse" / "silver" / "running__state"))
    assert state_table.version() == 1  # the crashed attempt's state is there, not yet in use
    assert run(tmp_path) == 0
    assert counts(tmp_path) == {"a": 3, "b": 1, "c": 1}
    meta = DeltaTable(str(tmp_path / "warehouse" / "silver" / "running")).history(1)[0]["headwater"]
    assert meta["side_versions"] == {"state": 1}
    assert (
        DeltaTable(str(tmp_path / "warehouse" / "silver" / "running__state")).version() == 1
    )  # not written again
    drop(tmp_path, "3", ["b"])
    assert run(tmp_path) == 0
    assert counts(tmp_path) == {"a": 3, "b": 2, "c": 1}


def test_maintenance_keeps_the_side_versions(tmp_path: Path) -> None:
    make(tmp_path)
    drop(tmp_path, "1", ["a"])
    assert run(tmp_path) == 0
    drop(tmp_path, "2", ["a"])
    assert run(tmp_path) == 0
    from headwater import Project

    project = Project.load(tmp_path)
    compact(project.target("silver.running"), app_id="headwater/silver.running")
    drop(tmp_path, "3", ["a"])
    assert run(tmp_path) == 0
    assert counts(tmp_path) == {"a": 3}
