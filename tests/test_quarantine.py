"""Rows that cannot be loaded go to `<table>__quarantine` with the reason, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from headwater import table
from headwater.engine.quarantine import rejected_rows

from .conftest import write_pipeline
from .lake import Feed, Lake


class RejectingFeed(Feed):
    """Batches plus, for each, the rows a parser rejected."""

    def __init__(self) -> None:
        super().__init__([], name="feed")
        self.rejections: list[pa.Table] = []

    def read(self, position, ctx):  # type: ignore[no-untyped-def]
        for increment in super().read(position, ctx):
            increment.rejected = self.rejections[increment.position["next"] - 1]
            yield increment


def test_rejected_rows_land_in_quarantine_and_good_rows_load(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = RejectingFeed()
    lake.declare(lambda: table("bronze.events", source=feed, strategy="append"))
    feed.push([{"id": 1}, {"id": 2}])
    feed.rejections.append(
        rejected_rows(
            [
                {
                    "source": "in/a.ndjson",
                    "location": "line 3",
                    "check": "malformed",
                    "reason": "bad JSON",
                    "record": "{oops",
                }
            ]
        )
    )
    (run,) = lake.run()
    assert run.metrics["quarantined"] == 1 and run.metrics["inserted"] == 2
    assert [r["id"] for r in lake.rows("bronze.events")] == [1, 2]
    (bad,) = lake.rows("bronze.events__quarantine")
    assert (
        bad["source"] == "in/a.ndjson" and bad["location"] == "line 3" and bad["record"] == "{oops"
    )
    assert bad["batch"] == 1 and bad["run_id"] == run.run_id and bad["check"] == "malformed"


PIPELINE = '''
import json
from pathlib import Path

import pyarrow as pa

from headwater import table
from headwater.engine.quarantine import rejected_rows
from headwater.sources import Increment, Source


class Lines(Source):
    """Each line of in/*.jsonl once; lines that are not JSON are rejected."""

    kind = "lines"

    def describe(self):
        return "lines"

    def read(self, position, ctx):
        done = set((position or {}).get("files", []))
        for path in sorted((ctx.project_root / "in").glob("*.jsonl")):
            if path.name in done:
                continue
            good, bad = [], []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    good.append(json.loads(line))
                except ValueError as exc:
                    bad.append({"source": path.name, "location": f"line {number}", "check": "malformed",
                                "reason": str(exc), "record": line})
            done.add(path.name)
            yield Increment(pa.Table.from_pylist(good), {"files": sorted(done)}, rejected=rejected_rows(bad))


table("bronze.lines", source=Lines(), strategy="append")
'''

DRIVER = """
import sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def test_a_crash_between_quarantine_and_commit_quarantines_once(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text("")
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "lines", PIPELINE)
    (tmp_path / "in").mkdir()
    for n in range(3):
        (tmp_path / "in" / f"{n}.jsonl").write_text(
            f'{{"n": {n}}}\n{{broken {n}\n{{"n": {n + 10}}}\n'
        )

    def run(failpoint: str | None = None) -> int:
        env = {**os.environ, **({"HEADWATER_FAILPOINTS": failpoint} if failpoint else {})}
        return subprocess.run(
            [sys.executable, "-c", DRIVER, str(tmp_path)], env=env, timeout=120
        ).returncode

    assert run("after_quarantine@2") == -signal.SIGKILL  # file 1: quarantined, not committed
    assert run() == 0
    warehouse = tmp_path / "warehouse" / "bronze"
    rows = sorted(DeltaTable(str(warehouse / "lines")).to_pyarrow_table().column("n").to_pylist())
    assert rows == [0, 1, 2, 10, 11, 12]
    bad = DeltaTable(str(warehouse / "lines__quarantine")).to_pyarrow_table().to_pylist()
    assert sorted(r["record"] for r in bad) == ["{broken 0", "{broken 1", "{broken 2"]
    assert sorted(r["batch"] for r in bad) == [1, 2, 3]
    assert all(json.dumps(r["location"]) == '"line 2"' for r in bad)
