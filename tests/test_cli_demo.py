"""`headwater demo` end to end: the shop pipeline built, changed, and built again."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from .conftest import run_cli
from .test_cli_commands import error_lines, summary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("demo")
    project = root / "shop"
    result = run_cli(root, "demo", "--dir", str(project))
    yield project, result.stdout


def runs(stdout: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    first, second = stdout.split("Run 2:", 1)
    return summary(first), summary(second.split("top customers", 1)[0])


def sql(project: Path, query: str) -> list[dict[str, Any]]:
    return json.loads(run_cli(project, "sql", query, "--format", "json").stdout)  # type: ignore[no-any-return]


def count(project: Path, name: str, where: str = "TRUE") -> int:
    layer, table = name.split(".")
    data = DeltaTable(str(project / "warehouse" / layer / table)).to_pyarrow_table()
    if where == "TRUE":
        return data.num_rows
    return len(sql(project, f"SELECT 1 FROM {name} WHERE {where}"))


def test_first_run_builds_every_layer(demo: tuple[Path, str]) -> None:
    project, stdout = demo
    first, _ = runs(stdout)
    assert list(first) == [
        "bronze.customers",
        "bronze.events",
        "bronze.orders",
        "silver.customers",
        "silver.orders",
        "gold.customer_revenue",
        "gold.daily_revenue",
    ]
    assert all(row[0] == "committed" for row in first.values())
    assert first["bronze.customers"][1:4] == ["1", "200", "200"]
    assert first["bronze.orders"][1:4] == ["1", "2000", "2000"]
    assert first["bronze.events"][1:4] == ["1", "300", "300"]
    with sqlite3.connect(project / "shop.db") as db:
        (valid,) = db.execute(
            "SELECT count(*) FROM orders WHERE order_id <= 2000 AND amount > 0"
        ).fetchone()
    assert first["silver.orders"][3] == str(valid)  # zero-amount orders are cleaned out
    assert first["gold.daily_revenue"][3] == "30"  # one row per day of March


def test_second_run_reads_only_the_changes(demo: tuple[Path, str]) -> None:
    _, stdout = demo
    _, second = runs(stdout)
    # status, commits, rows in, inserted, updated, deleted
    assert second["bronze.customers"][:6] == ["committed", "1", "3", "0", "3", "0"]
    assert second["bronze.orders"][:6] == ["committed", "1", "35", "25", "10", "0"]
    # Two new files with 20 events, one of them already loaded in run 1.
    assert second["bronze.events"][:6] == ["committed", "1", "20", "19", "0", "0"]
    # Three customers changed: three versions closed, three opened.
    assert second["silver.customers"][:6] == ["committed", "1", "3", "3", "3", "0"]
    assert int(second["gold.customer_revenue"][2]) <= 40  # not the 200 customers
    assert int(second["gold.daily_revenue"][2]) < 30  # only the affected days
    assert all(row[6] == "1" for row in second.values())  # one new version each


def test_scd2_versions_of_the_customer_who_moved(demo: tuple[Path, str]) -> None:
    project, stdout = demo
    moved = re.search(r"customer 7 moved from (\w+) to (\w+)", stdout)
    assert moved is not None
    old_city, new_city = moved.groups()
    section = stdout.split("every version of customer 7", 1)[1]
    versions = [line.split() for line in section.splitlines() if line.split()[:1] == ["7"]]
    assert len(versions) == 2
    assert old_city in versions[0] and versions[0][-1] == "false"
    assert new_city in versions[1] and versions[1][-1] == "true"
    assert "History of silver.customers" in stdout

    assert count(project, "silver.customers") == 203
    assert count(project, "silver.customers", "is_current") == 200
    rows = sql(project, "SELECT city FROM gold.customer_revenue WHERE customer_id = 7")
    assert rows == [{"city": new_city}]


def test_incremental_gold_equals_a_full_recompute(demo: tuple[Path, str]) -> None:
    project, _ = demo
    wrong_customers = sql(
        project,
        """
        WITH full_recompute AS (
            SELECT c.customer_id, count(o.order_id) AS orders, coalesce(sum(o.amount), 0) AS revenue
            FROM silver.customers c
            LEFT JOIN silver.orders o ON o.customer_id = c.customer_id AND o.status <> 'cancelled'
            WHERE c.is_current
            GROUP BY ALL
        )
        SELECT * FROM full_recompute f FULL JOIN gold.customer_revenue g USING (customer_id)
        WHERE f.orders IS DISTINCT FROM g.orders OR f.revenue IS DISTINCT FROM g.revenue
        """,
    )
    assert wrong_customers == []
    wrong_days = sql(
        project,
        """
        WITH full_recompute AS (
            SELECT order_date, count(*) AS orders, sum(amount) AS revenue
            FROM silver.orders WHERE status <> 'cancelled' GROUP BY ALL
        )
        SELECT * FROM full_recompute f FULL JOIN gold.daily_revenue g USING (order_date)
        WHERE f.orders IS DISTINCT FROM g.orders OR f.revenue IS DISTINCT FROM g.revenue
        """,
    )
    assert wrong_days == []
    assert count(project, "bronze.events") == 319
    # Loaded event files are archived; the landing folder is empty again.
    assert list((project / "landing" / "events").glob("*.ndjson")) == []
    assert len(list((project / "landing" / "archive").rglob("*.ndjson"))) == 5


def test_demo_in_a_temporary_folder_is_removed_and_repeatable(
    demo: tuple[Path, str], tmp_path: Path
) -> None:
    _, kept_stdout = demo
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_cli(tmp_path, "demo", env={"TMPDIR": str(scratch)})
    assert "The demo project was removed" in result.stdout
    assert list(scratch.iterdir()) == []

    def numbers(stdout: str) -> list[dict[str, list[str]]]:
        # Everything but the timings: the demo is deterministic.
        return [{t: row[:-1] for t, row in run.items()} for run in runs(stdout)]

    assert numbers(result.stdout) == numbers(kept_stdout)


def test_demo_refuses_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli(tmp_path, "demo", "--dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"error: {tmp_path} is not an empty directory",
        "hint: give --dir a new or empty directory for the demo project",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
