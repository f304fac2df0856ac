"""The audit of every check: a Delta table `audit.check_results`, one row per check per run.

Kept for published and blocked runs alike, so "why did yesterday's orders not
publish?" is one query away:

    headwater sql "SELECT * FROM audit.check_results WHERE NOT passed ORDER BY checked_at DESC"
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from deltalake import write_deltalake

from .gate import CheckResult

if TYPE_CHECKING:
    from ..project import Project

AUDIT_TABLE = "audit.check_results"
SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("table", pa.string()),
        pa.field("checked_at", pa.timestamp("us", "UTC")),
        pa.field("stage", pa.string()),  # rows | table
        pa.field("check", pa.string()),
        pa.field("column", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("passed", pa.bool_()),
        pa.field("observed", pa.string()),  # JSON text: counts, ratios, times alike
        pa.field("threshold", pa.string()),
        pa.field("failing_rows", pa.int64()),
        pa.field("quarantined", pa.int64()),
        pa.field("published", pa.bool_()),
        pa.field("message", pa.string()),
    ]
)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def record(
    project: Project,
    table: str,
    run_id: str,
    checked_at: datetime,
    results: list[tuple[str, CheckResult]],
    published: bool,
) -> None:
    """Append (stage, result) pairs of one run of `table` to the audit table."""
    if not results:
        return
    rows = [
        {
            "run_id": run_id,
            "table": table,
            "checked_at": checked_at,
            "stage": stage,
            "check": r.check,
            "column": r.column,
            "severity": r.severity,
            "passed": r.passed,
            "observed": _json(r.observed),
            "threshold": _json(r.threshold),
            "failing_rows": r.failing_rows,
            "quarantined": r.quarantined,
            "published": published,
            "message": r.message,
        }
        for stage, r in results
    ]
    target = project.target(AUDIT_TABLE)
    # Concurrent runs append side by side; Delta resolves blind appends without conflict.
    write_deltalake(
        target.uri,
        pa.Table.from_pylist(rows, schema=SCHEMA),
        mode="append",
        storage_options=target.storage_options or None,
    )
