"""What to do after a failed attempt, by failure class (errors.failure_kind):

transient            retry with exponential backoff and jitter, up to a budget
upstream-not-ready   wait and poke again (not a failure) until `wait_timeout`
data-quality         no retry: fail and alert (the data must change first)
fatal                fail fast with the error (a bug or bad configuration)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from .._units import parse_duration
from ..errors import ConfigError

Decision = Literal["retry", "wait", "fail"]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # attempts in all for transient failures (1 = no retry)
    backoff: timedelta = timedelta(seconds=10)  # delay before the first retry
    max_backoff: timedelta = timedelta(minutes=10)
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]
    poke: timedelta = timedelta(minutes=1)  # how often to look again when upstream is not ready
    wait_timeout: timedelta = timedelta(hours=6)  # then "upstream not ready" becomes a failure

    def decide(self, failure: str | None, attempt: int) -> Decision:
        """After attempt number `attempt` (1-based) failed with `failure`."""
        if failure == "transient":
            return "retry" if attempt < self.attempts else "fail"
        if failure == "upstream-not-ready":
            return "wait"
        return "fail"

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Backoff after failed attempt `attempt`: backoff * 2^(attempt-1), capped, jittered."""
        base: timedelta = min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 1)))
        factor = 1.0 - self.jitter * (rng or random).random()
        return base * factor


def retries(
    attempts: int = 4,
    *,
    backoff: str | float | timedelta = "10s",
    max_backoff: str | float | timedelta = "10m",
    jitter: float = 0.5,
    poke: str | float | timedelta = "1m",
    wait_timeout: str | float | timedelta = "6h",
) -> RetryPolicy:
    """How a table's runs are retried (see the module docstring)."""
    if not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(
            f"retries: attempts must be a whole number >= 1, not {attempts!r}",
            "retries(attempts=1) means no retry",
        )
    if not 0.0 <= jitter <= 1.0:
        raise ConfigError(f"retries: jitter must be between 0 and 1, not {jitter!r}")
    policy = RetryPolicy(
        attempts=attempts,
        backoff=parse_duration(backoff, "retries: backoff"),
        max_backoff=parse_duration(max_backoff, "retries: max_backoff"),
        jitter=jitter,
        poke=parse_duration(poke, "retries: poke"),
        wait_timeout=parse_duration(wait_timeout, "retries: wait_timeout"),
    )
    if policy.max_backoff < policy.backoff:
        raise ConfigError("retries: max_backoff must be at least backoff")
    return policy


DEFAULT_RETRIES = RetryPolicy()
