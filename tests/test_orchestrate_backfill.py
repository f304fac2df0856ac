"""Backfills: 30 daily intervals, failure policies, skipping, and a SIGKILL mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .conftest import run_cli, write_pipeline
from .test_orchestrate_helpers import commits

PIPELINE = """
import os
from pathlib import Path
from headwater import table, snapshot
from headwater.sources import files

table("bronze.sales", source=files("landing/*.ndjson"), strategy="append")

@table("silver.daily", inputs={"sales": snapshot("bronze.sales")}, strategy="replace-partition",
       partition_by=["day"], interval="1d")
def daily(ctx, sales):
    broken = Path(__file__).parent.parent / "broken_day.txt"
    if broken.exists() and ctx.interval.start.date().isoformat() == broken.read_text().strip():
        raise ValueError("a bug for this day")
    return ctx.sql(
        "SELECT CAST(day AS DATE) AS day, count(*) AS sales, sum(amount) AS total FROM sales "
        "WHERE CAST(day AS DATE) >= getvariable('interval_start')::DATE "
        "AND CAST(day AS DATE) < getvariable('interval_end')::DATE GROUP BY ALL")

@table("gold.monthly", inputs={"daily": snapshot("silver.daily")}, strategy="replace-partition",
       partition_by=["day"], interval="1d")
def monthly(ctx, daily):
    return ctx.sql(
        "SELECT day, total * 2 AS doubled FROM daily "
        "WHERE day >= getvariable('interval_start')::DATE AND day < getvariable('interval_end')::DATE")
"""


def make_project(root: Path) -> None:
    (root / "headwater.toml").write_text('[project]\nname = "backfill"\n')
    (root / "pipelines").mkdir()
    write_pipeline(root, "sales", PIPELINE)
    (root / "landing").mkdir()
    lines = [
        json.dumps({"id": d * 10 + i, "day": f"2024-01-{d:02d}", "amount": i + 1})
        for d in range(1, 32)
        for i in range(3)
    ]
    (root / "landing" / "sales.ndjson").write_text("\n".join(lines) + "\n")
    run_cli(root, "run", "bronze.sales")


def interval_commits(root: Path, table: str) -> Counter[str]:
    layer, name = table.split(".")
    return Counter(m["interval"][0][:10] for m in commits(root / "warehouse" / layer / name))


def runs_json(root: Path, *args: str) -> list[dict[str, object]]:
    result = run_cli(root, "runs", "--format", "json", "--limit", "500", *args)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_project(tmp_path)
    return tmp_path


JANUARY = ("--start", "2024-01-01", "--end", "2024-01-31")


def test_a_backfill_with_a_failing_interval_stops_by_default(project: Path) -> None:
    (project / "broken_day.txt").write_text("2024-01-15")
    result = run_cli(project, "backfill", "silver.daily", *JANUARY, check=False)
    assert result.returncode == 1
    runs = runs_json(project, "silver.daily")
    status = Counter(r["status"] for r in runs)
    assert status == {"committed": 14, "failed": 1, "cancelled": 15}
    (failed,) = [r for r in runs if r["status"] == "failed"]
    assert failed["interval"][0].startswith("2024-01-15")  # type: ignore[index]
    assert (
        "a bug for this day" in str(failed["error"]) and failed["attempts"] == 1
    )  # fatal: no retry
    assert interval_commits(project, "silver.daily") == {
        f"2024-01-{d:02d}": 1 for d in range(1, 15)
    }
    # The report names every interval.
    assert "2024-01-15" in result.stdout and "cancelled" in result.stdout
    assert "30 interval run(s): 15 cancelled, 14 committed, 1 failed" in result.stderr

    # Fixed: the same command again finds nothing to resume (the plan is closed); --rerun
    # is not needed, completed intervals are skipped.
    (project / "broken_day.txt").unlink()
    again = run_cli(project, "backfill", "silver.daily", *JANUARY)
    assert "16 committed, 14 skipped" in again.stderr
    assert interval_commits(project, "silver.daily") == {
        f"2024-01-{d:02d}": 1 for d in range(1, 31)
    }


def test_on_failure_continue_runs_every_other_interval_in_parallel(project: Path) -> None:
    (project / "broken_day.txt").write_text("2024-01-15")
    result = run_cli(
        project,
        "backfill",
        "silver.daily",
        *JANUARY,
        "--on-failure",
        "continue",
        "--parallel",
        "3",
        "--with-downstream",
        check=False,
    )
    assert result.returncode == 1
    silver = Counter(r["status"] for r in runs_json(project, "silver.daily"))
    gold = runs_json(project, "gold.monthly")
    assert silver == {"committed": 29, "failed": 1}
    assert Counter(r["status"] for r in gold) == {"committed": 29, "upstream-failed": 1}
    (blocked,) = [r for r in gold if r["status"] == "upstream-failed"]
    assert blocked["interval"][0].startswith("2024-01-15")  # type: ignore[index]
    assert sum(interval_commits(project, "silver.daily").values()) == 29
    assert sum(interval_commits(project, "gold.monthly").values()) == 29
    doubled = run_cli(project, "sql", "SELECT sum(doubled) FROM gold.monthly", "--format", "csv")
    # 3 sales a day of 1+2+3, doubled, for 29 days.
    assert doubled.stdout.strip().splitlines()[-1] == str(29 * 6 * 2)

    # --rerun runs complete intervals again: each once more, idempotently.
    (project / "broken_day.txt").unlink()
    run_cli(
        project,
        "backfill",
        "silver.daily",
        "--start",
        "2024-01-10",
        "--end",
        "2024-01-12",
        "--rerun",
    )
    assert interval_commits(project, "silver.daily")["2024-01-10"] == 2
    total = run_cli(project, "sql", "SELECT sum(sales) FROM silver.daily", "--format", "csv")
    assert total.stdout.strip().splitlines()[-1] == str(29 * 3)


def test_a_scheduler_killed_during_a_backfill_resumes_without_losing_or_repeating_intervals(
    project: Path,
) -> None:
    command = [sys.executable, "-m", "headwater", "--project", str(project), "backfill",
               "silver.daily", *JANUARY, "--parallel", "2"]  # fmt: skip
    # Killed right after the 6th interval's commit (before the history records it),
    # then after staging the 5th interval of the resumed plan (before its commit).
    for failpoint in ("after_commit@6", "after_stage@5"):
        crashed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "HEADWATER_FAILPOINTS": failpoint},
            timeout=300,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed): succeeded" in resumed.stdout
    # Every interval committed exactly once: none lost, none run twice.
    assert interval_commits(project, "silver.daily") == {
        f"2024-01-{d:02d}": 1 for d in range(1, 31)
    }
    runs = runs_json(project, "silver.daily")
    assert len(runs) == 30 and {r["status"] for r in runs} == {"committed"}
    # The interval whose commit got in before the kill was adopted, not run again.
    assert max(r["attempts"] for r in runs) == 2  # type: ignore[type-var]
    rows = run_cli(
        project, "sql", "SELECT count(*), sum(sales) FROM silver.daily", "--format", "csv"
    )
    assert rows.stdout.strip().splitlines()[-1] == "30,90"
