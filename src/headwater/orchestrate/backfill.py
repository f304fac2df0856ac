"""Backfills: rebuild a range of a table's intervals, resumable across restarts.

    headwater backfill gold.daily --start 2024-01-01 --end 2024-02-01 --parallel 2

The range is split into the table's intervals (and, with --with-downstream,
the same range of every table downstream of it, each interval after its
upstream's). The plan is written to the metadata DB first — one run per
(table, interval), marked "skipped" when a good run already covers it (unless
--rerun) — and then run like any other run, under the tables' leases, at a
lower priority than scheduled runs, at most `parallel` at once and starting at
most one every `throttle`. If the process stops, the same command (or a
`headwater serve`) resumes the plan: an interrupted interval whose commit got
in is recorded as done, the others run again, so no interval is lost or run
twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..engine.interval import Interval
from ..errors import ConfigError, HeadwaterError
from .clock import epoch, from_epoch
from .history import ACTIVE, GOOD, History, RunRecord, new_id
from .intervals import split
from .leases import owner_alive

if TYPE_CHECKING:
    from ..project import Project
    from .scheduler import Scheduler, _BackfillLimits


@dataclass(frozen=True)
class BackfillRequest:
    table: str
    start: datetime
    end: datetime
    parallel: int = 1
    on_failure: str = "stop"  # stop | continue
    with_downstream: bool = False
    rerun: bool = False
    throttle: timedelta = timedelta(0)
    interval: timedelta | None = None  # overrides the table's declared interval

    @classmethod
    def of(
        cls,
        table: str,
        start: str | datetime,
        end: str | datetime,
        **options: Any,
    ) -> BackfillRequest:
        bounds = Interval.of(start, end)  # dates mean midnight UTC; start must precede end
        return cls(table, bounds.start, bounds.end, **options)

    def key(self) -> str:
        """Same command, same key: how a repeated command finds the backfill to resume."""
        text = json.dumps(
            [
                self.table,
                self.start.isoformat(),
                self.end.isoformat(),
                self.with_downstream,
                self.rerun,
                None if self.interval is None else self.interval.total_seconds(),
            ]
        )
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def options_json(self) -> str:
        return json.dumps(
            {
                "parallel": self.parallel,
                "on_failure": self.on_failure,
                "with_downstream": self.with_downstream,
                "rerun": self.rerun,
                "throttle": self.throttle.total_seconds(),
                "interval": None if self.interval is None else self.interval.total_seconds(),
            }
        )


@dataclass
class Backfill:
    backfill_id: str
    request: BackfillRequest
    resumed: bool
    planned: int


def plan(project: Project, request: BackfillRequest) -> list[tuple[str, Interval]]:
    """(table, interval) pairs in the order they should run: by interval, upstream first."""
    spec = project.spec(request.table)
    if request.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    if request.on_failure not in ("stop", "continue"):
        raise ConfigError(
            f"--on-failure must be stop or continue, not {request.on_failure!r}",
            "stop cancels the intervals not started yet; continue runs them all",
        )
    step = request.interval or spec.orchestration.interval
    if step is None:
        raise ConfigError(
            f"table {request.table} declares no interval, so a backfill cannot split its range",
            "declare table(..., interval='1d') or pass --interval 1d",
        )
    tables = [request.table]
    if request.with_downstream:
        from ..transform.graph import downstream_of

        seen = {request.table}
        todo = [request.table]
        while todo:
            for d in downstream_of(project.tables, todo.pop()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        tables = project.order(sorted(seen))
    intervals = split(request.start, request.end, step, request.table)
    return [(table, interval) for interval in intervals for table in tables]


def submit(scheduler: Scheduler, request: BackfillRequest, hand_over: bool = False) -> Backfill:
    """Write the plan (or find the same unfinished one to resume) and hand it to `scheduler`;
    with `hand_over`, leave it unowned for a running `headwater serve` to pick up."""
    from .scheduler import PRIORITY_BACKFILL

    meta = scheduler.meta
    key = request.key()
    row = meta.one(
        "SELECT backfill_id, owner FROM hw_backfills WHERE spec_key = ? AND status = 'running' "
        "ORDER BY created_at DESC LIMIT 1",
        (key,),
    )
    if row is not None:
        backfill_id, owner = str(row[0]), row[1]
        if owner and owner != scheduler.owner and owner_alive(meta, owner, scheduler.clock):
            raise HeadwaterError(
                f"backfill {backfill_id} of {request.table} is running in another process ({owner})",
                "wait for it, or stop that process; the plan resumes where it stopped",
            )
        limits = adopt(scheduler, backfill_id, force=True)
        if limits is None:
            raise HeadwaterError(f"backfill {backfill_id} was taken over by another scheduler")
        scheduler.add_backfill(backfill_id, limits)
        scheduler.recover()  # its unfinished runs become ours (interrupted ones are checked)
        planned = len(History(meta).runs(backfill_id=backfill_id, limit=None))
        return Backfill(backfill_id, request, True, planned)

    pairs = plan(scheduler.project, request)
    now = scheduler.clock.now()
    backfill_id = "bf-" + new_id(now)
    history = scheduler.history
    owner = None if hand_over else scheduler.owner
    with meta.transaction():
        meta.execute(
            "INSERT INTO hw_backfills (backfill_id, table_name, start_at, end_at, options, spec_key, "
            "status, owner, created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            (
                backfill_id,
                request.table,
                epoch(request.start),
                epoch(request.end),
                request.options_json(),
                key,
                owner,
                epoch(now),
            ),
        )
        for table, interval in pairs:
            done = not request.rerun and history.interval_done(table, interval)
            history.create(
                RunRecord(
                    run_id=new_id(now),
                    table=table,
                    kind="backfill",
                    status="skipped" if done else "queued",
                    created_at=now,
                    run_key=f"backfill:{backfill_id}:{interval.start.isoformat()}",
                    trigger="backfill",
                    interval=interval,
                    logical_ts=now,
                    backfill_id=backfill_id,
                    priority=PRIORITY_BACKFILL,
                    not_before=now,
                    finished_at=now if done else None,
                    error="already complete (use --rerun to run it again)" if done else None,
                    owner=owner,
                )
            )
    if hand_over:
        return Backfill(backfill_id, request, False, len(pairs))
    scheduler.add_backfill(backfill_id, _limits(request.options_json()))
    scheduler.enqueue_in_order(history.runs(backfill_id=backfill_id, status=["queued"], limit=None))
    return Backfill(backfill_id, request, False, len(pairs))


def _limits(options: str) -> _BackfillLimits:
    from .scheduler import _BackfillLimits

    values = json.loads(options)
    return _BackfillLimits(
        parallel=int(values["parallel"]),
        throttle=timedelta(seconds=float(values["throttle"])),
        on_failure=str(values["on_failure"]),
    )


def adopt(scheduler: Scheduler, backfill_id: str, force: bool = False) -> _BackfillLimits | None:
    """Become the owner of a backfill whose owner is gone (or absent): its limits, or None."""
    meta = scheduler.meta
    row = meta.one(
        "SELECT owner, options, status FROM hw_backfills WHERE backfill_id = ?", (backfill_id,)
    )
    if row is None:
        return None
    owner, options, status = row
    if status != "running":
        return None
    if (
        owner
        and owner != scheduler.owner
        and not force
        and owner_alive(meta, owner, scheduler.clock)
    ):
        return None
    taken = meta.execute(
        "UPDATE hw_backfills SET owner = ? WHERE backfill_id = ? AND (owner IS NULL OR owner = ?) "
        "RETURNING backfill_id",
        (scheduler.owner, backfill_id, owner),
    )
    if not taken:
        return None
    return _limits(str(options))


def finish(scheduler: Scheduler, backfill_id: str) -> str:
    """Close a backfill whose runs have all ended: succeeded, failed or stopped."""
    runs = scheduler.history.runs(backfill_id=backfill_id, limit=None)
    if any(r.status in ACTIVE for r in runs):
        return "running"
    if any(r.status == "cancelled" for r in runs):
        status = "stopped"
    elif any(r.status in ("failed", "upstream-failed") for r in runs):
        status = "failed"
    else:
        status = "succeeded"
    scheduler.meta.execute(
        "UPDATE hw_backfills SET status = ?, finished_at = ? WHERE backfill_id = ? AND status = 'running'",
        (status, epoch(scheduler.clock.now()), backfill_id),
    )
    return status


def run(scheduler: Scheduler, request: BackfillRequest) -> tuple[Backfill, str]:
    """Submit (or resume) a backfill and run it to the end in this process."""
    import threading

    scheduler.start()
    backfill = submit(scheduler, request)
    pause = threading.Event()
    while scheduler.backfill_active(backfill.backfill_id):
        scheduler.run_until_idle()
        if scheduler.backfill_active(backfill.backfill_id):
            # Only retries with a backoff (or waits) are left: let their time come.
            scheduler.clock.wait(pause, 0.2)
    return backfill, finish(scheduler, backfill.backfill_id)


@dataclass
class IntervalReport:
    table: str
    interval: Interval | None
    status: str
    attempts: int
    rows_in: int | None
    rows_out: int | None
    version: int | None
    seconds: float | None
    error: str | None


def report(history: History, backfill_id: str) -> list[IntervalReport]:
    runs = history.runs(backfill_id=backfill_id, limit=None, newest_first=False)
    runs.sort(key=lambda r: (r.interval.start if r.interval else r.created_at, r.created_at))
    return [
        IntervalReport(
            r.table,
            r.interval,
            r.status,
            r.attempts,
            r.rows_in,
            r.rows_out,
            r.version,
            r.seconds,
            r.error if r.status not in GOOD else None,
        )
        for r in runs
    ]


def backfills(history: History, limit: int = 20) -> list[dict[str, Any]]:
    rows = history.meta.execute(
        "SELECT backfill_id, table_name, start_at, end_at, status, owner, created_at, finished_at "
        f"FROM hw_backfills ORDER BY created_at DESC LIMIT {int(limit)}"
    )
    return [
        {
            "backfill_id": r[0],
            "table": r[1],
            "start": from_epoch(r[2]),
            "end": from_epoch(r[3]),
            "status": r[4],
            "owner": r[5],
            "created_at": from_epoch(r[6]),
            "finished_at": from_epoch(r[7]),
        }
        for r in rows
    ]
