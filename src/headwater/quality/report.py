"""Reading check results back from the audit table, for run summaries and `contract results`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from .audit import AUDIT_TABLE

if TYPE_CHECKING:
    from ..project import Project


@dataclass
class Tally:
    """Check outcomes of one table in one run."""

    table: str
    run_id: str
    passed: int = 0
    warned: int = 0
    quarantined_checks: int = 0
    quarantined_rows: int = 0
    blocked: int = 0
    published: bool = True

    @property
    def total(self) -> int:
        return self.passed + self.warned + self.quarantined_checks + self.blocked


def outcome(row: dict[str, Any]) -> str:
    """passed | quarantined | warned | blocked: what a check's result meant for the run."""
    if row["passed"]:
        return "passed"
    if row["quarantined"] and row["quarantined"] >= row["failing_rows"]:
        return "quarantined"
    return "warned" if row["severity"] == "warn" else "blocked"


def results(
    project: Project,
    run_ids: Iterable[str] | None = None,
    table: str | None = None,
    failures_only: bool = False,
) -> list[dict[str, Any]]:
    """Audit rows (dicts, audit.SCHEMA columns) of some runs and/or a table, oldest first."""
    target = project.target(AUDIT_TABLE)
    if not target.refresh().exists:
        return []
    dataset = target.dataset()
    condition: ds.Expression | None = None
    wanted = list(run_ids) if run_ids is not None else None
    if wanted is not None:
        if not wanted:
            return []
        condition = pc.field("run_id").isin(wanted)
    if table is not None:
        match = pc.field("table") == table
        condition = match if condition is None else condition & match
    if failures_only:
        failed = ~pc.field("passed")
        condition = failed if condition is None else condition & failed
    rows = dataset.to_table(filter=condition)
    ordered = rows.sort_by(
        [("checked_at", "ascending"), ("table", "ascending"), ("stage", "ascending")]
    )
    return list(ordered.to_pylist())


def latest_run_id(project: Project, table: str) -> str | None:
    """The run id of the newest audited run of `table`."""
    rows = results(project, table=table)
    return rows[-1]["run_id"] if rows else None


def tally(rows: Iterable[dict[str, Any]]) -> list[Tally]:
    """Rows grouped by (table, run): how many checks passed, warned, quarantined, blocked."""
    found: dict[tuple[str, str], Tally] = {}
    for row in rows:
        t = found.setdefault((row["table"], row["run_id"]), Tally(row["table"], row["run_id"]))
        kind = outcome(row)
        if kind == "passed":
            t.passed += 1
        elif kind == "quarantined":
            t.quarantined_checks += 1
            t.quarantined_rows += int(row["quarantined"] or 0)
        elif kind == "warned":
            t.warned += 1
        else:
            t.blocked += 1
        t.published = t.published and bool(row["published"])
    return list(found.values())
