"""Write-audit-publish: what the engine asks of a table's checks.

A run stages its output, then publishes it only if no error-level check
fails. Two moments:

- `check_rows(increment)`: row-level checks on the increment, before it is
  written. Failing rows may be routed to the table's quarantine (with the check,
  the value and the run id) so good rows flow; or an error-level failure blocks
  the whole batch.
- `check_table(would_be, increment)`: table-level checks on the table as it
  would be after the commit (uniqueness, row counts, volume change, freshness,
  referential integrity...), read from the staged files, before anything is
  visible. An error-level failure deletes the staged files; nothing is published.

Warnings are recorded and reported but never block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.dataset as ds

Severity = Literal["error", "warn"]


@dataclass
class CheckResult:
    """The outcome of one check on one run of one table."""

    check: str  # e.g. "not_null(order_id)", "volume_change"
    severity: Severity
    passed: bool
    column: str | None = None
    observed: Any = None  # the measured value: a count, a ratio, a timestamp
    threshold: Any = None  # what it was compared with
    failing_rows: int = 0
    quarantined: int = 0  # failing rows routed to quarantine instead of blocking
    message: str = ""

    @property
    def blocks(self) -> bool:
        """An error-level failure that quarantine did not absorb stops the publish."""
        return not self.passed and self.severity == "error" and self.failing_rows > self.quarantined


@dataclass
class RowOutcome:
    """The increment split by row-level checks."""

    good: pa.Table
    rejected: pa.Table | None = None  # engine.quarantine.rejected_rows(...) shape
    results: list[CheckResult] = field(default_factory=list)


class Gate(Protocol):
    """The checks of one table (a data contract, or any object with these methods)."""

    def check_rows(self, increment: pa.Table) -> RowOutcome: ...

    def check_table(self, would_be: ds.Dataset, increment: pa.Table) -> list[CheckResult]: ...
