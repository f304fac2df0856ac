"""What a check is.

Two kinds, by where they can run:

- A **row check** is a rule each row must satisfy, written as a SQL predicate
  that is true for a failing row (NULL counts as passing: missing values are
  the not-null check's business). All row checks of a table run together in
  one vectorised DuckDB pass over the increment, and their failing rows can be
  routed to quarantine; over a whole table they become one aggregate scan.
- A **table check** judges the table as it would be after the commit (or the
  increment as a whole): uniqueness, row counts, volume, freshness, SQL.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ..gate import CheckResult, Severity

if TYPE_CHECKING:
    from ...project import Project

OnFail = Literal["block", "quarantine"]
Unit = Literal["rows", "percent"]
# The relation row checks are evaluated over, for checks that correlate subqueries.
ROWS = "__hw_rows"
# Views of the table as it would be, and of the run's increment, in table checks.
TABLE_VIEW = "__hw_table"
INCREMENT_VIEW = "__hw_increment"


def scan(con: duckdb.DuckDBPyConnection, name: str, dataset: ds.Dataset | pa.Table) -> None:
    """Make `dataset` readable by SQL as `name`, by the fastest route.

    Unpartitioned tables on local disk are read by DuckDB's own Parquet reader:
    it decodes a few thousand rows at a time on every core and skips row groups
    by their statistics, where an Arrow dataset scan decodes whole row groups
    (several times the memory). Anything else goes through Arrow.
    """
    files = local_files(dataset)
    if files:
        con.read_parquet(files, union_by_name=True).create_view(name, replace=True)
    else:
        con.register(name, dataset)


def local_files(dataset: ds.Dataset | pa.Table) -> list[str] | None:
    """The absolute paths of an unpartitioned local Parquet dataset's files, else None."""
    if not isinstance(dataset, ds.FileSystemDataset) or not isinstance(
        dataset.format, ds.ParquetFileFormat
    ):
        return None
    fs = dataset.filesystem
    root = ""
    if isinstance(fs, pafs.SubTreeFileSystem):
        root, fs = fs.base_path, fs.base_fs
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    fragments = list(dataset.get_fragments())
    if not fragments or any(str(f.partition_expression) != "true" for f in fragments):
        return None  # partition values live in the log, not in the files
    return [os.path.join(root, f.path) if root else f.path for f in fragments]


@dataclass(frozen=True)
class ChunkStats:
    """One row group's statistics for one column, from the Parquet footer."""

    rows: int
    stats: Any  # pyarrow.parquet.Statistics, or None when the writer left none
    missing: bool = False  # the file predates the column: every value is NULL


def column_chunks(dataset: ds.Dataset | pa.Table, column: str) -> list[ChunkStats] | None:
    """Footer statistics of `column` in every row group, or None when they cannot answer
    (not Parquet files, or a partitioned table whose values live in the log)."""
    if not isinstance(dataset, ds.FileSystemDataset):
        return None
    chunks: list[ChunkStats] = []
    for fragment in dataset.get_fragments():
        if not isinstance(fragment, ds.ParquetFileFragment):
            return None
        if str(fragment.partition_expression) != "true":
            return None
        metadata = fragment.metadata
        leaf = next(
            (j for j in range(metadata.num_columns) if metadata.schema.column(j).path == column),
            None,
        )
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            if leaf is None:
                chunks.append(ChunkStats(group.num_rows, None, missing=True))
            else:
                chunks.append(ChunkStats(group.num_rows, group.column(leaf).statistics))
    return chunks


def footer_nulls(dataset: ds.Dataset | pa.Table, column: str) -> int | None:
    """The exact number of NULLs in a column from Parquet footers, without reading data."""
    chunks = column_chunks(dataset, column)
    if chunks is None:
        return None
    total = 0
    for chunk in chunks:
        if chunk.missing:
            total += chunk.rows
        elif chunk.stats is None or not chunk.stats.has_null_count:
            return None
        else:
            total += int(chunk.stats.null_count)
    return total


def fetch_arrow(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> pa.Table:
    """A query's whole result as an Arrow table."""
    table = con.sql(sql, params=params or None).to_arrow_table()
    assert table is not None
    return table


class ContractResult(CheckResult):
    """A check result; a failure that quarantine fully absorbed does not block.

    Table-level failures (row count, freshness...) have no failing rows to
    count, so blocking must not depend on there being some.
    """

    @property
    def blocks(self) -> bool:
        if self.passed or self.severity != "error":
            return False
        return self.quarantined == 0 or self.failing_rows > self.quarantined


class CheckUnavailable(Exception):
    """A check cannot run (a referenced table is missing); it fails with this message."""


@dataclass(frozen=True)
class Bound:
    """One ODCS operator: mustBe (=), mustNotBe (!=), mustBeGreaterThan (>), ..."""

    op: str  # = != > >= < <= between outside
    value: float | tuple[float, float]

    def holds(self, x: float) -> bool:
        v = self.value
        if isinstance(v, tuple):
            inside = v[0] <= x <= v[1]
            return inside if self.op == "between" else not inside
        return {
            "=": math.isclose(x, v, rel_tol=1e-9, abs_tol=1e-12),
            "!=": not math.isclose(x, v, rel_tol=1e-9, abs_tol=1e-12),
            ">": x > v,
            ">=": x >= v,
            "<": x < v,
            "<=": x <= v,
        }[self.op]

    def describe(self) -> str:
        v = self.value
        if isinstance(v, tuple):
            return f"{'between' if self.op == 'between' else 'not between'} {_num(v[0])} and {_num(v[1])}"
        return f"{self.op} {_num(v)}"


@dataclass(frozen=True)
class Threshold:
    """What a check's metric (failing rows, a count, a percentage) must satisfy."""

    bounds: tuple[Bound, ...]
    unit: Unit = "rows"

    def holds(self, value: float) -> bool:
        return all(b.holds(value) for b in self.bounds)

    def describe(self) -> str:
        suffix = "%" if self.unit == "percent" else ""
        return " and ".join(b.describe() + suffix for b in self.bounds)

    def measure(self, count: float, total: float) -> float:
        """The metric in this threshold's unit: a count, or a percentage of `total`."""
        if self.unit == "percent":
            return 100.0 * count / total if total else 0.0
        return count


NO_FAILURES = Threshold((Bound("=", 0),))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class Env:
    """What checks may use while they run."""

    con: duckdb.DuckDBPyConnection
    table: str
    project: Project | None
    now: datetime


class Check:
    kind: ClassVar[str]
    scope: ClassVar[Literal["rows", "table"]]

    def __init__(
        self,
        column: str | None,
        *,
        severity: Severity = "error",
        name: str | None = None,
        rule: str = "",
    ) -> None:
        self.column = column
        self.severity: Severity = severity
        self.name = name or (f"{self.kind}({column})" if column else self.kind)
        self.rule = rule  # where the check is declared, for error messages

    def result(self, passed: bool, **fields: Any) -> ContractResult:
        return ContractResult(self.name, self.severity, passed=passed, column=self.column, **fields)


class RowCheck(Check):
    """A rule on each row; `predicate` is SQL that is true for a failing row."""

    scope = "rows"

    def __init__(
        self,
        column: str,
        *,
        on_fail: OnFail = "block",
        threshold: Threshold | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(column, **kwargs)
        self.on_fail: OnFail = on_fail
        # None: no failing row is allowed (block), any number may be quarantined.
        self.threshold = threshold

    # Whether the predicate reads another table (evaluated in a query of its own).
    joins: ClassVar[bool] = False

    @property
    def columns(self) -> tuple[str, ...]:
        assert self.column is not None
        return (self.column,)

    def prepare(self, env: Env) -> None:
        """Make whatever the predicate reads visible to SQL (raise CheckUnavailable if it can't)."""

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        raise NotImplementedError

    def describe(self) -> str:
        """What a failing value is, e.g. 'is NULL', for messages and quarantine reasons."""
        raise NotImplementedError

    @property
    def expected(self) -> Any:
        """What the rule compares with, for the audit's threshold column."""
        return self.threshold.describe() if self.threshold else "no failing rows"


@dataclass
class TableContext:
    """The table as it would be after the commit, and the run's increment."""

    env: Env
    would_be: ds.Dataset
    increment: pa.Table | None  # None: a whole-table check, not a run
    # The rows this run stores (deletes and pre-images of a change feed excluded).
    stored_rows: int = 0


class TableCheck(Check):
    scope = "table"

    def run(self, ctx: TableContext) -> ContractResult:
        raise NotImplementedError
