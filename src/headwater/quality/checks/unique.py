"""unique: no two rows of the table share a key (NULL keys never collide, as in SQL).

During a run only the keys the increment brings can have become duplicates,
so only the would-be table's rows with those keys are examined (files and row
groups outside the incoming keys' range skipped by their statistics); a
whole-table check examines every key, a slice of the key space at a time so
that memory stays bounded as the table grows.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..._sql import cols, q
from .base import (
    NO_FAILURES,
    ContractResult,
    TableCheck,
    TableContext,
    Threshold,
    column_chunks,
    fetch_arrow,
    scan,
)

SAMPLE_KEYS = 3
# Keys sorted at a time by a whole-table check: a few hundred MB at most.
ROWS_PER_SORT = 4_000_000


class Unique(TableCheck):
    kind = "unique"

    def __init__(
        self, columns: list[str], threshold: Threshold | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("name", f"unique({', '.join(columns)})")
        super().__init__(columns[0] if len(columns) == 1 else None, **kwargs)
        self.keys = columns
        self.threshold = threshold or NO_FAILURES

    def run(self, ctx: TableContext) -> ContractResult:
        con = ctx.env.con
        keys = cols(self.keys)
        present = " AND ".join(f"t.{q(k)} IS NOT NULL" for k in self.keys)
        scan(con, "__hw_unique_rows", ctx.would_be)
        scope = f"FROM __hw_unique_rows t WHERE {present}"
        params: list[Any] = []
        if ctx.increment is not None:
            if not all(k in ctx.increment.schema.names for k in self.keys):
                return self.result(True, observed=0, message="the increment has no key columns")
            valid = [pc.is_valid(ctx.increment.column(k)) for k in self.keys]
            mask = valid[0]
            for more in valid[1:]:
                mask = pc.and_(mask, more)
            incoming = ctx.increment.select(self.keys).filter(mask)
            if incoming.num_rows == 0:
                return self.result(True, observed=0, threshold=self.threshold.describe())
            con.register("__hw_unique_keys", incoming)
            match = " AND ".join(f"k.{q(c)} = t.{q(c)}" for c in self.keys)
            # The incoming keys' range first: files and row groups outside it are skipped
            # by their statistics, so a run reads little of a large table.
            bounds = pc.min_max(incoming.column(self.keys[0]))
            scope += f" AND t.{q(self.keys[0])} BETWEEN ? AND ?"
            params = [bounds["min"].as_py(), bounds["max"].as_py()]
            scope += f" AND EXISTS (SELECT 1 FROM __hw_unique_keys k WHERE {match})"
        # Sorted, a key's repeats sit next to its first row: one sort finds every extra row
        # in a fraction of a hash aggregate's time and memory. Duplicates are few, so
        # only they are grouped.
        same = " AND ".join(f"t.{q(k)} = lag(t.{q(k)}) OVER w" for k in self.keys)
        ordered = ", ".join(f"t.{q(k)}" for k in self.keys)
        slices = [("", [])] if ctx.increment is not None else self._slices(ctx)
        groups = pa.concat_tables(
            [
                fetch_arrow(
                    con,
                    f"SELECT {keys}, count(*) AS __hw_extra FROM "
                    f"(SELECT {ordered}, ({same}) AS __hw_same {scope}{where} "
                    f"WINDOW w AS (ORDER BY {ordered})) WHERE __hw_same GROUP BY {keys}",
                    params + values,
                )
                for where, values in slices
            ]
        )
        extra = int(pc.sum(groups.column("__hw_extra")).as_py() or 0) if groups.num_rows else 0
        total = ctx.would_be.count_rows() if self.threshold.unit == "percent" else 0
        metric = self.threshold.measure(float(extra), float(total))
        top = [
            {**{k: row[k] for k in self.keys}, "rows": row["__hw_extra"] + 1}
            for row in groups.sort_by([("__hw_extra", "descending")])
            .slice(0, SAMPLE_KEYS)
            .to_pylist()
        ]
        return self.result(
            self.threshold.holds(metric),
            observed=extra,
            threshold=self.threshold.describe(),
            failing_rows=extra,
            message=f"{extra} duplicate row(s), e.g. {top}" if extra else "",
        )

    def _slices(self, ctx: TableContext) -> list[tuple[str, list[Any]]]:
        """Conditions that split the table's keys into slices sorted one at a time.

        A key's rows all fall in one slice, so duplicates are found within slices.
        An integer first key is cut into ranges of its values (from the footers'
        statistics: a table stored in key order then reads each row group once);
        other keys by their hash.
        """
        rows = ctx.would_be.count_rows()
        count = -(-rows // ROWS_PER_SORT)
        if count <= 1:
            return [("", [])]
        first = self.keys[0]
        field = ctx.would_be.schema.field(first)
        low, high = _footer_range(ctx, first) if pa.types.is_integer(field.type) else (None, None)
        if low is not None and high is not None and high - low + 1 >= count:
            cuts = [low + (high - low + 1) * i // count for i in range(count + 1)]
            return [
                (f" AND t.{q(first)} >= ? AND t.{q(first)} < ?", [cuts[i], cuts[i + 1]])
                for i in range(count - 1)
            ] + [(f" AND t.{q(first)} >= ?", [cuts[count - 1]])]
        hashed = f"hash({', '.join(f't.{q(k)}' for k in self.keys)})"
        return [(f" AND {hashed} % {count} = {i}", []) for i in range(count)]


def _footer_range(ctx: TableContext, column: str) -> tuple[int | None, int | None]:
    """The least and greatest value of an integer column, from Parquet footers alone."""
    chunks = column_chunks(ctx.would_be, column)
    if not chunks:
        return None, None
    lows, highs = [], []
    for chunk in chunks:
        if chunk.missing or chunk.rows == 0:
            continue
        if chunk.stats is None or not chunk.stats.has_min_max:
            return None, None
        lows.append(int(chunk.stats.min))
        highs.append(int(chunk.stats.max))
    return (min(lows), max(highs)) if lows else (None, None)
