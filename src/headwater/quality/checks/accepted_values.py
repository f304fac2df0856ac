"""accepted values: a column holds only listed values (an enum); or counts "missing" values."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..._sql import q
from .base import RowCheck


def _bind(values: list[Any], dtype: pa.DataType | None) -> list[Any]:
    """Values as the column's kind: YAML reads `1` as a number even for a text column."""
    if dtype is not None and (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in values if v is not None]
    return [v for v in values if v is not None]


def _type(schema: pa.Schema, column: str) -> pa.DataType | None:
    index = schema.get_field_index(column)
    return schema.field(index).type if index >= 0 else None


class AcceptedValues(RowCheck):
    kind = "accepted_values"

    def __init__(self, column: str, values: list[Any], **kwargs: Any) -> None:
        super().__init__(column, **kwargs)
        self.values = values

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        assert self.column is not None
        values = _bind(self.values, _type(schema, self.column))
        if not values:
            return f"{q(self.column)} IS NOT NULL", []
        marks = ", ".join("?" for _ in values)
        return f"{q(self.column)} NOT IN ({marks})", values

    def describe(self) -> str:
        return f"not one of {self.values}"

    @property
    def expected(self) -> Any:
        return {
            "values": self.values,
            **({"limit": self.threshold.describe()} if self.threshold else {}),
        }


class MissingValues(RowCheck):
    """ODCS `missingValues`: NULL and the listed placeholders ('', 'N/A') count as missing."""

    kind = "missing_values"

    def __init__(self, column: str, values: list[Any], **kwargs: Any) -> None:
        super().__init__(column, **kwargs)
        self.values = values

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        assert self.column is not None
        values = _bind(self.values, _type(schema, self.column))
        if not values:
            return f"{q(self.column)} IS NULL", []
        marks = ", ".join("?" for _ in values)
        return f"{q(self.column)} IS NULL OR {q(self.column)} IN ({marks})", values

    def describe(self) -> str:
        return f"is missing (NULL or one of {[v for v in self.values if v is not None]})"
