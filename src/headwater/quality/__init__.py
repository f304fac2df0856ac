"""Quality: contracts, checks, quarantine routing and the audit of every check."""

from .gate import CheckResult, Gate, RowOutcome

__all__ = ["CheckResult", "Gate", "RowOutcome"]
