"""row count: the table holds a number of rows within bounds (ODCS `rowCount`)."""

from __future__ import annotations

from typing import Any

from .base import ContractResult, TableCheck, TableContext, Threshold


class RowCount(TableCheck):
    kind = "row_count"

    def __init__(self, threshold: Threshold, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.threshold = threshold

    def run(self, ctx: TableContext) -> ContractResult:
        rows = ctx.would_be.count_rows()  # from the Parquet footers: no data is read
        passed = self.threshold.holds(float(rows))
        return self.result(
            passed,
            observed=rows,
            threshold=self.threshold.describe(),
            message="" if passed else f"{rows} rows, expected {self.threshold.describe()}",
        )
