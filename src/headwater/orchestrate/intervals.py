"""A table's interval grid: which intervals exist, which are eligible, what a run covers.

Intervals are aligned in UTC, like the engine's event time: "1h" starts on the
hour, "1d" at midnight UTC, "7d" on Mondays; a step must divide a day or be a
whole number of days. An interval is *eligible* once its end plus the table's
safety delay has passed, so a day is not processed before it is complete. A
run of interval I with a lookback L rebuilds [I.start - L, I.end) in one
interval run: late rows of the recent intervals are picked up, idempotently,
through the table's strategy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..engine.interval import Interval
from ..errors import ConfigError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
DEFAULT_SAFETY_DELAY = timedelta(hours=2)


def check_step(step: timedelta, what: str) -> timedelta:
    seconds = step.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ConfigError(f"{what}: must be a whole number of seconds > 0", "e.g. '1h' or '1d'")
    if not (86400 % int(seconds) == 0 or int(seconds) % 86400 == 0):
        raise ConfigError(
            f"{what}: {step} neither divides a day nor is a whole number of days",
            "use e.g. '15m', '1h', '6h', '1d' or '7d'",
        )
    return step


def _origin(step: timedelta) -> datetime:
    return MONDAY if step == timedelta(days=7) else EPOCH


def floor(moment: datetime, step: timedelta) -> datetime:
    """The start of the interval holding `moment`."""
    origin = _origin(step)
    count = (moment.astimezone(UTC) - origin) // step
    return origin + count * step


def is_aligned(moment: datetime, step: timedelta) -> bool:
    return floor(moment, step) == moment.astimezone(UTC)


def latest_eligible(now: datetime, step: timedelta, safety: timedelta) -> Interval | None:
    """The newest interval whose end + safety delay has passed."""
    end = floor(now - safety, step)
    return Interval(end - step, end)


def split(start: datetime, end: datetime, step: timedelta, table: str) -> list[Interval]:
    """[start, end) as the table's intervals; the bounds must fall on the grid."""
    for label, moment in (("--start", start), ("--end", end)):
        if not is_aligned(moment, step):
            raise ConfigError(
                f"table {table}: {label} {moment.isoformat()} is not on its {step} interval grid",
                f"use {floor(moment, step).isoformat()} or the next boundary",
            )
    if start >= end:
        raise ConfigError(f"--start {start.isoformat()} is not before --end {end.isoformat()}")
    intervals = []
    moment = start
    while moment < end:
        intervals.append(Interval(moment, moment + step))
        moment += step
    return intervals


def covering(interval: Interval, step: timedelta, lookback: timedelta | None) -> Interval:
    """What a run of `interval` rebuilds: the interval, widened back by the lookback
    (rounded up to whole intervals)."""
    if not lookback:
        return interval
    intervals = -(-lookback // step)  # ceiling
    return Interval(interval.start - intervals * step, interval.end)
