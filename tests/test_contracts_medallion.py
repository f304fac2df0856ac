"""Contracts on a medallion pipeline, driven through the `headwater` command as a user does.

Bronze lands an SQLite shop with high-water marks; silver is SQL models (merge for
orders, SCD2 for customers); gold aggregates. Once the pipeline has run, a contract is
bootstrapped from silver.orders with `headwater contract init`, tightened by hand, and
from then on every run is checked before it publishes: bad rows of a good batch wait in
quarantine while the rest reaches gold; a bad batch publishes nothing in silver, gold
does not run, and the same source rows load once fixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from deltalake import DeltaTable

from .conftest import run_cli
from .test_cli_commands import summary
from .test_sql_models import medallion, rows, shop_db


def version(project: Path, name: str) -> int:
    layer, table = name.split(".")
    return DeltaTable(str(project / "warehouse" / layer / table)).version()


def sql(project: Path, query: str) -> list[dict[str, Any]]:
    return json.loads(run_cli(project, "sql", query, "--format", "json").stdout)  # type: ignore[no-any-return]


def tighten(contract: dict[str, Any]) -> dict[str, Any]:
    """What the team adds to the bootstrapped contract: an enum, a reference, a ceiling."""
    props = {p["name"]: p for p in contract["schema"][0]["properties"]}
    quarantine = [{"property": "onFail", "value": "quarantine"}]
    props["status"]["quality"] = [
        {"metric": "invalidValues", "arguments": {"validValues": ["new", "paid", "shipped"]}}
    ]
    props["status"]["customProperties"] = quarantine
    props["customer_id"]["relationships"] = [{"to": "customers.customer_id"}]
    props["customer_id"]["customProperties"] = quarantine
    props["amount"]["logicalTypeOptions"] = {"maximum": 1000}  # blocks: a batch is wrong
    contract["version"] = "1.0.0"
    contract["status"] = "active"
    return contract


def segment_totals(project: Path) -> dict[str, float]:
    current = {
        r["customer_id"]: r["segment"]
        for r in rows(project, "silver.customers", "customer_id")
        if r["is_current"]
    }
    totals: dict[str, float] = {}
    for order in rows(project, "silver.orders", "order_id"):
        segment = current[order["customer_id"]]
        totals[segment] = totals.get(segment, 0.0) + order["amount"]
    return totals


def test_contracts_quarantine_bad_rows_and_block_bad_batches_of_a_medallion(
    project_dir: Path,
) -> None:
    medallion(project_dir)
    run_cli(project_dir, "run")

    run_cli(project_dir, "contract", "init", "silver.orders")
    path = project_dir / "contracts" / "silver" / "orders.yaml"
    bootstrapped = yaml.safe_load(path.read_text())
    (orders,) = bootstrapped["schema"]
    key = next(p for p in orders["properties"] if p["name"] == "order_id")
    assert key["primaryKey"] is True  # from the model's merge keys
    path.write_text(yaml.safe_dump(tighten(bootstrapped), sort_keys=False))
    run_cli(project_dir, "contract", "init", "gold.segments")  # rowCount > 0, types, required
    validated = run_cli(project_dir, "contract", "validate").stdout
    assert "silver.orders: contracts/silver/orders.yaml version 1.0.0" in validated
    assert "gold.segments: contracts/gold/segments.yaml version 0.1.0" in validated

    # A good batch with two bad rows: those wait in quarantine, the rest reaches gold.
    later = "'2024-05-03T10:00:00Z'"
    with shop_db(project_dir) as con:
        con.execute(f"INSERT INTO orders VALUES (30, 1, 40.0, 'LOST', {later})")  # unknown status
        con.execute(f"INSERT INTO orders VALUES (31, 99, 50.0, 'PAID', {later})")  # no customer 99
        con.execute(f"INSERT INTO orders VALUES (32, 2, 60.0, 'PAID', {later})")
    good = run_cli(project_dir, "run")
    assert summary(good.stdout)["silver.orders"][0] == "committed"
    assert (
        "checks silver.orders:" in good.stdout and "2 quarantined (2 row failures)" in good.stdout
    )
    silver_ids = [r["order_id"] for r in rows(project_dir, "silver.orders", "order_id")]
    assert 32 in silver_ids and 30 not in silver_ids and 31 not in silver_ids
    waiting = {r["value"]: r for r in rows(project_dir, "silver.orders__quarantine", "value")}
    assert set(waiting) == {"lost", "99"}
    assert waiting["lost"]["check"] == "accepted_values(status)"
    assert waiting["99"]["check"] == "references(customer_id -> silver.customers.customer_id)"
    assert json.loads(waiting["99"]["record"])["order_id"] == 31
    (run_id,) = {r["run_id"] for r in waiting.values()}
    audited = sql(
        project_dir,
        'SELECT "check", passed, quarantined, published FROM audit.check_results '
        f"WHERE run_id = '{run_id}' AND \"table\" = 'silver.orders'",
    )
    assert all(r["published"] for r in audited)
    assert {r["check"]: r["quarantined"] for r in audited if not r["passed"]} == {
        "accepted_values(status)": 1,
        "references(customer_id -> silver.customers.customer_id)": 1,
    }
    segments = {r["segment"]: r["revenue"] for r in rows(project_dir, "gold.segments", "segment")}
    assert segments == segment_totals(project_dir)  # order 32 counted, 30 and 31 not

    # A bad batch: nothing of it is published in silver, and gold does not run.
    before = {
        t: version(project_dir, t) for t in ("silver.orders", "gold.segments", "gold.revenue")
    }
    later = "'2024-05-04T10:00:00Z'"
    with shop_db(project_dir) as con:
        con.execute(f"INSERT INTO orders VALUES (33, 1, 50000.0, 'PAID', {later})")  # fat finger
        con.execute(f"INSERT INTO orders VALUES (34, 3, 70.0, 'PAID', {later})")
    blocked = run_cli(project_dir, "run", check=False)
    assert blocked.returncode == 1
    stderr = " ".join(blocked.stderr.split())
    assert "table silver.orders: 1 check(s) failed, nothing was published" in stderr
    assert "range(amount) (1 rows)" in stderr
    states = summary(blocked.stdout)
    assert states["silver.orders"][0] == "failed"
    assert states["gold.segments"][0] == states["gold.revenue"][0] == "upstream-failed"
    assert "1 blocked" in blocked.stdout
    assert {t: version(project_dir, t) for t in before} == before
    assert {33, 34}.isdisjoint(
        r["order_id"] for r in rows(project_dir, "silver.orders", "order_id")
    )
    failures = run_cli(project_dir, "contract", "results", "silver.orders", "--failures").stdout
    assert "range(amount)" in failures and "blocked" in failures

    # Fixed at the source, the same rows load on the next run, and gold catches up.
    with shop_db(project_dir) as con:
        con.execute(
            "UPDATE orders SET amount = 500.0, updated_at = '2024-05-05T10:00:00Z' WHERE order_id = 33"
        )
    fixed = run_cli(project_dir, "run")
    assert summary(fixed.stdout)["gold.segments"][0] == "committed"
    silver_ids = [r["order_id"] for r in rows(project_dir, "silver.orders", "order_id")]
    assert {33, 34} <= set(silver_ids)
    segments = {r["segment"]: r["revenue"] for r in rows(project_dir, "gold.segments", "segment")}
    assert segments == segment_totals(project_dir)


def test_a_table_runs_after_the_tables_its_contract_checks_keys_against(
    project_dir: Path,
) -> None:
    """On the very first run too: silver.orders' relationship to silver.customers makes
    customers build first, so the check sees its keys instead of failing or quarantining."""
    medallion(project_dir)
    contract = project_dir / "contracts" / "silver" / "orders.yaml"
    contract.parent.mkdir(parents=True)
    contract.write_text(
        """\
apiVersion: v3.1.0
kind: DataContract
id: silver-orders
version: 1.0.0
status: active
schema:
  - name: orders
    properties:
      - name: customer_id
        relationships: [{to: customers.customer_id}]
        customProperties: [{property: onFail, value: quarantine}]
"""
    )
    stage, stages = "", {}
    for line in run_cli(project_dir, "dag").stdout.splitlines():
        words = line.split()
        if words[:1] == ["stage"]:
            stage = words[1]
        elif words and words[0].startswith("silver."):
            stages[words[0]] = int(stage)
    assert stages["silver.orders"] > stages["silver.customers"]
    run_cli(project_dir, "run")  # fails the test on a non-zero exit
    customers = {r["customer_id"] for r in rows(project_dir, "silver.customers", "customer_id")}
    orders = rows(project_dir, "silver.orders", "order_id")
    assert orders and all(o["customer_id"] in customers for o in orders)
    assert not (project_dir / "warehouse" / "silver" / "orders__quarantine").exists()
