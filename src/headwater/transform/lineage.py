"""Lineage: which upstream columns a column is made of, through SQL models.

Column lineage comes from sqlglot (`sqlglot.lineage`) over each model's query,
followed model by model down to the tables declared in Python, where it
continues at table level (a Python function's columns cannot be traced).
Schemas come from the built Delta tables, or, for models not built yet, from
their query over their inputs' schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import Node, lineage
from sqlglot.optimizer.qualify import qualify

from ..errors import HeadwaterError
from ..sources.upstream import Upstream
from ..tables.strategies import get_strategy
from ..tables.strategies.base import CHANGE_COLUMNS
from .sql_models import DIALECT, Model, model_of

if TYPE_CHECKING:
    from ..project import Project


@dataclass
class ColumnNode:
    """A column and the columns (or, past a Python table, the tables) it comes from."""

    table: str
    column: str | None  # None: the table as a whole
    # "model", "python", "source" (lands a connector), "managed" (kept by the write
    # strategy), "missing" or "untraced"
    kind: str
    defined_at: str
    expression: str | None = None  # how a model computes the column
    reads: str | None = None  # how the table below reads this one: changes or snapshot
    lands: str | None = None  # the connector a source table lands
    note: str | None = None  # why lineage stops here ("untraced")
    sources: list[ColumnNode] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.table if self.column is None else f"{self.table}.{self.column}"


class Schemas:
    """Columns of the project's tables: built tables from Delta, unbuilt models from their SQL."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._known: dict[str, list[str] | None] = {}

    def columns(self, name: str) -> list[str] | None:
        if name not in self._known:
            self._known[name] = None  # a model reading itself stops here
            self._known[name] = self._columns(name)
        return self._known[name]

    def _columns(self, name: str) -> list[str] | None:
        if name not in self.project.tables:
            return None
        schema = self.project.target(name).schema
        if schema is not None:
            return list(schema.names)
        model = model_of(self.project.spec(name))
        if model is None:
            return None
        query = self.qualified(model)
        if query is None or "*" in query.named_selects:
            return None
        outputs = [c for c in query.named_selects if c not in CHANGE_COLUMNS]
        spec = self.project.spec(name)
        managed = (spec.writer or get_strategy(spec.strategy)).managed_columns(
            spec.options, pa.schema([pa.field(c, pa.null()) for c in outputs])
        )
        return outputs + [f.name for f in managed if f.name not in outputs]

    def input_columns(self, model: Model) -> dict[str, list[str]] | None:
        """Input name -> columns the model sees (None when an input's schema is unknown)."""
        found: dict[str, list[str]] = {}
        for name, upstream in model.inputs.items():
            columns = self.columns(upstream.table)
            if columns is None:
                return None
            extra = list(CHANGE_COLUMNS) if upstream.mode == "changes" else []
            found[name] = columns + [c for c in extra if c not in columns]
        return found

    def mapping(self, model: Model) -> dict[str, object]:
        """The known schemas of the model's upstream tables, as sqlglot takes them."""
        nested: dict[str, dict[str, dict[str, str]]] = {}
        for table in model.upstream_tables():
            columns = self.columns(table)
            if columns is not None:
                layer, name = table.split(".", 1)
                nested.setdefault(layer, {})[name] = {c: "UNKNOWN" for c in columns}
        return dict(nested)

    def qualified(self, model: Model) -> exp.Query | None:
        """The model's query with its columns qualified as far as the known schemas allow."""
        try:
            return qualify(
                model.lineage_query.copy(),
                schema=self.mapping(model),
                dialect=DIALECT,
                validate_qualify_columns=False,
            )
        except (SqlglotError, ValueError, KeyError, TypeError):
            return None


def check_models(project: Project, schemas: Schemas | None = None) -> None:
    """Check every model's columns against the schemas that are known."""
    schemas = schemas or Schemas(project)
    for name in project.order():
        model = model_of(project.spec(name))
        if model is not None:
            columns = schemas.input_columns(model)
            if columns is not None:
                model.check_columns(columns)


def column_lineage(
    project: Project, table: str, column: str, schemas: Schemas | None = None
) -> ColumnNode:
    """Where `table.column` comes from, as far back as the graph goes."""
    schemas = schemas or Schemas(project)
    spec = project.spec(table)
    model = model_of(spec)
    if model is None:
        node = table_lineage(project, table)
        node.column = column
        return node
    columns = schemas.columns(table)
    if columns is not None and column.lower() not in {c.lower() for c in columns}:
        raise HeadwaterError(
            f"{model.defined_at}: model {table} has no column {column!r}",
            f"its columns: {', '.join(columns)}",
        )
    strategy = spec.writer or get_strategy(spec.strategy)
    managed = {f.name.lower() for f in strategy.managed_columns(spec.options, pa.schema([]))}
    if column.lower() in managed:  # valid_from, row_hash, _deleted_at...
        return ColumnNode(table, column, "managed", spec.defined_at, note=spec.strategy)
    input_columns = schemas.input_columns(model)
    if input_columns is not None:
        model.check_columns(input_columns)
    try:
        traced = lineage(
            column,
            model.lineage_query,
            schema=schemas.mapping(model),
            dialect=DIALECT,
        )
    except SqlglotError as exc:
        unknown = [t for t in model.upstream_tables() if schemas.columns(t) is None]
        raise HeadwaterError(
            f"{model.defined_at}: cannot trace column {column!r} of model {table}: {exc}",
            f"the columns of {', '.join(unknown)} are known once built: run `headwater run`"
            if unknown
            else "sqlglot cannot follow this query",
        ) from None
    node = ColumnNode(
        table, column, "model", spec.defined_at, expression=_expression(traced.expression, column)
    )
    for upstream, upstream_column in _leaves(traced):
        if upstream not in project.tables:
            node.sources.append(ColumnNode(upstream, upstream_column, "missing", ""))
            continue
        try:
            node.sources.append(column_lineage(project, upstream, upstream_column, schemas))
        except HeadwaterError as exc:  # show how far it goes, and why not further
            defined_at = project.spec(upstream).defined_at
            node.sources.append(
                ColumnNode(
                    upstream, upstream_column, "untraced", defined_at, note=exc.hint or exc.message
                )
            )
    return node


def table_lineage(project: Project, table: str) -> ColumnNode:
    """The tables `table` is made of, back to the sources."""
    spec = project.spec(table)
    model = model_of(spec)
    source = spec.source
    node = ColumnNode(
        table,
        None,
        "model" if model is not None else "source" if source is not None else "python",
        spec.defined_at,
        lands=source.describe() if source is not None else None,
    )
    for item in spec.inputs.values():
        if isinstance(item, Upstream):
            child = table_lineage(project, item.table)
            child.reads = item.mode
            node.sources.append(child)
    return node


def model_columns(project: Project, table: str, schemas: Schemas | None = None) -> list[str]:
    """The output columns of a model (its data columns, not those its strategy adds)."""
    schemas = schemas or Schemas(project)
    model = model_of(project.spec(table))
    if model is None:
        return []
    query = schemas.qualified(model)
    selects = (query or model.lineage_query).named_selects
    return [c for c in selects if c and c != "*" and c not in CHANGE_COLUMNS]


def relative(project: Project, defined_at: str) -> str:
    """`defined_at` relative to the project root, when it is inside it."""
    path, _, line = defined_at.rpartition(":")
    if not path:
        return defined_at
    try:
        shown = Path(path).resolve().relative_to(project.root).as_posix()
    except ValueError:
        return defined_at
    return f"{shown}:{line}"


def _leaves(node: Node) -> list[tuple[str, str]]:
    """(table, column) of every upstream table column a lineage node reaches."""
    found: dict[tuple[str, str], None] = {}
    for item in node.walk():
        source = item.expression
        if isinstance(source, exp.Table) and not item.downstream and source.db:
            found[(f"{source.db}.{source.name}", item.name.rsplit(".", 1)[-1])] = None
    return sorted(found)


def _expression(expression: exp.Expr, column: str) -> str | None:
    """How a model computes `column`; None when it is just an input column of that name."""
    inner = expression.this if isinstance(expression, exp.Alias) else expression
    if isinstance(inner, exp.Column) and inner.name.lower() == column.lower():
        return None
    return str(inner.sql(dialect=DIALECT))
