"""Child-process side of the orchestrator benchmark (run.py starts it; never in-process).

    child.py headwater|dagster|prefect --tables N

One graph of N trivial tables: a root, N-2 tables reading it (fan-out) and a
sink reading all of those (fan-in). Every task does the same trivial work,
timed inside the task; the child reports the wall time of the whole graph run
and the summed work, so overhead = wall - work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import Stopwatch, child_report, current_rss_bytes  # noqa: E402

WORK = {"seconds": 0.0, "tasks": 0}


def work() -> int:
    """The task body every contestant runs: trivial, and timed."""
    started = time.perf_counter()
    value = sum(range(200))
    WORK["seconds"] += time.perf_counter() - started
    WORK["tasks"] += 1
    return value


def names(n: int) -> tuple[str, list[str], str]:
    return "root", [f"mid_{i:04d}" for i in range(n - 2)], "sink"


# -- Headwater -------------------------------------------------------------------------


def headwater(n: int) -> tuple[Stopwatch, dict[str, object]]:
    from headwater import Project, TableRun, table
    from headwater.declare import collecting
    from headwater.orchestrate import SystemClock, on_upstream
    from headwater.orchestrate.metadata import Metadata
    from headwater.orchestrate.scheduler import Scheduler
    from headwater.sources.memory import memory

    root, mids, sink = names(n)
    with collecting() as specs:
        table(f"bench.{root}", source=memory([]))
        for mid in mids:
            table(f"bench.{mid}", inputs=[f"bench.{root}"], trigger=on_upstream())
        table(
            f"bench.{sink}",
            inputs={mid: f"bench.{mid}" for mid in mids},
            trigger=on_upstream(),
        )

    class TrivialTables:
        """The scheduler's executor, doing the shared trivial work instead of a Delta write."""

        def __init__(self) -> None:
            self.versions: dict[str, int] = {}

        def execute(self, name, interval, run_id, run_ts):  # type: ignore[no-untyped-def]
            work()
            version = self.versions.get(name, -1) + 1
            self.versions[name] = version
            return TableRun(name, run_id, "committed", commits=1, version=version)

        def committed_version(self, name, run_id):  # type: ignore[no-untyped-def]
            return None

        def version(self, name):  # type: ignore[no-untyped-def]
            return self.versions.get(name)

    folder = tempfile.mkdtemp(prefix="hw-bench-orch-")
    project = Project.of_specs(folder, specs)
    meta = Metadata.open("sqlite:///metadata.db", folder)  # the real default: SQLite, WAL
    scheduler = Scheduler(
        project, metadata=meta, clock=SystemClock(), executor=TrivialTables(), workers=1
    ).start()
    with Stopwatch() as watch:
        scheduler.request(f"bench.{root}")
        scheduler.run_until_idle()
    scheduler.close()
    runs = meta.execute("SELECT status, count(*) FROM hw_runs GROUP BY status")
    return watch, {"runs": dict(runs)}


# -- Dagster ---------------------------------------------------------------------------


def dagster(n: int) -> tuple[Stopwatch, dict[str, object]]:
    home = tempfile.mkdtemp(prefix="hw-bench-dagster-")
    Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = home
    from dagster import AssetKey, DagsterInstance, asset, materialize

    root, mids, sink = names(n)

    @asset(name=root)
    def root_asset() -> None:
        work()

    def make_mid(name: str):  # type: ignore[no-untyped-def]
        @asset(name=name, deps=[AssetKey(root)])
        def mid_asset() -> None:
            work()

        return mid_asset

    mid_assets = [make_mid(m) for m in mids]

    @asset(name=sink, deps=[AssetKey(m) for m in mids])
    def sink_asset() -> None:
        work()

    assets = [root_asset, *mid_assets, sink_asset]
    instance = DagsterInstance.get()  # persistent run storage under DAGSTER_HOME (SQLite)
    with Stopwatch() as watch:
        result = materialize(assets, instance=instance)  # the in-process executor
    assert result.success
    return watch, {"runs": "materialize", "success": result.success}


# -- Prefect ---------------------------------------------------------------------------


def prefect(n: int) -> tuple[Stopwatch, dict[str, object]]:
    home = tempfile.mkdtemp(prefix="hw-bench-prefect-")
    os.environ.update(
        {
            "PREFECT_HOME": home,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Start-up is not measured; a busy machine needs more than the default 20 s.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        }
    )
    from prefect import flow, task

    root, mids, sink = names(n)

    @task
    def node(name: str, *upstream: int) -> int:
        return work()

    @flow
    def graph() -> int:
        first = node(root)
        middle = [node(m, first) for m in mids]
        return node(sink, *middle)

    graph()  # warm-up: starts the local API server and its database outside the timing
    WORK["seconds"], WORK["tasks"] = 0.0, 0
    with Stopwatch() as watch:
        graph()
    return watch, {"runs": "flow with tasks"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="child.py")
    parser.add_argument("contestant", choices=["headwater", "dagster", "prefect"])
    parser.add_argument("--tables", type=int, default=1000)
    args = parser.parse_args()
    base = current_rss_bytes()
    run = {"headwater": headwater, "dagster": dagster, "prefect": prefect}[args.contestant]
    watch, extra = run(args.tables)
    child_report(
        watch.wall_s,
        watch.cpu_s,
        base,
        work_s=WORK["seconds"],
        tasks=WORK["tasks"],
        **extra,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
