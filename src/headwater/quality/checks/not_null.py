"""not-null: a column has a value in every row (or in `mostly` of them, with a threshold)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..._sql import q
from .base import RowCheck


class NotNull(RowCheck):
    kind = "not_null"

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        assert self.column is not None
        return f"{q(self.column)} IS NULL", []

    def describe(self) -> str:
        return "is NULL"
