"""range: a column's values (or their lengths) lie between bounds."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pyarrow as pa

from ..._sql import q
from .base import RowCheck


def _as_column_type(value: Any, dtype: pa.DataType | None) -> Any:
    """A bound as the column's type: contracts write dates and times as text."""
    if dtype is None or not (pa.types.is_timestamp(dtype) or pa.types.is_date(dtype)):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if pa.types.is_timestamp(dtype) and type(value) is date:
        value = datetime(value.year, value.month, value.day)
    if (
        pa.types.is_timestamp(dtype)
        and isinstance(value, datetime)
        and value.tzinfo is None
        and dtype.tz
    ):
        value = pa.scalar(value, pa.timestamp("us")).cast(pa.timestamp("us", "UTC")).as_py()
    if pa.types.is_date(dtype) and isinstance(value, datetime):
        value = value.date()
    return value


class Range(RowCheck):
    """minimum / maximum (inclusive) and exclusiveMinimum / exclusiveMaximum."""

    kind = "range"

    def __init__(
        self,
        column: str,
        *,
        minimum: Any = None,
        maximum: Any = None,
        exclusive_minimum: Any = None,
        exclusive_maximum: Any = None,
        length: bool = False,
        **kwargs: Any,
    ) -> None:
        self.bounds = [
            (op, v)
            for op, v in (
                ("<", minimum),
                ("<=", exclusive_minimum),
                (">", maximum),
                (">=", exclusive_maximum),
            )
            if v is not None
        ]
        self.length = length
        if length:
            kwargs.setdefault("name", f"length({column})")
        super().__init__(column, **kwargs)

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        assert self.column is not None
        index = schema.get_field_index(self.column)
        dtype = None if self.length or index < 0 else schema.field(index).type
        value = f"length(CAST({q(self.column)} AS VARCHAR))" if self.length else q(self.column)
        sql = " OR ".join(f"{value} {op} ?" for op, _ in self.bounds)
        return sql or "FALSE", [_as_column_type(v, dtype) for _, v in self.bounds]

    def describe(self) -> str:
        what = "length " if self.length else ""
        words = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
        allowed = " and ".join(f"{words[op]} {v}" for op, v in self.bounds)
        return f"{what}is not {allowed}"

    @property
    def expected(self) -> Any:
        words = {"<": "minimum", "<=": "exclusiveMinimum", ">": "maximum", ">=": "exclusiveMaximum"}
        return {words[op]: v for op, v in self.bounds}
