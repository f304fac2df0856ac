"""Data contracts end to end: real projects, real Delta tables, `headwater run` and
`headwater contract ...` as a user runs them; malformed contracts as one-line errors."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from deltalake import DeltaTable
from rich.console import Console

from headwater import table
from headwater.errors import ConfigError
from headwater.project import Project
from headwater.quality.bootstrap import render as bootstrap
from headwater.quality.contract import ContractGate, Plan, compile_contract, load_plan
from headwater.quality.odcs import parse

from .conftest import run_cli, write_pipeline
from .lake import Feed, Lake

HEAD = """\
apiVersion: v3.1.0
kind: DataContract
id: bronze.orders
version: 1.0.0
status: active
"""

ORDERS_CONTRACT = HEAD + textwrap.dedent(
    """\
    team:
      name: shop
      members: [{username: ana@example.com, role: owner}]
    schema:
      - name: orders
        properties:
          - {name: order_id, logicalType: integer, primaryKey: true}
          - name: status
            logicalType: string
            customProperties: [{property: onFail, value: quarantine}]
            quality:
              - metric: invalidValues
                arguments: {validValues: [new, paid, shipped]}
          - name: amount
            logicalType: number
            logicalTypeOptions: {minimum: 0}
            classification: confidential
        quality:
          - {metric: rowCount, mustBeGreaterThan: 0}
    """
)


def project_with_orders(root: Path, contract: str = ORDERS_CONTRACT) -> Path:
    (root / "headwater.toml").write_text('[project]\nname = "shop"\n')
    (root / "pipelines").mkdir()
    (root / "in").mkdir()
    write_pipeline(
        root,
        "orders",
        """
        from headwater import table
        from headwater.sources import files

        table("bronze.orders", source=files("in/*.ndjson"), strategy="append")
        """,
    )
    (root / "contracts" / "bronze").mkdir(parents=True)
    (root / "contracts" / "bronze" / "orders.yaml").write_text(contract)
    return root


def drop(root: Path, name: str, rows: list[dict[str, object]]) -> None:
    (root / "in" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def table_rows(root: Path, name: str) -> list[dict[str, object]]:
    layer, short = name.split(".")
    rows = DeltaTable(str(root / "warehouse" / layer / short)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_headwater_run_quarantines_bad_rows_and_publishes_the_good(tmp_path: Path) -> None:
    root = project_with_orders(tmp_path)
    drop(
        root,
        "1.ndjson",
        [
            {"order_id": 1, "status": "new", "amount": 10},
            {"order_id": 2, "status": "lost", "amount": 5},
            {"order_id": 3, "status": "paid", "amount": 7},
        ],
    )
    run_cli(root, "run")
    assert [r["order_id"] for r in table_rows(root, "bronze.orders")] == [1, 3]
    (bad,) = table_rows(root, "bronze.orders__quarantine")
    assert bad["check"] == "accepted_values(status)" and bad["value"] == "lost"
    assert json.loads(str(bad["record"]))["order_id"] == 2
    results = run_cli(root, "contract", "results", "bronze.orders", "--failures").stdout
    assert "accepted_values(status)" in results and "quarantined" in results


def test_headwater_run_blocks_a_bad_batch_and_publishes_nothing(tmp_path: Path) -> None:
    root = project_with_orders(tmp_path)
    drop(root, "1.ndjson", [{"order_id": 1, "status": "new", "amount": 10}])
    run_cli(root, "run")
    drop(
        root,
        "2.ndjson",
        [
            {"order_id": 2, "status": "new", "amount": -3},  # below the minimum: blocks
            {"order_id": 3, "status": "new", "amount": 4},
        ],
    )
    failed = run_cli(root, "run", check=False)
    assert failed.returncode == 1
    assert "range(amount) (1 rows)" in failed.stderr and "nothing was published" in failed.stderr
    assert [r["order_id"] for r in table_rows(root, "bronze.orders")] == [1]
    audit = table_rows(root, "audit.check_results")
    blocked = [r for r in audit if not r["published"]]
    assert {r["check"] for r in blocked if not r["passed"]} == {"range(amount)"}
    # Fixed at the source, the same files load on the next run: nothing was skipped.
    drop(
        root,
        "2.ndjson",
        [
            {"order_id": 2, "status": "new", "amount": 3},
            {"order_id": 3, "status": "new", "amount": 4},
        ],
    )
    run_cli(root, "run")
    assert [r["order_id"] for r in table_rows(root, "bronze.orders")] == [1, 2, 3]


def test_a_malformed_contract_fails_the_run_with_one_line_naming_file_and_field(
    tmp_path: Path,
) -> None:
    root = project_with_orders(
        tmp_path, ORDERS_CONTRACT.replace("primaryKey: true", "primaryKey: maybe")
    )
    drop(root, "1.ndjson", [{"order_id": 1, "status": "new", "amount": 10}])
    failed = run_cli(root, "run", check=False)
    assert failed.returncode != 0
    error = next(line for line in failed.stderr.splitlines() if line.startswith("error:"))
    assert "contracts/bronze/orders.yaml" in error
    assert "schema[orders].properties[order_id].primaryKey" in error
    assert "Traceback" not in failed.stderr
    assert not (root / "warehouse" / "bronze" / "orders").exists()


def test_contract_init_writes_a_contract_that_loads_and_passes(tmp_path: Path) -> None:
    root = project_with_orders(tmp_path)
    (root / "contracts" / "bronze" / "orders.yaml").unlink()
    drop(
        root,
        "1.ndjson",
        [
            {
                "order_id": i,
                "status": ["new", "paid"][i % 2],
                "amount": i * 1.5,
                "note": None if i % 3 else "x",
            }
            for i in range(1, 21)
        ],
    )
    run_cli(root, "run")
    made = run_cli(root, "contract", "init", "bronze.orders")
    path = root / "contracts" / "bronze" / "orders.yaml"
    assert "wrote" in made.stderr and path.exists()
    text = path.read_text()
    contract = parse(text, str(path))
    props = {p.name: p for p in contract.schema_[0].properties}
    assert props["order_id"].logicalType == "integer" and props["order_id"].physicalType == "long"
    assert props["amount"].required and props["amount"].logicalType == "number"
    assert not props["note"].required  # it has NULLs
    # Observed values are offered as suggestions, commented out.
    assert "#   minimum: 1.5" in text and "#   maximum: 30.0" in text
    assert "validValues: [new, paid]" in text
    checked = run_cli(root, "contract", "check", "bronze.orders")
    assert "not_null(amount)" in checked.stdout and "blocked" not in checked.stdout
    # Uncommented, the suggestions make a valid contract that the table satisfies.
    path.write_text("\n".join(uncomment(line) for line in text.splitlines()))
    plan = load_plan(path, "bronze.orders")
    assert {c.name for c in plan.row_checks} >= {"range(amount)", "accepted_values(status)"}
    # Volume change is on from the start, as a warning (no baseline until three runs).
    (volume,) = [c for c in plan.table_checks if c.kind == "volume_change"]
    assert volume.severity == "warn" and (volume.window, volume.max_change) == (7, 20.0)  # type: ignore[attr-defined]
    target = Project.load(root).target("bronze.orders")
    results = ContractGate(plan, "bronze.orders", Project.load(root)).check_all(target.dataset())
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    again = run_cli(root, "contract", "init", "bronze.orders", check=False)
    assert again.returncode == 1 and "--force" in again.stderr


def uncomment(line: str) -> str:
    """A property's suggestion lines (indented, commented out) made active."""
    body = line.lstrip()
    if (
        line.startswith("        #")
        and not body.startswith("# Warn")
        and "rows are NULL" not in body
    ):
        return line.replace("# ", "", 1)
    return line


def test_contract_init_takes_the_primary_key_from_declared_keys(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(
        lambda: table("silver.customers", source=feed, strategy="scd2", keys=["customer_id"])
    )
    feed.push([{"customer_id": 1, "city": "Porto"}])
    lake.run()
    feed.push([{"customer_id": 1, "city": "Lisbon"}])
    lake.run()
    contract = parse(bootstrap(lake.project, "silver.customers"), "init")
    props = {p.name: p for p in contract.schema_[0].properties}
    # Keys repeat across an SCD2 table's versions: key and validity start identify a row.
    assert props["customer_id"].primaryKey and props["customer_id"].primaryKeyPosition == 1
    assert props["valid_from"].primaryKey and props["valid_from"].primaryKeyPosition == 2
    assert not props["valid_to"].required  # NULL while current
    assert not props["city"].primaryKey


def test_contract_check_fails_on_an_existing_table_that_breaks_the_contract(tmp_path: Path) -> None:
    root = project_with_orders(tmp_path)
    (root / "contracts" / "bronze" / "orders.yaml").rename(root / "orders.yaml")
    drop(
        root,
        "1.ndjson",
        [
            {"order_id": 1, "status": "new", "amount": -1},
            {"order_id": 1, "status": "odd", "amount": 2},
        ],
    )
    run_cli(root, "run")
    checked = run_cli(
        root,
        "contract",
        "check",
        "bronze.orders",
        "--contract",
        str(root / "orders.yaml"),
        check=False,
    )
    assert checked.returncode == 1
    out = checked.stdout
    assert "range(amount)" in out and "primary_key(order_id)" in out and "blocked" in out
    assert "accepted_values(status)" in out


def test_contract_validate_reports_each_contract(tmp_path: Path) -> None:
    root = project_with_orders(tmp_path)
    ok = run_cli(root, "contract", "validate")
    assert (
        "bronze.orders: contracts/bronze/orders.yaml version 1.0.0 (active, owner ana@example.com)"
        in ok.stdout
    )
    (root / "contracts" / "bronze" / "orders.yaml").write_text(
        ORDERS_CONTRACT.replace("metric: invalidValues", "metric: validity")
    )
    bad = run_cli(root, "contract", "validate", check=False)
    assert bad.returncode == 1 and "unknown metric 'validity'" in bad.stderr


def test_check_summary_after_a_run(tmp_path: Path) -> None:
    from headwater.cli.contract import print_check_summary

    (tmp_path / "contracts" / "silver").mkdir(parents=True)
    (tmp_path / "contracts" / "silver" / "events.yaml").write_text(
        HEAD
        + textwrap.dedent("""\
        schema:
          - name: events
            properties:
              - name: kind
                customProperties: [{property: onFail, value: quarantine}]
                quality:
                  - {metric: invalidValues, arguments: {validValues: [click]}}
              - name: user
                quality:
                  - {metric: nullValues, mustBe: 0, severity: warning}
    """)
    )
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("silver.events", source=feed, strategy="append"))
    feed.push([{"kind": "click", "user": None}, {"kind": "view", "user": "a"}])
    runs = lake.run()
    buffer = io.StringIO()
    print_check_summary(lake.project, runs, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "checks silver.events: 1 passed, 1 warned, 1 quarantined (1 row failures)" in text
    assert "not_null(user)" in text and "accepted_values(status)" not in text
    quiet = io.StringIO()
    print_check_summary(Project.of_specs(tmp_path / "empty", []), runs, Console(file=quiet))
    assert quiet.getvalue() == ""


# -- malformed contracts -----------------------------------------------------------------


BASE = ORDERS_CONTRACT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: [v3\n", r"c\.yaml:\d+:\d+: not valid YAML"),
        ("- just a list\n", r"c\.yaml: a contract is a YAML mapping"),
        (BASE.replace("apiVersion: v3.1.0\n", ""), r"c\.yaml: field apiVersion is required"),
        (BASE.replace("v3.1.0", "v2.2.0"), r"field apiVersion: .*ODCS v2"),
        (
            BASE.replace("version: 1.0.0", "version: 1.0"),
            r"field version: .*not a semantic version",
        ),
        (
            BASE.replace("logicalType: number", "logicalTyp: number"),
            r"unknown field schema\[orders\]\.properties\[amount\]\.logicalTyp",
        ),
        (
            BASE.replace("logicalType: number", "logicalType: money"),
            r"field schema\[orders\]\.properties\[amount\]\.logicalType",
        ),
        (
            BASE.replace("metric: invalidValues", "metric: validity"),
            r"schema\[orders\]\.properties\[status\]\.quality\[0\]: unknown metric 'validity'",
        ),
        (
            BASE.replace("value: quarantine", "value: drop"),
            r"properties\[status\]: onFail must be block or quarantine",
        ),
        (
            BASE.replace("{minimum: 0}", "{pattern: '(unclosed'}"),
            r"properties\[amount\]\.logicalTypeOptions: pattern .* is not a valid regular expression",
        ),
        (
            BASE.replace("{metric: rowCount, mustBeGreaterThan: 0}", "{metric: rowCount}"),
            r"quality\[0\]: rowCount needs an operator",
        ),
        (
            BASE.replace(
                "{metric: rowCount, mustBeGreaterThan: 0}",
                "{type: sql, query: 'SELEC count( FROM {object}', mustBe: 0}",
            ),
            r"quality\[0\]: SQL does not parse",
        ),
        (
            BASE.replace(
                "{metric: rowCount, mustBeGreaterThan: 0}",
                "{metric: rowCount, mustBe: 1, unit: furlongs}",
            ),
            r"unit must be rows or percent",
        ),
        (
            BASE.replace("classification: confidential", "relationships: [{to: customers}]"),
            r"relationships\[0\]: 'to: customers' must name table.column",
        ),
        (
            BASE.replace("  - name: orders", "  - name: lines"),
            None,
        ),  # one object: it is the table's
        (
            BASE
            + "slaProperties:\n  - {property: freshness, value: 1, unit: fortnights, element: orders.at}\n",
            r"slaProperties\[0\]: unknown unit 'fortnights'",
        ),
        (
            BASE + "slaProperties:\n  - {property: freshness, value: 1, unit: d}\n",
            r"freshness needs an element",
        ),
    ],
)
def test_malformed_contracts_are_one_line_errors(
    tmp_path: Path, text: str, expected: str | None
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    if expected is None:
        load_plan(path, "bronze.orders")
        return
    with pytest.raises(ConfigError, match=expected) as caught:
        load_plan(path, "bronze.orders")
    assert "\n" not in caught.value.message and str(path) in caught.value.message
    assert caught.value.hint and "docs/contracts.md" in caught.value.hint


def test_a_contract_with_several_objects_must_name_the_table(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "schema:\n  - name: lines\n  - name: refunds\n")
    with pytest.raises(ConfigError, match=r"no schema object describes table bronze\.orders"):
        load_plan(path, "bronze.orders")
    path.write_text(
        HEAD + "schema:\n  - name: lines\n  - name: refunds\n    physicalName: bronze.orders\n"
    )
    assert load_plan(path, "bronze.orders").obj.name == "refunds"


def test_the_example_in_the_docs_is_a_valid_contract() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "contracts.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    plan = load_plan_from_text(example, "silver.orders")
    names = {c.name for c in plan.checks}
    assert {
        "primary_key(order_id)",
        "accepted_values(status)",
        "range(amount)",
        "regex(email)",
    } <= names
    assert {
        "big_orders_are_paid",
        "no_bulk_buyers",
        "few_refunds",
        "volume_change",
        "freshness(updated_at)",
    } <= names
    assert plan.retention is not None and plan.retention.days == 7 * 365


def load_plan_from_text(text: str, table_name: str) -> Plan:
    return compile_contract(parse(text, "docs/contracts.md"), "docs/contracts.md", table_name)
