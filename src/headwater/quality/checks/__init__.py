"""The checks a contract can ask for, one module each; `REGISTRY` names them.

Row checks (`RowCheck`) run on each run's increment and can route failing rows
to quarantine; table checks (`TableCheck`) run on the table as it would be.
"""

from __future__ import annotations

from .accepted_values import AcceptedValues, MissingValues
from .base import (
    NO_FAILURES,
    Bound,
    Check,
    CheckUnavailable,
    ContractResult,
    Env,
    OnFail,
    RowCheck,
    TableCheck,
    TableContext,
    Threshold,
)
from .custom_sql import Condition, ScalarSql, Violations
from .freshness import Freshness
from .not_null import NotNull
from .range import Range
from .referential import References
from .regex import Regex
from .row_count import RowCount
from .schema import Declared, Schema
from .unique import Unique
from .volume import VolumeChange

REGISTRY: dict[str, type[Check]] = {
    c.kind: c
    for c in (
        NotNull,
        AcceptedValues,
        MissingValues,
        Range,
        Regex,
        References,
        Condition,
        Unique,
        RowCount,
        VolumeChange,
        Freshness,
        Violations,
        ScalarSql,
        Schema,
    )
}

__all__ = [
    "NO_FAILURES",
    "REGISTRY",
    "AcceptedValues",
    "Bound",
    "Check",
    "CheckUnavailable",
    "Condition",
    "ContractResult",
    "Declared",
    "Env",
    "Freshness",
    "MissingValues",
    "NotNull",
    "OnFail",
    "Range",
    "References",
    "Regex",
    "RowCheck",
    "RowCount",
    "ScalarSql",
    "Schema",
    "TableCheck",
    "TableContext",
    "Threshold",
    "Unique",
    "Violations",
    "VolumeChange",
]
