"""The scheduler behind `headwater serve` (and `headwater backfill`).

One loop, one process. Each tick:

1. collect   finished runs: record the outcome, decide retries, tell downstream
2. recover   runs whose scheduler died: adopt a commit that got in, re-run the rest
3. fire      triggers due now: cron times, upstream commits, sensor changes
4. poke      waiting runs: sensors and inputs not ready yet, until their timeout
5. dispatch  ready runs, by priority (scheduled before backfills), each under the
             table's lease, on a pool of worker threads; continuous tables are
             supervised (restarted with backoff)
6. SLAs      evaluate freshness and ready-by SLAs; alert and resolve

Every run is a row in the metadata DB before it starts (the DB, not memory, is
what survives a crash), keyed by (table, run key) so two schedulers seeing the
same trigger create it once; the table's lease makes sure only one of them
runs a table at a time. Time comes from an injectable Clock.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..engine.interval import Interval
from ..engine.run import TableRun
from ..errors import ConfigError, HeadwaterError, UpstreamNotReady, failure_kind
from ..project import Project
from .alerts import AlertManager, sinks_from_config
from .clock import Clock, SystemClock, epoch, from_epoch, monotonic
from .executor import EngineExecutor, Executor
from .history import ACTIVE, GOOD, History, RunRecord, new_id
from .intervals import covering, latest_eligible
from .leases import Heartbeat, Leases, new_owner, owner_alive, table_lease
from .metadata import Metadata, open_metadata
from .options import Orchestration
from .sla import evaluate
from .triggers import Continuous, Cron, FileSensor, OnUpstream, Sensor, SqlSensor

log = logging.getLogger("headwater.orchestrate")

PRIORITY_SCHEDULED = 0
PRIORITY_MANUAL = 0
PRIORITY_BACKFILL = 10
FAILED = ("failed", "upstream-failed")


@dataclass
class _Supervised:
    """A continuous table under supervision."""

    trigger: Continuous
    next_at: datetime
    failures: int = 0
    running: bool = False
    idle_run: str | None = None  # the row that absorbs consecutive up-to-date cycles


@dataclass
class _BackfillLimits:
    parallel: int
    throttle: timedelta
    on_failure: str
    last_start: datetime | None = None
    running: int = 0


@dataclass(order=True)
class _Queued:
    priority: int
    seq: int
    run: RunRecord = field(compare=False)


class Scheduler:
    def __init__(
        self,
        project: Project,
        *,
        metadata: Metadata | None = None,
        clock: Clock | None = None,
        executor: Executor | None = None,
        alerts: AlertManager | None = None,
        workers: int | None = None,
        owner: str | None = None,
        lease_seconds: float | None = None,
        triggers: bool = True,
        seed: int | None = None,
    ) -> None:
        self.project = project
        settings = project.config.scheduler
        self.meta = metadata or open_metadata(project)
        self.clock: Clock = clock or SystemClock()
        self.executor: Executor = executor or EngineExecutor(project)
        self.history = History(self.meta)
        self.owner = owner or new_owner()
        self.leases = Leases(
            self.meta,
            self.owner,
            self.clock,
            timedelta(seconds=lease_seconds or settings.lease_seconds),
        )
        self.alerts = alerts or AlertManager(
            self.meta, sinks_from_config(project.config), self.clock, project.config.project.name
        )
        self.workers = workers or settings.workers or project.config.defaults.parallel_tables
        self.poll = settings.poll_seconds
        self.settings = settings
        # Whether this scheduler fires triggers (serve) or only runs what it is given (backfill).
        self.fires_triggers = triggers
        self.rng = random.Random(seed)
        self.order = project.order()
        self.upstream: dict[str, list[str]] = {
            n: [u for u in project.spec(n).upstream_tables() if u in project.tables]
            for n in self.order
        }
        self.downstream: dict[str, list[str]] = defaultdict(list)
        for name, ups in self.upstream.items():
            for u in ups:
                self.downstream[u].append(name)
        self.position = {name: i for i, name in enumerate(self.order)}
        # In-memory state (the DB holds the truth; this is what this process is doing).
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        self._waiting: dict[str, RunRecord] = {}
        self._running: dict[Future[tuple[RunRecord, TableRun | None]], RunRecord] = {}
        self._active = Counter[str]()  # pending or running runs per table (this process)
        self._active_upstream = Counter[str]()  # ... summed over each table's inputs
        self._dirty: set[str] = set()  # on_upstream tables with news to look at
        self._versions: dict[str, int | None] = {}
        self._trigger_state: dict[str, dict[str, Any]] = {}
        self._next_fire: dict[str, datetime | None] = {}
        self._supervised: dict[str, _Supervised] = {}
        self._sensors: list[tuple[str, Sensor]] = []
        self._busy_tables: set[str] = set()
        self._held: list[_Queued] = []
        self._progress = False
        self._backfills: dict[str, _BackfillLimits] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="headwater-sched")
        self._wake = threading.Event()
        self._heartbeat = Heartbeat(self.leases)
        self._started = False
        self.started_at = self.clock.now()
        self.finished_runs = 0
        self._last_recover = 0.0
        self._last_upstream_poll = 0.0
        self._last_sla = 0.0
        self.on_finish: list[Any] = []  # callbacks(run, result), e.g. the CLI's live report

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._started:
            return self
        self._started = True
        self.started_at = self.clock.now()
        self._heartbeat.start()
        self.recover()
        if self.fires_triggers:
            self._load_triggers()
        return self

    def close(self) -> None:
        """Finish the runs under way, release every lease and stop."""
        for future in list(self._running):
            try:
                future.result()
            except Exception as exc:  # collected for the record below
                log.warning("run failed while stopping: %s", exc)
        self._collect(wait=False)
        self._pool.shutdown(wait=True)
        self._heartbeat.stop()
        self.leases.release_all()

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(self, stop: threading.Event, max_runs: int | None = None) -> None:
        """Tick until `stop` is set (or `max_runs` runs have finished)."""
        self.start()
        try:
            while not stop.is_set():
                self.tick()
                if max_runs is not None and self.finished_runs >= max_runs:
                    break
                self._wake.clear()
                self.clock.wait(self._wake, self._sleep_for())
        finally:
            self.close()

    def _sleep_for(self) -> float:
        now = self.clock.now()
        due = [self.poll]
        if self._queue and len(self._running) < self.workers:
            head = self._queue[0].run.not_before
            due.append(0.0 if head is None else (head - now).total_seconds())
        for moment in self._next_fire.values():
            if moment is not None:
                due.append((moment - now).total_seconds())
        return max(0.0, min(due))

    # -- the loop -----------------------------------------------------------------
    def tick(self) -> bool:
        """One pass of the loop; True if anything changed (a run created, started, ended)."""
        self._progress = False
        self._collect()
        now = self.clock.now()
        if monotonic() - self._last_recover > self.leases.ttl.total_seconds() / 2:
            self.recover()
        if self.fires_triggers:
            self._fire(now)
        self._poke(now)
        self._dispatch(now)
        if self.fires_triggers and (
            monotonic() - self._last_sla >= self.settings.sla_check_seconds
        ):
            self.check_slas()
        return self._progress

    def run_until_idle(self, max_ticks: int = 100_000) -> None:
        """Tick until nothing is running or due now (tests and one-shot commands)."""
        self.start()
        for _ in range(max_ticks):
            progressed = self.tick()
            if self._running:
                self._wait_one()
                continue
            if not progressed:
                return  # nothing can move until time passes or something outside changes

    def _wait_one(self) -> None:
        done = threading.Event()
        for future in list(self._running):
            future.add_done_callback(lambda _: done.set())
        done.wait()

    # -- requests -----------------------------------------------------------------
    def request(
        self,
        table: str,
        interval: Interval | None = None,
        *,
        kind: str = "manual",
        priority: int = PRIORITY_MANUAL,
        run_key: str | None = None,
        backfill_id: str | None = None,
        covers: Interval | None = None,
        status: str = "queued",
        trigger: str | None = None,
        logical_ts: datetime | None = None,
        wait_deadline: datetime | None = None,
    ) -> RunRecord | None:
        """Create a run of `table` and queue it; None if its run key exists already."""
        self.project.spec(table)
        now = self.clock.now()
        run = RunRecord(
            run_id=new_id(now),
            table=table,
            kind=kind,
            status=status,
            created_at=now,
            run_key=run_key,
            trigger=trigger,
            interval=interval,
            covers=covers if covers is not None and covers != interval else None,
            logical_ts=logical_ts or now,
            backfill_id=backfill_id,
            priority=priority,
            not_before=now,
            wait_deadline=wait_deadline,
            owner=self.owner,
        )
        if not self.history.create(run):
            return None
        self._enqueue(run)
        return run

    def _enqueue(self, run: RunRecord) -> None:
        self._progress = True
        self._activate(run.table, +1)
        if run.status == "waiting":
            self._waiting[run.run_id] = run
        else:
            heapq.heappush(self._queue, _Queued(run.priority, next(self._seq), run))
        self._wake.set()

    def _activate(self, table: str, delta: int) -> None:
        self._active[table] += delta
        for d in self.downstream.get(table, ()):
            self._active_upstream[d] += delta

    # -- 1. collect ---------------------------------------------------------------
    def _collect(self, wait: bool = False) -> None:
        for future in [f for f in self._running if f.done() or wait]:
            run = self._running.pop(future)
            self._busy_tables.discard(run.table)
            try:
                _, result = future.result()
            except Exception as exc:  # the worker records its own failures; this is a bug
                log.exception("scheduler worker crashed on %s", run.table)
                result = None
                run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
            self._activate(run.table, -1)
            self.finished_runs += 1
            self._progress = True
            if run.backfill_id in self._backfills:
                self._backfills[run.backfill_id].running -= 1
            supervised = self._supervised.get(run.table) if run.kind == "continuous" else None
            if supervised is not None:
                supervised.running = False
            self._after(run, result)

    def _after(self, run: RunRecord, result: TableRun | None) -> None:
        """Follow-ups in the loop's thread: requeue, downstream, alerts, backfill limits."""
        self._progress = True
        if run.status in ("retrying", "queued", "waiting"):
            self._enqueue(run)  # it stays this scheduler's to finish
            return
        if result is not None and result.version is not None:
            previous = self._versions.get(run.table)
            self._versions[run.table] = result.version
            if result.status == "committed" and result.version != previous:
                for d in self.downstream.get(run.table, ()):
                    trigger = self.project.spec(d).orchestration.trigger
                    if isinstance(trigger, OnUpstream) and (
                        trigger.tables is None or run.table in trigger.tables
                    ):
                        self._dirty.add(d)
        if run.status in GOOD:
            self.alerts.resolve(
                run.table,
                ["failure", "data-quality", "sensor-timeout", "upstream-not-ready"],
                f"{run.table} ran successfully ({run.status})",
            )
        elif run.status == "failed":
            kind = run.failure if run.failure in ("data-quality", "sensor-timeout") else "failure"
            self.alerts.fire(
                f"{run.table}:{kind}",
                run.table,
                kind,
                f"run {run.run_id} failed ({run.failure}) after {run.attempts} attempt(s): {run.error}",
            )
            self._mark_downstream_failed(run)
            limits = self._backfills.get(run.backfill_id or "")
            if limits is not None and limits.on_failure == "stop":
                self._cancel_backfill(str(run.backfill_id), f"stopped: {run.table} failed")
        if run.backfill_id in self._backfills and not self.backfill_active(str(run.backfill_id)):
            from .backfill import finish

            finish(self, str(run.backfill_id))
        for callback in self.on_finish:
            callback(run, result)

    def _mark_downstream_failed(self, failed: RunRecord) -> None:
        """Record the tables downstream of a failure as upstream-failed (not run)."""
        if failed.kind == "backfill":
            return  # a backfill's own downstream runs are gated as they come up
        seen: set[str] = set()
        todo = list(self.downstream.get(failed.table, ()))
        now = self.clock.now()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += self.downstream.get(name, ())
            if self.project.spec(name).orchestration.trigger is None:
                continue
            self._dirty.discard(name)
            run = RunRecord(
                run_id=new_id(now),
                table=name,
                kind=failed.kind,
                status="upstream-failed",
                created_at=now,
                run_key=f"upstream-failed:{failed.run_id}",
                trigger="upstream",
                interval=failed.interval,
                logical_ts=failed.logical_ts,
                error=f"upstream {failed.table} failed (run {failed.run_id})",
                finished_at=now,
                owner=self.owner,
            )
            self.history.create(run)

    # -- 2. recover ---------------------------------------------------------------
    def recover(self) -> list[RunRecord]:
        """Take over the unfinished runs of schedulers that died (and unowned submissions)."""
        self._last_recover = monotonic()
        taken: list[RunRecord] = []
        for run in self.history.active_of_others():
            if run.owner == self.owner:
                continue
            if run.owner is not None and owner_alive(self.meta, run.owner, self.clock):
                continue
            if (
                run.kind == "backfill"
                and run.backfill_id not in self._backfills
                and not self._adopt_backfill(str(run.backfill_id))
            ):
                continue
            if not self.history.take_over(run.run_id, run.owner, self.owner):
                continue  # another scheduler took it first
            previous = run.owner
            run.owner = self.owner
            self.history.event(
                self.clock.now(), run.table, run.run_id, self.owner, "take-over", previous or ""
            )
            if run.status != "running" or self._resume_interrupted(run):
                taken.append(run)
        self.enqueue_in_order(taken)
        return taken

    def enqueue_in_order(self, runs: Iterable[RunRecord]) -> None:
        """Queue runs oldest interval first, upstream before downstream."""
        for run in sorted(
            runs,
            key=lambda r: (
                r.priority,
                r.interval.start if r.interval else r.created_at,
                self.position.get(r.table, 0),
                r.created_at,
            ),
        ):
            self._enqueue(run)

    def _resume_interrupted(self, run: RunRecord) -> bool:
        """A run whose scheduler died mid-attempt: did its commit get in? True: run it again."""
        now = self.clock.now()
        version = None
        if run.engine_run_id and run.interval is not None:
            # Interval runs make one commit: if it is there, the run is done.
            version = self.executor.committed_version(run.table, run.engine_run_id)
        if version is not None:
            run.status, run.version, run.finished_at = "committed", version, now
            run.error = None
            self.history.update(run, attempt_status="committed")
            self.history.event(now, run.table, run.run_id, self.owner, "adopted", str(version))
            log.info(
                "%s: interrupted run %s had committed version %s", run.table, run.run_id, version
            )
            return False
        # Nothing committed (or an incremental run, which resumes from its positions): again.
        run.status, run.not_before = "queued", now
        run.error = "interrupted (its scheduler stopped); run again"
        self.history.update(run, attempt_status="interrupted")
        return True

    def _adopt_backfill(self, backfill_id: str) -> bool:
        from .backfill import adopt

        limits = adopt(self, backfill_id)
        if limits is None:
            return False
        self._backfills[backfill_id] = limits
        return True

    # -- 3. fire triggers ---------------------------------------------------------
    def _load_triggers(self) -> None:
        rows = self.meta.execute(
            "SELECT table_name, next_fire, last_fire, state FROM hw_trigger_state"
        )
        stored = {r[0]: r for r in rows}
        now = self.clock.now()
        for name in self.order:
            orch = self.project.spec(name).orchestration
            trigger = orch.trigger
            if trigger is None:
                continue
            row = stored.get(name)
            self._trigger_state[name] = json.loads(row[3]) if row and row[3] else {}
            if isinstance(trigger, Cron):
                last = from_epoch(row[2]) if row else None
                # A fire missed while no scheduler ran happens once, at start.
                self._next_fire[name] = (
                    trigger.next_after(last) if last else trigger.next_after(now)
                )
            elif isinstance(trigger, OnUpstream):
                self._dirty.add(name)  # catch up on commits made while stopped
            elif isinstance(trigger, Continuous):
                self._supervised[name] = _Supervised(trigger, now)
            elif isinstance(trigger, Sensor):
                self._sensors.append((name, trigger))

    def _save_trigger(self, table: str, last_fire: datetime | None = None) -> None:
        state = json.dumps(self._trigger_state.get(table, {}), sort_keys=True)
        nxt = self._next_fire.get(table)
        self.meta.execute(
            "INSERT INTO hw_trigger_state (table_name, next_fire, last_fire, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (table_name) DO UPDATE SET next_fire = excluded.next_fire, "
            "last_fire = COALESCE(excluded.last_fire, hw_trigger_state.last_fire), state = excluded.state",
            (
                table,
                None if nxt is None else epoch(nxt),
                None if last_fire is None else epoch(last_fire),
                state,
            ),
        )

    def next_fire(self, table: str) -> datetime | None:
        return self._next_fire.get(table)

    def _fire(self, now: datetime) -> None:
        for name, due in list(self._next_fire.items()):
            if due is None or due > now:
                continue
            trigger = self.project.spec(name).orchestration.trigger
            assert isinstance(trigger, Cron)
            self._schedule(name, now, f"cron:{due.isoformat()}", "cron", due)
            self._next_fire[name] = trigger.next_after(now)
            self._save_trigger(name, last_fire=due)
        if monotonic() - self._last_upstream_poll >= self.settings.upstream_poll_seconds:
            self._poll_upstream()
        for name in sorted(self._dirty, key=self.position.__getitem__):
            if self._active_upstream[name] > 0 or self._active[name] > 0:
                continue  # inputs still being written (or itself busy): look again after
            self._dirty.discard(name)
            versions = {u: self._version(u) for u in self.upstream[name]}
            state = self._trigger_state.setdefault(name, {})
            if state.get("upstream") == versions or None in versions.values():
                continue  # nothing new, or an input not built yet (its first commit wakes us)
            key = hashlib.sha1(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
            self._schedule(name, now, f"upstream:{key}", "on-upstream", now)
            state["upstream"] = versions
            self._save_trigger(name, last_fire=now)
        for name, sensor in self._sensors:
            if self.project.spec(name).orchestration.interval is None:
                self._poke_free_sensor(name, sensor, now)
            else:
                self._open_sensor_intervals(name, sensor, now)

    def _version(self, table: str) -> int | None:
        if table not in self._versions:
            self._versions[table] = self.executor.version(table)
        return self._versions[table]

    def _poll_upstream(self) -> None:
        """Notice commits made outside this scheduler (manual runs, other schedulers)."""
        self._last_upstream_poll = monotonic()
        watched = {
            u
            for name in self.order
            if isinstance(self.project.spec(name).orchestration.trigger, OnUpstream)
            for u in self.upstream[name]
        }
        for table in watched:
            version = self.executor.version(table)
            if version != self._versions.get(table):
                self._versions[table] = version
                for d in self.downstream.get(table, ()):
                    if isinstance(self.project.spec(d).orchestration.trigger, OnUpstream):
                        self._dirty.add(d)

    def _schedule(
        self, table: str, now: datetime, key: str, trigger: str, logical: datetime
    ) -> list[RunRecord]:
        """The runs one fire of a trigger makes: an incremental run, or interval runs."""
        orch = self.project.spec(table).orchestration
        if orch.interval is None:
            run = self.request(
                table,
                kind="scheduled",
                priority=PRIORITY_SCHEDULED,
                run_key=key,
                trigger=trigger,
                logical_ts=logical,
            )
            return [run] if run else []
        created = []
        for interval in self._intervals_due(table, orch, now):
            run = self.request(
                table,
                interval,
                kind="scheduled",
                priority=PRIORITY_SCHEDULED,
                run_key=f"{key}|{interval.start.isoformat()}",
                trigger=trigger,
                covers=covering(interval, orch.interval, orch.lookback),
                logical_ts=logical,
            )
            if run:
                created.append(run)
        return created

    def _intervals_due(self, table: str, orch: Orchestration, now: datetime) -> list[Interval]:
        """New eligible intervals since the last one scheduled (bounded catch-up), or
        the latest eligible one again (its lookback picks up late data)."""
        assert orch.interval is not None
        latest = latest_eligible(now, orch.interval, orch.safety_delay)
        if latest is None:
            return []
        state = self._trigger_state.setdefault(table, {})
        last_end = from_epoch(state.get("last_interval_end"))
        intervals: list[Interval] = []
        if last_end is not None and last_end < latest.end:
            start = max(last_end, latest.end - orch.interval * max(1, self.settings.max_catchup))
            moment = start
            while moment < latest.end:
                intervals.append(Interval(moment, moment + orch.interval))
                moment += orch.interval
        else:
            intervals = [latest]
        state["last_interval_end"] = epoch(latest.end)
        return intervals

    def _poke_free_sensor(self, table: str, sensor: Sensor, now: datetime) -> None:
        """A sensor without an interval: run whenever what it sees changes."""
        state = self._trigger_state.setdefault(table, {})
        due = from_epoch(state.get("next_poke"))
        if due is not None and due > now:
            return
        state["next_poke"] = epoch(now + sensor.poke)
        token = self._poke_sensor(table, sensor, None)
        if token is not None and token != state.get("token") and self._active[table] == 0:
            self._schedule(table, now, f"sensor:{token}", sensor.kind, now)
            state["token"] = token
            self._save_trigger(table, last_fire=now)

    def _open_sensor_intervals(self, table: str, sensor: Sensor, now: datetime) -> None:
        """A sensor on an interval table: each newly eligible interval waits for it."""
        orch = self.project.spec(table).orchestration
        assert orch.interval is not None
        latest = latest_eligible(now, orch.interval, orch.safety_delay)
        state = self._trigger_state.setdefault(table, {})
        if latest is None or state.get("last_interval_end") == epoch(latest.end):
            return
        for interval in self._intervals_due(table, orch, now):
            eligible_at = interval.end + orch.safety_delay
            self.request(
                table,
                interval,
                kind="scheduled",
                priority=PRIORITY_SCHEDULED,
                run_key=f"sensor:{interval.start.isoformat()}",
                trigger=sensor.kind,
                covers=covering(interval, orch.interval, orch.lookback),
                status="waiting",
                wait_deadline=max(now, eligible_at) + sensor.timeout,
            )
        self._save_trigger(table, last_fire=now)

    def _poke_sensor(self, table: str, sensor: Sensor, interval: Interval | None) -> str | None:
        try:
            if isinstance(sensor, FileSensor):
                return sensor.poke_once(self.project.root, interval)
            if isinstance(sensor, SqlSensor):
                return sensor.poke_once(self.project.root, interval, self.project.config)
        except ConfigError:
            raise
        except Exception as exc:  # an unreachable source is "not yet", until the timeout
            log.info("%s: sensor not satisfied (%s: %s)", table, type(exc).__name__, exc)
        return None

    # -- 4. poke waiting runs -----------------------------------------------------
    def _poke(self, now: datetime) -> None:
        for run_id, run in list(self._waiting.items()):
            if run.not_before is not None and run.not_before > now:
                continue
            spec = self.project.spec(run.table)
            trigger = spec.orchestration.trigger
            sensor = trigger if isinstance(trigger, Sensor) and run.attempts == 0 else None
            ready = True
            if sensor is not None:
                ready = self._poke_sensor(run.table, sensor, run.interval) is not None
            poke = sensor.poke if sensor is not None else spec.orchestration.retries.poke
            if ready or (run.wait_deadline is not None and now >= run.wait_deadline):
                self._progress = True
            if ready:
                del self._waiting[run_id]
                self._activate(run.table, -1)
                run.status, run.not_before = "queued", now
                self.history.update(run)
                self._enqueue(run)
            elif run.wait_deadline is not None and now >= run.wait_deadline:
                del self._waiting[run_id]
                self._activate(run.table, -1)
                run.status, run.finished_at = "failed", now
                run.failure = "sensor-timeout" if sensor is not None else "upstream-not-ready"
                what = sensor.describe() if sensor is not None else "its inputs"
                run.error = f"gave up waiting for {what} at {now.isoformat()}"
                self.history.update(run, attempt_status="failed")
                self._after(run, None)
            else:
                run.not_before = now + poke
                self.history.update(run)

    # -- 5. dispatch --------------------------------------------------------------
    def _dispatch(self, now: datetime) -> None:
        self._supervise(now)
        held_back: list[_Queued] = []
        self._held = held_back  # still queued: _busy_overlapping must see them
        while self._queue and len(self._running) < self.workers:
            item = heapq.heappop(self._queue)
            run = item.run
            if run.not_before is not None and run.not_before > now:
                held_back.append(item)
                continue
            gate = self._gate(run)
            if gate == "defer":
                held_back.append(item)
                continue
            if gate == "failed":
                self._activate(run.table, -1)
                run.status, run.finished_at = "upstream-failed", now
                run.error = "an input table's run failed; not run"
                self.history.update(run)
                self._after(run, None)
                continue
            if not self._backfill_allows(run, now) or run.table in self._busy_tables:
                # One run of a table at a time, here as across schedulers.
                held_back.append(item)
                continue
            if not self.leases.try_acquire(table_lease(run.table)):
                # Another scheduler writes this table: look again shortly.
                run.not_before = now + timedelta(seconds=min(self.poll, 1.0))
                held_back.append(item)
                continue
            if not self.history.claim(run, self.owner, now):
                self.leases.release(table_lease(run.table))
                self._activate(run.table, -1)  # cancelled or taken over meanwhile
                continue
            if run.backfill_id in self._backfills:
                limits = self._backfills[run.backfill_id]
                limits.running += 1
                limits.last_start = now
            self._running[self._pool.submit(self._execute, run)] = run
            self._busy_tables.add(run.table)
            self._progress = True
        for item in held_back:
            heapq.heappush(self._queue, item)
        self._held = []

    def _gate(self, run: RunRecord) -> str:
        """'go', 'defer' (an input is still being written) or 'failed' (an input failed)."""
        if self._active_upstream[run.table] > 0:
            if run.interval is None:
                return "defer"
            # Only inputs writing an overlapping interval (or incremental ones) hold it back.
            for u in self.upstream[run.table]:
                if self._active[u] and self._busy_overlapping(u, run.target_interval):
                    return "defer"
        for u in self.upstream[run.table]:
            if self.project.spec(u).orchestration.trigger is None and run.kind != "backfill":
                continue  # not scheduled here: its history says nothing
            if run.interval is not None:
                target = run.target_interval
                assert target is not None
                runs = self.history.interval_runs(u, target.start, target.end)
                finished = [r for r in runs if r.status not in ACTIVE]
                if finished and finished[0].status in FAILED:
                    return "failed"
                if runs or run.kind == "backfill":
                    continue
            last = self.history.last_finished(u)
            if last is not None and last.status in FAILED:
                return "failed"
        return "go"

    def _busy_overlapping(self, table: str, interval: Interval | None) -> bool:
        for item in [*self._queue, *self._held]:
            other = item.run
            if other.table == table and _overlaps(other.target_interval, interval):
                return True
        for other in [*self._running.values(), *self._waiting.values()]:
            if other.table == table and _overlaps(other.target_interval, interval):
                return True
        return False

    def _backfill_allows(self, run: RunRecord, now: datetime) -> bool:
        limits = self._backfills.get(run.backfill_id or "")
        if limits is None:
            return True
        if limits.running >= limits.parallel:
            return False
        return limits.last_start is None or now - limits.last_start >= limits.throttle

    # -- running one attempt (worker thread) --------------------------------------
    def _execute(self, run: RunRecord) -> tuple[RunRecord, TableRun | None]:
        lease = table_lease(run.table)
        sticky = run.kind == "continuous"
        try:
            self.history.event(self.clock.now(), run.table, run.run_id, self.owner, "start")
            result = self._attempt(run)
            self._settle(run, result)
            self.history.event(
                self.clock.now(), run.table, run.run_id, self.owner, "end", run.status
            )
            return run, result
        finally:
            if not sticky:
                self.leases.release(lease)
            self._wake.set()

    def _attempt(self, run: RunRecord) -> TableRun:
        assert run.engine_run_id is not None
        if run.interval is not None:
            missing = [u for u in self.upstream[run.table] if self.executor.version(u) is None]
            if missing:
                # An interval cannot be rebuilt from inputs that do not exist yet: wait for them.
                error = UpstreamNotReady(
                    f"table {run.table}: input {', '.join(missing)} is not built yet"
                )
                result = TableRun(
                    run.table, run.engine_run_id, "failed", error=error.message, exception=error
                )
                result.failure = "upstream-not-ready"
                return result
        try:
            return self.executor.execute(
                run.table, run.target_interval, run.engine_run_id, self.clock.now()
            )
        except Exception as exc:  # the engine reports failures itself; this is the rest
            message = (
                exc.message if isinstance(exc, HeadwaterError) else f"{type(exc).__name__}: {exc}"
            )
            result = TableRun(run.table, run.engine_run_id, "failed", error=message, exception=exc)
            result.failure = failure_kind(exc)
            return result

    def _settle(self, run: RunRecord, result: TableRun) -> None:
        """Record the attempt's outcome and what happens next, in one update."""
        now = self.clock.now()
        metrics = {k: int(v) for k, v in result.metrics.items() if v}
        run.metrics = metrics
        run.rows_in = metrics.get("rows_in")
        written = sum(metrics.get(k, 0) for k in ("inserted", "updated", "deleted"))
        run.rows_out = (
            written if any(k in metrics for k in ("inserted", "updated", "deleted")) else None
        )
        run.version = result.version if result.version is not None else run.version
        run.positions = dict(result.positions) if result.positions else run.positions
        run.seconds = result.seconds
        run.failure, run.error, run.hint = result.failure, result.error, result.hint
        if result.status != "failed":
            run.status, run.finished_at, run.not_before = result.status, now, None
            self.history.update(run, attempt_status=result.status)
            return
        policy = self.project.spec(run.table).orchestration.retries
        decision = policy.decide(result.failure, run.attempts)
        if run.kind == "continuous":
            decision = "fail"  # the supervisor restarts it with its own backoff
        if decision == "retry":
            run.status = "retrying"
            run.not_before = now + policy.delay(run.attempts, self.rng)
        elif decision == "wait":
            run.status = "waiting"
            run.not_before = now + policy.poke
            run.wait_deadline = run.wait_deadline or now + policy.wait_timeout
        else:
            run.status, run.finished_at, run.not_before = "failed", now, None
        self.history.update(run, attempt_status="failed")

    # -- continuous tables --------------------------------------------------------
    def _supervise(self, now: datetime) -> None:
        for name, sup in self._supervised.items():
            if sup.running or sup.next_at > now or len(self._running) >= self.workers:
                continue
            if name in self._busy_tables:
                continue
            lease = table_lease(name)
            if not self.leases.holds(lease) and not self.leases.try_acquire(lease):
                sup.next_at = now + timedelta(seconds=min(self.poll, 1.0))
                continue  # another scheduler supervises it
            run = RunRecord(
                run_id=new_id(now),
                table=name,
                kind="continuous",
                status="running",
                created_at=now,
                trigger="continuous",
                logical_ts=now,
                attempts=1,
                started_at=now,
                owner=self.owner,
            )
            run.engine_run_id = run.engine_id(1)
            sup.running = True
            self._busy_tables.add(name)
            self._progress = True
            self._activate(name, +1)
            self._running[self._pool.submit(self._cycle, run, sup)] = run

    def _cycle(self, run: RunRecord, sup: _Supervised) -> tuple[RunRecord, TableRun | None]:
        try:
            result = self._attempt(run)
            now = self.clock.now()
            run.finished_at, run.seconds = now, result.seconds
            run.failure, run.error, run.hint = result.failure, result.error, result.hint
            run.version = result.version
            run.metrics = {k: int(v) for k, v in result.metrics.items() if v}
            run.rows_in = run.metrics.get("rows_in")
            run.status = result.status
            if result.status == "failed":
                sup.failures += 1
                sup.next_at = now + sup.trigger.restart_delay(sup.failures, self.rng.random())
            else:
                sup.failures = 0
                sup.next_at = now + sup.trigger.every
            if result.status == "up-to-date" and sup.idle_run is not None:
                # Consecutive idle cycles share one history row: its finish time moves on.
                self.meta.execute(
                    "UPDATE hw_runs SET finished_at = ?, attempts = attempts + 1 WHERE run_id = ?",
                    (epoch(now), sup.idle_run),
                )
                run.run_id = sup.idle_run
            else:
                self.history.create(run)
                self.history.update(run)
                sup.idle_run = run.run_id if result.status == "up-to-date" else None
            return run, result
        finally:
            self._wake.set()

    # -- backfills ----------------------------------------------------------------
    def add_backfill(self, backfill_id: str, limits: _BackfillLimits) -> None:
        self._backfills[backfill_id] = limits

    def _cancel_backfill(self, backfill_id: str, reason: str) -> None:
        now = self.clock.now()
        keep: list[_Queued] = []
        for item in self._queue:
            if item.run.backfill_id == backfill_id:
                run = item.run
                run.status, run.finished_at, run.error = "cancelled", now, reason
                self.history.update(run)
                self._activate(run.table, -1)
            else:
                keep.append(item)
        heapq.heapify(keep)
        self._queue = keep
        for run_id, run in list(self._waiting.items()):
            if run.backfill_id == backfill_id:
                del self._waiting[run_id]
                run.status, run.finished_at, run.error = "cancelled", now, reason
                self.history.update(run)
                self._activate(run.table, -1)

    def backfill_active(self, backfill_id: str) -> bool:
        return any(
            r.backfill_id == backfill_id
            for r in [
                *(q.run for q in self._queue),
                *self._running.values(),
                *self._waiting.values(),
            ]
        )

    # -- 6. SLAs ------------------------------------------------------------------
    def check_slas(self) -> list[tuple[str, Any]]:
        """Evaluate every SLA now; fire breaches, resolve recoveries. Returns the states."""
        self._last_sla = monotonic()
        now = self.clock.now()
        states = []
        for name in self.order:
            orch = self.project.spec(name).orchestration
            for sla in orch.sla:
                window = sla.objective.window if sla.objective else timedelta(days=2)
                since = self._watch_start(name)
                successes = self.history.successes(name, now - window - timedelta(days=1))
                state = evaluate(name, sla, successes, now, since)
                states.append((name, state))
                if state.breached:
                    self.alerts.fire(state.alert_key, name, sla.kind, state.detail)
                else:
                    self.alerts.resolve(name, [sla.kind], f"{name}: {state.detail}")
                if sla.objective is not None:
                    key = f"{name}:slo:{sla.kind}"
                    if state.slo_breached and state.observed is not None:
                        self.alerts.fire(
                            key,
                            name,
                            "slo",
                            f"{sla.describe()}: {state.observed * 100:.2f}% met",
                        )
                    elif state.observed is not None:
                        self.alerts.resolve(name, ["slo"], f"{sla.describe()}: met again")
        return states

    def _watch_start(self, table: str) -> datetime:
        """When the table came under watch: its first run, or this scheduler's start."""
        row = self.meta.one("SELECT MIN(created_at) FROM hw_runs WHERE table_name = ?", (table,))
        first = from_epoch(row[0]) if row and row[0] is not None else None
        return min(first, self.started_at) if first else self.started_at

    # -- for tests and the CLI ----------------------------------------------------
    def pending(self) -> list[RunRecord]:
        return sorted(
            [*(q.run for q in self._queue), *self._waiting.values()],
            key=lambda r: (r.priority, r.created_at),
        )


def _overlaps(a: Interval | None, b: Interval | None) -> bool:
    if a is None or b is None:
        return True
    return a.start < b.end and b.start < a.end


def run_tables(scheduler: Scheduler, tables: Iterable[str]) -> list[RunRecord]:
    """Queue manual runs of `tables` (and let on_upstream triggers cascade)."""
    made = []
    for name in tables:
        run = scheduler.request(name)
        if run is not None:
            made.append(run)
    return made
