"""Each check of a data contract: passing and failing, severity, thresholds, quarantine routing.

Row checks are exercised through the contract's gate on Arrow increments (what
the engine hands it); checks that read tables (referential integrity, volume,
uniqueness across the table, freshness) run against real Delta tables.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from headwater import table
from headwater.errors import HeadwaterError
from headwater.project import Project
from headwater.quality.contract import ContractGate, load_plan
from headwater.quality.gate import CheckResult

from .lake import Feed, Lake

HEAD = """\
apiVersion: v3.1.0
kind: DataContract
id: payments
version: 1.0.0
status: active
"""


def contract(body: str) -> str:
    return HEAD + textwrap.dedent(body)


def gate(
    tmp_path: Path, body: str, project: Project | None = None, name: str = "silver.payments"
) -> ContractGate:
    path = tmp_path / "contract.yaml"
    path.write_text(contract(body))
    return ContractGate(load_plan(path, name), name, project or Project.of_specs(tmp_path, []))


def by_check(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check: r for r in results}


PAYMENTS = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "amount": pa.array([10.0, -5.0, None, 250.0]),
        "status": pa.array(["new", "paid", "lost", None]),
        "email": pa.array(["a@x.com", "bad", "c@x.com", None]),
    }
)


# -- not-null ---------------------------------------------------------------------------


def test_not_null_fails_on_a_null_and_blocks_at_error(tmp_path: Path) -> None:
    outcome = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: amount, required: true}
    """,
    ).check_rows(PAYMENTS)
    (result,) = outcome.results
    assert result.check == "not_null(amount)" and not result.passed and result.failing_rows == 1
    assert result.blocks and outcome.rejected is None and outcome.good.num_rows == 4


def test_not_null_passes_when_every_row_has_a_value(tmp_path: Path) -> None:
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - {name: id, required: true}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.passed and result.failing_rows == 0 and not result.blocks


def test_not_null_at_warning_severity_records_but_does_not_block(tmp_path: Path) -> None:
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - name: amount
                quality:
                  - {metric: nullValues, mustBe: 0, severity: warning}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.severity == "warn" and not result.passed and not result.blocks


@pytest.mark.parametrize(("limit", "passes"), [(25, True), (20, False)])
def test_not_null_mostly_allows_a_share_of_nulls(tmp_path: Path, limit: int, passes: bool) -> None:
    # One row of four (25%) has no amount: "mostly 75%" passes, "mostly 80%" does not.
    (result,) = (
        gate(
            tmp_path,
            f"""
        schema:
          - name: payments
            properties:
              - name: amount
                quality:
                  - {{metric: nullValues, mustBeLessOrEqualTo: {limit}, unit: percent}}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.passed is passes and result.blocks is not passes
    assert result.observed == {"failing_rows": 1, "percent": 25.0}


# -- accepted values, range, regex -------------------------------------------------------


def test_accepted_values_quarantine_routes_failing_rows_and_keeps_the_good(tmp_path: Path) -> None:
    outcome = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - name: status
                customProperties: [{property: onFail, value: quarantine}]
                quality:
                  - metric: invalidValues
                    arguments: {validValues: [new, paid]}
    """,
    ).check_rows(PAYMENTS)
    (result,) = outcome.results
    assert result.check == "accepted_values(status)"
    assert result.failing_rows == 1 and result.quarantined == 1 and not result.blocks
    assert outcome.good.column("id").to_pylist() == [1, 2, 4]  # NULL is not-null's business
    assert outcome.rejected is not None
    (bad,) = outcome.rejected.to_pylist()
    assert bad["check"] == "accepted_values(status)" and bad["value"] == "lost"
    assert bad["source"] == "silver.payments" and json.loads(bad["record"])["id"] == 3
    assert "status not one of ['new', 'paid']" in bad["reason"]


def test_accepted_values_pass_when_all_values_are_listed(tmp_path: Path) -> None:
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - name: status
                quality:
                  - {metric: invalidValues, arguments: {validValues: [new, paid, lost]}}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.passed


def test_range_bounds_inclusive_and_exclusive(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - name: amount
                logicalType: number
                logicalTypeOptions: {minimum: 0, exclusiveMaximum: 250}
              - name: id
                logicalType: integer
                logicalTypeOptions: {minimum: 1, maximum: 4}
    """,
    )
    results = by_check(g.check_rows(PAYMENTS).results)
    # -5 is below the minimum and 250 is not below the exclusive maximum; NULL is not judged.
    assert results["range(amount)"].failing_rows == 2 and results["range(amount)"].blocks
    assert results["range(id)"].passed


def test_range_on_timestamps_reads_bounds_written_as_text(tmp_path: Path) -> None:
    times = pa.table(
        {
            "at": pa.array(
                [datetime(2024, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)],
                pa.timestamp("us", "UTC"),
            )
        }
    )
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - name: at
                logicalType: timestamp
                logicalTypeOptions: {minimum: "2020-01-01T00:00:00Z", maximum: "2030-01-01"}
    """,
        )
        .check_rows(times)
        .results
    )
    assert result.failing_rows == 1


def test_length_bounds(tmp_path: Path) -> None:
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - name: email
                logicalType: string
                logicalTypeOptions: {minLength: 5}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.check == "length(email)" and result.failing_rows == 1  # "bad"


def test_regex_pattern_fails_rows_that_do_not_match(tmp_path: Path) -> None:
    outcome = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - name: email
                logicalType: string
                logicalTypeOptions: {pattern: "^[a-z]+@[a-z]+\\\\.com$"}
                customProperties: [{property: onFail, value: quarantine}]
    """,
    ).check_rows(PAYMENTS)
    (result,) = outcome.results
    assert result.check == "regex(email)" and result.quarantined == 1
    assert outcome.good.column("id").to_pylist() == [1, 3, 4]


def test_regex_on_a_number_column_matches_its_text(tmp_path: Path) -> None:
    (result,) = (
        gate(
            tmp_path,
            """
        schema:
          - name: payments
            properties:
              - name: id
                quality:
                  - {metric: invalidValues, arguments: {pattern: "^[1-3]$"}, mustBe: 0}
    """,
        )
        .check_rows(PAYMENTS)
        .results
    )
    assert result.failing_rows == 1  # 4


def test_quarantine_limit_blocks_a_batch_with_too_many_bad_rows(tmp_path: Path) -> None:
    body = """
        schema:
          - name: payments
            properties:
              - name: status
                customProperties: [{{property: onFail, value: quarantine}}]
                quality:
                  - metric: invalidValues
                    arguments: {{validValues: [new]}}
                    mustBeLessThan: {limit}
                    unit: percent
    """
    # "paid" and "lost" fail: 2 of 4 rows, 50%.
    outcome = gate(tmp_path, body.format(limit=60)).check_rows(PAYMENTS)
    assert outcome.results[0].quarantined == 2 and outcome.good.num_rows == 2
    outcome = gate(tmp_path, body.format(limit=40)).check_rows(PAYMENTS)
    (result,) = outcome.results
    assert result.blocks and result.quarantined == 0 and "the batch is blocked" in result.message
    assert outcome.rejected is None


def test_a_row_failing_two_quarantining_checks_is_quarantined_once(tmp_path: Path) -> None:
    outcome = gate(
        tmp_path,
        """
        customProperties: [{property: onFail, value: quarantine}]
        schema:
          - name: payments
            properties:
              - {name: amount, logicalTypeOptions: {minimum: 0}}
              - name: email
                quality:
                  - {metric: invalidValues, arguments: {pattern: "@"}}
    """,
    ).check_rows(PAYMENTS.slice(1, 1))  # amount -5, email "bad"
    assert outcome.rejected is not None and outcome.rejected.num_rows == 1
    (bad,) = outcome.rejected.to_pylist()
    assert bad["check"] == "range(amount); regex(email)" and bad["value"] == "-5.0"
    assert outcome.good.num_rows == 0


# -- custom SQL -------------------------------------------------------------------------


def test_custom_condition_per_row_quarantines_violating_rows(tmp_path: Path) -> None:
    outcome = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - name: small_payments
                type: custom
                engine: headwater
                implementation:
                  condition: "amount < 100"
                customProperties: [{property: onFail, value: quarantine}]
    """,
    ).check_rows(PAYMENTS)
    (result,) = outcome.results
    assert result.check == "small_payments" and result.quarantined == 1
    assert outcome.rejected is not None
    assert outcome.rejected.column("check").to_pylist() == ["small_payments"]
    # 250 fails; a NULL amount passes, as in a SQL CHECK constraint.
    assert outcome.good.column("id").to_pylist() == [1, 2, 3]


def test_custom_sql_with_an_unknown_column_is_a_clear_error(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - {type: custom, engine: headwater, implementation: {condition: "no_such_function(amount) > 1"}}
    """,
    )
    with pytest.raises(
        HeadwaterError, match=r"contract.yaml.*row checks could not run.*no_such_function"
    ):
        g.check_rows(PAYMENTS)


def test_violations_query_and_scalar_sql_on_the_would_be_table(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - name: no_negative_totals
                type: custom
                engine: headwater
                implementation:
                  violations: "SELECT status, sum(amount) AS total FROM {object} GROUP BY status HAVING sum(amount) < 0"
              - name: few_new_rows
                type: sql
                query: "SELECT count(*) FROM {increment}"
                mustBeLessOrEqualTo: 2
    """,
    )
    results = by_check(g.check_table(ds.dataset(PAYMENTS), PAYMENTS))
    violations = results["no_negative_totals"]
    assert not violations.passed and violations.failing_rows == 1 and "paid" in violations.message
    scalar = results["few_new_rows"]
    assert not scalar.passed and scalar.observed == 4 and scalar.blocks
    results = by_check(g.check_table(ds.dataset(PAYMENTS.slice(0, 1)), PAYMENTS.slice(0, 1)))
    assert results["no_negative_totals"].passed and results["few_new_rows"].passed


# -- table checks -------------------------------------------------------------------------


def test_row_count_between(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - {metric: rowCount, mustBeBetween: [1, 3]}
    """,
    )
    (result,) = g.check_table(ds.dataset(PAYMENTS), PAYMENTS)
    assert result.check == "row_count" and result.observed == 4 and result.blocks
    (result,) = g.check_table(ds.dataset(PAYMENTS.slice(0, 2)), PAYMENTS.slice(0, 2))
    assert result.passed


def test_schema_check_names_missing_columns_and_wrong_types(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: id, logicalType: integer, physicalType: bigint}
              - {name: amount, logicalType: integer}
              - {name: status, physicalType: "varchar(20)"}
              - {name: country, logicalType: string}
    """,
    )
    (result,) = g.check_table(ds.dataset(PAYMENTS), PAYMENTS)
    assert result.check == "schema" and result.blocks
    assert result.observed == ["column amount is number, not integer", "column country is missing"]


def test_unique_across_the_table_blocks_a_batch_that_repeats_a_key(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: id, unique: true}
    """,
    )
    feed.push([{"id": 1}, {"id": 2}])
    lake.run()
    feed.push([{"id": 3}, {"id": 2}, {"id": 3}])  # 2 is in the table, 3 twice in the batch
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "unique(id) (2 rows)" in (run.error or "")
    assert [r["id"] for r in lake.rows("silver.payments", "id")] == [1, 2]


def test_composite_primary_key_is_unique_together(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: tenant, primaryKey: true, primaryKeyPosition: 1}
              - {name: id, primaryKey: true, primaryKeyPosition: 2}
    """,
    )
    feed.push([{"tenant": "a", "id": 1}, {"tenant": "b", "id": 1}])
    lake.run()  # (a, 1) and (b, 1) differ
    feed.push([{"tenant": "b", "id": 1}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "primary_key(tenant, id)" in (run.error or "")


def test_unique_with_a_percent_threshold(tmp_path: Path) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - metric: duplicateValues
                arguments: {properties: [status]}
                mustBeLessThan: 30
                unit: percent
    """,
    )
    rows = pa.table({"status": ["a", "a", "b", "c", "d"]})  # one duplicate row of five: 20%
    (result,) = g.check_table(ds.dataset(rows), rows)
    assert result.passed and result.failing_rows == 1
    rows = pa.table({"status": ["a", "a", "a", "c", "d"]})  # 40%
    (result,) = g.check_table(ds.dataset(rows), rows)
    assert not result.passed


@pytest.mark.parametrize("key", ["id", "code"])
def test_a_whole_table_unique_check_in_slices_finds_every_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    from headwater.quality.checks import unique

    g = gate(
        tmp_path,
        f"""
        schema:
          - name: payments
            properties:
              - {{name: {key}, primaryKey: true}}
    """,
    )
    ids = [*range(1000), 0, 499, 500, 999, 999, None]  # duplicates at the ends of slices
    rows = pa.table(
        {"id": pa.array(ids, pa.int64()), "code": [None if i is None else f"c{i}" for i in ids]}
    )
    folder = tmp_path / "parquet"
    folder.mkdir()
    for n, part in enumerate(range(0, rows.num_rows, 300)):  # several files, footers per file
        pq.write_table(rows.slice(part, 300), folder / f"{n}.parquet")
    dataset = ds.dataset(folder, format="parquet")
    whole = by_check(g.check_all(dataset))[f"primary_key({key})"]
    monkeypatch.setattr(unique, "ROWS_PER_SORT", 150)  # seven slices: by value (id), by hash (code)
    sliced = by_check(g.check_all(dataset))[f"primary_key({key})"]
    assert whole.failing_rows == sliced.failing_rows == 5
    assert "'rows': 3" in sliced.message  # 999 three times


# -- checks that read other tables or the table's history ---------------------------------


def landed(
    tmp_path: Path,
    body: str,
    name: str = "silver.payments",
    strategy: str = "append",
    **options: Any,
) -> tuple[Lake, Feed]:
    layer, short = name.split(".")
    folder = tmp_path / "contracts" / layer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{short}.yaml").write_text(contract(body))
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table(name, source=feed, strategy=strategy, **options))
    return lake, feed


def test_referential_integrity_against_another_table(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - name: customer_id
                relationships: [{to: customers.customer_id}]
                customProperties: [{property: onFail, value: quarantine}]
    """,
    )
    customers = Feed([], name="customers")
    lake.declare(lambda: table("silver.customers", source=customers, strategy="append"))
    customers.push([{"customer_id": 1}, {"customer_id": 2}, {"customer_id": None}])
    lake.run("silver.customers")
    feed.push(
        [{"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 9}, {"id": 3, "customer_id": None}]
    )
    lake.run("silver.payments")
    assert [r["id"] for r in lake.rows("silver.payments", "id")] == [1, 3]  # NULL refers to nothing
    (bad,) = lake.rows("silver.payments__quarantine")
    assert bad["check"] == "references(customer_id -> silver.customers.customer_id)"
    assert bad["value"] == "9"


def test_referential_integrity_to_a_missing_table_blocks(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - name: customer_id
                relationships: [{to: gold.customers.customer_id}]
    """,
    )
    feed.push([{"id": 1, "customer_id": 1}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "gold.customers does not exist" in (run.error or "")


def test_composite_reference(tmp_path: Path) -> None:
    project_tables = Lake(tmp_path)
    parents = Feed([pa.table({"t": ["a", "b"], "k": [1, 2]})], name="parents")
    project_tables.declare(lambda: table("silver.accounts", source=parents, strategy="append"))
    project_tables.run()
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            relationships:
              - {from: [payments.tenant, payments.account], to: [accounts.t, accounts.k]}
    """,
        project_tables.project,
    )
    rows = pa.table({"tenant": ["a", "a", "b"], "account": [1, 2, 2]})
    (result,) = g.check_rows(rows).results
    assert result.failing_rows == 1  # (a, 2)


def test_volume_change_warns_beyond_the_recent_average(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - type: custom
                engine: headwater
                implementation:
                  volumeChange: {window: 3, maxChangePercent: 20}
    """,
    )
    for size in (10, 12, 8):  # no baseline yet: fewer than three runs before each
        feed.push([{"id": i} for i in range(size)])
        lake.run()
    feed.push([{"id": i} for i in range(11)])  # average 10: +10% is within 20%
    lake.run()
    feed.push([{"id": i} for i in range(30)])  # average of 12, 8, 11 = 10.3: far above
    (run,) = lake.run()
    assert run.status == "committed"  # a warning by default
    audits = [
        r for r in lake.rows("audit.check_results", "checked_at") if r["check"] == "volume_change"
    ]
    assert [a["passed"] for a in audits] == [True, True, True, True, False]
    assert (
        "no baseline yet" in audits[0]["message"] and "no baseline yet" not in audits[3]["message"]
    )
    last = json.loads(audits[-1]["observed"])
    assert last["rows"] == 30 and last["baseline"] == pytest.approx(31 / 3, abs=0.01)
    assert audits[-1]["severity"] == "warn"


def test_volume_change_at_error_blocks(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - type: custom
                engine: headwater
                severity: error
                implementation:
                  volumeChange: {window: 2, minRuns: 2, maxChangePercent: 50}
    """,
    )
    for size in (4, 4):
        feed.push([{"id": i} for i in range(size)])
        lake.run()
    feed.push([{"id": 1}])  # -75%
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "volume_change" in (run.error or "")


def test_freshness_of_a_timestamp_column(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
        slaProperties:
          - {property: freshness, value: 1, unit: d, element: payments.updated_at}
    """,
    )
    now = datetime.now(UTC)
    feed.push([{"id": 1, "updated_at": datetime(2001, 1, 1, tzinfo=UTC)}])
    (run,) = lake.run()
    assert run.status == "committed"  # an SLA warns by default
    feed.push([{"id": 2, "updated_at": now - timedelta(hours=1)}])
    lake.run()
    stale, fresh = [
        r
        for r in lake.rows("audit.check_results", "checked_at")
        if r["check"] == "freshness(updated_at)"
    ]
    assert not stale["passed"] and stale["severity"] == "warn" and "2001-01-01" in stale["message"]
    assert fresh["passed"]


def test_freshness_can_block_when_the_contract_says_so(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        customProperties: [{property: freshnessSeverity, value: error}]
        schema:
          - name: payments
        slaProperties:
          - {property: latency, value: 2, unit: hours, element: updated_at}
    """,
    )
    feed.push([{"id": 1, "updated_at": datetime(2001, 1, 1, tzinfo=UTC)}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "freshness(updated_at)" in (run.error or "")


def test_a_row_rule_on_a_column_the_table_lacks_fails_instead_of_being_skipped(
    tmp_path: Path,
) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            quality:
              - {type: custom, engine: headwater, implementation: {condition: "discount >= 0"}}
    """,
    )
    assert g.check_rows(PAYMENTS).results == []  # not in the increment: judged on the table
    results = by_check(g.check_table(ds.dataset(PAYMENTS), PAYMENTS))
    failed = results["condition(discount >= 0)"]
    assert failed.blocks and "no column discount" in failed.message


def test_a_row_rule_on_a_column_only_the_table_has_runs_on_the_would_be_table(
    tmp_path: Path,
) -> None:
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: valid_to, required: true}
    """,
    )
    increment = PAYMENTS.select(["id"])
    table = PAYMENTS.append_column("valid_to", pa.array([1, None, 3, 4]))
    assert g.check_rows(increment).results == []
    result = by_check(g.check_table(ds.dataset(table), increment))["not_null(valid_to)"]
    assert result.failing_rows == 1 and result.blocks


def test_a_merge_that_updates_keys_keeps_the_primary_key_unique(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: id, primaryKey: true}
    """,
        strategy="merge",
        keys=["id"],
    )
    feed.push([{"id": 1, "amount": 1.0}, {"id": 2, "amount": 2.0}])
    lake.run()
    feed.push([{"id": 2, "amount": 3.0}, {"id": 3, "amount": 4.0}])  # 2 is replaced, not repeated
    lake.run()
    assert [r["amount"] for r in lake.rows("silver.payments", "id")] == [1.0, 3.0, 4.0]
    keys = [
        r for r in lake.rows("audit.check_results", "checked_at") if r["check"] == "primary_key(id)"
    ]
    assert [k["passed"] for k in keys] == [True, True]


def test_whole_table_not_null_counts_come_from_parquet_footers_exactly(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("silver.payments", source=feed, strategy="append"))
    feed.push([{"id": 1}, {"id": 2}])  # written before the column existed
    lake.run()
    feed.push([{"id": 3, "email": "a@x.com"}, {"id": 4, "email": None}])
    lake.run()
    g = gate(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: email, required: true}
              - {name: id, required: true}
    """,
        lake.project,
    )
    results = by_check(g.check_all(lake.target("silver.payments").dataset()))
    assert results["not_null(email)"].failing_rows == 3 and results["not_null(email)"].blocks
    assert results["not_null(id)"].passed


def test_a_merge_checks_only_the_newest_version_of_a_key_in_one_increment(tmp_path: Path) -> None:
    lake, feed = landed(
        tmp_path,
        """
        schema:
          - name: payments
            properties:
              - {name: id, primaryKey: true}
              - {name: amount, logicalTypeOptions: {minimum: 0}}
    """,
        strategy="merge",
        keys=["id"],
        version_column="v",
    )
    # Payment 1 was wrong and corrected at the source before the run read it: only the
    # correction is published, so only it is checked.
    feed.push([{"id": 1, "v": 2, "amount": 5.0}, {"id": 1, "v": 1, "amount": -1.0}])
    feed.push([{"id": 2, "v": 1, "amount": 7.0}])
    lake.run()
    assert [(r["id"], r["amount"]) for r in lake.rows("silver.payments", "id")] == [
        (1, 5.0),
        (2, 7.0),
    ]
    # The newest version is the wrong one: the batch is blocked.
    feed.push([{"id": 2, "v": 2, "amount": 8.0}, {"id": 2, "v": 3, "amount": -8.0}])
    (blocked,) = lake.run(check=False)
    assert blocked.status == "failed" and "range(amount) (1 rows)" in str(blocked.error)
    assert [r["amount"] for r in lake.rows("silver.payments", "id")] == [5.0, 7.0]
