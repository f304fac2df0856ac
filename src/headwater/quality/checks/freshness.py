"""freshness: the newest value of a timestamp column is no older than a limit.

The maximum comes from the Parquet footers' statistics when every file has
them (no data is read); otherwise the column is scanned.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .base import ContractResult, TableCheck, TableContext, column_chunks


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)  # stored as UTC
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def footer_max(dataset: ds.Dataset, column: str) -> datetime | bool | None:
    """The column's maximum from file statistics; False when some file lacks them."""
    chunks = column_chunks(dataset, column)
    if chunks is None:
        return False
    best: datetime | None = None
    for chunk in chunks:
        if chunk.missing or chunk.rows == 0:
            continue
        stats = chunk.stats
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.has_null_count and stats.null_count == chunk.rows:
                continue  # only NULLs here
            return False
        value = _as_utc(stats.max)
        if value is None:
            return False
        best = value if best is None or value > best else best
    return best


def scanned_max(dataset: ds.Dataset, column: str) -> datetime | None:
    """The column's maximum, streaming through its values batch by batch."""
    best: datetime | None = None
    for batch in dataset.scanner(columns=[column]).to_batches():
        value = _as_utc(pc.max(batch.column(0)).as_py())
        if value is not None and (best is None or value > best):
            best = value
    return best


class Freshness(TableCheck):
    kind = "freshness"

    def __init__(self, column: str, max_age: timedelta, **kwargs: Any) -> None:
        kwargs.setdefault("severity", "warn")
        super().__init__(column, **kwargs)
        self.max_age = max_age

    def run(self, ctx: TableContext) -> ContractResult:
        assert self.column is not None
        schema = ctx.would_be.schema
        if schema.get_field_index(self.column) < 0:
            return self.result(False, message=f"the table has no column {self.column}")
        dtype = schema.field(self.column).type
        if not (pa.types.is_timestamp(dtype) or pa.types.is_date(dtype)):
            return self.result(False, message=f"column {self.column} is {dtype}, not a timestamp")
        found = footer_max(ctx.would_be, self.column)
        if found is False:
            newest = scanned_max(ctx.would_be, self.column)
        else:
            newest = found if isinstance(found, datetime) else None
        limit = f"newest value at most {_human(self.max_age)} old"
        if newest is None:
            return self.result(
                False, threshold=limit, message=f"column {self.column} has no values"
            )
        age = ctx.env.now - newest
        passed = age <= self.max_age
        return self.result(
            passed,
            observed={"newest": newest.isoformat(), "age_seconds": round(age.total_seconds(), 3)},
            threshold=limit,
            message=""
            if passed
            else f"newest {self.column} is {newest.isoformat()}, {_human(age)} old",
        )


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{seconds}s"
