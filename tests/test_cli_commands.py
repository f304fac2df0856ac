"""The `headwater` command driven as a user drives it: a subprocess against real
Delta tables on disk, asserting on exit codes, output and table contents."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable

from headwater.config import load_config
from headwater.project import Project

from .conftest import run_cli, write_pipeline

SHOP_PIPELINE = """
    from headwater import table
    from headwater.sources import sqlite

    table(
        "bronze.customers",
        source=sqlite("shop.db", "customers", cursor="updated_at", tiebreak="customer_id"),
        strategy="merge",
        keys=["customer_id"],
        version_column="updated_at",
    )

    table(
        "bronze.orders",
        source=sqlite("shop.db", "orders", cursor="updated_at", tiebreak="order_id"),
        strategy="merge",
        keys=["order_id"],
        version_column="updated_at",
    )

    @table("silver.orders", inputs=["bronze.orders"], strategy="merge", keys=["order_id"],
           version_column="updated_at")
    def orders(orders):
        return "SELECT * REPLACE (upper(status) AS status) FROM orders WHERE amount > 0"
"""


def create_shop(root: Path) -> None:
    with sqlite3.connect(root / "shop.db") as db:
        db.executescript(
            """
            CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT, city TEXT,
                                    updated_at TIMESTAMP);
            CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER,
                                 amount DECIMAL(10,2), status TEXT, updated_at TIMESTAMP);
            INSERT INTO customers VALUES
                (1, 'Ana', 'Porto', '2024-01-01 10:00:00'),
                (2, 'Ben', 'Oslo', '2024-01-01 10:01:00'),
                (3, 'Cleo', 'Rome', '2024-01-01 10:02:00');
            INSERT INTO orders VALUES
                (10, 1, 25.50, 'new', '2024-01-02 09:00:00'),
                (11, 1, 4.50, 'paid', '2024-01-02 09:01:00'),
                (12, 2, 100.00, 'paid', '2024-01-02 09:02:00'),
                (13, 3, 0.00, 'test', '2024-01-02 09:03:00');
            """
        )


def change_shop(root: Path) -> None:
    with sqlite3.connect(root / "shop.db") as db:
        db.executescript(
            """
            UPDATE customers SET city = 'Lisbon', updated_at = '2024-02-01 08:00:00'
                WHERE customer_id = 1;
            INSERT INTO orders VALUES (14, 3, 7.25, 'new', '2024-02-01 08:00:00');
            UPDATE orders SET status = 'shipped', updated_at = '2024-02-01 08:01:00'
                WHERE order_id = 10;
            """
        )


def summary(stdout: str) -> dict[str, list[str]]:
    """Rows of a run summary: table -> [status, commits, rows in, inserted, updated,
    deleted, version, seconds]."""
    statuses = {"committed", "up-to-date", "failed", "upstream-failed"}
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) >= 2 and cells[1] in statuses:
            values = [c.replace(",", "") for c in cells[1:]]
            if len(values) == 7:  # no version: the table was never committed
                values.insert(6, "")
            rows[cells[0]] = values
    return rows


def rows(root: Path, name: str, key: str) -> list[dict[str, object]]:
    layer, table = name.split(".")
    data = DeltaTable(str(root / "warehouse" / layer / table)).to_pyarrow_table()
    return sorted(data.to_pylist(), key=lambda r: r[key])  # type: ignore[arg-type, return-value]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project built twice: the shop as loaded, then after a change in the source."""
    root = tmp_path_factory.mktemp("shop")
    (root / "headwater.toml").write_text('[project]\nname = "shop"\n')
    (root / "pipelines").mkdir()
    write_pipeline(root, "shop", SHOP_PIPELINE)
    create_shop(root)
    first = run_cli(root, "run")
    change_shop(root)
    second = run_cli(root, "run")
    root.joinpath("run1.out").write_text(first.stdout)
    root.joinpath("run2.out").write_text(second.stdout)
    yield root


# -- init -------------------------------------------------------------------------------


def test_init_creates_a_project_whose_example_pipeline_runs(tmp_path: Path) -> None:
    project = tmp_path / "analytics"
    result = run_cli(tmp_path, "init", str(project))
    assert "headwater.toml" in result.stdout

    config = load_config(project)
    assert config.project.name == "analytics"
    assert config.warehouse.path == "warehouse"
    assert config.metadata.url == "sqlite:///.headwater/metadata.db"
    assert config.maintenance.vacuum_retention_hours == 168
    assert (project / "models").is_dir() and (project / "contracts").is_dir()
    ignored = (project / ".gitignore").read_text().split()
    assert "warehouse/" in ignored and ".headwater/" in ignored
    assert sorted(Project.load(project).tables) == ["bronze.orders", "silver.orders"]

    run = run_cli(project, "run")
    assert summary(run.stdout)["bronze.orders"][:4] == ["committed", "1", "5", "5"]
    cleaned = rows(project, "silver.orders", "order_id")
    # The example drops the zero-amount order and normalises the status.
    assert [r["order_id"] for r in cleaned] == [1, 2, 3, 5]
    assert {r["status"] for r in cleaned} == {"paid", "new", "shipped"}


def test_init_refuses_to_overwrite_an_existing_project(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text('[project]\nname = "mine"\n')
    result = run_cli(tmp_path, "init", str(tmp_path), check=False)
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        f"error: {config} already exists",
        "hint: init only creates new projects; choose another directory",
    ]
    assert config.read_text() == '[project]\nname = "mine"\n'
    assert not (tmp_path / "pipelines").exists()


# -- run ----------------------------------------------------------------------------------


def test_run_loads_then_applies_only_the_changes(shop: Path) -> None:
    first = summary((shop / "run1.out").read_text())
    assert first["bronze.customers"][:4] == ["committed", "1", "3", "3"]
    assert first["silver.orders"][:4] == ["committed", "1", "3", "3"]  # the test order dropped

    second = summary((shop / "run2.out").read_text())
    # status, commits, rows in, inserted, updated, deleted, version
    assert second["bronze.customers"][:7] == ["committed", "1", "1", "0", "1", "0", "1"]
    assert second["bronze.orders"][:7] == ["committed", "1", "2", "1", "1", "0", "1"]

    customers = rows(shop, "bronze.customers", "customer_id")
    assert [c["city"] for c in customers] == ["Lisbon", "Oslo", "Rome"]
    orders = rows(shop, "silver.orders", "order_id")
    assert [(o["order_id"], o["status"]) for o in orders] == [
        (10, "SHIPPED"),
        (11, "PAID"),
        (12, "PAID"),
        (14, "NEW"),
    ]


def test_run_when_nothing_changed_commits_nothing(shop: Path) -> None:
    result = run_cli(shop, "run", "bronze.orders")
    table = summary(result.stdout)
    assert list(table) == ["bronze.orders"]  # only the table asked for
    assert table["bronze.orders"][:2] == ["up-to-date", "0"]
    assert table["bronze.orders"][6] == "1"  # its current version is still shown
    assert DeltaTable(str(shop / "warehouse" / "bronze" / "orders")).version() == 1


# -- reading --------------------------------------------------------------------------------


def test_show_reads_the_latest_and_older_versions(shop: Path) -> None:
    latest = run_cli(shop, "show", "bronze.customers").stdout
    assert "Lisbon" in latest and "Porto" not in latest
    assert "version 1" in latest

    old = run_cli(shop, "show", "bronze.customers", "--version", "0").stdout
    assert "Porto" in old and "Lisbon" not in old

    log = DeltaTable(str(shop / "warehouse" / "bronze" / "customers")).history()
    first_commit = next(e for e in log if e["version"] == 0)
    moment = datetime.fromtimestamp(first_commit["timestamp"] / 1000, UTC).isoformat()
    as_of = run_cli(shop, "show", "bronze.customers", "--as-of", moment).stdout
    assert "Porto" in as_of and "Lisbon" not in as_of
    assert "version 0" in as_of

    before = run_cli(
        shop, "show", "bronze.customers", "--as-of", "2001-01-01T00:00:00Z", check=False
    )
    assert before.returncode != 0
    assert (
        "has no version as of 2001-01-01" in before.stderr and "headwater history" in before.stderr
    )


def test_show_limits_the_rows(shop: Path) -> None:
    result = run_cli(shop, "show", "silver.orders", "--limit", "2").stdout
    assert "4 rows (first 2 shown)" in result
    shown = [
        line for line in result.splitlines() if line.split()[:1] in (["10"], ["11"], ["12"], ["14"])
    ]
    assert len(shown) == 2


def test_sql_joins_tables_by_name(shop: Path) -> None:
    query = (
        "SELECT c.name, c.city, count(*) AS orders, sum(o.amount) AS revenue "
        "FROM silver.orders o JOIN bronze.customers c USING (customer_id) "
        "GROUP BY ALL ORDER BY c.name"
    )
    result = json.loads(run_cli(shop, "sql", query, "--format", "json").stdout)
    assert result == [
        {"name": "Ana", "city": "Lisbon", "orders": 2, "revenue": 30.0},
        {"name": "Ben", "city": "Oslo", "orders": 1, "revenue": 100.0},
        {"name": "Cleo", "city": "Rome", "orders": 1, "revenue": 7.25},
    ]


def test_sql_formats_csv_and_table(shop: Path) -> None:
    query = "SELECT order_id, amount FROM silver.orders WHERE order_id IN (11, 14) ORDER BY 1"
    text = run_cli(shop, "sql", query, "--format", "csv").stdout
    assert list(csv.reader(io.StringIO(text))) == [
        ["order_id", "amount"],
        ["11", "4.50"],
        ["14", "7.25"],
    ]
    table = run_cli(shop, "sql", query).stdout
    assert "order_id" in table and "7.25" in table and "2 rows" in table


def test_history_lists_each_commit_with_its_run(shop: Path) -> None:
    result = run_cli(shop, "history", "bronze.orders").stdout
    log = DeltaTable(str(shop / "warehouse" / "bronze" / "orders")).history()
    run_ids = [entry["headwater"]["run_id"] for entry in log]  # newest first
    assert len(run_ids) == 2
    lines = [line for line in result.splitlines() if any(r in line for r in run_ids)]
    assert [line.split()[0] for line in lines] == ["1", "0"]
    assert run_ids[0] in lines[0] and "2 in: +1 ~1" in lines[0]
    assert run_ids[1] in lines[1] and "4 in: +4" in lines[1]

    newest = run_cli(shop, "history", "bronze.orders", "--limit", "1").stdout
    assert run_ids[0] in newest and run_ids[1] not in newest


def test_tables_lists_declarations_and_versions(shop: Path, tmp_path: Path) -> None:
    listing = run_cli(shop, "tables").stdout
    line = next(row for row in listing.splitlines() if row.split()[:1] == ["silver.orders"])
    assert line.split()[1:3] == ["merge", "order_id"]
    assert "changes of bronze.orders" in line and line.split()[-1] == "1"

    (tmp_path / "headwater.toml").write_text("")
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "shop", SHOP_PIPELINE)
    fresh = run_cli(tmp_path, "tables").stdout
    assert fresh.count("not built") == 3


# -- errors ----------------------------------------------------------------------------------


def test_unknown_table_is_one_line_with_a_hint(shop: Path) -> None:
    result = run_cli(shop, "sql", "SELECT * FROM silver.nope", check=False)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert lines[0] == "error: unknown table silver.nope"
    assert lines[1].startswith("hint: tables in the warehouse: bronze.customers")
    assert "Traceback" not in result.stderr and result.stdout == ""

    shown = run_cli(shop, "show", "gold.nothing", check=False)
    assert shown.returncode == 1
    assert error_lines(shown.stderr)[0] == "error: table gold.nothing does not exist"


def test_bad_sql_is_one_line_with_a_hint(shop: Path) -> None:
    result = run_cli(shop, "sql", "SELEC * FROM silver.orders", check=False)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 2
    assert lines[0].startswith("error: SQL failed: Parser Error: syntax error")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr

    missing = run_cli(shop, "sql", "SELECT nope FROM silver.orders", check=False)
    assert missing.returncode == 1
    assert 'Referenced column "nope" not found' in error_lines(missing.stderr)[0]


def test_not_a_project_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "tables", check=False)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: {tmp_path.resolve()} is not a Headwater project (no headwater.toml)",
        "hint: run `headwater init DIR` to create one, or pass --project DIR",
    ]


def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path: Path) -> None:
    project = tmp_path / "lake"
    run_cli(tmp_path, "init", str(project))
    run_cli(project, "run")
    log = project / "warehouse" / "silver" / "orders" / "_delta_log" / "00000000000000000000.json"
    log.write_text("{not json\n")

    result = run_cli(project, "show", "silver.orders", check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: DeltaError: ")
    assert lines[1] == "hint: run with --debug for the traceback"

    debug = run_cli(project, "--debug", "show", "silver.orders", check=False)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "hint: run with --debug" not in debug.stderr


BOOM_PIPELINE = """
    from headwater import table
    from headwater.sources import sqlite

    table("bronze.customers",
          source=sqlite("shop.db", "customers", cursor="updated_at", tiebreak="customer_id"),
          strategy="merge", keys=["customer_id"], version_column="updated_at")

    @table("silver.boom", inputs=["bronze.customers"], strategy="append")
    def boom(customers):
        raise ValueError("cannot handle customer 42")

    table("gold.after", inputs=["silver.boom"], strategy="append")
"""


def test_a_failing_table_reports_and_stops_its_downstream(project_dir: Path) -> None:
    create_shop(project_dir)
    write_pipeline(project_dir, "boom", BOOM_PIPELINE)
    result = run_cli(project_dir, "run", check=False)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: table silver.boom: ValueError: cannot handle customer 42",
        "hint: run with --debug for the traceback",
        "error: table gold.after was not run: upstream silver.boom failed",
    ]
    assert "Traceback" not in result.stderr
    table = summary(result.stdout)
    assert table["bronze.customers"][0] == "committed"
    assert table["silver.boom"][0] == "failed"
    assert table["gold.after"][0] == "upstream-failed"
    # What succeeded stays committed.
    assert len(rows(project_dir, "bronze.customers", "customer_id")) == 3

    debug = run_cli(project_dir, "--debug", "run", "silver.boom", check=False)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert 'raise ValueError("cannot handle customer 42")' in debug.stderr


def test_a_pipeline_that_fails_to_load_names_its_line(project_dir: Path) -> None:
    write_pipeline(project_dir, "broken", "import json\n\nsettings = json.loads('{oops')\n")
    result = run_cli(project_dir, "run", check=False)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert lines[0].startswith(
        f"error: {project_dir / 'pipelines' / 'broken.py'}:3: JSONDecodeError"
    )
    assert lines[1] == "hint: fix the pipeline file"
    assert "Traceback" not in result.stderr

    debug = run_cli(project_dir, "--debug", "run", check=False)
    assert "Traceback" in debug.stderr and "json.loads('{oops')" in debug.stderr


def test_project_comes_from_the_environment(shop: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater",
            "sql",
            "SELECT count(*) AS n FROM bronze.orders",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HEADWATER_PROJECT": str(shop)},
        check=True,
    )
    assert json.loads(result.stdout) == [{"n": 5}]


# -- maintain -----------------------------------------------------------------------------------


def test_maintain_compacts_and_vacuums_without_changing_data(tmp_path: Path) -> None:
    project = tmp_path / "lake"
    run_cli(tmp_path, "init", str(project))
    landing = project / "landing" / "orders"
    for day, order_id in (("02", 6), ("03", 7)):
        run_cli(project, "run", "bronze.orders")
        (landing / f"2024-05-{day}.csv").write_text(
            "order_id,customer,amount,status,updated_at\n"
            f"{order_id},erin,3.00,NEW,2024-05-{day}T08:00:00Z\n"
        )
    run_cli(project, "run", "bronze.orders")
    table_dir = project / "warehouse" / "bronze" / "orders"
    before = DeltaTable(str(table_dir))
    data_before = sorted(before.to_pyarrow_table().to_pylist(), key=lambda r: r["order_id"])
    assert len(before.file_uris()) == 3

    dry = run_cli(project, "maintain", "--dry-run")
    assert "bronze.orders · dry run, nothing changed" in dry.stdout
    assert "3 files would be compacted" in dry.stdout
    assert len(DeltaTable(str(table_dir)).file_uris()) == 3

    refused = run_cli(project, "maintain", "bronze.orders", "--retention-hours", "1", check=False)
    assert refused.returncode == 1
    lines = error_lines(refused.stderr)
    assert lines[0].startswith("error: table bronze.orders: vacuum retention 1 h is below")
    assert "--force" in lines[1]

    done = run_cli(project, "maintain", "bronze.orders", "--retention-hours", "0", "--force")
    assert "3 files compacted" in done.stdout
    after = DeltaTable(str(table_dir))
    assert len(after.file_uris()) == 1
    assert sorted(after.to_pyarrow_table().to_pylist(), key=lambda r: r["order_id"]) == data_before
    # The three small files were vacuumed from disk, not only from the table.
    assert len(list(table_dir.glob("*.parquet"))) == 1
