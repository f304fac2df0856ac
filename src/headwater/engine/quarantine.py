"""Quarantine: rows that cannot be loaded wait in `<table>__quarantine` with the reason.

A malformed line in a file, a record a parser rejects, or (with contracts) a
row that fails a row-level check is not lost and does not block the good rows:
it is written to the table's quarantine table, a Delta table of its own, with
where it came from, why, and the record as it was.

Exactly-once: the quarantine commit carries the main table's batch number as
its own transaction version and is made *before* the main commit. A run that
dies between the two is replayed; the replay finds that batch already in the
quarantine table and does not write it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .side_outputs import SideOutput, side_table_name, write_side_output

if TYPE_CHECKING:
    from ..project import Project

NAME = "quarantine"
SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("batch", pa.int64()),
        pa.field("quarantined_at", pa.timestamp("us", "UTC")),
        pa.field("source", pa.string()),  # file, URL, table
        pa.field("location", pa.string()),  # "line 12", "page 3 item 5"
        pa.field("check", pa.string()),  # what failed: "malformed", "not_null(order_id)"
        pa.field("reason", pa.string()),
        pa.field("value", pa.string()),  # the offending value, when one column is at fault
        pa.field("record", pa.string()),  # the record as received (text or JSON)
    ]
)
# Longest text kept of a quarantined record or value.
MAX_TEXT = 100_000


def quarantine_name(table: str) -> str:
    return side_table_name(table, NAME)


def rejected_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """Rejected rows (dicts with source, location, check, reason, value, record) as a table."""
    keep = ("source", "location", "check", "reason", "value", "record")
    cleaned = [{k: _text(row.get(k)) for k in keep} for row in rows]
    return pa.Table.from_pylist(cleaned, schema=pa.schema([SCHEMA.field(k) for k in keep]))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def write_quarantine(
    project: Project,
    table: str,
    batch: int,
    run_id: str,
    run_ts: datetime,
    rejected: pa.Table,
) -> int:
    """Append `rejected` to the table's quarantine as batch `batch`; 0 if it is there already."""
    n = rejected.num_rows
    stamped = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "batch": pa.array([batch] * n, pa.int64()),
            "quarantined_at": pa.array([run_ts] * n, pa.timestamp("us", "UTC")),
            **{
                f.name: rejected.column(f.name)
                if f.name in rejected.schema.names
                else pa.nulls(n, f.type)
                for f in SCHEMA
                if f.name not in ("run_id", "batch", "quarantined_at")
            },
        },
        schema=SCHEMA,
    )
    target = project.target(quarantine_name(table)).refresh()
    app = f"headwater/{quarantine_name(table)}"
    if target.exists and (target.table.transaction_version(app) or 0) >= batch:
        return 0  # written by an earlier attempt of this batch
    description = f"rows of {table} that could not be loaded, with the reason"
    write_side_output(
        project,
        table,
        NAME,
        batch,
        run_id,
        run_ts,
        SideOutput(stamped, "append", description=description),
    )
    return int(n)
