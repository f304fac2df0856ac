"""`headwater serve`, `runs`, `status`, `dag --critical-path` and bad input, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from headwater.orchestrate.critical_path import compute

from .conftest import run_cli, write_pipeline

PIPELINE = """
from headwater import table
from headwater.orchestrate import cron, freshness, on_upstream
from headwater.sources import files

table("bronze.events", source=files("landing/*.ndjson"), strategy="append",
      trigger=cron("* * * * * *"), sla=freshness("1h"))
table("silver.events", inputs=["bronze.events"], strategy="append", trigger=on_upstream())
table("gold.unscheduled", inputs=["silver.events"], strategy="append")
"""


def make_project(root: Path) -> None:
    (root / "headwater.toml").write_text('[project]\nname = "serve"\n')
    (root / "pipelines").mkdir()
    write_pipeline(root, "events", PIPELINE)
    (root / "landing").mkdir()
    (root / "landing" / "a.ndjson").write_text('{"id": 1}\n{"id": 2}\n')


def test_serve_then_runs_status_and_critical_path(tmp_path: Path) -> None:
    make_project(tmp_path)
    served = run_cli(tmp_path, "serve", "--max-runs", "3")
    assert "serving 2 scheduled table(s) of 3" in served.stderr
    assert "bronze.events: committed version 0 (2 rows in)" in served.stderr
    assert "silver.events: committed version 0" in served.stderr

    runs = json.loads(run_cli(tmp_path, "runs", "--format", "json").stdout)
    by_table = {(r["table"], r["status"]) for r in runs}
    assert ("bronze.events", "committed") in by_table and ("silver.events", "committed") in by_table
    first = next(r for r in runs if r["table"] == "bronze.events" and r["status"] == "committed")
    assert first["rows_in"] == 2 and first["version"] == 0 and first["attempts"] == 1
    assert first["positions"]["source"]  # the positions the run committed
    listing = run_cli(tmp_path, "runs", "silver.events").stdout
    assert "silver.events" in listing and "bronze.events" not in listing

    status = json.loads(run_cli(tmp_path, "status", "--format", "json").stdout)
    rows = {s["table"]: s for s in status}
    assert rows["bronze.events"]["slas"][0]["breached"] is False
    assert rows["bronze.events"]["next_run"].startswith("20")
    assert rows["silver.events"]["next_run"] == "on upstream commit"
    assert rows["gold.unscheduled"]["trigger"] == "manual (no trigger)"
    assert rows["gold.unscheduled"]["last_run"] is None
    text = run_cli(tmp_path, "status").stdout
    assert "ok fresh within 1h" in text and "never run" in text

    path = run_cli(tmp_path, "dag", "--critical-path").stdout
    assert path.startswith("critical path (")
    assert "bronze.events -> silver.events -> gold.unscheduled" in path


def test_the_critical_path_follows_the_longest_chain_and_gives_slack() -> None:
    order = ["a", "b", "c", "d"]
    upstream = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}
    result = compute(order, upstream, {"a": [1, 3, 2], "b": [10], "c": [4], "d": [1]})
    assert result.path == ["a", "b", "d"]
    assert result.length == 13
    assert {t: result.timings[t].slack for t in order} == {"a": 0, "b": 0, "c": 6, "d": 0}
    assert result.timings["d"].start == 12


def test_bad_backfill_and_metadata_options_fail_with_one_line(tmp_path: Path) -> None:
    make_project(tmp_path)
    result = run_cli(
        tmp_path, "backfill", "bronze.events", "--start", "2024-01-01", "--end", "2024-01-03",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "table bronze.events declares no interval" in result.stderr
    assert "hint: declare table(..., interval='1d') or pass --interval 1d" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(
        tmp_path, "backfill", "bronze.events", "--interval", "1d",
        "--start", "2024-01-01T05:00", "--end", "2024-01-03", check=False,
    )  # fmt: skip
    assert "is not on its 1 day, 0:00:00 interval grid" in result.stderr
    assert "use 2024-01-01T00:00:00+00:00" in result.stderr
    result = run_cli(
        tmp_path,
        "backfill",
        "nope.table",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        check=False,
    )
    assert "no pipeline declares table nope.table" in result.stderr
    (tmp_path / "headwater.toml").write_text('[metadata]\nurl = "mysql://admin:hunter2@db/meta"\n')
    result = run_cli(tmp_path, "runs", check=False)
    assert result.returncode == 2 and "neither sqlite:///PATH nor postgresql://" in result.stderr
    assert "hunter2" not in result.stderr
