"""schema: the table has every column the contract declares, with the declared type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..types import logical_matches, logical_type, normal_physical, physical_type
from .base import ContractResult, TableCheck, TableContext


@dataclass(frozen=True)
class Declared:
    column: str
    logical: str | None
    physical: str | None  # as written in the contract


class Schema(TableCheck):
    kind = "schema"

    def __init__(self, columns: list[Declared], **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.declared = columns

    def run(self, ctx: TableContext) -> ContractResult:
        schema = ctx.would_be.schema
        names = {n.lower(): n for n in schema.names}  # Delta matches names case-insensitively
        problems: list[str] = []
        for d in self.declared:
            actual = names.get(d.column.lower())
            if actual is None:
                problems.append(f"column {d.column} is missing")
                continue
            dtype = schema.field(actual).type
            if d.logical and not logical_matches(d.logical, dtype):
                problems.append(f"column {d.column} is {logical_type(dtype)}, not {d.logical}")
                continue
            wanted = normal_physical(d.physical) if d.physical else None
            if wanted and wanted != physical_type(dtype):
                problems.append(f"column {d.column} is {physical_type(dtype)}, not {d.physical}")
        return self.result(
            not problems,
            observed=problems or None,
            threshold=f"{len(self.declared)} declared column(s)",
            message="; ".join(problems),
        )
