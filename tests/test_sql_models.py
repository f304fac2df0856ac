"""SQL models: models/<layer>/<name>.sql files become tables, run from the CLI on real Delta tables."""

from __future__ import annotations

import re
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from headwater import Project, Runner
from headwater.errors import ConfigError

from .conftest import run_cli, write_pipeline

BRONZE = """
from headwater import table
from headwater.sources import sqlite

table("bronze.orders",
      source=sqlite("shop.db", "orders", cursor="updated_at", tiebreak="order_id"),
      strategy="merge", keys=["order_id"], version_column="updated_at")
table("bronze.customers",
      source=sqlite("shop.db", "customers", cursor="updated_at", tiebreak="customer_id"),
      strategy="merge", keys=["customer_id"])
"""

SILVER_ORDERS = """
-- headwater: strategy=merge keys=[order_id] version_column=updated_at
-- Orders with a positive amount; statuses in lower case.
SELECT order_id, customer_id, amount, lower(status) AS status, updated_at
FROM bronze.orders
WHERE amount > 0
"""

SILVER_CUSTOMERS = "SELECT customer_id, name, segment FROM bronze.customers\n"
SILVER_CUSTOMERS_YAML = """
strategy: scd2
keys: [customer_id]
description: Customers, with the history of their segment
"""

# Recomputes only the customers whose orders changed (old and new customer of a moved order).
GOLD_REVENUE = """
-- headwater: strategy=merge keys=[customer_id]
SELECT c.customer_id, coalesce(sum(o.amount), 0) AS revenue, count(o.order_id) AS orders
FROM (SELECT DISTINCT customer_id FROM changes(silver.orders)) AS c
LEFT JOIN snapshot(silver.orders) AS o USING (customer_id)
GROUP BY c.customer_id
"""

# No options: an overwrite model, rebuilt from whole tables when they change.
GOLD_SEGMENTS = """
SELECT cu.segment, sum(o.amount) AS revenue
FROM silver.orders AS o
JOIN silver.customers AS cu ON cu.customer_id = o.customer_id AND cu.is_current
GROUP BY cu.segment
"""


def write_model(project: Path, name: str, sql: str, suffix: str = ".sql") -> Path:
    layer, table = name.split(".")
    path = project / "models" / layer / f"{table}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(sql).lstrip("\n"))
    return path


def shop_db(project: Path) -> sqlite3.Connection:
    con = sqlite3.connect(project / "shop.db")
    con.executescript(
        """
        CREATE TABLE IF NOT EXISTS orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER,
            amount REAL, status TEXT, updated_at TEXT);
        CREATE TABLE IF NOT EXISTS customers (customer_id INTEGER PRIMARY KEY, name TEXT,
            segment TEXT, updated_at TEXT);
        """
    )
    return con


def seed(project: Path) -> None:
    with shop_db(project) as con:
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, '2024-05-01T10:00:00Z')",
            [(i, i % 4, 10.0 * i, "PAID" if i % 2 else "New") for i in range(1, 21)]
            + [(21, 1, -5.0, "PAID")],  # filtered out by silver.orders
        )
        con.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, '2024-05-01T10:00:00Z')",
            [(i, f"customer {i}", "retail" if i % 2 else "business") for i in range(4)],
        )


def medallion(project: Path) -> None:
    seed(project)
    write_pipeline(project, "bronze", BRONZE)
    write_model(project, "silver.orders", SILVER_ORDERS)
    write_model(project, "silver.customers", SILVER_CUSTOMERS)
    write_model(project, "silver.customers", SILVER_CUSTOMERS_YAML, suffix=".yaml")
    write_model(project, "gold.revenue", GOLD_REVENUE)
    write_model(project, "gold.segments", GOLD_SEGMENTS)


def rows(project: Path, name: str, *order: str) -> list[dict[str, Any]]:
    layer, table = name.split(".")
    data = DeltaTable(str(project / "warehouse" / layer / table)).to_pyarrow_table()
    return data.sort_by([(k, "ascending") for k in order]).to_pylist()  # type: ignore[no-any-return]


def last_commit(project: Path, name: str) -> dict[str, Any]:
    layer, table = name.split(".")
    (entry,) = DeltaTable(str(project / "warehouse" / layer / table)).history(1)
    return entry["headwater"]  # type: ignore[no-any-return]


def error_line(result: Any) -> str:
    return " ".join(result.stderr.split())


def test_a_medallion_of_sql_models_runs_incrementally_from_the_cli(project_dir: Path) -> None:
    medallion(project_dir)
    run_cli(project_dir, "run")

    silver = rows(project_dir, "silver.orders", "order_id")
    assert [r["order_id"] for r in silver] == list(range(1, 21))  # order 21 filtered out
    assert {r["status"] for r in silver} == {"paid", "new"}
    revenue = {
        r["customer_id"]: (r["revenue"], r["orders"])
        for r in rows(project_dir, "gold.revenue", "customer_id")
    }
    assert revenue == {c: (sum(10.0 * i for i in range(1, 21) if i % 4 == c), 5) for c in range(4)}
    assert rows(project_dir, "gold.segments", "segment") == [
        {"segment": "business", "revenue": 1100.0},  # customers 0 and 2
        {"segment": "retail", "revenue": 1000.0},  # customers 1 and 3
    ]
    assert DeltaTable(str(project_dir / "warehouse/silver/customers")).metadata().description == (
        "Customers, with the history of their segment"
    )

    with shop_db(project_dir) as con:
        later = "'2024-05-02T10:00:00Z'"
        con.execute(f"UPDATE orders SET amount = 15.0, updated_at = {later} WHERE order_id = 1")
        con.execute(f"UPDATE orders SET customer_id = 3, updated_at = {later} WHERE order_id = 2")
        con.execute(f"INSERT INTO orders VALUES (22, 0, 100.0, 'PAID', {later})")
        con.execute(
            f"UPDATE customers SET segment = 'business', updated_at = {later} WHERE customer_id = 1"
        )
    run_cli(project_dir, "run")

    # silver.orders read only the three changed orders, not the 22 in bronze.
    assert last_commit(project_dir, "silver.orders")["metrics"]["rows_in"] == 3
    assert last_commit(project_dir, "silver.orders")["metrics"]["updated"] == 2
    # gold.revenue recomputed only customers 0, 1, 2 and 3 touched by the changes:
    # order 1 (customer 1), order 2 (moved from 2 to 3), order 22 (customer 0).
    assert last_commit(project_dir, "gold.revenue")["metrics"]["rows_in"] == 4
    expected = {c: [0.0, 0] for c in range(4)}
    for order in rows(project_dir, "silver.orders", "order_id"):
        expected[order["customer_id"]][0] += order["amount"]
        expected[order["customer_id"]][1] += 1
    revenue = {
        r["customer_id"]: [r["revenue"], r["orders"]]
        for r in rows(project_dir, "gold.revenue", "customer_id")
    }
    assert revenue == expected
    assert revenue[2][1] == 4 and revenue[3][1] == 6

    history = [
        r
        for r in rows(project_dir, "silver.customers", "customer_id", "valid_from")
        if r["customer_id"] == 1
    ]
    assert [(r["segment"], r["is_current"]) for r in history] == [
        ("retail", False),
        ("business", True),
    ]
    assert last_commit(project_dir, "silver.customers")["metrics"]["rows_in"] == 1

    segments = {r["segment"]: r["revenue"] for r in rows(project_dir, "gold.segments", "segment")}
    current = {
        r["customer_id"]: r["segment"]
        for r in rows(project_dir, "silver.customers", "customer_id")
        if r["is_current"]
    }
    totals: dict[str, float] = {}
    for order in rows(project_dir, "silver.orders", "order_id"):
        segment = current[order["customer_id"]]
        totals[segment] = totals.get(segment, 0.0) + order["amount"]
    assert segments == totals and set(segments) == {"business", "retail"}

    # Nothing changed: nothing runs.
    result = run_cli(project_dir, "run")
    assert "committed" not in result.stdout


def test_deletes_and_updates_upstream_reach_a_model_that_selects_columns(project_dir: Path) -> None:
    landing = project_dir / "landing"
    landing.mkdir()
    (landing / "1.json").write_text(
        "\n".join(f'{{"id": {i}, "v": {i}, "note": "n{i}"}}' for i in range(1, 6)) + "\n"
    )
    write_pipeline(
        project_dir,
        "bronze",
        """
        from headwater import table
        from headwater.sources import files
        table("bronze.items", source=files("landing/*.json", format="ndjson"),
              strategy="merge", keys=["id"])
        """,
    )
    # Names its columns: the change type of each row is kept without being selected.
    write_model(
        project_dir,
        "silver.items",
        """
        -- headwater: strategy=merge keys=[id]
        WITH doubled AS (SELECT id, v * 2 AS v2 FROM bronze.items)
        SELECT d.id, d.v2 FROM doubled AS d
        """,
    )
    project = Project.load(project_dir)
    Runner(project).run()
    (landing / "2.json").write_text(
        '{"id": 2, "v": 20, "note": "n2"}\n{"id": 3, "v": 3, "note": "n3", "_change_type": "delete"}\n'
    )
    bronze, silver = Runner(Project.load(project_dir)).run()
    assert bronze.status == silver.status == "committed"
    assert silver.metrics["rows_in"] == 2  # the update and the delete, not the five rows
    assert rows(project_dir, "silver.items", "id") == [
        {"id": 1, "v2": 2},
        {"id": 2, "v2": 40},
        {"id": 4, "v2": 8},
        {"id": 5, "v2": 10},
    ]


def test_models_are_declared_like_python_tables(project_dir: Path) -> None:
    medallion(project_dir)
    project = Project.load(project_dir)
    orders = project.spec("silver.orders")
    assert orders.strategy == "merge" and orders.options.keys == ("order_id",)
    assert orders.options.version_column == "updated_at"
    assert orders.defined_at == f"{project_dir / 'models/silver/orders.sql'}:3"
    assert {n: s.describe() for n, s in orders.inputs.items()} == {
        "bronze__orders": "changes of bronze.orders"
    }
    customers = project.spec("silver.customers")
    assert customers.strategy == "scd2" and not customers.allow_full_refresh
    revenue = project.spec("gold.revenue")
    assert sorted(s.describe() for s in revenue.inputs.values()) == [
        "changes of silver.orders",
        "snapshot of silver.orders",
    ]
    segments = project.spec("gold.segments")  # overwrite by default: whole tables
    assert segments.strategy == "overwrite"
    assert sorted(s.describe() for s in segments.inputs.values()) == [
        "snapshot of silver.customers",
        "snapshot of silver.orders",
    ]
    assert project.order().index("silver.orders") < project.order().index("gold.revenue")

    write_model(
        project_dir,
        "silver.options",
        """
        -- headwater: strategy=merge, keys=[order_id, customer_id] order_by=updated_at
        -- headwater: description="Orders, by customer" target_file_size=64MB change_feed=true
        -- headwater: deletes=soft schema=freeze zorder_by=customer_id
        SELECT order_id, customer_id, updated_at FROM bronze.orders
        """,
    )
    options = Project.load(project_dir).spec("silver.options")
    assert options.options.keys == ("order_id", "customer_id")
    assert options.options.order_by == "updated_at" and options.options.deletes == "soft"
    assert options.description == "Orders, by customer"
    assert options.target_file_size == 64 * 1024 * 1024
    assert options.change_feed is True and options.schema_policy == "freeze"
    assert options.zorder_by == ("customer_id",)


def test_the_snapshot_option_reads_a_lookup_table_whole(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "silver.enriched",
        """
        -- headwater: strategy=merge keys=[order_id]
        -- headwater: snapshot=[bronze.customers] partition_by=[segment]
        SELECT o.order_id, o.amount, c.segment
        FROM bronze.orders AS o JOIN bronze.customers AS c USING (customer_id)
        """,
    )
    chosen = ["bronze.orders", "bronze.customers", "silver.enriched"]
    Runner(Project.load(project_dir)).run(chosen)
    with shop_db(project_dir) as con:
        con.execute("UPDATE orders SET amount = 1, updated_at = '2024-06-01' WHERE order_id = 4")
    Runner(Project.load(project_dir)).run(chosen)
    commit = last_commit(project_dir, "silver.enriched")
    assert commit["metrics"]["rows_in"] == 1
    assert set(commit["positions"]) == {"bronze__orders", "bronze__customers__snapshot"}
    enriched = {r["order_id"]: r for r in rows(project_dir, "silver.enriched", "order_id")}
    assert len(enriched) == 21 and enriched[4] == {
        "order_id": 4,
        "amount": 1.0,
        "segment": "business",
    }
    assert DeltaTable(
        str(project_dir / "warehouse/silver/enriched")
    ).metadata().partition_columns == ["segment"]


def test_dag_prints_the_graph_in_stages(project_dir: Path) -> None:
    medallion(project_dir)
    lines = run_cli(project_dir, "dag").stdout.splitlines()
    stages = [i for i, line in enumerate(lines) if re.fullmatch(r"stage \d+", line)]
    assert [lines[i] for i in stages] == ["stage 1", "stage 2", "stage 3"]
    by_table = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert set(by_table) == {
        "bronze.orders",
        "bronze.customers",
        "silver.orders",
        "silver.customers",
        "gold.revenue",
        "gold.segments",
    }
    assert "merge [order_id]" in by_table["silver.orders"]
    assert "<- changes of bronze.orders" in by_table["silver.orders"]
    assert "models/silver/orders.sql:3" in by_table["silver.orders"]
    assert "scd2 [customer_id]" in by_table["silver.customers"]
    assert "changes of silver.orders, snapshot of silver.orders" in by_table["gold.revenue"]
    assert "overwrite" in by_table["gold.segments"]
    assert (
        "source sqlite" in by_table["bronze.orders"]
        and "pipelines/bronze.py:" in by_table["bronze.orders"]
    )
    stage_of = {}
    for i, line in enumerate(lines):
        if line.startswith("  "):
            stage_of[line.split()[0]] = max(s for s in stages if s < i)
    assert stage_of["bronze.orders"] < stage_of["silver.orders"] < stage_of["gold.revenue"]

    # One table: what it reads and what reads it, nothing else.
    only = run_cli(project_dir, "dag", "silver.customers").stdout
    names = {line.split()[0] for line in only.splitlines() if line.startswith("  ")}
    assert names == {"bronze.customers", "silver.customers", "gold.segments"}


# -- errors: one line naming the model file and line ---------------------------------------


def error_of(project: Path, *args: str) -> str:
    result = run_cli(project, *args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return error_line(result)


def test_sql_that_does_not_parse_names_file_and_line(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "silver.broken",
        "SELECT order_id,\n  amount\nFROM bronze.orders\nWHERE (amount >\n",
    )
    message = error_of(project_dir, "dag")
    assert "models/silver/broken.sql:4: SQL does not parse" in message


def load_error(project: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        Project.load(project)
    assert "\n" not in caught.value.message
    return str(caught.value)


def test_a_missing_table_names_file_and_line(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "silver.lost",
        "SELECT *\nFROM bronze.orders\nJOIN snapshot(bronze.nowhere) USING (order_id)\n",
    )
    message = load_error(project_dir)
    assert (
        "models/silver/lost.sql:3: model silver.lost reads bronze.nowhere, which no pipeline or model declares"
        in message
    )
    assert "hint: declared tables:" in message


def test_a_cycle_names_file_and_line(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(project_dir, "silver.a", "-- headwater: strategy=append\nSELECT * FROM silver.b\n")
    write_model(project_dir, "silver.b", "-- headwater: strategy=append\nSELECT * FROM silver.a\n")
    message = load_error(project_dir)
    assert re.search(r"models/silver/[ab]\.sql:2: tables read each other in a cycle", message)
    assert "silver.a" in message and "silver.b" in message


def test_errors_in_a_run_name_file_and_line(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "silver.typo",
        "-- headwater: strategy=merge keys=[order_id]\nSELECT order_id,\n  amount,\n  lower(staus) AS status\nFROM bronze.orders\n",
    )
    write_model(
        project_dir,
        "silver.wrong",
        "-- headwater: strategy=merge keys=[order_id]\nSELECT o.order_id, c.amount\nFROM bronze.orders AS o\nJOIN snapshot(bronze.customers) AS c USING (customer_id)\n",
    )
    write_model(
        project_dir,
        "silver.function",
        "-- headwater: strategy=append\nSELECT order_id,\n  lowr(status) AS status\nFROM bronze.orders\n",
    )
    result = run_cli(project_dir, "run", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = error_line(result)
    assert (
        "models/silver/typo.sql:4: model silver.typo: column staus does not exist in bronze.orders"
        in message
    )
    assert "hint: bronze.orders has order_id, customer_id, amount, status, updated_at" in message
    assert (
        "models/silver/wrong.sql:2: model silver.wrong: column c.amount does not exist in bronze.customers"
        in message
    )
    assert "hint: bronze.customers has customer_id, name, segment, updated_at" in message
    assert (
        "models/silver/function.sql:3: model silver.function: Catalog Error: Scalar Function "
        'with name lowr does not exist! Did you mean "lower"?'
    ) in message
    # Nothing else failed: the other tables were built.
    assert rows(project_dir, "gold.revenue", "customer_id")
    # lineage checks columns the same way
    assert "models/silver/typo.sql:4: model silver.typo: column staus" in error_of(
        project_dir, "lineage", "silver.typo.status"
    )


def test_a_model_and_a_python_table_of_the_same_name_name_both_files(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(project_dir, "bronze.orders", "SELECT * FROM bronze.customers\n")
    message = load_error(project_dir)
    assert "models/bronze/orders.sql:1: table bronze.orders is declared twice" in message
    assert "pipelines/bronze.py:5" in message


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                ".sql": "-- headwater: strategy=merge keys=[order_id] stratgy=x\nSELECT * FROM bronze.orders\n"
            },
            r"models/silver/x\.sql:1: unknown model option 'stratgy' \(did you mean 'strategy'\?\)",
        ),
        (
            {".sql": "-- headwater: strategy=merge\nSELECT * FROM bronze.orders\n"},
            r"models/silver/x\.sql:1: table silver\.x: strategy 'merge' needs keys",
        ),
        (
            {".sql": "-- headwater: strategy=merge keys=[order_id\nSELECT * FROM bronze.orders\n"},
            r"models/silver/x\.sql:1: unbalanced brackets",
        ),
        (
            {".sql": "SELECT *\n-- headwater: strategy=append\nFROM bronze.orders\n"},
            r"models/silver/x\.sql:2: a `-- headwater:` line after the start of the query",
        ),
        (
            {
                ".sql": "SELECT * FROM bronze.orders\n",
                ".yaml": "strategy: merge\nkeys: order_id\nchange_feed: maybe\n",
            },
            r"models/silver/x\.yaml:3: option change_feed must be true or false",
        ),
        (
            {
                ".sql": "-- headwater: keys=[order_id]\nSELECT * FROM bronze.orders\n",
                ".yaml": "strategy: merge\nkeys: [order_id]\n",
            },
            r"models/silver/x\.yaml:2: option keys is also set at .*models/silver/x\.sql:1",
        ),
        (
            {".sql": "-- headwater: strategy=append\nSELECT *\nFROM orders\n"},
            r"models/silver/x\.sql:3: model silver\.x reads 'orders', which is not a table name",
        ),
        (
            {
                ".sql": "-- headwater: strategy=merge keys=[customer_id]\nSELECT customer_id, sum(amount) AS total\nFROM bronze.orders\nGROUP BY customer_id\n"
            },
            r"models/silver/x\.sql:3: model silver\.x aggregates the changes of bronze\.orders",
        ),
        (
            {
                ".sql": "-- headwater: strategy=merge keys=[order_id]\nSELECT o.order_id, c.name\nFROM bronze.orders AS o\nJOIN bronze.customers AS c USING (customer_id)\n"
            },
            r"models/silver/x\.sql:4: model silver\.x joins the changes of bronze\.orders with the changes of bronze\.customers.*hint: read lookup tables whole: snapshot\(bronze\.customers\)",
        ),
        (
            {".sql": "-- headwater: snapshot=[bronze.customers]\nSELECT * FROM bronze.orders\n"},
            r"models/silver/x\.sql:1: option snapshot lists bronze\.customers, which the query does not read",
        ),
        (
            {
                ".sql": "-- headwater: strategy=append\nSELECT order_id,\n  'open AS label\nFROM bronze.orders\n"
            },
            r"models/silver/x\.sql:3: SQL does not parse: a string, quoted name or comment is left open",
        ),
        (
            {".sql": "SELECT * FROM bronze.orders;\nSELECT * FROM bronze.customers;\n"},
            r"models/silver/x\.sql:1: a model is one SELECT query; this file holds SELECT, SELECT",
        ),
        (
            {".sql": "CREATE TABLE silver.x AS SELECT * FROM bronze.orders\n"},
            r"models/silver/x\.sql:1: a model is one SELECT query; this file holds CREATE",
        ),
    ],
)
def test_bad_model_files_name_file_and_line(
    project_dir: Path, files: dict[str, str], expected: str
) -> None:
    medallion(project_dir)
    for suffix, text in files.items():
        write_model(project_dir, "silver.x", text, suffix=suffix)
    message = load_error(project_dir)
    assert re.search(expected, message), message
