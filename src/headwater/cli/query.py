"""`headwater sql`: DuckDB SQL over the warehouse's Delta tables, by their names.

The query is parsed (DuckDB dialect) only to find which `layer.table` names it
reads; each becomes a view `layer.table` over that table's Arrow dataset, so
DuckDB scans the Delta files directly and pushes filters and projections down.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..errors import HeadwaterError
from ..project import Project
from . import render

# Schemas DuckDB itself provides; names in them are never warehouse tables.
SYSTEM_SCHEMAS = frozenset({"main", "temp", "information_schema", "pg_catalog", "system"})
# A terminal table of a million rows helps nobody; csv and json print everything.
MAX_TABLE_ROWS = 1000


def table_references(query: str) -> list[str]:
    """The `layer.table` names a query reads, in order of appearance."""
    try:
        statements = sqlglot.parse(query, read="duckdb")
    except SqlglotError:
        return []  # DuckDB reports the syntax error itself, with a better message
    found: dict[str, None] = {}
    for statement in statements:
        if statement is None:
            continue
        for ref in statement.find_all(exp.Table):
            if ref.catalog or not ref.db or not isinstance(ref.this, exp.Identifier):
                continue
            if ref.db.lower() in SYSTEM_SCHEMAS:
                continue
            found[f"{ref.db}.{ref.name}"] = None
    return list(found)


def connect(project: Project, names: Iterable[str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in which each of `names` is a view over its Delta table."""
    con = duckdb.connect()
    # Warehouse timestamps are UTC; the output must not depend on the machine's zone.
    con.execute("SET TimeZone = 'UTC'")
    for name in names:
        target = project.target(name)
        if not target.exists:
            built = project.existing_tables()
            raise HeadwaterError(
                f"unknown table {name}",
                f"tables in the warehouse: {', '.join(built)}"
                if built
                else "the warehouse is empty; build tables with `headwater run`",
            )
        layer, table = name.split(".", 1)
        arrow_name = f"__hw_{layer}__{table}"
        con.register(arrow_name, target.table.to_pyarrow_dataset())
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
        con.execute(f'CREATE VIEW "{layer}"."{table}" AS SELECT * FROM "{arrow_name}"')
    return con


def run_query(project: Project, query: str, params: list[Any] | None = None) -> pa.Table | None:
    """The query's result, or None for a statement that returns no rows."""
    con = connect(project, table_references(query))
    try:
        relation = con.sql(query, params=params)
        return None if relation is None else relation.to_arrow_table()
    except duckdb.Error as exc:
        hint = (
            "name tables as layer.table; `headwater tables` lists them"
            if isinstance(exc, duckdb.CatalogException)
            else "the query is DuckDB SQL; see https://duckdb.org/docs/sql/introduction"
        )
        raise HeadwaterError(f"SQL failed: {str(exc).splitlines()[0]}", hint) from exc
    finally:
        con.close()


def print_result(result: pa.Table, fmt: str) -> None:
    """Print as `table` (rich), `csv` (with a header) or `json` (an array of objects)."""
    if fmt == "csv":
        sys.stdout.flush()
        pacsv.write_csv(result, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    if fmt == "json":
        sys.stdout.write(to_json(result) + "\n")
        return
    shown = result.slice(0, MAX_TABLE_ROWS)
    render.out().print(render.rows_table(result.column_names, shown.to_pylist()))
    count = f"{result.num_rows:,} row{'s' if result.num_rows != 1 else ''}"
    if result.num_rows > MAX_TABLE_ROWS:
        count += f" (first {MAX_TABLE_ROWS:,} shown; use LIMIT or --format csv)"
    render.out().print(count, style="dim")


def to_json(result: pa.Table) -> str:
    """A JSON array of row objects, with DuckDB's conversions (decimals stay numbers)."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("__hw_result", result)
        rows = [r[0] for r in con.sql("SELECT to_json(r) FROM __hw_result r").fetchall()]
    finally:
        con.close()
    if not rows:
        return "[]"
    return "[\n  " + ",\n  ".join(rows) + "\n]"
