"""Custom SQL (DuckDB dialect), in three forms.

- `Condition`: a boolean expression every row must satisfy (`amount <= credit_limit`);
  a row check, so failing rows can be quarantined. NULL counts as passing, as
  in a SQL CHECK constraint.
- `Violations`: a query returning the violating rows of the table as it would
  be (`SELECT * FROM {object} WHERE ...`); passes when it returns none.
- `ScalarSql`: ODCS `type: sql`, a query returning one number compared with
  the rule's operators (`SELECT count(*) FROM {object} WHERE ...`, mustBe: 0).

In queries `{object}` (or `{table}`) is the table as it would be after the
commit, `{increment}` the rows of this run, `{property}` the rule's column,
and any other warehouse table can be read by its `layer.table` name.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..._sql import q
from ...errors import HeadwaterError
from .base import (
    INCREMENT_VIEW,
    NO_FAILURES,
    TABLE_VIEW,
    CheckUnavailable,
    ContractResult,
    Env,
    RowCheck,
    TableCheck,
    TableContext,
    Threshold,
    fetch_arrow,
    scan,
)

PLACEHOLDER = re.compile(r"\$?\{\s*(object|table|increment|property|column)\s*\}")
# DuckDB's own schemas: names in them are never warehouse tables.
SYSTEM_SCHEMAS = frozenset({"main", "temp", "information_schema", "pg_catalog", "system"})
SAMPLE_ROWS = 3


def substitute(sql: str, column: str | None) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("object", "table"):
            return TABLE_VIEW
        if name == "increment":
            return INCREMENT_VIEW
        if column is None:
            raise ValueError("{property} is only known in a rule declared on a property")
        return q(column)

    return PLACEHOLDER.sub(replace, sql)


def syntax_error(sql: str) -> str | None:
    """DuckDB-dialect syntax problems, found when the contract loads rather than mid-run."""
    try:
        sqlglot.parse_one(PLACEHOLDER.sub("t", sql), read="duckdb")
    except SqlglotError as exc:
        return str(exc).splitlines()[0]
    return None


def referenced_columns(expression: str) -> tuple[str, ...]:
    """The columns a SQL expression names (none if it does not parse: DuckDB will say why)."""
    try:
        parsed = sqlglot.parse_one(expression, read="duckdb")
    except SqlglotError:
        return ()
    return tuple(dict.fromkeys(c.name for c in parsed.find_all(exp.Column) if c.name))


def short(sql: str, limit: int = 60) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def attach_tables(env: Env, sql: str) -> None:
    """Make each `layer.table` the query names a view over that table's snapshot."""
    try:
        statement = sqlglot.parse_one(sql, read="duckdb")
    except SqlglotError:
        return  # DuckDB reports the syntax error itself
    for ref in statement.find_all(exp.Table):
        if ref.catalog or not ref.db or ref.db.lower() in SYSTEM_SCHEMAS:
            continue
        name = f"{ref.db}.{ref.name}"
        if env.project is None:
            raise CheckUnavailable(f"table {name} cannot be read here")
        target = env.project.target(name)
        if not target.refresh().exists:
            raise CheckUnavailable(f"the query reads table {name}, which does not exist yet")
        arrow_name = f"__hw_{ref.db}__{ref.name}"
        scan(env.con, arrow_name, target.dataset())
        env.con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(ref.db)}")
        env.con.execute(
            f"CREATE OR REPLACE VIEW {q(ref.db)}.{q(ref.name)} AS SELECT * FROM {arrow_name}"
        )


def _failed_query(check: str, rule: str, exc: duckdb.Error) -> HeadwaterError:
    return HeadwaterError(
        f"{rule}: the SQL of check {check} failed: {str(exc).splitlines()[0]}",
        "fix the query in the contract; {object} is the table, {increment} this run's rows",
    )


class Condition(RowCheck):
    kind = "condition"

    def __init__(self, condition: str, column: str | None = None, **kwargs: Any) -> None:
        super().__init__(column or "", **kwargs)
        self.condition = condition
        if not column:
            self.column = None
        self._columns = referenced_columns(substitute(condition, column))

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        return f"({substitute(self.condition, self.column)}) IS FALSE", []

    def describe(self) -> str:
        return f"fails {self.condition}"

    @property
    def expected(self) -> Any:
        return {"condition": self.condition}


class Violations(TableCheck):
    """A query returning violating rows; the threshold bounds how many it may return."""

    kind = "violations"

    def __init__(
        self,
        query: str,
        threshold: Threshold | None = None,
        column: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(column, **kwargs)
        self.query = query
        self.threshold = threshold or NO_FAILURES

    def run(self, ctx: TableContext) -> ContractResult:
        sql = substitute(self.query, self.column)
        try:
            attach_tables(ctx.env, sql)
        except CheckUnavailable as exc:
            return self.result(False, message=str(exc))
        try:
            ((count,),) = ctx.env.con.execute(f"SELECT count(*) FROM ({sql}) AS v").fetchall()
            sample = (
                fetch_arrow(
                    ctx.env.con, f"SELECT * FROM ({sql}) AS v LIMIT {SAMPLE_ROWS}"
                ).to_pylist()
                if count
                else []
            )
        except duckdb.Error as exc:
            raise _failed_query(self.name, self.rule, exc) from exc
        passed = self.threshold.holds(float(count))
        message = "" if not count else f"{count} violating row(s), e.g. {sample}"
        return self.result(
            passed,
            observed=int(count),
            threshold=self.threshold.describe(),
            failing_rows=int(count),
            message=message,
        )


class ScalarSql(TableCheck):
    """ODCS `type: sql`: the query's single value compared with the rule's operators."""

    kind = "sql"

    def __init__(
        self, query: str, threshold: Threshold, column: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(column, **kwargs)
        self.query = query
        self.threshold = threshold

    def run(self, ctx: TableContext) -> ContractResult:
        sql = substitute(self.query, self.column)
        try:
            attach_tables(ctx.env, sql)
        except CheckUnavailable as exc:
            return self.result(False, message=str(exc))
        try:
            # Through Arrow: DuckDB's Python conversion of zoned timestamps needs pytz.
            rows = [tuple(r.values()) for r in fetch_arrow(ctx.env.con, sql).to_pylist()]
        except duckdb.Error as exc:
            raise _failed_query(self.name, self.rule, exc) from exc
        if not rows or not rows[0]:
            return self.result(False, message="the query returned no value")
        value = rows[0][0]
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return self.result(
                    False,
                    observed=str(value),
                    message=f"the query returned {value!r}, not a number",
                )
        passed = self.threshold.holds(float(value))
        return self.result(
            passed,
            observed=value,
            threshold=self.threshold.describe(),
            message=""
            if passed
            else f"the query returned {value}, expected {self.threshold.describe()}",
        )
