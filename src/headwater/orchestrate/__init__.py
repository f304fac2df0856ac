"""Orchestration: schedules, triggers, retries, backfills, SLAs and run history.

    from headwater import table
    from headwater.orchestrate import cron, on_upstream, file_sensor, sql_sensor
    from headwater.orchestrate import continuous, freshness, ready_by, retries

    table("gold.daily", inputs=["silver.orders"], strategy="replace-partition",
          partition_by=["day"], trigger=cron("0 6 * * *", tz="Europe/Paris"),
          interval="1d", safety_delay="2h", lookback="48h",
          retries=retries(5, backoff="30s"),
          sla=ready_by("07:00", tz="Europe/Paris", slo="99%", window="30d"))

`headwater serve` runs the scheduler (`scheduler.Scheduler`), `headwater
backfill` a backfill (`backfill`), `headwater runs` / `status` read the run
history (`history`, `status`). See docs/orchestrate.md.
"""

from .clock import Clock, ManualClock, SystemClock
from .options import Orchestration
from .retries import RetryPolicy, retries
from .sla import freshness, ready_by
from .triggers import continuous, cron, file_sensor, on_upstream, sql_sensor

__all__ = [
    "Clock",
    "ManualClock",
    "Orchestration",
    "RetryPolicy",
    "SystemClock",
    "continuous",
    "cron",
    "file_sensor",
    "freshness",
    "on_upstream",
    "ready_by",
    "retries",
    "sql_sensor",
]
