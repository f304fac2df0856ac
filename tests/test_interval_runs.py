"""Interval runs (--start/--end): rebuild exactly one interval of event time, idempotently."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from deltalake import DeltaTable

from headwater import snapshot, table
from headwater.engine.interval import Interval

from .conftest import run_cli
from .lake import Feed, Lake


def daily_totals(tmp_path: Path) -> tuple[Lake, Feed]:
    lake = Lake(tmp_path)
    feed = Feed([], name="sales")
    lake.declare(lambda: table("silver.sales", source=feed, strategy="merge", keys=["id"]))

    def build() -> None:
        @table(
            "gold.daily",
            inputs={"changed": "silver.sales", "sales": snapshot("silver.sales")},
            strategy="replace-partition",
            partition_by=["day"],
        )
        def daily(ctx, changed, sales):  # type: ignore[no-untyped-def]
            if ctx.interval is not None:
                days = "day >= getvariable('interval_start')::DATE AND day < getvariable('interval_end')::DATE"
                return ctx.sql(
                    f"SELECT day, sum(amount) AS total FROM sales WHERE {days} GROUP BY day"
                )
            # Incremental: recompute the days that changed, from the whole table.
            return ctx.sql(
                "SELECT day, sum(amount) AS total FROM sales WHERE day IN (SELECT day FROM changed) GROUP BY day"
            )

    lake.declare(build)
    return lake, feed


def test_an_interval_run_replaces_exactly_its_partitions(tmp_path: Path) -> None:
    lake, feed = daily_totals(tmp_path)
    feed.push([{"id": i, "day": date(2024, 1, 1 + i % 3), "amount": 10} for i in range(9)])
    lake.run()
    assert [(r["day"].day, r["total"]) for r in lake.rows("gold.daily", "day")] == [
        (1, 30),
        (2, 30),
        (3, 30),
    ]
    # Every sale of 2 January is withdrawn: the incremental run cannot see that a day vanished.
    feed.push(
        [
            {"id": i, "day": date(2024, 1, 2), "amount": 10, "_change_type": "delete"}
            for i in (1, 4, 7)
        ]
    )
    lake.run()
    assert [r["day"].day for r in lake.rows("gold.daily", "day")] == [1, 2, 3]  # day 2 is stale
    day_files = lambda d: {f for f in lake.files("gold.daily") if f.startswith(f"day=2024-01-0{d}")}  # noqa: E731
    untouched = day_files(1) | day_files(3)
    positions = DeltaTable(lake.target("gold.daily").uri).history(1)[0]["headwater"]["positions"]

    lake.run("gold.daily", interval=Interval.of("2024-01-02", "2024-01-03"))
    assert [(r["day"].day, r["total"]) for r in lake.rows("gold.daily", "day")] == [
        (1, 30),
        (3, 30),
    ]
    assert untouched <= lake.files("gold.daily")  # days outside the interval were not rewritten
    meta = DeltaTable(lake.target("gold.daily").uri).history(1)[0]["headwater"]
    assert meta["interval"] == ["2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00"]
    assert meta["positions"] == positions  # the incremental state did not move
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]

    # Rebuilding the same interval again changes nothing in the table's content.
    before = lake.rows("gold.daily", "day")
    lake.run("gold.daily", interval=Interval.of("2024-01-01", "2024-01-04"))
    assert lake.rows("gold.daily", "day") == before


def test_a_source_that_cannot_reread_an_interval_says_so(tmp_path: Path) -> None:
    lake, feed = daily_totals(tmp_path)
    feed.push([{"id": 1, "day": date(2024, 1, 1), "amount": 1}])
    (run,) = lake.run("silver.sales", interval=Interval.of("2024-01-01", "2024-01-02"), check=False)
    assert run.status == "failed" and "cannot re-read an interval" in (run.error or "")


def test_the_cli_asks_for_start_end_and_tables_together(project_dir: Path) -> None:
    result = run_cli(project_dir, "run", "--start", "2024-01-01", check=False)
    assert result.returncode != 0 and "needs --start, --end and the tables" in result.stderr
    result = run_cli(
        project_dir, "run", "x.y", "--start", "2024-02-01", "--end", "2024-01-01", check=False
    )
    assert result.returncode != 0 and "is not before its end" in result.stderr


def test_an_interval_run_before_its_input_is_built_waits_instead_of_failing_hard(
    tmp_path: Path,
) -> None:
    lake, _ = daily_totals(tmp_path)
    (run,) = lake.run("gold.daily", interval=Interval.of("2024-01-01", "2024-01-02"), check=False)
    assert run.status == "failed" and run.failure == "upstream-not-ready"
    assert "silver.sales is not built yet" in (run.error or "")
    assert not lake.target("gold.daily").exists
