"""A table's orchestration options, as `table(...)` receives them, checked once.

table("gold.daily", ..., trigger=cron("0 6 * * *", tz="Europe/Paris"),
      interval="1d", safety_delay="2h", lookback="48h",
      retries=retries(5, backoff="30s"), sla=ready_by("07:00", tz="Europe/Paris"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .._units import parse_duration
from ..errors import ConfigError
from .intervals import DEFAULT_SAFETY_DELAY, check_step
from .retries import DEFAULT_RETRIES, RetryPolicy
from .sla import Freshness, ReadyBy, Sla
from .triggers.base import Trigger
from .triggers.continuous import Continuous

Duration = str | float | timedelta


@dataclass(frozen=True)
class Orchestration:
    """When and how `headwater serve` and `headwater backfill` run a table."""

    trigger: Trigger | None = None
    interval: timedelta | None = None  # the table's interval grid; None: incremental runs
    safety_delay: timedelta = DEFAULT_SAFETY_DELAY
    lookback: timedelta = timedelta(0)
    retries: RetryPolicy = DEFAULT_RETRIES
    sla: tuple[Sla, ...] = ()


def orchestration(
    where: str,
    name: str,
    trigger: Trigger | None,
    interval: Duration | None,
    safety_delay: Duration | None,
    lookback: Duration | None,
    retries: RetryPolicy | int | None,
    sla: Sla | Sequence[Sla] | None,
) -> Orchestration:
    """Check the options of table `name` declared at `where`; errors name both."""
    try:
        return _check(name, trigger, interval, safety_delay, lookback, retries, sla)
    except ConfigError as exc:
        raise ConfigError(f"{where}: table {name}: {exc.message}", exc.hint) from None


def _check(
    name: str,
    trigger: Trigger | None,
    interval: Duration | None,
    safety_delay: Duration | None,
    lookback: Duration | None,
    retries: RetryPolicy | int | None,
    sla: Sla | Sequence[Sla] | None,
) -> Orchestration:
    if trigger is not None and not isinstance(trigger, Trigger):
        raise ConfigError(
            f"trigger must come from headwater.orchestrate, not {type(trigger).__name__}",
            "use cron(...), on_upstream(), file_sensor(...), sql_sensor(...) or continuous(...)",
        )
    step = check_step(parse_duration(interval, "interval"), "interval") if interval else None
    if step is None and (safety_delay is not None or lookback is not None):
        raise ConfigError(
            "safety_delay and lookback apply to interval runs", "declare interval='1d' (or '1h'...)"
        )
    if step is not None and isinstance(trigger, Continuous):
        raise ConfigError(
            "a continuous table runs incrementally and takes no interval",
            "drop interval=..., or use cron(...) for interval runs",
        )
    safety = (
        parse_duration(safety_delay, "safety_delay")
        if safety_delay is not None
        else DEFAULT_SAFETY_DELAY
    )
    back = parse_duration(lookback, "lookback") if lookback is not None else timedelta(0)
    if safety < timedelta(0) or back < timedelta(0):
        raise ConfigError("safety_delay and lookback cannot be negative")
    if retries is None:
        policy = DEFAULT_RETRIES
    elif isinstance(retries, RetryPolicy):
        policy = retries
    elif isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        policy = RetryPolicy(attempts=retries + 1)
    else:
        raise ConfigError(
            f"retries must be a number of retries or retries(...), not {retries!r}",
            "e.g. retries=3 or retries=retries(5, backoff='30s')",
        )
    slas: tuple[Sla, ...]
    if sla is None:
        slas = ()
    elif isinstance(sla, Freshness | ReadyBy):
        slas = (sla,)
    else:
        slas = tuple(sla)
        if not all(isinstance(s, Freshness | ReadyBy) for s in slas):
            raise ConfigError("sla must be freshness(...) or ready_by(...), or a list of them")
    return Orchestration(trigger, step, safety, back, policy, slas)
