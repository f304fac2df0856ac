"""Aggregates in three steps: partial (over events), merge (over partials), final.

A window's state holds partial aggregates, so a window is updated by merging
the partial of a micro-batch's events into it, whatever the order of arrival:

| aggregate       | partial columns            | merge            | final         |
|-----------------|----------------------------|------------------|---------------|
| count           | n                          | sum              | n             |
| sum             | sum                        | sum              | sum           |
| min / max       | v                          | min / max        | v             |
| avg             | sum, n                     | sum, sum         | sum / n       |
| first / last    | v, ts, seq                 | by (ts, seq)     | v             |
| approx_distinct | HLL sketch                 | union            | estimate      |
| quantile        | KLL sketch                 | merge            | get_quantile  |

The SQL runs in DuckDB over columns `_ts` (event time, µs) and `_seq` (arrival
order); sketches are built and merged in `sketches` from the lists the SQL
gathers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from .._sql import q
from . import sketches
from .spec import Aggregate

SKETCHES = ("approx_distinct", "quantile")


def partial_columns(name: str, aggregate: Aggregate) -> list[str]:
    kind = aggregate.function
    if kind == "count":
        return [f"{name}__n"]
    if kind == "sum":
        return [f"{name}__sum"]
    if kind in ("min", "max"):
        return [f"{name}__v"]
    if kind == "avg":
        return [f"{name}__sum", f"{name}__n"]
    if kind in ("first", "last"):
        return [f"{name}__v", f"{name}__ts", f"{name}__seq"]
    return [f"{name}__sk"]


def partial_sql(name: str, aggregate: Aggregate, integer_input: bool) -> list[str]:
    """Aggregate expressions over event rows, one per partial column."""
    kind, col = aggregate.function, q(aggregate.column) if aggregate.column else None
    out = [q(c) for c in partial_columns(name, aggregate)]
    if kind == "count":
        return [f"count({col or '*'})::BIGINT AS {out[0]}"]
    assert col is not None
    if kind == "sum":
        cast = "::BIGINT" if integer_input else ""
        return [f"sum({col}){cast} AS {out[0]}"]
    if kind in ("min", "max"):
        return [f"{kind}({col}) AS {out[0]}"]
    if kind == "avg":
        return [f"sum({col}::DOUBLE) AS {out[0]}", f"count({col})::BIGINT AS {out[1]}"]
    if kind in ("first", "last"):
        pick = "first" if kind == "first" else "last"
        edge = "min" if kind == "first" else "max"
        return [
            f"{pick}({col} ORDER BY _ts, _seq) AS {out[0]}",
            f"{edge}(_ts) AS {out[1]}",
            f"{pick}(_seq ORDER BY _ts, _seq) AS {out[2]}",
        ]
    if kind == "approx_distinct":
        return [f"list(DISTINCT {col}) FILTER (WHERE {col} IS NOT NULL) AS {out[0]}"]
    return [f"list({col}::DOUBLE) FILTER (WHERE {col} IS NOT NULL) AS {out[0]}"]


def merge_sql(name: str, aggregate: Aggregate, integer_input: bool) -> list[str]:
    """Aggregate expressions over partial rows (state rows and new partials)."""
    kind = aggregate.function
    cols = [q(c) for c in partial_columns(name, aggregate)]
    if kind == "count":
        return [f"sum({cols[0]})::BIGINT AS {cols[0]}"]
    if kind == "sum":
        cast = "::BIGINT" if integer_input else ""
        return [f"sum({cols[0]}){cast} AS {cols[0]}"]
    if kind in ("min", "max"):
        return [f"{kind}({cols[0]}) AS {cols[0]}"]
    if kind == "avg":
        return [f"sum({cols[0]}) AS {cols[0]}", f"sum({cols[1]})::BIGINT AS {cols[1]}"]
    if kind in ("first", "last"):
        pick = "first" if kind == "first" else "last"
        edge = "min" if kind == "first" else "max"
        order = f"ORDER BY {cols[1]}, {cols[2]}"
        return [
            f"{pick}({cols[0]} {order}) AS {cols[0]}",
            f"{edge}({cols[1]}) AS {cols[1]}",
            f"{pick}({cols[2]} {order}) AS {cols[2]}",
        ]
    return [f"list({cols[0]}) FILTER (WHERE {cols[0]} IS NOT NULL) AS {cols[0]}"]


def final_sql(name: str, aggregate: Aggregate) -> str:
    """The emitted value from a state row (sketches are estimated in Python)."""
    kind = aggregate.function
    cols = [q(c) for c in partial_columns(name, aggregate)]
    if kind == "avg":
        return f"CASE WHEN {cols[1]} > 0 THEN {cols[0]} / {cols[1]} END AS {q(name)}"
    return f"{cols[0]} AS {q(name)}"


def build_sketches(table: pa.Table, aggregates: Sequence[tuple[str, Aggregate]]) -> pa.Table:
    """Replace the value lists of a partial table by serialised sketches."""
    for name, aggregate in aggregates:
        if aggregate.function in SKETCHES:
            column = f"{name}__sk"
            built = sketches.build(aggregate.function, table.column(column), _accuracy(aggregate))
            table = table.set_column(table.schema.get_field_index(column), column, built)
    return table


def merge_sketches(table: pa.Table, aggregates: Sequence[tuple[str, Aggregate]]) -> pa.Table:
    """Replace the lists of serialised sketches of a merged table by one sketch each."""
    for name, aggregate in aggregates:
        if aggregate.function in SKETCHES:
            column = f"{name}__sk"
            merged = sketches.merge(aggregate.function, table.column(column), _accuracy(aggregate))
            table = table.set_column(table.schema.get_field_index(column), column, merged)
    return table


def finish_sketches(table: pa.Table, aggregates: Sequence[tuple[str, Aggregate]]) -> pa.Table:
    """Replace serialised sketches in an emitted table by their estimates."""
    for name, aggregate in aggregates:
        if aggregate.function in SKETCHES:
            values = sketches.estimate(aggregate.function, table.column(name), aggregate.fraction)
            table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


def _accuracy(aggregate: Aggregate) -> int:
    if aggregate.accuracy is not None:
        return aggregate.accuracy
    return 12 if aggregate.function == "approx_distinct" else 200
