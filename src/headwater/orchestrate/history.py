"""Run history: one row per run (table, key) with its attempts, in the metadata DB.

A run is identified by a run id and keyed by (table, run key): the key names
what triggered it (a cron fire time and interval, an upstream version set, a
backfill interval), so two schedulers that see the same trigger create the run
once. Each attempt has its own engine run id, which is also written in the
Delta commit the attempt makes: after a crash, the commit tells whether an
interrupted attempt got through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..engine.interval import Interval
from .clock import epoch, from_epoch
from .metadata import Metadata

PENDING = ("queued", "retrying", "waiting")
ACTIVE = (*PENDING, "running")
GOOD = ("committed", "up-to-date")
FINAL = (*GOOD, "failed", "upstream-failed", "skipped", "cancelled")

_COLUMNS = (
    "run_id, table_name, run_key, kind, trigger_kind, interval_start, interval_end, covers_start, "
    "logical_ts, backfill_id, priority, status, attempts, not_before, wait_deadline, failure, "
    "error, hint, created_at, started_at, finished_at, seconds, rows_in, rows_out, metrics, "
    "positions, version, engine_run_id, owner"
)


def new_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class RunRecord:
    run_id: str
    table: str
    kind: str  # scheduled | backfill | manual | continuous
    status: str
    created_at: datetime
    run_key: str | None = None
    trigger: str | None = None
    interval: Interval | None = None
    covers: Interval | None = None  # what the run rebuilds (interval widened by the lookback)
    logical_ts: datetime | None = None
    backfill_id: str | None = None
    priority: int = 0
    attempts: int = 0
    not_before: datetime | None = None
    wait_deadline: datetime | None = None
    failure: str | None = None
    error: str | None = None
    hint: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    metrics: dict[str, int] = field(default_factory=dict)
    positions: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    engine_run_id: str | None = None
    owner: str | None = None

    @property
    def target_interval(self) -> Interval | None:
        return self.covers or self.interval

    def engine_id(self, attempt: int) -> str:
        return f"{self.run_id}.{attempt}"


def _interval(start: float | None, end: float | None) -> Interval | None:
    if start is None or end is None:
        return None
    a, b = from_epoch(start), from_epoch(end)
    assert a is not None and b is not None
    return Interval(a, b)


def _record(row: Sequence[Any]) -> RunRecord:
    (
        run_id, table, run_key, kind, trigger, i_start, i_end, covers_start, logical_ts,
        backfill_id, priority, status, attempts, not_before, wait_deadline, failure, error, hint,
        created_at, started_at, finished_at, seconds, rows_in, rows_out, metrics, positions,
        version, engine_run_id, owner,
    ) = row  # fmt: skip
    interval = _interval(i_start, i_end)
    covers = _interval(covers_start, i_end) if covers_start is not None else None
    created = from_epoch(created_at)
    assert created is not None
    return RunRecord(
        run_id=run_id,
        table=table,
        kind=kind,
        status=status,
        created_at=created,
        run_key=run_key,
        trigger=trigger,
        interval=interval,
        covers=covers,
        logical_ts=from_epoch(logical_ts),
        backfill_id=backfill_id,
        priority=int(priority),
        attempts=int(attempts),
        not_before=from_epoch(not_before),
        wait_deadline=from_epoch(wait_deadline),
        failure=failure,
        error=error,
        hint=hint,
        started_at=from_epoch(started_at),
        finished_at=from_epoch(finished_at),
        seconds=seconds,
        rows_in=rows_in,
        rows_out=rows_out,
        metrics=json.loads(metrics) if metrics else {},
        positions=json.loads(positions) if positions else {},
        version=version,
        engine_run_id=engine_run_id,
        owner=owner,
    )


def _e(moment: datetime | None) -> float | None:
    return None if moment is None else epoch(moment)


class History:
    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    # -- writing ----------------------------------------------------------------
    def create(self, run: RunRecord) -> bool:
        """Insert `run`; False when a run with the same (table, key) exists already."""
        rows = self.meta.execute(
            f"INSERT INTO hw_runs ({_COLUMNS}) VALUES ({', '.join('?' * 29)}) "
            "ON CONFLICT DO NOTHING RETURNING run_id",
            self._values(run),
        )
        return bool(rows)

    def _values(self, r: RunRecord) -> tuple[Any, ...]:
        return (
            r.run_id, r.table, r.run_key, r.kind, r.trigger,
            _e(r.interval.start) if r.interval else None,
            _e(r.interval.end) if r.interval else None,
            _e(r.covers.start) if r.covers else None,
            _e(r.logical_ts), r.backfill_id, r.priority, r.status, r.attempts,
            _e(r.not_before), _e(r.wait_deadline), r.failure, r.error, r.hint,
            _e(r.created_at), _e(r.started_at), _e(r.finished_at), r.seconds, r.rows_in,
            r.rows_out, json.dumps(r.metrics) if r.metrics else None,
            json.dumps(r.positions, default=str) if r.positions else None,
            r.version, r.engine_run_id, r.owner,
        )  # fmt: skip

    def claim(self, run: RunRecord, owner: str, now: datetime) -> bool:
        """Mark `run` running for its next attempt, if it is still pending and ours."""
        attempt = run.attempts + 1
        engine_id = run.engine_id(attempt)
        with self.meta.transaction():
            rows = self.meta.execute(
                "UPDATE hw_runs SET status = 'running', attempts = ?, engine_run_id = ?, "
                "started_at = ?, owner = ? WHERE run_id = ? AND owner = ? "
                f"AND status IN ({', '.join('?' * len(PENDING))}) RETURNING run_id",
                (attempt, engine_id, epoch(now), owner, run.run_id, owner, *PENDING),
            )
            if not rows:
                return False
            self.meta.execute(
                "INSERT INTO hw_attempts (run_id, attempt, engine_run_id, owner, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, 'running') ON CONFLICT DO NOTHING",
                (run.run_id, attempt, engine_id, owner, epoch(now)),
            )
        run.attempts, run.engine_run_id, run.started_at, run.status = (
            attempt,
            engine_id,
            now,
            "running",
        )
        run.owner = owner
        return True

    def update(self, run: RunRecord, attempt_status: str | None = None) -> None:
        """Write `run`'s state (status, timing, outcome) and close its current attempt."""
        with self.meta.transaction():
            self.meta.execute(
                "UPDATE hw_runs SET status = ?, not_before = ?, wait_deadline = ?, failure = ?, "
                "error = ?, hint = ?, finished_at = ?, seconds = ?, rows_in = ?, rows_out = ?, "
                "metrics = ?, positions = ?, version = ?, owner = ?, attempts = ? WHERE run_id = ?",
                (
                    run.status, _e(run.not_before), _e(run.wait_deadline), run.failure,
                    run.error, run.hint, _e(run.finished_at), run.seconds, run.rows_in,
                    run.rows_out, json.dumps(run.metrics) if run.metrics else None,
                    json.dumps(run.positions, default=str) if run.positions else None,
                    run.version, run.owner, run.attempts, run.run_id,
                ),
            )  # fmt: skip
            if attempt_status is not None and run.attempts:
                self.meta.execute(
                    "UPDATE hw_attempts SET status = ?, finished_at = ?, failure = ?, error = ? "
                    "WHERE run_id = ? AND attempt = ?",
                    (
                        attempt_status,
                        _e(run.finished_at),
                        run.failure,
                        run.error,
                        run.run_id,
                        run.attempts,
                    ),
                )

    def take_over(self, run_id: str, old_owner: str | None, owner: str) -> bool:
        """Become the owner of a run whose owner died (only one taker wins)."""
        if old_owner is None:
            rows = self.meta.execute(
                "UPDATE hw_runs SET owner = ? WHERE run_id = ? AND owner IS NULL RETURNING run_id",
                (owner, run_id),
            )
        else:
            rows = self.meta.execute(
                "UPDATE hw_runs SET owner = ? WHERE run_id = ? AND owner = ? RETURNING run_id",
                (owner, run_id, old_owner),
            )
        return bool(rows)

    def event(
        self, at: datetime, table: str, run_id: str | None, owner: str, event: str, detail: str = ""
    ) -> None:
        self.meta.execute(
            "INSERT INTO hw_events (at, table_name, run_id, owner, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (epoch(at), table, run_id, owner, event, detail),
        )

    # -- reading ----------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        row = self.meta.one(f"SELECT {_COLUMNS} FROM hw_runs WHERE run_id = ?", (run_id,))
        return None if row is None else _record(row)

    def runs(
        self,
        table: str | None = None,
        *,
        status: Sequence[str] | None = None,
        backfill_id: str | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[RunRecord]:
        where, params = [], []
        if table is not None:
            where.append("table_name = ?")
            params.append(table)
        if status:
            where.append(f"status IN ({', '.join('?' * len(status))})")
            params += list(status)
        if backfill_id is not None:
            where.append("backfill_id = ?")
            params.append(backfill_id)
        sql = f"SELECT {_COLUMNS} FROM hw_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {'DESC' if newest_first else 'ASC'}, run_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_record(r) for r in self.meta.execute(sql, params)]

    def active_of_others(self) -> list[RunRecord]:
        """Runs not finished yet, whoever owns them (for recovery)."""
        marks = ", ".join("?" * len(ACTIVE))
        rows = self.meta.execute(
            f"SELECT {_COLUMNS} FROM hw_runs WHERE status IN ({marks}) ORDER BY created_at",
            ACTIVE,
        )
        return [_record(r) for r in rows]

    def last(self, table: str, statuses: Sequence[str] | None = None) -> RunRecord | None:
        runs = self.runs(table, status=statuses, limit=1)
        return runs[0] if runs else None

    def last_finished(self, table: str) -> RunRecord | None:
        marks = ", ".join("?" * len(FINAL))
        row = self.meta.one(
            f"SELECT {_COLUMNS} FROM hw_runs WHERE table_name = ? AND status IN ({marks}) "
            "AND status <> 'skipped' ORDER BY finished_at DESC, created_at DESC LIMIT 1",
            (table, *FINAL),
        )
        return None if row is None else _record(row)

    def successes(self, table: str, since: datetime) -> list[datetime]:
        """Finish times of good runs since `since`, oldest first."""
        rows = self.meta.execute(
            "SELECT finished_at FROM hw_runs WHERE table_name = ? AND status IN ('committed', 'up-to-date') "
            "AND finished_at >= ? ORDER BY finished_at",
            (table, epoch(since)),
        )
        return [m for (value,) in rows if (m := from_epoch(value)) is not None]

    def interval_done(self, table: str, interval: Interval) -> bool:
        """Whether a good run covered exactly this interval of `table`."""
        row = self.meta.one(
            "SELECT 1 FROM hw_runs WHERE table_name = ? AND interval_start = ? AND interval_end = ? "
            "AND status IN ('committed', 'up-to-date') LIMIT 1",
            (table, epoch(interval.start), epoch(interval.end)),
        )
        return row is not None

    def interval_runs(self, table: str, start: datetime, end: datetime) -> list[RunRecord]:
        """Runs of `table` whose interval overlaps [start, end), newest first."""
        rows = self.meta.execute(
            f"SELECT {_COLUMNS} FROM hw_runs WHERE table_name = ? AND interval_start < ? "
            "AND interval_end > ? ORDER BY created_at DESC",
            (table, epoch(end), epoch(start)),
        )
        return [_record(r) for r in rows]

    def durations(self, table: str, last: int = 10) -> list[float]:
        rows = self.meta.execute(
            "SELECT seconds FROM hw_runs WHERE table_name = ? AND status IN ('committed', 'up-to-date') "
            f"AND seconds IS NOT NULL ORDER BY finished_at DESC LIMIT {int(last)}",
            (table,),
        )
        return [float(s) for (s,) in rows]

    def events(self, table: str | None = None) -> list[tuple[int, str, str | None, str, str]]:
        """(id, table, run id, owner, event) in the order they were written."""
        sql = "SELECT id, table_name, run_id, owner, event FROM hw_events"
        params: tuple[str, ...] = ()
        if table is not None:
            sql += " WHERE table_name = ?"
            params = (table,)
        return [
            (int(a), str(b), c, str(d), str(e))
            for a, b, c, d, e in self.meta.execute(sql + " ORDER BY id", params)
        ]
