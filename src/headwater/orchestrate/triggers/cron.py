"""cron("0 6 * * *", tz="Europe/Paris"): run at wall-clock times of a time zone.

Fire times come from croniter on local time, with the DST rules of Vixie cron:
a time skipped by a spring-forward change fires at the first instant after the
gap (once), and a fixed time repeated by a fall-back change fires only once;
expressions with a wildcard hour fire every real occurrence. Six fields add
seconds (last field), mostly for tests and sub-minute polling.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ...errors import ConfigError
from .base import Trigger


class Cron(Trigger):
    kind = "cron"

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        from croniter import croniter  # type: ignore[import-untyped]  # no stubs; loaded when a cron is declared

        if not isinstance(expression, str) or not croniter.is_valid(expression):
            raise ConfigError(
                f"cron: {expression!r} is not a cron expression",
                "write five fields (minute hour day month weekday), e.g. '0 6 * * *'",
            )
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"cron: unknown time zone {tz!r}", "use an IANA name, e.g. 'Europe/Paris' or 'UTC'"
            ) from None
        self.expression = expression
        self.tz = tz
        fields = expression.split()
        # Vixie cron: a job at a fixed hour runs once when the clock falls back.
        self._fixed_hour = len(fields) >= 2 and not fields[1].startswith("*")

    def describe(self) -> str:
        return f"cron {self.expression!r} ({self.tz})"

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment` (timezone-aware, UTC)."""
        from croniter import croniter

        local = moment.astimezone(self.zone)
        runner = croniter(self.expression, local)
        for _ in range(1000):
            candidate: datetime = runner.get_next(datetime)
            if candidate.tzinfo is None:  # croniter keeps the zone; be safe
                candidate = candidate.replace(tzinfo=self.zone)
            if candidate <= moment:
                continue
            if self._fixed_hour and self._repeated(candidate):
                continue
            return candidate.astimezone(ZoneInfo("UTC"))
        raise ConfigError(f"cron {self.expression!r}: no fire time found after {moment}")

    def _repeated(self, candidate: datetime) -> bool:
        """Whether `candidate` is the second occurrence of a wall time repeated by a fall-back."""
        wall = candidate.astimezone(self.zone).replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return False
        return candidate.astimezone(ZoneInfo("UTC")) == second.astimezone(ZoneInfo("UTC"))


def cron(expression: str, tz: str = "UTC") -> Cron:
    """Run at the times of a cron expression in time zone `tz` (DST-aware)."""
    return Cron(expression, tz)
