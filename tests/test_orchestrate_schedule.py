"""Schedules: cron across DST changes, interval readiness, lookback, declarations."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from headwater import snapshot, table
from headwater.engine.interval import Interval
from headwater.errors import ConfigError
from headwater.orchestrate import ManualClock, cron, on_upstream, retries
from headwater.orchestrate.intervals import covering, latest_eligible, split

from .lake import Feed, Lake
from .test_orchestrate_helpers import commits, scheduler, utc

PARIS = ZoneInfo("Europe/Paris")


def fires(expression: str, tz: str, start, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    trigger = cron(expression, tz=tz)
    out, moment = [], start
    for _ in range(count):
        moment = trigger.next_after(moment)
        out.append(moment.astimezone(ZoneInfo(tz)).isoformat())
    return out


def test_a_daily_cron_fires_once_a_day_across_both_dst_changes() -> None:
    # Spring forward (31 March 2024): 02:30 does not exist in Paris; it runs at 03:00, once.
    spring = fires("30 2 * * *", "Europe/Paris", utc(2024, 3, 29, 12), 4)
    assert spring == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]
    # Fall back (27 October 2024): 02:30 happens twice; a daily job still runs once.
    autumn = fires("30 2 * * *", "Europe/Paris", utc(2024, 10, 25, 12), 4)
    assert autumn == [
        "2024-10-26T02:30:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
        "2024-10-29T02:30:00+01:00",
    ]
    # A fixed local time keeps its wall-clock time, so its UTC time moves by an hour.
    six = fires("0 6 * * *", "Europe/Paris", utc(2024, 3, 30, 12), 2)
    assert six == ["2024-03-31T06:00:00+02:00", "2024-04-01T06:00:00+02:00"]


def test_an_every_30_minutes_cron_fires_every_real_half_hour_through_the_repeated_hour() -> None:
    got = fires("*/30 * * * *", "Europe/Paris", utc(2024, 10, 26, 23, 15), 6)
    assert got == [
        "2024-10-27T01:30:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T02:30:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]
    # The skipped hour of spring has no fire at all: 01:30 is followed by 03:00.
    spring = fires("*/30 * * * *", "Europe/Paris", utc(2024, 3, 31, 0, 15), 3)
    assert spring == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:30:00+02:00",
    ]


def test_intervals_are_eligible_only_after_their_end_plus_the_safety_delay() -> None:
    day = timedelta(days=1)
    assert latest_eligible(utc(2024, 5, 2, 1, 59), day, timedelta(hours=2)) == Interval(
        utc(2024, 4, 30), utc(2024, 5, 1)
    )
    assert latest_eligible(utc(2024, 5, 2, 2, 0), day, timedelta(hours=2)) == Interval(
        utc(2024, 5, 1), utc(2024, 5, 2)
    )
    assert covering(Interval(utc(2024, 5, 3), utc(2024, 5, 4)), day, timedelta(hours=48)) == (
        Interval(utc(2024, 5, 1), utc(2024, 5, 4))
    )
    assert len(split(utc(2024, 1, 1), utc(2024, 1, 31), day, "t")) == 30
    with pytest.raises(ConfigError, match="not on its 1 day, 0:00:00 interval grid"):
        split(utc(2024, 1, 1, 5), utc(2024, 1, 3), day, "gold.daily")


def daily_sales(tmp_path: Path, **options: object) -> tuple[Lake, Feed]:
    lake = Lake(tmp_path)
    feed = Feed([], name="sales")
    lake.declare(lambda: table("bronze.sales", source=feed, strategy="append"))

    def build() -> None:
        @table(
            "silver.daily",
            inputs={"sales": snapshot("bronze.sales")},
            strategy="replace-partition",
            partition_by=["day"],
            interval="1d",
            **options,  # type: ignore[arg-type]
        )
        def daily(ctx, sales):  # type: ignore[no-untyped-def]
            return ctx.sql(
                "SELECT day, count(*) AS sales, sum(amount) AS total FROM sales "
                "WHERE day >= getvariable('interval_start')::DATE "
                "AND day < getvariable('interval_end')::DATE GROUP BY day"
            )

    lake.declare(build)
    return lake, feed


def test_cron_runs_each_day_once_across_dst_and_waits_for_the_safety_delay(
    tmp_path: Path,
) -> None:
    lake, feed = daily_sales(
        tmp_path, trigger=cron("30 2 * * *", tz="Europe/Paris"), safety_delay="3h"
    )
    feed.push([{"id": i, "day": date(2024, 10, 24 + i % 6), "amount": 1} for i in range(60)])
    lake.run("bronze.sales")
    clock = ManualClock(utc(2024, 10, 25, 12))
    sched = scheduler(lake, clock)
    try:
        # Walk the clock through the fall-back night in 15-minute steps.
        for _ in range(4 * 24 * 4):
            clock.advance(timedelta(minutes=15))
            sched.run_until_idle()
    finally:
        sched.close()
    runs = [r for r in sched.history.runs("silver.daily", limit=None) if r.kind == "scheduled"]
    fired = sorted(r.logical_ts.astimezone(PARIS).isoformat() for r in runs if r.logical_ts)
    assert fired == [
        "2024-10-26T02:30:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
        "2024-10-29T02:30:00+01:00",
    ]
    # 02:30 Paris is 00:30/01:30 UTC: with a 3 h safety delay the newest complete
    # day is the one before yesterday (UTC); each day once, in order.
    assert [
        r.interval.start.date().isoformat() for r in sorted(runs, key=lambda r: r.created_at)
    ] == [  # type: ignore[union-attr]
        "2024-10-24",
        "2024-10-25",
        "2024-10-26",
        "2024-10-27",
    ]
    assert all(r.status == "committed" for r in runs)
    by_day = {r["day"].isoformat(): r["sales"] for r in lake.rows("silver.daily", "day")}
    assert by_day == {d: 10 for d in ("2024-10-24", "2024-10-25", "2024-10-26", "2024-10-27")}


def test_lookback_reprocesses_recent_intervals_that_late_data_touched(tmp_path: Path) -> None:
    lake, feed = daily_sales(tmp_path, trigger=cron("0 3 * * *"), safety_delay="2h", lookback="48h")
    feed.push([{"id": i, "day": date(2024, 5, 1 + i % 3), "amount": 1} for i in range(9)])
    lake.run("bronze.sales")
    clock = ManualClock(utc(2024, 5, 4, 2, 59))
    sched = scheduler(lake, clock)
    try:
        clock.advance(timedelta(minutes=2))  # 03:01: day 3 May is complete
        sched.run_until_idle()
        # Late rows for 1 and 2 May arrive; the next daily run picks them up.
        feed.push([{"id": 100 + i, "day": date(2024, 5, 1 + i % 2), "amount": 5} for i in range(4)])
        lake.run("bronze.sales")
        clock.advance(timedelta(days=1))
        sched.run_until_idle()
    finally:
        sched.close()
    runs = sorted(sched.history.runs("silver.daily", limit=None), key=lambda r: r.created_at)
    assert [(r.interval.start.day, r.covers.start.day) for r in runs] == [(3, 1), (4, 2)]  # type: ignore[union-attr]
    rows = {r["day"].day: (r["sales"], int(r["total"])) for r in lake.rows("silver.daily", "day")}
    # Day 1 was last rebuilt before its late rows arrived (outside the second window).
    assert rows == {1: (3, 3), 2: (5, 13), 3: (3, 3)}
    # Each run is one commit of its whole window, recorded with the interval it rebuilt.
    meta = commits(lake.target("silver.daily").uri)
    assert [m["interval"][0][:10] for m in meta] == ["2024-05-01", "2024-05-02"]


def test_an_upstream_commit_triggers_the_downstream_table_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="events")
    lake.declare(
        lambda: table("bronze.a", source=feed, strategy="append", trigger=cron("0 * * * *"))
    )
    lake.declare(
        lambda: table("silver.b", inputs=["bronze.a"], strategy="append", trigger=on_upstream())
    )

    def gold() -> None:
        @table("gold.c", inputs=["bronze.a", "silver.b"], strategy="append", trigger=on_upstream())
        def c(a, b):  # type: ignore[no-untyped-def]
            return "SELECT id, 'a' AS side FROM a UNION ALL SELECT id, 'b' AS side FROM b"

    lake.declare(gold)
    clock = ManualClock(utc(2024, 1, 1, 0, 30))
    sched = scheduler(lake, clock)
    try:
        feed.push([{"id": 1}, {"id": 2}])
        clock.advance(timedelta(minutes=31))
        sched.run_until_idle()
        clock.advance(timedelta(minutes=10))
        sched.run_until_idle()  # nothing new: nothing runs
    finally:
        sched.close()
    runs = {r.run_id: r for r in sched.history.runs(limit=None)}
    started = [e for e in sched.history.events() if e[4] == "start"]
    assert [(runs[e[2]].table, runs[e[2]].trigger, runs[e[2]].status) for e in started] == [  # type: ignore[index]
        ("bronze.a", "cron", "committed"),
        ("silver.b", "on-upstream", "committed"),
        # gold.c reads both: it waited for silver.b instead of running twice.
        ("gold.c", "on-upstream", "committed"),
    ]
    assert len(lake.rows("gold.c")) == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": "7h"}, "neither divides a day nor is a whole number of days"),
        ({"lookback": "1d"}, "safety_delay and lookback apply to interval runs"),
        ({"trigger": "0 6 * * *"}, "trigger must come from headwater.orchestrate"),
        ({"retries": "three"}, "retries must be a number of retries"),
        ({"interval": "1d", "safety_delay": "soon"}, "cannot read 'soon' as a duration"),
    ],
)
def test_bad_orchestration_options_name_the_table_and_the_option(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Lake(tmp_path).declare(
            lambda: table("silver.x", inputs=["bronze.y"], **options)  # type: ignore[arg-type]
        )
    assert "table silver.x" in raised.value.message
    with pytest.raises(ConfigError, match="is not a cron expression"):
        cron("61 * * * *")
    with pytest.raises(ConfigError, match="unknown time zone"):
        cron("0 6 * * *", tz="Mars/Olympus")
    with pytest.raises(ConfigError, match="attempts must be a whole number"):
        retries(0)
