"""Several schedulers on one PostgreSQL metadata DB: never the same table at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from headwater.orchestrate import ManualClock
from headwater.orchestrate.history import History
from headwater.orchestrate.leases import Leases
from headwater.orchestrate.metadata import Metadata

from .conftest import run_cli, write_pipeline
from .test_orchestrate_helpers import commits, utc

SERVER = "postgresql://postgres@127.0.0.1:5432"

PIPELINE = """
from headwater import table, snapshot
from headwater.orchestrate import cron
from headwater.sources import files

table("bronze.sales", source=files("landing/*.ndjson"), strategy="append")

@table("silver.daily", inputs={"sales": snapshot("bronze.sales")}, strategy="replace-partition",
       partition_by=["day"], interval="1d", safety_delay="0s", trigger=cron("* * * * * *"))
def daily(ctx, sales):
    return ctx.sql(
        "SELECT CAST(day AS DATE) AS day, count(*) AS sales FROM sales "
        "WHERE CAST(day AS DATE) >= getvariable('interval_start')::DATE "
        "AND CAST(day AS DATE) < getvariable('interval_end')::DATE GROUP BY ALL")

@table("silver.totals", inputs={"sales": snapshot("bronze.sales")}, strategy="overwrite",
       trigger=cron("* * * * * *"))
def totals(sales):
    return "SELECT count(*) AS n FROM sales"
"""


@pytest.fixture
def database() -> Iterator[str]:
    name = "hw_orch_" + uuid.uuid4().hex[:10]
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as con:
            con.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def test_two_schedulers_and_a_backfill_never_run_the_same_table_at_once(
    tmp_path: Path, database: str
) -> None:
    (tmp_path / "headwater.toml").write_text(
        f'[project]\nname = "pg"\n[metadata]\nurl = "{database}"\n[scheduler]\nlease_seconds = 30\n'
    )
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "sales", PIPELINE)
    (tmp_path / "landing").mkdir()
    rows = [json.dumps({"id": i, "day": f"2024-02-{1 + i % 9:02d}"}) for i in range(90)]
    (tmp_path / "landing" / "s.ndjson").write_text("\n".join(rows) + "\n")
    run_cli(tmp_path, "run", "bronze.sales")
    base = [sys.executable, "-m", "headwater", "--project", str(tmp_path)]
    # Stretch each write so the schedulers overlap in time.
    env = {**os.environ, "HEADWATER_FAILPOINTS": "after_stage=sleep:0.2"}
    processes = [
        subprocess.Popen([*base, "serve", "--max-runs", "6"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        subprocess.Popen([*base, "serve", "--max-runs", "6"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        subprocess.Popen([*base, "backfill", "silver.daily", "--start", "2024-02-01",
                          "--end", "2024-02-09", "--parallel", "2"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    ]  # fmt: skip
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, out + err

    meta = Metadata.open(database, tmp_path)
    history = History(meta)
    for table in ("silver.daily", "silver.totals"):
        events = [e for e in history.events(table) if e[4] in ("start", "end")]
        owners = {e[3] for e in events}
        # Start and end of each run follow each other: no run of the table began while
        # another (of any scheduler) was under way.
        for begin, finish in zip(events[::2], events[1::2], strict=True):
            assert (begin[4], finish[4]) == ("start", "end"), events
            assert begin[2] == finish[2] and begin[3] == finish[3]
        assert len(owners) >= 2 or table == "silver.totals"
    daily_owners = {e[3].split(":")[2] for e in history.events("silver.daily")}
    assert {"scheduler"} <= daily_owners
    # Each committed run made its own commit; nothing ran twice.
    runs = history.runs("silver.daily", limit=None)
    committed = {r.engine_run_id for r in runs if r.status == "committed"}
    made = [m["run_id"] for m in commits(tmp_path / "warehouse" / "silver" / "daily")]
    assert sorted(made) == sorted(committed)
    backfilled = [r for r in runs if r.kind == "backfill"]
    assert len(backfilled) == 8 and {r.status for r in backfilled} == {"committed"}
    # A fire of the cron is one run, whichever scheduler saw it first.
    keys = [r.run_key for r in history.runs("silver.totals", limit=None)]
    assert len(keys) == len(set(keys))
    meta.close()


def test_a_lease_is_exclusive_across_connections_and_expires(database: str) -> None:
    clock = ManualClock(utc(2024, 1, 1))
    from datetime import timedelta

    one = Leases(Metadata.open(database), "host-a:1:scheduler:x", clock, timedelta(seconds=30))
    two = Leases(Metadata.open(database), "host-b:2:scheduler:y", clock, timedelta(seconds=30))
    assert one.try_acquire("table:silver.x")
    assert not two.try_acquire("table:silver.x")
    assert one.try_acquire("table:silver.x")  # reentrant for its owner
    one.release("table:silver.x")
    assert not two.try_acquire("table:silver.x")  # still held once
    clock.advance(timedelta(seconds=31))  # its owner stopped renewing: the lease expired
    assert two.try_acquire("table:silver.x")
    assert one.renew() == {"table:silver.x"}  # the old owner learns it lost it
