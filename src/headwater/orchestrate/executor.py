"""How the scheduler runs one table: through the engine, as `headwater run` does.

Each attempt gets its own engine run id, which the engine writes into the
Delta commit it makes; `committed_version` finds that commit again, which is
how a restarted scheduler tells an interrupted attempt that got its commit in
from one that did not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..engine.interval import Interval
from ..engine.position import META_KEY
from ..engine.run import Runner, TableRun
from ..project import Project

# How far back in a table's log a restarted scheduler looks for an interrupted commit.
RECOVERY_LOG_DEPTH = 200


class Executor(Protocol):
    def execute(
        self, table: str, interval: Interval | None, run_id: str, run_ts: datetime
    ) -> TableRun:
        """Run `table` (for `interval`, or incrementally) under engine run id `run_id`."""

    def committed_version(self, table: str, run_id: str) -> int | None:
        """The table version committed by engine run `run_id`, if any."""

    def version(self, table: str) -> int | None:
        """The table's current version (None: not built)."""


class EngineExecutor:
    def __init__(self, project: Project) -> None:
        self.project = project

    def execute(
        self, table: str, interval: Interval | None, run_id: str, run_ts: datetime
    ) -> TableRun:
        # The engine names its commits with the run id; use the scheduler's attempt id so
        # the commit can be found again after a crash (see docs/orchestrate.md).
        runner = Runner(self.project, interval=interval, run_ts=run_ts, run_id=run_id)
        return runner.run_table(table)

    def committed_version(self, table: str, run_id: str) -> int | None:
        delta = self.project.target(table).refresh().load()
        if delta is None:
            return None
        for entry in delta.history(RECOVERY_LOG_DEPTH):
            meta = entry.get(META_KEY)
            if isinstance(meta, dict) and meta.get("run_id") == run_id:
                return int(entry["version"])
        return None

    def version(self, table: str) -> int | None:
        return self.project.target(table).refresh().version
