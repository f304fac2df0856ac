"""regex: a column's text matches a pattern (RE2 syntax, as DuckDB's regexp_matches).

As in JSON Schema and ODCS, the pattern is searched for anywhere in the value;
anchor it with ^...$ to match the whole value.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..._sql import q
from .base import RowCheck


class Regex(RowCheck):
    kind = "regex"

    def __init__(self, column: str, pattern: str, **kwargs: Any) -> None:
        super().__init__(column, **kwargs)
        self.pattern = pattern

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        assert self.column is not None
        index = schema.get_field_index(self.column)
        text = index >= 0 and pa.types.is_string(schema.field(index).type)
        value = q(self.column) if text else f"CAST({q(self.column)} AS VARCHAR)"
        return f"NOT regexp_matches({value}, ?)", [self.pattern]

    def describe(self) -> str:
        return f"does not match {self.pattern!r}"

    @property
    def expected(self) -> Any:
        return {
            "pattern": self.pattern,
            **({"limit": self.threshold.describe()} if self.threshold else {}),
        }
