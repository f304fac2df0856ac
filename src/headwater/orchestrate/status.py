"""What `headwater status` shows per table: last run, freshness, SLA state, next run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..project import Project
from .clock import Clock, from_epoch
from .history import GOOD, History, RunRecord
from .metadata import Metadata
from .sla import SlaState, evaluate
from .triggers import Continuous, Cron, OnUpstream, Sensor


@dataclass
class TableStatus:
    table: str
    trigger: str
    last: RunRecord | None
    last_good: RunRecord | None
    freshness: timedelta | None  # since the last good run
    slas: list[SlaState]
    next_run: str
    alerts: list[str]


def table_status(project: Project, meta: Metadata, clock: Clock) -> list[TableStatus]:
    from .alerts import AlertManager

    history = History(meta)
    alerts = AlertManager(meta, [], clock)
    now = clock.now()
    stored = {
        r[0]: r
        for r in meta.execute("SELECT table_name, next_fire, last_fire FROM hw_trigger_state")
    }
    out = []
    for name in project.order():
        orch = project.spec(name).orchestration
        trigger = orch.trigger
        last = history.last(name)
        good = history.last(name, statuses=list(GOOD))
        moment = good.finished_at if good else None
        since_row = meta.one("SELECT MIN(created_at) FROM hw_runs WHERE table_name = ?", (name,))
        first = from_epoch(since_row[0]) if since_row and since_row[0] is not None else None
        since = first or now
        slas = []
        for sla in orch.sla:
            window = sla.objective.window if sla.objective else timedelta(days=2)
            slas.append(
                evaluate(
                    name, sla, history.successes(name, now - window - timedelta(days=1)), now, since
                )
            )
        out.append(
            TableStatus(
                table=name,
                trigger=trigger.describe() if trigger else "manual (no trigger)",
                last=last,
                last_good=good,
                freshness=None if moment is None else now - moment,
                slas=slas,
                next_run=_next(trigger, stored.get(name), now),
                alerts=[f"{kind}: {message}" for _, kind, message, _ in alerts.firing(name)],
            )
        )
    return out


def _next(trigger: object, stored: tuple[object, ...] | None, now: datetime) -> str:
    if isinstance(trigger, Cron):
        nxt = from_epoch(stored[1]) if stored and stored[1] is not None else None  # type: ignore[arg-type]
        moment = nxt if nxt is not None and nxt > now else trigger.next_after(now)
        return moment.isoformat(timespec="minutes")
    if isinstance(trigger, OnUpstream):
        return "on upstream commit"
    if isinstance(trigger, Sensor):
        return "when the sensor fires"
    if isinstance(trigger, Continuous):
        return "continuous"
    return "-"
