"""continuous(every="5s"): supervise a streaming or CDC table.

The scheduler keeps the table running cycle after cycle (each an ordinary
incremental run) while it holds the table's lease. A cycle that fails is
restarted after an exponential backoff (with jitter) that resets after a
success; failures alert and recoveries resolve the alert.
"""

from __future__ import annotations

from datetime import timedelta

from ..._units import parse_duration
from ...errors import ConfigError
from .base import Trigger


class Continuous(Trigger):
    kind = "continuous"

    def __init__(
        self,
        every: str | float | timedelta = "1s",
        backoff: str | float | timedelta = "1s",
        max_backoff: str | float | timedelta = "5m",
    ) -> None:
        self.every = parse_duration(every, "continuous: every")
        self.backoff = parse_duration(backoff, "continuous: backoff")
        self.max_backoff = parse_duration(max_backoff, "continuous: max_backoff")
        if self.every < timedelta(0) or self.backoff <= timedelta(0):
            raise ConfigError(
                "continuous: every must be >= 0 and backoff > 0", "e.g. continuous(every='5s')"
            )
        if self.max_backoff < self.backoff:
            raise ConfigError("continuous: max_backoff must be at least backoff")

    def describe(self) -> str:
        return f"continuous every {_short(self.every)}"

    def restart_delay(self, failures: int, jitter: float) -> timedelta:
        """Backoff before restarting after `failures` consecutive failures (jitter in [0, 1))."""
        base: timedelta = min(self.max_backoff, self.backoff * (2 ** max(0, failures - 1)))
        return base * (0.5 + 0.5 * jitter)


def _short(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds:g}s"


def continuous(
    every: str | float | timedelta = "1s",
    backoff: str | float | timedelta = "1s",
    max_backoff: str | float | timedelta = "5m",
) -> Continuous:
    """Keep the table running every `every`; restart it with backoff when a cycle fails."""
    return Continuous(every, backoff, max_backoff)
