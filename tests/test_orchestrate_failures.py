"""Failure classes: transient retries, data-quality stops, sensors that time out,
continuous tables restarted with backoff."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from headwater import snapshot, table
from headwater.errors import TransientError
from headwater.orchestrate import (
    ManualClock,
    continuous,
    cron,
    file_sensor,
    on_upstream,
    retries,
    sql_sensor,
)
from headwater.quality import CheckResult, RowOutcome
from headwater.sources.base import Increment, Position, ReadContext, Source

from .lake import Feed, Lake
from .test_orchestrate_helpers import scheduler, utc


class Flaky(Source):
    """A source that is unavailable for its first `failures` reads, then serves its rows."""

    kind = "flaky"

    def __init__(self, failures: int, rows: list[dict[str, object]]) -> None:
        self.failures = failures
        self.rows = rows
        self.reads = 0

    def describe(self) -> str:
        return "flaky"

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        self.reads += 1
        if self.reads <= self.failures:
            raise TransientError("source unavailable (HTTP 503)")
        done = 0 if position is None else int(position["n"])
        if done < len(self.rows):
            yield Increment(pa.Table.from_pylist(self.rows[done:]), {"n": len(self.rows)})


def test_a_source_that_fails_twice_is_retried_with_backoff_then_succeeds(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    source = Flaky(2, [{"id": 1}, {"id": 2}])
    lake.declare(
        lambda: table(
            "bronze.flaky",
            source=source,
            trigger=cron("0 * * * *"),
            retries=retries(4, backoff="1m", jitter=0.0),
        )
    )
    clock = ManualClock(utc(2024, 1, 1, 0, 59))
    sched = scheduler(lake, clock)
    try:
        clock.advance(timedelta(minutes=1))
        sched.run_until_idle()
        (run,) = sched.history.runs("bronze.flaky")
        assert (run.status, run.attempts, run.failure) == ("retrying", 1, "transient")
        assert run.not_before == clock.now() + timedelta(minutes=1)
        clock.advance(timedelta(seconds=59))
        sched.run_until_idle()  # the backoff has not passed: nothing happens
        assert sched.history.runs("bronze.flaky")[0].attempts == 1
        clock.advance(timedelta(seconds=1))
        sched.run_until_idle()
        run = sched.history.runs("bronze.flaky")[0]
        # Exponential: the second retry waits twice as long.
        assert (run.status, run.attempts) == ("retrying", 2)
        assert run.not_before == clock.now() + timedelta(minutes=2)
        clock.advance(timedelta(minutes=2))
        sched.run_until_idle()
    finally:
        sched.close()
    (run,) = sched.history.runs("bronze.flaky")
    assert (run.status, run.attempts, run.rows_in, run.version) == ("committed", 3, 2, 0)
    assert source.reads == 3
    assert [r["id"] for r in lake.rows("bronze.flaky", "id")] == [1, 2]
    attempts = sched.meta.execute(
        "SELECT attempt, status, failure FROM hw_attempts WHERE run_id = ? ORDER BY attempt",
        (run.run_id,),
    )
    assert attempts == [
        (1, "failed", "transient"),
        (2, "failed", "transient"),
        (3, "committed", None),
    ]
    assert not sched.alerts.firing()  # a retried success raises no alert


def test_retries_give_up_after_the_budget_and_alert(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.down",
            source=Flaky(99, [{"id": 1}]),
            trigger=cron("0 * * * *"),
            retries=retries(2, backoff="10s", jitter=0.0),
        )
    )
    clock = ManualClock(utc(2024, 1, 1, 0, 59))
    sched = scheduler(lake, clock)
    try:
        clock.advance(timedelta(minutes=1))
        sched.run_until_idle()
        clock.advance(timedelta(seconds=10))
        sched.run_until_idle()
    finally:
        sched.close()
    (run,) = sched.history.runs("bronze.down")
    assert (run.status, run.attempts, run.failure) == ("failed", 2, "transient")
    assert [a[0] for a in sched.alerts.firing("bronze.down")] == ["bronze.down:failure"]


class NoNegativeAmounts:
    """A data contract in miniature: an error-level check on every row."""

    def check_rows(self, increment: pa.Table) -> RowOutcome:
        bad = sum(1 for v in increment.column("amount").to_pylist() if v < 0)
        return RowOutcome(
            increment,
            None,
            [CheckResult("range(amount >= 0)", "error", bad == 0, "amount", failing_rows=bad)],
        )

    def check_table(self, would_be: ds.Dataset, increment: pa.Table) -> list[CheckResult]:
        return []


def test_a_data_quality_failure_is_not_retried_and_stops_downstream(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="payments")
    lake.declare(
        lambda: table(
            "bronze.payments", source=feed, strategy="append", trigger=cron("*/5 * * * *")
        )
    )
    lake.declare(
        lambda: table(
            "silver.payments",
            inputs=["bronze.payments"],
            strategy="append",
            gate=NoNegativeAmounts(),
            trigger=on_upstream(),
        )
    )
    lake.declare(
        lambda: table(
            "gold.payments", inputs=["silver.payments"], strategy="append", trigger=on_upstream()
        )
    )
    clock = ManualClock(utc(2024, 1, 1, 0, 4))
    sched = scheduler(lake, clock)
    try:
        feed.push([{"id": 1, "amount": 10}])
        clock.advance(timedelta(minutes=1))
        sched.run_until_idle()
        assert lake.version("gold.payments") == 0
        feed.push([{"id": 2, "amount": -5}])
        clock.advance(timedelta(minutes=5))
        sched.run_until_idle()
        clock.advance(timedelta(hours=1))
        sched.run_until_idle()  # time passes: a data-quality failure is never retried
    finally:
        sched.close()
    silver = sched.history.runs("silver.payments", limit=None)
    assert [(r.status, r.attempts, r.failure) for r in silver] == [
        ("failed", 1, "data-quality"),
        ("committed", 1, None),
    ]
    gold = sched.history.runs("gold.payments", limit=None)
    assert [r.status for r in gold] == ["upstream-failed", "committed"]
    assert "silver.payments failed" in (gold[0].error or "")
    assert lake.version("gold.payments") == 0  # not run: still the first version
    assert [r["id"] for r in lake.rows("silver.payments")] == [1]  # nothing published
    assert [a[0] for a in sched.alerts.firing()] == ["silver.payments:data-quality"]


def daily(tmp_path: Path, trigger: object) -> Lake:
    lake = Lake(tmp_path)
    feed = Feed([[{"id": 1, "day": date(2024, 3, 1), "amount": 1}]], name="sales")
    lake.declare(lambda: table("bronze.sales", source=feed, strategy="append"))
    lake.declare(
        lambda: table(
            "silver.daily",
            inputs={"sales": snapshot("bronze.sales")},
            strategy="replace-partition",
            partition_by=["day"],
            interval="1d",
            safety_delay="1h",
            trigger=trigger,  # type: ignore[arg-type]
        )
    )
    lake.run("bronze.sales")
    return lake


def test_a_file_sensor_that_times_out_fails_and_alerts_and_a_marker_releases_the_next_day(
    tmp_path: Path,
) -> None:
    lake = daily(tmp_path, file_sensor("landing/{ds}/_SUCCESS", poke="10m", timeout="3h"))
    clock = ManualClock(utc(2024, 3, 2, 0, 30))
    sched = scheduler(lake, clock)
    try:
        clock.advance(timedelta(minutes=30))  # 01:00: 1 March is eligible; its marker is missing
        sched.run_until_idle()
        (run,) = sched.history.runs("silver.daily")
        assert (run.status, run.interval.start.day) == ("waiting", 1)  # type: ignore[union-attr]
        for _ in range(17):  # pokes every 10 minutes, up to 3 hours
            clock.advance(timedelta(minutes=10))
            sched.run_until_idle()
        assert sched.history.runs("silver.daily")[0].status == "waiting"
        clock.advance(timedelta(minutes=10))
        sched.run_until_idle()
        (run,) = sched.history.runs("silver.daily")
        assert (run.status, run.failure, run.attempts) == ("failed", "sensor-timeout", 0)
        assert [a[0] for a in sched.alerts.firing()] == ["silver.daily:sensor-timeout"]
        # The next day's marker is there on time: that interval runs at once.
        marker = tmp_path / "landing" / "2024-03-02" / "_SUCCESS"
        marker.parent.mkdir(parents=True)
        marker.touch()
        clock.set(utc(2024, 3, 3, 1, 0))
        sched.run_until_idle()
    finally:
        sched.close()
    latest = sched.history.runs("silver.daily")[0]
    assert (latest.status, latest.interval.start.day) == ("committed", 2)  # type: ignore[union-attr]
    assert not sched.alerts.firing()  # the success resolved the sensor alert


def test_a_sql_sensor_waits_for_its_condition_on_the_source(tmp_path: Path) -> None:
    db = tmp_path / "loads.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE loads (day TEXT, done INTEGER)")
    con.commit()
    sensor = sql_sensor(
        "SELECT count(*) FROM loads WHERE day = :ds AND done = 1",
        database="loads.db",
        poke="5m",
        timeout="6h",
    )
    lake = daily(tmp_path, sensor)
    clock = ManualClock(utc(2024, 3, 2, 1, 0))
    sched = scheduler(lake, clock)
    try:
        sched.run_until_idle()
        clock.advance(timedelta(minutes=5))
        sched.run_until_idle()
        assert sched.history.runs("silver.daily")[0].status == "waiting"
        con.execute("INSERT INTO loads VALUES ('2024-03-01', 1)")
        con.commit()
        clock.advance(timedelta(minutes=5))
        sched.run_until_idle()
    finally:
        sched.close()
        con.close()
    (run,) = sched.history.runs("silver.daily")
    assert (run.status, run.version) == ("committed", 0)


class Dying(Source):
    """A stream that dies on some reads (a broken connection) and delivers on the others."""

    kind = "dying"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern  # "x" dies, "." delivers one row
        self.reads = 0

    def describe(self) -> str:
        return "dying stream"

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        step = self.pattern[self.reads % len(self.pattern)]
        self.reads += 1
        if step == "x":
            raise ConnectionError("stream connection reset")
        n = 0 if position is None else int(position["n"])
        yield Increment(pa.Table.from_pylist([{"n": n}]), {"n": n + 1})


def test_a_continuous_table_is_restarted_with_growing_backoff_when_it_dies(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    stream = Dying(".xxx....")
    lake.declare(
        lambda: table(
            "bronze.stream",
            source=stream,
            trigger=continuous(every="1s", backoff="10s", max_backoff="1m"),
        )
    )
    clock = ManualClock(utc(2024, 1, 1))
    sched = scheduler(lake, clock)
    gaps = []
    try:
        for _ in range(8):
            sched.run_until_idle()
            (state,) = sched._supervised.values()
            gaps.append(state.next_at - clock.now())
            clock.set(state.next_at)
    finally:
        sched.close()
    assert gaps[0] == timedelta(seconds=1)
    # Three deaths in a row: 10 s, 20 s, 40 s (each with up to 50% jitter off), then 1 s again.
    assert timedelta(seconds=5) <= gaps[1] <= timedelta(seconds=10)
    assert timedelta(seconds=10) <= gaps[2] <= timedelta(seconds=20)
    assert timedelta(seconds=20) <= gaps[3] <= timedelta(seconds=40)
    assert gaps[4:] == [timedelta(seconds=1)] * 4
    assert [r["n"] for r in lake.rows("bronze.stream", "n")] == [0, 1, 2, 3, 4]
    statuses = [
        r.status for r in sched.history.runs("bronze.stream", limit=None, newest_first=False)
    ]
    assert statuses.count("failed") == 3 and statuses.count("committed") == 5
    assert not sched.alerts.firing()  # the alert of the deaths was resolved by the recovery
