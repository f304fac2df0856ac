"""The contestants, each running the same ten checks over the same 10M-row table.

Soda Core runs in both its lines: v4 (`soda-duckdb`, contracts) as tabulated
below, and v3 (`soda-core-duckdb`, SodaCL: missing_count, duplicate_count,
invalid_count with valid values / min / max / regex, a reference check,
row_count, freshness, failed rows, a user-defined SQL metric).

| # | check                | Headwater (ODCS contract)        | Great Expectations (pandas)                    | Soda Core v4 (DuckDB)               |
|---|----------------------|----------------------------------|------------------------------------------------|-------------------------------------|
| 1 | not-null             | required: true                   | ExpectColumnValuesToNotBeNull                  | missing                             |
| 2 | unique key           | primaryKey: true                 | ExpectColumnValuesToBeUnique                   | duplicate                           |
| 3 | accepted values      | invalidValues + validValues      | ExpectColumnValuesToBeInSet                    | invalid: valid_values               |
| 4 | range                | logicalTypeOptions min/max       | ExpectColumnValuesToBeBetween                  | invalid: valid_min / valid_max      |
| 5 | regex                | logicalTypeOptions.pattern       | ExpectColumnValuesToMatchRegex                 | invalid: valid_format               |
| 6 | referential integrity| relationships: to customers      | ExpectColumnValuesToBeInSet(customer ids)      | invalid: valid_reference_data       |
| 7 | row count            | rowCount mustBeBetween           | ExpectTableRowCountToBeBetween                 | row_count                           |
| 8 | freshness            | slaProperties freshness          | ExpectColumnMaxToBeBetween(now - 1 day)        | freshness                           |
| 9 | custom SQL, per row  | headwater condition              | ExpectColumnPairValuesAToBeGreaterThanB        | failed_rows: expression             |
|10 | custom SQL, aggregate| type: sql + mustBeLessThan       | ExpectColumnValuesToNotBeInSet(mostly=0.75)    | metric: query                       |

Great Expectations' pandas engine cannot run SQL (its UnexpectedRowsExpectation
needs a SQL data source, and its SQL engine has no DuckDB dialect), so checks 9
and 10 use the built-in expectations that state the same rules.

Each function runs in a fresh child process and returns (watch, base RSS,
findings): per check, whether it passed and, for row checks, how many rows failed.
Reading the data is inside the timed region for everyone: Headwater and Soda
scan the Parquet files as they check, Great Expectations needs them in pandas.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import Stopwatch, current_rss_bytes  # noqa: E402

# Values shared with data.py, repeated so the peers' interpreter needs nothing of ours.
STATUSES = ["new", "paid", "shipped", "delivered", "cancelled"]
EMAIL_PATTERN = r"^[a-z0-9._]+@[a-z0-9]+\.[a-z]+$"
AMOUNT_MAX = 10_000
ROW_COUNT_RANGE = (1, 20_000_000)
FRESHNESS_DAYS = 1
CANCELLED_MAX_PERCENT = 25
CHECKS = (
    "not_null",
    "unique",
    "accepted_values",
    "range",
    "regex",
    "references",
    "row_count",
    "freshness",
    "custom_row",
    "custom_aggregate",
)

Findings = dict[str, dict[str, Any]]


# -- Headwater ----------------------------------------------------------------------------

HEADWATER_CONTRACT = f"""\
apiVersion: v3.1.0
kind: DataContract
id: bench.orders
version: 1.0.0
status: active
schema:
  - name: orders
    properties:
      - {{name: order_id, logicalType: integer, primaryKey: true}}
      - name: customer_id
        logicalType: integer
        required: true
        relationships: [{{to: customers.customer_id}}]
      - name: amount
        logicalType: number
        logicalTypeOptions: {{minimum: 0, maximum: {AMOUNT_MAX}}}
      - name: status
        logicalType: string
        quality:
          - metric: invalidValues
            arguments: {{validValues: {json.dumps(STATUSES)}}}
      - name: email
        logicalType: string
        logicalTypeOptions: {{pattern: '{EMAIL_PATTERN}'}}
    quality:
      - {{metric: rowCount, mustBeBetween: [{ROW_COUNT_RANGE[0]}, {ROW_COUNT_RANGE[1]}]}}
      - name: shipped_after_created
        type: custom
        engine: headwater
        implementation:
          condition: shipped_at IS NULL OR shipped_at >= created_at
      - name: cancelled_share
        type: sql
        query: "SELECT 100.0 * count(*) FILTER (WHERE status = 'cancelled') / count(*) FROM {{object}}"
        mustBeLessThan: {CANCELLED_MAX_PERCENT}
slaProperties:
  - {{property: freshness, value: {FRESHNESS_DAYS}, unit: d, element: orders.created_at}}
"""

HEADWATER_NAMES = {
    "not_null(customer_id)": "not_null",
    "primary_key(order_id)": "unique",
    "accepted_values(status)": "accepted_values",
    "range(amount)": "range",
    "regex(email)": "regex",
    "references(customer_id -> bench.customers.customer_id)": "references",
    "row_count": "row_count",
    "freshness(created_at)": "freshness",
    "shipped_after_created": "custom_row",
    "cancelled_share": "custom_aggregate",
}


def headwater(data: Path, manifest: dict[str, Any]) -> tuple[Stopwatch, int, Findings]:
    """`headwater contract check bench.orders`, in-process: every check over the whole table."""
    from headwater.project import Project
    from headwater.quality.contract import ContractGate, load_plan

    contract = data / "headwater-contract.yaml"
    contract.write_text(HEADWATER_CONTRACT)
    project = Project.of_specs(data, [])
    base = current_rss_bytes()
    with Stopwatch() as watch:
        plan = load_plan(contract, "bench.orders")
        gate = ContractGate(plan, "bench.orders", project)
        results = gate.check_all(project.target("bench.orders").dataset())
    findings: Findings = {}
    for r in results:
        name = HEADWATER_NAMES.get(r.check)
        if name is not None:
            findings[name] = {"passed": r.passed, "failing_rows": r.failing_rows}
    return watch, base, findings


# -- Great Expectations ----------------------------------------------------------------------


def great_expectations(
    data: Path, manifest: dict[str, Any], references: bool = True
) -> tuple[Stopwatch, int, Findings]:
    """A GX suite on a pandas DataFrame of the table (the pandas engine: files in memory).

    GX has no foreign-key expectation; its idiom is ExpectColumnValuesToBeInSet with the
    parent's keys as the value set, which GX copies through its configuration objects
    many times (1M keys dominate the run). `references=False` leaves that check out.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("bench")
    asset = source.add_dataframe_asset("orders")
    batch_definition = asset.add_batch_definition_whole_dataframe("all")
    now = datetime.now(UTC)
    base = current_rss_bytes()
    with Stopwatch() as watch:
        orders = pd.read_parquet(manifest["orders"])
        customer_ids = (
            pd.read_parquet(manifest["customers"], columns=["customer_id"])["customer_id"].tolist()
            if references
            else []
        )
        suite = gx.ExpectationSuite("orders")
        expectations = {
            "not_null": gxe.ExpectColumnValuesToNotBeNull(column="customer_id"),
            "unique": gxe.ExpectColumnValuesToBeUnique(column="order_id"),
            "accepted_values": gxe.ExpectColumnValuesToBeInSet(column="status", value_set=STATUSES),
            "range": gxe.ExpectColumnValuesToBeBetween(
                column="amount", min_value=0, max_value=AMOUNT_MAX
            ),
            "regex": gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL_PATTERN),
            "references": gxe.ExpectColumnValuesToBeInSet(
                column="customer_id", value_set=customer_ids
            ),
            "row_count": gxe.ExpectTableRowCountToBeBetween(
                min_value=ROW_COUNT_RANGE[0], max_value=ROW_COUNT_RANGE[1]
            ),
            "freshness": gxe.ExpectColumnMaxToBeBetween(
                column="created_at", min_value=now - timedelta(days=FRESHNESS_DAYS)
            ),
            "custom_row": gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="shipped_at",
                column_B="created_at",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
            "custom_aggregate": gxe.ExpectColumnValuesToNotBeInSet(
                column="status", value_set=["cancelled"], mostly=1 - CANCELLED_MAX_PERCENT / 100
            ),
        }
        if not references:
            del expectations["references"]
        for expectation in expectations.values():
            suite.add_expectation(expectation)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": orders})
        validation = batch.validate(suite)
    findings: Findings = {}
    by_key = {(e.expectation_type, getattr(e, "column", None)): n for n, e in expectations.items()}
    for result in validation.results:
        config = result.expectation_config
        name = by_key[(config.type, config.kwargs.get("column"))]
        detail = result.result or {}
        findings[name] = {
            "passed": bool(result.success),
            "failing_rows": detail.get("unexpected_count"),
        }
    return watch, base, findings


# -- Soda Core ---------------------------------------------------------------------------------


def soda_contract(data: Path) -> str:
    statuses = json.dumps(STATUSES)
    return f"""\
dataset: bench/main/orders
columns:
  - name: order_id
    checks:
      - duplicate:
  - name: customer_id
    checks:
      - missing:
      - invalid:
          name: references
          valid_reference_data:
            dataset: bench/main/customers
            column: customer_id
  - name: amount
    checks:
      - invalid:
          valid_min: 0
          valid_max: {AMOUNT_MAX}
  - name: status
    checks:
      - invalid:
          valid_values: {statuses}
  - name: email
    checks:
      - invalid:
          valid_format:
            name: email
            regex: '{EMAIL_PATTERN}'
checks:
  - row_count:
      threshold:
        must_be_between:
          greater_than_or_equal: {ROW_COUNT_RANGE[0]}
          less_than_or_equal: {ROW_COUNT_RANGE[1]}
  - freshness:
      column: created_at
      threshold:
        unit: day
        must_be_less_than_or_equal: {FRESHNESS_DAYS}
  - failed_rows:
      name: shipped_after_created
      expression: shipped_at < created_at
  - metric:
      name: cancelled_share
      query: SELECT 100.0 * count(*) FILTER (WHERE status = 'cancelled') / count(*) FROM orders
      threshold:
        must_be_less_than: {CANCELLED_MAX_PERCENT}
"""


def soda(data: Path, manifest: dict[str, Any]) -> tuple[Stopwatch, int, Findings]:
    """`soda contract verify` on DuckDB, whose views read the same Parquet files."""
    import duckdb
    from soda_core.contracts.api.verify_api import verify_contract_locally

    work = data / "soda"
    work.mkdir(exist_ok=True)
    database = work / "bench.duckdb"
    database.unlink(missing_ok=True)
    with duckdb.connect(str(database)) as con:
        # Views only: the data stays in the Delta table's Parquet files.
        con.execute(f"CREATE VIEW orders AS SELECT * FROM read_parquet({manifest['orders']!r})")
        con.execute(
            f"CREATE VIEW customers AS SELECT * FROM read_parquet({manifest['customers']!r})"
        )
    source = work / "data_source.yml"
    source.write_text(
        f"type: duckdb\nname: bench\nconnection:\n  database: {database}\n  schema: main\n"
    )
    contract = work / "contract.yml"
    contract.write_text(soda_contract(data))
    base = current_rss_bytes()
    with Stopwatch() as watch:
        session = verify_contract_locally(
            data_source_file_path=str(source), contract_file_path=str(contract)
        )
    findings: Findings = {}
    (result,) = session.contract_verification_results
    names = {
        ("order_id", "duplicate"): "unique",
        ("customer_id", "missing"): "not_null",
        ("customer_id", "invalid"): "references",
        ("amount", "invalid"): "range",
        ("status", "invalid"): "accepted_values",
        ("email", "invalid"): "regex",
        (None, "row_count"): "row_count",
        (None, "freshness"): "freshness",
        (None, "failed_rows"): "custom_row",
        (None, "metric"): "custom_aggregate",
    }
    for check_result in result.check_results:
        check = check_result.check
        key = (getattr(check, "column_name", None), check.type)
        name = names.get(key)
        if name is None:
            continue
        value = check_result.threshold_value if hasattr(check_result, "threshold_value") else None
        findings[name] = {
            "passed": check_result.outcome.name == "PASSED",
            "failing_rows": value
            if name not in ("row_count", "freshness", "custom_aggregate")
            else None,
        }
    return watch, base, findings


# -- Soda Core v3 (soda-core-duckdb, SodaCL) ----------------------------------------------------


def soda_v3_checks() -> str:
    statuses = json.dumps(STATUSES)
    return f"""\
checks for orders:
  - missing_count(customer_id) = 0:
      name: not_null
  - duplicate_count(order_id) = 0:
      name: unique
  - invalid_count(status) = 0:
      name: accepted_values
      valid values: {statuses}
  - invalid_count(amount) = 0:
      name: range
      valid min: 0
      valid max: {AMOUNT_MAX}
  - invalid_count(email) = 0:
      name: regex
      valid regex: '{EMAIL_PATTERN}'
  - values in (customer_id) must exist in customers (customer_id):
      name: references
  - row_count between {ROW_COUNT_RANGE[0]} and {ROW_COUNT_RANGE[1]}:
      name: row_count
  - freshness(created_at) < {FRESHNESS_DAYS}d:
      name: freshness
  - failed rows:
      name: custom_row
      fail condition: shipped_at < created_at
  - cancelled_share < {CANCELLED_MAX_PERCENT}:
      name: custom_aggregate
      cancelled_share query: |
        SELECT 100.0 * count(*) FILTER (WHERE status = 'cancelled') / count(*) FROM orders
"""


def soda_v3(data: Path, manifest: dict[str, Any]) -> tuple[Stopwatch, int, Findings]:
    """A SodaCL scan (Soda Core 3, soda-core-duckdb) on DuckDB views over the same files."""
    import duckdb
    from soda.scan import Scan

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    # Views only: the data stays in the Delta table's Parquet files.
    con.execute(f"CREATE VIEW orders AS SELECT * FROM read_parquet({manifest['orders']!r})")
    con.execute(f"CREATE VIEW customers AS SELECT * FROM read_parquet({manifest['customers']!r})")
    scan = Scan()
    scan.set_scan_definition_name("bench")
    scan.add_duckdb_connection(duckdb_connection=con, data_source_name="bench")
    scan.set_data_source_name("bench")
    scan.add_sodacl_yaml_str(soda_v3_checks())
    base = current_rss_bytes()
    with Stopwatch() as watch:
        scan.execute()
    results = scan.get_scan_results()
    findings: Findings = {}
    for check in results["checks"]:
        name = check["name"]
        if name not in CHECKS:
            continue
        value = (check.get("diagnostics") or {}).get("value")
        findings[name] = {
            "passed": check["outcome"] == "pass",
            "failing_rows": value
            if name not in ("row_count", "freshness", "custom_aggregate")
            else None,
        }
    return watch, base, findings


def great_expectations_without_references(
    data: Path, manifest: dict[str, Any]
) -> tuple[Stopwatch, int, Findings]:
    return great_expectations(data, manifest, references=False)


CONTESTANTS = {
    "headwater": headwater,
    "great_expectations": great_expectations,
    "great_expectations_9": great_expectations_without_references,
    "soda": soda,
    "soda_v3": soda_v3,
}
