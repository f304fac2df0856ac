"""Time, injectable: the scheduler, SLAs and backfills ask a Clock, never the system.

`SystemClock` is the real one. `ManualClock` only moves when told to, so tests
check schedules across DST changes, retry backoff and SLA deadlines without
sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` pass; True if the event was set."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ManualClock:
    """A clock that stands still until `advance()` or `set()`; waiting never blocks
    longer than a moment (the caller's loop sees the same time until a test moves it)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment.astimezone(UTC)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        # Real waiting would stall a test; yield the CPU so workers can finish.
        return event.wait(min(seconds, 0.01))


def epoch(moment: datetime) -> float:
    """Seconds since the Unix epoch (how the metadata DB stores times)."""
    return moment.timestamp()


def from_epoch(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def monotonic() -> float:
    return time.monotonic()
