"""Service levels of a table: how fresh it must be, and how often that holds.

    freshness("15m")                       at most 15 minutes since the last good run
    ready_by("07:00", tz="Europe/Paris")   a good run every day before 07:00 Paris time
    ..., slo="99%", window="30d"           the objective over a rolling window

A *good run* is a successful run (committed, or up to date with its inputs).
A breach fires an alert (once; de-duplicated) and is resolved when the table
recovers. Freshness SLOs count the share of time the table was fresh;
ready-by SLOs the share of days it was ready on time. Everything is computed
from the run history with the scheduler's clock, so it is tested without
waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .._units import parse_duration
from ..errors import ConfigError


@dataclass(frozen=True)
class Objective:
    target: float  # e.g. 0.99
    window: timedelta


@dataclass(frozen=True)
class Freshness:
    max_staleness: timedelta
    objective: Objective | None = None
    kind: str = "freshness"

    def describe(self) -> str:
        return f"fresh within {_short(self.max_staleness)}" + _objective(self.objective)


@dataclass(frozen=True)
class ReadyBy:
    at: time
    tz: str = "UTC"
    objective: Objective | None = None
    kind: str = "ready-by"

    def describe(self) -> str:
        return f"ready by {self.at.strftime('%H:%M')} {self.tz}" + _objective(self.objective)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def deadline(self, day: datetime) -> datetime:
        """The deadline of the local day holding `day`."""
        local = day.astimezone(self.zone).date()
        return datetime.combine(local, self.at, self.zone)

    def day_start(self, day: datetime) -> datetime:
        local = day.astimezone(self.zone).date()
        return datetime.combine(local, time(0), self.zone)


Sla = Freshness | ReadyBy


@dataclass(frozen=True)
class SlaState:
    sla: Sla
    breached: bool
    detail: str
    alert_key: str  # one alert per breach episode
    observed: float | None = None  # the SLO's measured share, when there is an objective
    slo_breached: bool = False


def evaluate(
    table: str, sla: Sla, successes: Sequence[datetime], now: datetime, since: datetime
) -> SlaState:
    """Judge `sla` at `now` from the finish times of good runs (oldest first).
    `since`: when the table came under watch (the reference before its first run)."""
    if isinstance(sla, Freshness):
        return _freshness(table, sla, successes, now, since)
    return _ready_by(table, sla, successes, now, since)


def _freshness(
    table: str, sla: Freshness, successes: Sequence[datetime], now: datetime, since: datetime
) -> SlaState:
    last = successes[-1] if successes else None
    reference = last or since
    stale_for = now - reference
    breached = stale_for > sla.max_staleness
    detail = (
        f"last good run {_short(stale_for)} ago (limit {_short(sla.max_staleness)})"
        if last
        else f"no good run in {_short(stale_for)} (limit {_short(sla.max_staleness)})"
    )
    observed = None
    slo_breached = False
    if sla.objective is not None:
        start = max(now - sla.objective.window, since)
        total = (now - start).total_seconds()
        if total > 0:
            stale = 0.0
            previous = start
            # Each gap between good runs is stale beyond the allowed staleness.
            for moment in [*[s for s in successes if s > start], now]:
                reference_point = previous
                gap = (moment - reference_point).total_seconds()
                stale += max(0.0, gap - sla.max_staleness.total_seconds())
                previous = moment
            observed = 1.0 - stale / total
            slo_breached = observed < sla.objective.target
    return SlaState(sla, breached, detail, f"{table}:freshness", observed, slo_breached)


def _ready_by(
    table: str, sla: ReadyBy, successes: Sequence[datetime], now: datetime, since: datetime
) -> SlaState:
    deadline = sla.deadline(now)
    day_start = sla.day_start(now)
    today = [s for s in successes if day_start <= s <= now]
    breached = now > deadline and not today and since <= deadline
    local_day = now.astimezone(sla.zone).date().isoformat()
    if today:
        first = min(today)
        detail = f"ready at {first.astimezone(sla.zone).strftime('%H:%M')} on {local_day}"
        if first > deadline:
            detail += " (late)"
    elif now > deadline:
        detail = f"not ready on {local_day}, due {sla.at.strftime('%H:%M')} {sla.tz}"
    else:
        detail = f"due {sla.at.strftime('%H:%M')} {sla.tz} on {local_day}"
    observed = None
    slo_breached = False
    if sla.objective is not None:
        judged = on_time = 0
        day = now
        first_day = max(now - sla.objective.window, since)
        while day >= first_day:
            d_deadline = sla.deadline(day)
            d_start = sla.day_start(day)
            if first_day <= d_deadline <= now:  # deadlines inside the window
                judged += 1
                if any(d_start <= s <= d_deadline for s in successes):
                    on_time += 1
            day = d_start - timedelta(hours=1)  # a moment in the previous local day
        if judged:
            observed = on_time / judged
            slo_breached = observed < sla.objective.target
    return SlaState(sla, breached, detail, f"{table}:ready-by:{local_day}", observed, slo_breached)


# -- declarations ------------------------------------------------------------------------


def _objective_of(slo: str | float | None, window: str | float | timedelta) -> Objective | None:
    if slo is None:
        return None
    if isinstance(slo, str):
        text = slo.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(
                f"sla: slo {slo!r} is not a share", "write e.g. '99%' or 0.99"
            ) from None
    else:
        value = float(slo)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"sla: slo {slo!r} must be between 0% and 100%", "e.g. slo='99%'")
    span = parse_duration(window, "sla: window")
    if span <= timedelta(0):
        raise ConfigError("sla: window must be positive", "e.g. window='30d'")
    return Objective(value, span)


def freshness(
    max_staleness: str | float | timedelta,
    *,
    slo: str | float | None = None,
    window: str | float | timedelta = "30d",
) -> Freshness:
    """At most `max_staleness` since the table's last good run."""
    limit = parse_duration(max_staleness, "freshness: max_staleness")
    if limit <= timedelta(0):
        raise ConfigError("freshness: max_staleness must be positive", "e.g. freshness('15m')")
    return Freshness(limit, _objective_of(slo, window))


def ready_by(
    at: str,
    *,
    tz: str = "UTC",
    slo: str | float | None = None,
    window: str | float | timedelta = "30d",
) -> ReadyBy:
    """A good run every day before `at` (HH:MM) in time zone `tz`."""
    try:
        moment = time.fromisoformat(at)
    except (TypeError, ValueError):
        raise ConfigError(
            f"ready_by: cannot read {at!r} as a time of day", "write e.g. '07:00'"
        ) from None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"ready_by: unknown time zone {tz!r}", "use e.g. 'Europe/Paris'"
        ) from None
    return ReadyBy(moment, tz, _objective_of(slo, window))


def _objective(objective: Objective | None) -> str:
    if objective is None:
        return ""
    return f", SLO {objective.target * 100:g}% over {_short(objective.window)}"


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        seconds = 0
    if seconds % 86400 == 0 and seconds:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        h, rest = divmod(seconds, 3600)
        return f"{h}h{rest // 60:02d}m" if rest else f"{h}h"
    if seconds >= 60:
        m, s = divmod(seconds, 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    return f"{seconds}s"
