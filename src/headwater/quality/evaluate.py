"""Row checks, vectorised: every row check of a table in one DuckDB pass.

On an increment, one query computes each check's predicate for every row and
returns only the failing rows (their position and which checks they fail), so
the output is as small as the problem. Over a whole table, the same predicates
become `count(*) FILTER (WHERE ...)` aggregates of a single streaming scan.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..engine.quarantine import rejected_rows
from ..errors import HeadwaterError
from .checks.base import (
    NO_FAILURES,
    ROWS,
    CheckUnavailable,
    ContractResult,
    Env,
    RowCheck,
    fetch_arrow,
    footer_nulls,
    scan,
)
from .checks.not_null import NotNull

if TYPE_CHECKING:
    from ..project import Project

ROW_INDEX = "__hw_row"


def connect(project: Project | None) -> duckdb.DuckDBPyConnection:
    memory = project.config.defaults.memory_limit if project is not None else "1GB"
    con = duckdb.connect(
        config={
            # Beyond the limit DuckDB spills to disk instead of growing.
            "memory_limit": memory,
            "temp_directory": os.path.join(tempfile.gettempdir(), "headwater-duckdb"),
            # Failing rows are found by position, so output order does not matter.
            "preserve_insertion_order": False,
        }
    )
    # Warehouse timestamps are UTC; results must not depend on the machine's zone.
    con.execute("SET TimeZone = 'UTC'")
    return con


@dataclass
class RowEvaluation:
    results: list[ContractResult]
    good: pa.Table
    rejected: pa.Table | None = None


def _prepare(checks: list[RowCheck], env: Env) -> tuple[list[RowCheck], list[ContractResult]]:
    ready: list[RowCheck] = []
    unavailable: list[ContractResult] = []
    for check in checks:
        try:
            check.prepare(env)
        except CheckUnavailable as exc:
            unavailable.append(check.result(False, message=str(exc)))
        else:
            ready.append(check)
    return ready, unavailable


def _predicates(checks: list[RowCheck], schema: pa.Schema) -> tuple[list[str], list[Any]]:
    expressions: list[str] = []
    params: list[Any] = []
    for check in checks:
        sql, values = check.predicate(schema)
        expressions.append(f"coalesce(({sql}), false)")
        params += values
    return expressions, params


def _failed(checks: list[RowCheck], exc: duckdb.Error) -> HeadwaterError:
    # DuckDB does not say which expression failed; name the rules that could have.
    rules = sorted({c.rule.split(": ", 1)[0] for c in checks if c.rule})
    return HeadwaterError(
        f"{', '.join(rules) or 'contract'}: row checks could not run: {str(exc).splitlines()[0]}",
        "check the columns, values and SQL the contract names against the table",
    )


def _percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 4) if total else 0.0


def _judge(check: RowCheck, failing: int, total: int) -> tuple[ContractResult, bool]:
    """The check's result, and whether its failing rows go to quarantine."""
    threshold = check.threshold
    observed: Any = (
        failing
        if threshold is None or threshold.unit == "rows"
        else {
            "failing_rows": failing,
            "percent": _percent(failing, total),
        }
    )
    if check.on_fail == "quarantine":
        if not failing:
            return check.result(True, observed=0, threshold=check.expected), False
        within = threshold is None or threshold.holds(threshold.measure(failing, total))
        if within:
            return check.result(
                False,
                observed=observed,
                threshold=check.expected,
                failing_rows=failing,
                quarantined=failing,
                message=f"{failing} row(s) {check.describe()}: quarantined",
            ), True
        assert threshold is not None
        return check.result(
            False,
            observed=observed,
            threshold=check.expected,
            failing_rows=failing,
            message=f"{failing} of {total} row(s) {check.describe()}, more than the "
            f"{threshold.describe()} that may be quarantined: the batch is blocked",
        ), False
    limit = threshold or NO_FAILURES
    passed = limit.holds(limit.measure(failing, total))
    message = "" if not failing else f"{failing} of {total} row(s) {check.describe()}"
    return check.result(
        passed,
        observed=observed,
        threshold=check.expected,
        failing_rows=failing,
        message=message,
    ), False


def _groups(checks: list[RowCheck]) -> list[list[int]]:
    """Checks evaluated together: one pass for the plain ones, a query of its own for each
    check that joins another table (a join inside a many-predicate pass slows all of them)."""
    plain = [i for i, c in enumerate(checks) if not c.joins]
    return ([plain] if plain else []) + [[i] for i, c in enumerate(checks) if c.joins]


def _failing_rows(checks: list[RowCheck], schema: pa.Schema, env: Env) -> pa.Table:
    """Positions of the rows failing any check, with one boolean column per check."""
    found: dict[int, pa.Array] = {}
    for group in _groups(checks):
        expressions, params = _predicates([checks[i] for i in group], schema)
        flags = [f"f{i}" for i in group]
        query = (
            f"SELECT * FROM (SELECT {ROW_INDEX}, "
            + ", ".join(f"{e} AS {f}" for e, f in zip(expressions, flags, strict=True))
            + f" FROM {ROWS}) WHERE {' OR '.join(flags)}"
        )
        try:
            rows = fetch_arrow(env.con, query, params)
        except duckdb.Error as exc:
            raise _failed([checks[i] for i in group], exc) from exc
        for i in group:
            found[i] = rows.filter(rows.column(f"f{i}")).column(ROW_INDEX).combine_chunks()
    union = pc.unique(pa.concat_arrays(list(found.values()))) if found else pa.array([], pa.int64())
    return pa.table(
        {ROW_INDEX: union, **{f"f{i}": pc.is_in(union, value_set=found[i]) for i in sorted(found)}}
    )


def check_increment(checks: list[RowCheck], increment: pa.Table, env: Env) -> RowEvaluation:
    """Run row checks on an increment; rows failing a quarantining check are split off."""
    ready, results = _prepare(checks, env)
    total = increment.num_rows
    if not ready or total == 0:
        return RowEvaluation(results + [_judge(c, 0, total)[0] for c in ready], increment)
    positions = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), total)), 1)
    env.con.register(ROWS, increment.append_column(ROW_INDEX, positions))
    failing = _failing_rows(ready, increment.schema, env)
    routed: list[int] = []
    for i, check in enumerate(ready):
        count = int(pc.sum(pc.cast(failing.column(f"f{i}"), pa.int64())).as_py() or 0)
        result, route = _judge(check, count, total)
        results.append(result)
        if route:
            routed.append(i)
    if not routed or any(r.blocks for r in results):
        return RowEvaluation(results, increment)  # a blocked batch is not split
    bad_mask = failing.column(f"f{routed[0]}")
    for i in routed[1:]:
        bad_mask = pc.or_(bad_mask, failing.column(f"f{i}"))
    bad = failing.filter(bad_mask).sort_by(ROW_INDEX)
    bad_positions = bad.column(ROW_INDEX)
    keep = pc.invert(pc.is_in(positions, value_set=bad_positions.combine_chunks()))
    rejected = _rejected(
        increment.take(bad_positions), bad, [ready[i] for i in routed], routed, env.table
    )
    return RowEvaluation(results, increment.filter(keep), rejected)


def _rejected(
    rows: pa.Table, flags: pa.Table, checks: list[RowCheck], indexes: list[int], table: str
) -> pa.Table:
    """Quarantine records: each failing row once, with every check it failed."""
    failed = [flags.column(f"f{i}").to_pylist() for i in indexes]
    records = rows.to_pylist()
    out: list[dict[str, Any]] = []
    for r, record in enumerate(records):
        hits = [c for c, column in zip(checks, failed, strict=True) if column[r]]
        first = hits[0]
        value = record.get(first.column) if first.column else None
        out.append(
            {
                "source": table,
                "check": "; ".join(c.name for c in hits),
                "reason": "; ".join(
                    f"{c.column} {c.describe()}" if c.column else c.describe() for c in hits
                ),
                "value": None if value is None else _text(value),
                "record": json.dumps(record, default=str, ensure_ascii=False),
            }
        )
    return rejected_rows(out)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str).strip('"')


def check_dataset(checks: list[RowCheck], dataset: ds.Dataset, env: Env) -> list[ContractResult]:
    """Row checks over a whole table: one aggregate scan, counts only (nothing is routed)."""
    ready, results = _prepare(checks, env)
    if not ready:
        return results
    counts: list[int] = [0] * len(ready)
    total = dataset.count_rows()  # from the footers
    # Parquet footers count NULLs exactly: not-null checks need no scan.
    from_footers: set[int] = set()
    for i, check in enumerate(ready):
        if isinstance(check, NotNull) and check.column is not None:
            nulls = footer_nulls(dataset, check.column)
            if nulls is not None:
                counts[i] = nulls
                from_footers.add(i)
    scanned = [i for i in range(len(ready)) if i not in from_footers]
    if scanned:
        scan(env.con, ROWS, dataset)
    for group in _groups([ready[i] for i in scanned]):
        members = [scanned[j] for j in group]
        expressions, params = _predicates([ready[i] for i in members], dataset.schema)
        query = (
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE {e})" for e in expressions)
            + f" FROM {ROWS}"
        )
        try:
            (found,) = env.con.execute(query, params).fetchall()
        except duckdb.Error as exc:
            raise _failed([ready[i] for i in members], exc) from exc
        for i, count in zip(members, found, strict=True):
            counts[i] = int(count)
    for check, count in zip(ready, counts, strict=True):
        result, _ = _judge(check, int(count), int(total))
        if check.on_fail == "quarantine" and count:
            # Nothing is routed in a whole-table check: the rows are already in the table.
            result.quarantined = 0
            result.passed = False
            result.message = f"{count} of {total} row(s) {check.describe()}"
        results.append(result)
    return results
