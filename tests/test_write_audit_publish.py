"""Write-audit-publish: staged output is checked and published only if no error-level check fails."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from headwater import table
from headwater.engine.quarantine import rejected_rows
from headwater.quality import CheckResult, RowOutcome

from .lake import Feed, Lake


class AmountGate:
    """Rows with a negative amount fail; `route` sends them to quarantine instead of blocking."""

    def __init__(self, route: bool, severity: str = "error") -> None:
        self.route = route
        self.severity = severity

    def check_rows(self, increment: pa.Table) -> RowOutcome:
        bad = pc.less(increment.column("amount"), 0)
        failing = increment.filter(bad)
        result = CheckResult(
            "range(amount >= 0)",
            self.severity,  # type: ignore[arg-type]
            passed=failing.num_rows == 0,
            column="amount",
            observed=failing.num_rows,
            threshold=0,
            failing_rows=failing.num_rows,
            quarantined=failing.num_rows if self.route else 0,
        )
        if not self.route:
            return RowOutcome(increment, None, [result])
        rejected = rejected_rows(
            [
                {
                    "source": "feed",
                    "check": result.check,
                    "reason": "amount below 0",
                    "value": r["amount"],
                    "record": str(r),
                }
                for r in failing.to_pylist()
            ]
        )
        return RowOutcome(increment.filter(pc.invert(bad)), rejected, [result])

    def check_table(self, would_be: ds.Dataset, increment: pa.Table) -> list[CheckResult]:
        return []


class UniqueIdGate:
    """Table-level: ids must stay unique in the table as it would be after the commit."""

    def check_rows(self, increment: pa.Table) -> RowOutcome:
        return RowOutcome(increment)

    def check_table(self, would_be: ds.Dataset, increment: pa.Table) -> list[CheckResult]:
        ids = would_be.to_table(columns=["id"]).column("id")
        duplicates = len(ids) - pc.count_distinct(ids).as_py()
        return [
            CheckResult(
                "unique(id)",
                "error",
                passed=duplicates == 0,
                column="id",
                observed=duplicates,
                failing_rows=duplicates,
            )
        ]


def landed(tmp_path: Path, gate: object, strategy: str = "append") -> tuple[Lake, Feed]:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(lambda: table("silver.payments", source=feed, strategy=strategy, gate=gate))
    return lake, feed


def test_failing_rows_go_to_quarantine_and_good_rows_publish(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, AmountGate(route=True))
    feed.push([{"id": 1, "amount": 10}, {"id": 2, "amount": -5}, {"id": 3, "amount": 7}])
    (run,) = lake.run()
    assert [r["id"] for r in lake.rows("silver.payments", "id")] == [1, 3]
    (bad,) = lake.rows("silver.payments__quarantine")
    assert (
        bad["check"] == "range(amount >= 0)"
        and bad["value"] == "-5"
        and bad["run_id"] == run.run_id
    )
    (audit,) = lake.rows("audit.check_results")
    assert audit["passed"] is False and audit["quarantined"] == 1 and audit["published"] is True
    assert audit["table"] == "silver.payments" and audit["run_id"] == run.run_id


def test_an_error_level_row_failure_blocks_the_whole_batch(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, AmountGate(route=False))
    feed.push([{"id": 1, "amount": 10}])
    lake.run()
    version = lake.version("silver.payments")
    feed.push([{"id": 2, "amount": 3}, {"id": 3, "amount": -1}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "range(amount >= 0) (1 rows)" in (run.error or "")
    assert "nothing was published" in (run.error or "") and "audit.check_results" in (
        run.hint or ""
    )
    assert lake.version("silver.payments") == version  # the batch was not published
    blocked = [r for r in lake.rows("audit.check_results") if not r["published"]]
    assert len(blocked) == 1 and blocked[0]["failing_rows"] == 1
    # Once the source is fixed, the same position is read again: nothing was skipped.
    feed.batches[-1] = pa.Table.from_pylist([{"id": 2, "amount": 3}, {"id": 3, "amount": 1}])
    lake.run()
    assert [r["id"] for r in lake.rows("silver.payments", "id")] == [1, 2, 3]


def test_a_table_check_on_the_would_be_table_blocks_and_leaves_no_files(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, UniqueIdGate())
    feed.push([{"id": 1}, {"id": 2}])
    lake.run()
    files_before = sorted(
        p.name for p in (tmp_path / "warehouse" / "silver" / "payments").glob("*.parquet")
    )
    feed.push([{"id": 2}, {"id": 3}])  # id 2 again: the appended table would not be unique
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "unique(id) (1 rows)" in (run.error or "")
    files_after = sorted(
        p.name for p in (tmp_path / "warehouse" / "silver" / "payments").glob("*.parquet")
    )
    assert files_after == files_before  # staged files were deleted
    assert [r["id"] for r in lake.rows("silver.payments", "id")] == [1, 2]


def test_warnings_are_recorded_but_do_not_block(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, AmountGate(route=False, severity="warn"))
    feed.push([{"id": 1, "amount": -1}])
    (run,) = lake.run()
    assert run.status == "committed" and lake.rows("silver.payments") == [{"id": 1, "amount": -1}]
    (audit,) = lake.rows("audit.check_results")
    assert audit["severity"] == "warn" and audit["passed"] is False and audit["published"] is True
