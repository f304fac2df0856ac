"""`headwater lineage`: where a column comes from, through SQL models, from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater import Project
from headwater.cli.graph import lineage_lines
from headwater.errors import HeadwaterError
from headwater.transform.lineage import column_lineage

from .conftest import run_cli, write_pipeline
from .test_sql_models import error_of, medallion, write_model


def lineage(project: Path, target: str) -> list[str]:
    return run_cli(project, "lineage", target).stdout.splitlines()


def test_a_column_is_traced_through_two_models_to_its_source(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "gold.statuses",
        "SELECT status, count(*) AS orders FROM silver.orders GROUP BY status\n",
    )
    # Models naming their columns are traced before anything is built...
    before = lineage(project_dir, "gold.statuses.status")
    run_cli(project_dir, "run")
    # ...and after, from the tables' schemas.
    assert lineage(project_dir, "gold.statuses.status") == before
    assert before == [
        "gold.statuses.status  (SQL model; models/gold/statuses.sql:1)",
        "└── silver.orders.status = LOWER(orders.status)  (SQL model; models/silver/orders.sql:3)",
        "    └── bronze.orders.status  (lands sqlite shop.db orders (incremental); pipelines/bronze.py:5)",
    ]
    revenue = lineage(project_dir, "gold.revenue.revenue")
    assert revenue[0].startswith("gold.revenue.revenue = COALESCE(SUM(o.amount), 0)  (SQL model;")
    assert revenue[1].startswith(
        "└── silver.orders.amount  (SQL model; models/silver/orders.sql:3)"
    )
    assert revenue[2].startswith("    └── bronze.orders.amount  (lands sqlite")


def test_a_column_made_of_two_tables_has_two_branches(project_dir: Path) -> None:
    medallion(project_dir)
    write_model(
        project_dir,
        "gold.labels",
        """
        WITH named AS (
            SELECT o.order_id, c.name, o.status
            FROM silver.orders AS o JOIN silver.customers AS c USING (customer_id)
        )
        SELECT order_id, name || ' / ' || status AS label FROM named
        """,
    )
    lines = lineage(project_dir, "gold.labels.label")
    assert lines[0].startswith("gold.labels.label = named.name || ' / ' || named.status")
    children = [line for line in lines if line.startswith(("├── ", "└── "))]
    assert [c.split()[1] for c in children] == ["silver.customers.name", "silver.orders.status"]
    assert lines[-1].startswith("    └── bronze.orders.status")


def test_every_column_of_a_star_model_is_traced_once_its_inputs_are_built(
    project_dir: Path,
) -> None:
    medallion(project_dir)
    write_model(project_dir, "silver.raw_orders", "SELECT * FROM bronze.orders\n")
    assert "the columns of model silver.raw_orders are not known yet" in error_of(
        project_dir, "lineage", "silver.raw_orders"
    )
    run_cli(project_dir, "run", "bronze.orders")
    lines = lineage(project_dir, "silver.raw_orders")
    roots = [line.split()[0] for line in lines if not line.startswith((" ", "└", "├"))]
    assert roots == [
        f"silver.raw_orders.{c}"
        for c in ("order_id", "customer_id", "amount", "status", "updated_at")
    ]
    assert all(line.startswith("└── bronze.orders.") for line in lines if line.startswith("└"))


def test_python_tables_are_traced_at_table_level(project_dir: Path) -> None:
    medallion(project_dir)
    write_pipeline(
        project_dir,
        "silver_python",
        """
        from headwater import table

        @table("silver.big_orders", inputs=["bronze.orders"], strategy="merge", keys=["order_id"])
        def big_orders(orders):
            return orders.filter("amount > 100")
        """,
    )
    write_model(
        project_dir,
        "gold.big",
        "SELECT count(*) AS orders, max(amount) AS largest FROM silver.big_orders\n",
    )
    lines = lineage(project_dir, "gold.big.largest")
    assert lines[0].startswith("gold.big.largest = MAX(big_orders.amount)  (SQL model;")
    assert lines[1].startswith(
        "└── silver.big_orders.amount  (Python table; pipelines/silver_python.py:4)"
    )
    assert lines[2].startswith(
        "    └── bronze.orders  (read as changes; lands sqlite shop.db orders"
    )
    assert lineage(project_dir, "silver.big_orders") == [
        "silver.big_orders  (Python table; pipelines/silver_python.py:4)",
        "└── bronze.orders  (read as changes; lands sqlite shop.db orders (incremental); pipelines/bronze.py:5)",
    ]


def test_lineage_of_a_column_that_does_not_exist_is_an_error(project_dir: Path) -> None:
    medallion(project_dir)
    message = error_of(project_dir, "lineage", "gold.revenue.profit")
    assert "models/gold/revenue.sql:2: model gold.revenue has no column 'profit'" in message
    assert "hint: its columns: customer_id, revenue, orders" in message
    project = Project.load(project_dir)
    with pytest.raises(HeadwaterError, match=r"'revenue' is not a table or column"):
        lineage_lines(project, "revenue")
    with pytest.raises(HeadwaterError, match=r"no pipeline declares table gold\.nothing"):
        lineage_lines(project, "gold.nothing.x")


def test_column_lineage_is_available_from_python(project_dir: Path) -> None:
    medallion(project_dir)
    node = column_lineage(Project.load(project_dir), "gold.segments", "revenue")
    assert (node.table, node.column, node.kind, node.expression) == (
        "gold.segments",
        "revenue",
        "model",
        "SUM(o.amount)",
    )
    (silver,) = node.sources
    (bronze,) = silver.sources
    assert (silver.label, bronze.label, bronze.kind) == (
        "silver.orders.amount",
        "bronze.orders.amount",
        "source",
    )
    # Columns a write strategy keeps come from no input.
    assert lineage_lines(Project.load(project_dir), "silver.customers.valid_from") == [
        "silver.customers.valid_from  (kept by the scd2 strategy; models/silver/customers.sql:1)"
    ]
