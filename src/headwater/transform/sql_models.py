"""SQL models: `models/<layer>/<name>.sql` is a SELECT that becomes table `layer.name`.

    -- headwater: strategy=merge keys=[order_id] version_column=updated_at
    SELECT o.order_id, lower(o.status) AS status, c.segment
    FROM bronze.orders AS o
    JOIN snapshot(silver.customers) AS c USING (customer_id)

The query names other tables as `layer.table`; parsing it (sqlglot, DuckDB
dialect) gives the table's inputs, and the references are rewritten to the
input names the engine registers. How an input is read:

- a plain reference reads the rows that changed since the last run
  (`changes`), except in `overwrite` models (the default strategy), which read
  whole tables;
- `snapshot(layer.table)` or the option `snapshot=[layer.table]` reads the
  whole table (lookups, dimensions);
- `changes(layer.table)` reads the changes whatever the strategy.

A model that selects changes row by row keeps their `_change_type` and
`_commit_version` without naming them, so deletes and updates upstream reach its
write strategy. Each model becomes a `TableSpec` exactly as `table(...)` makes
one; see docs/models.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from ..declare import NAME, TableSpec, collecting, table
from ..errors import ConfigError, HeadwaterError
from ..sources.upstream import Upstream
from ..tables.strategies.base import CHANGE_COLUMNS
from .model_config import SIDECAR_SUFFIXES, ModelConfig, read_config

if TYPE_CHECKING:
    import duckdb

    from ..engine.context import RunContext

MODELS_DIR = "models"
DIALECT = "duckdb"
MARKERS = ("changes", "snapshot")
# Strategies for which a query over changes may aggregate: each increment's
# result is new rows, not a replacement of earlier ones.
ROW_STRATEGIES = ("append", "insert-if-absent")
DEFAULT_STRATEGY = "overwrite"
Mode = Literal["changes", "snapshot"]


@dataclass(frozen=True)
class Reference:
    """One place the query reads a table."""

    table: str
    mode: Mode
    line: int
    explicit: bool  # written changes(...) / snapshot(...)

    @property
    def input(self) -> str:
        """The input name the engine registers the table under for this model."""
        layer, name = self.table.split(".", 1)
        return f"{layer}__{name}" + ("__snapshot" if self.mode == "snapshot" else "")

    @property
    def short(self) -> str:
        return self.table.split(".", 1)[1]


@dataclass
class Model:
    """A parsed model file."""

    name: str
    path: Path
    line: int  # where the query starts
    query: exp.Query
    config: ModelConfig
    references: list[Reference] = field(default_factory=list)

    @property
    def defined_at(self) -> str:
        return f"{self.path}:{self.line}"

    def at(self, line: int | None) -> str:
        return f"{self.path}:{line or self.line}"

    @property
    def strategy(self) -> str:
        return str(self.config.options.get("strategy") or DEFAULT_STRATEGY)

    @property
    def inputs(self) -> dict[str, Upstream]:
        """Input name -> what it reads, in the order the query first names them."""
        found: dict[str, Upstream] = {}
        for ref in self.references:
            found.setdefault(ref.input, Upstream(ref.table, ref.mode))
        return found

    def upstream_tables(self) -> list[str]:
        return sorted({r.table for r in self.references})

    # -- the query in its three forms ------------------------------------------
    @cached_property
    def engine_query(self) -> exp.Query:
        """The query over the engine's input names (`FROM "bronze__orders" AS orders`)."""
        query = self.query.copy()
        for node, ref in _table_nodes(self, query):
            alias = node.args.get("alias")
            node.set("this", exp.to_identifier(ref.input, quoted=True))
            node.set("db", None)
            node.set("catalog", None)
            if alias is None:
                node.set("alias", exp.TableAlias(this=exp.to_identifier(ref.short)))
        _drop_layer_qualifiers(query, {r.table for r in self.references})
        return query

    @cached_property
    def lineage_query(self) -> exp.Query:
        """The query over real table names (markers removed), for lineage and schemas."""
        query = self.query.copy()
        for node, ref in _table_nodes(self, query):
            if ref.explicit:
                layer, name = ref.table.split(".", 1)
                node.set("this", exp.to_identifier(name))
                node.set("db", exp.to_identifier(layer))
                if node.args.get("alias") is None:
                    node.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
        return query

    def render(self, input_columns: Mapping[str, Sequence[str]]) -> str:
        """The SQL to run over this run's inputs (input name -> its columns)."""
        self.check_columns(input_columns)
        query = self.engine_query.copy()
        carried = {
            name: tuple(c for c in CHANGE_COLUMNS if c in columns)
            for name, columns in input_columns.items()
        }
        _carry_change_columns(build_scope(query), carried, apply=True)
        return query.sql(dialect=DIALECT, identify=True, comments=False)

    # -- checks -----------------------------------------------------------------
    def check_reads(self) -> None:
        """Reject queries whose plain references would silently read the wrong rows."""
        root = build_scope(self.engine_query)
        if root is None:
            return
        by_input = {r.input: r for r in self.references}
        plain = {
            name
            for name, refs in _group(self.references).items()
            if not any(r.explicit for r in refs)
        }
        for scope in root.traverse():
            if not isinstance(scope.expression, exp.Select):
                continue
            changed = [
                (name, by_input[source.name])
                for name, (_, source) in scope.selected_sources.items()
                if isinstance(source, exp.Table)
                and source.name in by_input
                and by_input[source.name].mode == "changes"
                and source.name in plain
            ]
            if len(changed) > 1:
                first, second = changed[0][1], changed[1][1]
                raise ConfigError(
                    f"{self.at(second.line)}: model {self.name} joins the changes of "
                    f"{first.table} with the changes of {second.table}: each side holds only "
                    "the rows changed since the last run",
                    f"read lookup tables whole: snapshot({second.table}), or the option "
                    f"snapshot=[{second.table}]",
                )
            if changed and self.strategy not in ROW_STRATEGIES and _aggregates(scope.expression):
                ref = changed[0][1]
                raise ConfigError(
                    f"{self.at(ref.line)}: model {self.name} aggregates the changes of "
                    f"{ref.table}, so a {self.strategy} would store totals of the changed rows only",
                    f"recompute the changed groups from snapshot({ref.table}) (see docs/models.md), "
                    f"or read snapshot({ref.table}) and rebuild with strategy=overwrite",
                )

    def check_columns(self, input_columns: Mapping[str, Sequence[str]]) -> None:
        """Raise, naming the model line, for a column that none of the inputs has."""
        schema: dict[str, object] = {
            name: {c: "UNKNOWN" for c in cols} for name, cols in input_columns.items()
        }
        if not set(self.inputs) <= set(schema):
            return  # not every input is known yet
        try:
            qualify(
                self.engine_query.copy(),
                schema=schema,
                dialect=DIALECT,
                validate_qualify_columns=True,
            )
        except OptimizeError as exc:
            match = re.search(r"Column '([^']+)' could not|Unknown column: (\S+)", str(exc))
            if match is not None:
                self._raise_unknown_column(match.group(1) or match.group(2), input_columns)
        except (SqlglotError, ValueError, KeyError, TypeError):
            # sqlglot cannot analyse every query DuckDB runs; DuckDB then judges it.
            return

    def _raise_unknown_column(self, name: str, input_columns: Mapping[str, Sequence[str]]) -> None:
        lowered = {k: {c.lower() for c in v} for k, v in input_columns.items()}
        by_alias = self._aliases()
        outputs = {a.alias.lower() for a in self.engine_query.find_all(exp.Alias) if a.alias} | {
            c.name.lower()
            for alias in self.engine_query.find_all(exp.TableAlias)
            for c in alias.columns
        }
        for column in self.query.find_all(exp.Column):
            if column.name.lower() != name.lower():
                continue
            qualifier = column.table
            if qualifier:
                candidates = by_alias.get(qualifier.lower(), [])
                if not candidates or any(name.lower() in lowered.get(c, ()) for c in candidates):
                    continue
            else:
                if (
                    any(name.lower() in cols for cols in lowered.values())
                    or name.lower() in outputs
                ):
                    continue
                candidates = list(self.inputs)
            tables = [self.inputs[c].table for c in candidates if c in self.inputs]
            hint = "; ".join(
                f"{self.inputs[c].table} has {_listing(input_columns.get(c, ()))}"
                for c in candidates
                if c in self.inputs
            )
            raise ConfigError(
                f"{self.at(_line(column))}: model {self.name}: column {column.sql(dialect=DIALECT)} "
                f"does not exist in {', '.join(dict.fromkeys(tables))}",
                hint or None,
            )

    def _aliases(self) -> dict[str, list[str]]:
        """Table alias in the query (lower case) -> the input names it stands for."""
        found: dict[str, list[str]] = {}
        for node in self.engine_query.find_all(exp.Table):
            if node.name in self.inputs:
                found.setdefault(node.alias_or_name.lower(), []).append(node.name)
        return found

    def query_error(self, exc: Exception) -> HeadwaterError:
        """A DuckDB error of this model's query, at the line it most likely concerns."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = lines[0] if lines else type(exc).__name__
        suggestion = next((line for line in lines[1:] if line.startswith("Did you mean")), None)
        for name in sorted(self.inputs, key=len, reverse=True):  # __snapshot names first
            message = message.replace(name, self.inputs[name].table)
        line = None
        for quoted, function in re.findall(r'"([^"]+)"|with name (\w+)', message):
            wanted = (quoted or function).lower()
            nodes = self.query.find_all(exp.Column, exp.Anonymous)
            line = next((_line(n) for n in nodes if n.name.lower() == wanted), None)
            if line:
                break
        return HeadwaterError(
            f"{self.at(line)}: model {self.name}: {message}"
            + (f" {suggestion}" if suggestion else ""),
            "fix the query; it runs in DuckDB with its tables named layer.table",
        )


class ModelTransform:
    """The function of a model's table: its query over this run's inputs."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __call__(self, ctx: RunContext) -> duckdb.DuckDBPyRelation:
        import duckdb

        sql = self.model.render({name: rel.columns for name, rel in ctx.inputs.items()})
        try:
            return ctx.sql(sql)
        except duckdb.Error as exc:
            raise self.model.query_error(exc) from exc


def model_of(spec: TableSpec) -> Model | None:
    """The SQL model behind a table, if it is one."""
    return spec.transform.model if isinstance(spec.transform, ModelTransform) else None


# -- discovery -------------------------------------------------------------------------


def discover_models(root: Path, tables: Mapping[str, TableSpec]) -> dict[str, TableSpec]:
    """Add the models under `root/models` to the tables declared in Python."""
    folder = root / MODELS_DIR
    models: list[Model] = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(("_", ".")) for part in path.relative_to(folder).parts):
            continue
        if path.suffix == ".sql" and path.is_file():
            models.append(load_model(path, folder))
        elif path.suffix in SIDECAR_SUFFIXES and not path.with_suffix(".sql").exists():
            raise ConfigError(
                f"{path}: model options without a model ({path.with_suffix('.sql').name} is missing)",
                "name the YAML file after its model: models/<layer>/<table>.yaml",
            )
    found = dict(tables)
    for model in models:
        if model.name in found:
            raise ConfigError(
                f"{model.defined_at}: table {model.name} is declared twice: by this model "
                f"and at {found[model.name].defined_at}",
                "remove one of them, or rename the model file",
            )
        found[model.name] = declare_model(model)
    for model in models:
        for ref in model.references:
            if ref.table not in found:
                raise ConfigError(
                    f"{model.at(ref.line)}: model {model.name} reads {ref.table}, "
                    "which no pipeline or model declares",
                    f"declared tables: {', '.join(sorted(found))}",
                )
    return found


def load_model(path: Path, folder: Path) -> Model:
    """Parse one model file and its options (no other table is looked at)."""
    parts = path.relative_to(folder).parts
    name = f"{parts[0]}.{path.stem}" if len(parts) == 2 else ""
    if not NAME.match(name):
        raise ConfigError(
            f"{path}: a model file is models/<layer>/<table>.sql with names of letters, digits and _",
            "e.g. models/silver/orders.sql makes table silver.orders",
        )
    text = path.read_text()
    config = read_config(path, text)
    query = _parse(path, text)
    tokens = sqlglot.tokenize(text, read=DIALECT)
    model = Model(name, path, tokens[0].line if tokens else 1, query, config)
    model.references = sorted((ref for _, ref in _table_nodes(model, query)), key=lambda r: r.line)
    if not model.references:
        raise ConfigError(
            f"{model.defined_at}: model {name} reads no table",
            "select FROM the tables it is made of, named layer.table",
        )
    read = {r.table for r in model.references}
    for listed in config.options.get("snapshot") or []:
        if listed not in read:
            raise ConfigError(
                f"{config.where('snapshot')}: option snapshot lists {listed}, which the query does not read",
                f"the query reads {', '.join(sorted(read))}",
            )
    model.check_reads()
    return model


def declare_model(model: Model) -> TableSpec:
    """The model as a TableSpec, made by table() like any Python declaration."""
    options = {k: v for k, v in model.config.options.items() if k != "snapshot"}
    options.setdefault("strategy", DEFAULT_STRATEGY)
    with collecting() as found:
        try:
            declaration = table(model.name, inputs=dict(model.inputs), **options)
        except ConfigError as exc:
            # table() names its caller's line; the model's options are what to fix.
            message = re.sub(rf"^{re.escape(__file__)}:\d+: ", "", exc.message)
            where = model.config.where() or model.defined_at
            raise ConfigError(f"{where}: {message}", exc.hint) from None
        declaration(ModelTransform(model))
    (spec,) = found
    spec.defined_at = model.defined_at
    return spec


# -- parsing ---------------------------------------------------------------------------


def _parse(path: Path, text: str) -> exp.Query:
    try:
        statements = [s for s in sqlglot.parse(text, read=DIALECT) if s is not None]
    except ParseError as exc:
        error = exc.errors[0] if exc.errors else {}
        description = re.sub(
            r"<Token token_type: [^,]+, text: ([^,]*),[^>]*>",
            r"'\1'",
            str(error.get("description") or "cannot parse"),
        )
        raise ConfigError(
            f"{path}:{error.get('line') or 1}: SQL does not parse: {description}",
            "a model is one SELECT in DuckDB's SQL",
        ) from None
    except TokenError:
        opened = _left_open(text)
        line = text.count("\n", 0, opened) + 1 if opened is not None else 1
        raise ConfigError(
            f"{path}:{line}: SQL does not parse: a string, quoted name or comment is left open",
            "a model is one SELECT in DuckDB's SQL",
        ) from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        kinds = ", ".join(type(s).__name__.upper() for s in statements) or "nothing"
        raise ConfigError(
            f"{path}:1: a model is one SELECT query; this file holds {kinds}",
            "write the SELECT whose result the table holds; Headwater writes it",
        )
    return statements[0]


def _left_open(text: str) -> int | None:
    """Where a string, quoted name or block comment starts that is never closed."""
    i = 0
    while i < len(text):
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return i
            i = end + 2
        elif text[i] in "'\"":
            quote, end = text[i], i + 1
            while True:
                end = text.find(quote, end)
                if end < 0:
                    return i
                if not text.startswith(quote * 2, end):
                    break
                end += 2  # a doubled quote stands for itself
            i = end + 1
        else:
            i += 1
    return None


def _table_nodes(model: Model, query: exp.Query) -> Iterator[tuple[exp.Table, Reference]]:
    """Each table reference of `query` (CTE names and table functions excluded)."""
    ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
    snapshot_option = set(model.config.options.get("snapshot") or [])
    default: Mode = "snapshot" if model.strategy == "overwrite" else "changes"
    for node in list(query.find_all(exp.Table)):
        inner = node.this
        if isinstance(inner, exp.Anonymous) and inner.name.lower() in MARKERS:
            mode: Mode = "changes" if inner.name.lower() == "changes" else "snapshot"
            name = _marker_table(inner)
            line = _line(inner.expressions[0]) if inner.expressions else None
            if name is None or not NAME.match(name):
                raise ConfigError(
                    f"{model.at(line or _line(inner))}: {inner.name.lower()}(...) takes one table "
                    f"name, e.g. {inner.name.lower()}(silver.customers)"
                )
            yield node, Reference(name, mode, line or model.line, True)
            continue
        if not isinstance(inner, exp.Identifier):
            continue  # a table function: read_parquet(...), range(...), unnest(...)
        if not node.db:
            if node.name.lower() in ctes:
                continue
            raise ConfigError(
                f"{model.at(_line(inner))}: model {model.name} reads {node.name!r}, which is not "
                "a table name",
                f"name tables layer.table, e.g. bronze.{node.name}",
            )
        if node.catalog:
            raise ConfigError(
                f"{model.at(_line(inner))}: model {model.name} reads {node.sql(dialect=DIALECT)}; "
                "tables are named layer.table"
            )
        name = f"{node.db}.{node.name}"
        mode = "snapshot" if name in snapshot_option else default
        yield node, Reference(name, mode, _line(inner) or model.line, False)


def _marker_table(call: exp.Anonymous) -> str | None:
    if len(call.expressions) != 1:
        return None
    (arg,) = call.expressions
    if isinstance(arg, exp.Literal) and arg.is_string:
        return str(arg.this)
    if isinstance(arg, exp.Column) and arg.table and not arg.args.get("db"):
        return f"{arg.table}.{arg.name}"
    return None


def _drop_layer_qualifiers(query: exp.Query, tables: set[str]) -> None:
    """`bronze.orders.amount` -> `orders.amount`: the layer is gone from the FROM clause."""
    for column in query.find_all(exp.Column):
        db = column.args.get("db")
        if db is not None and column.table and f"{db.name}.{column.table}" in tables:
            column.set("db", None)


def _line(node: exp.Expr) -> int | None:
    """The line a node starts on, when the parser recorded one (on its tokens)."""
    for candidate in node.walk():
        line = candidate.meta_get("line")
        if line:
            return int(line)
    return None


def _group(references: Sequence[Reference]) -> dict[str, list[Reference]]:
    grouped: dict[str, list[Reference]] = {}
    for ref in references:
        grouped.setdefault(ref.input, []).append(ref)
    return grouped


def _listing(columns: Sequence[str]) -> str:
    shown = [c for c in columns if c not in CHANGE_COLUMNS]
    return ", ".join(shown[:30]) + (", ..." if len(shown) > 30 else "") if shown else "no columns"


# -- keeping the change type through the query ----------------------------------------------


def _aggregates(select: exp.Select) -> bool:
    """GROUP BY, or an aggregate function of this SELECT outside a window."""
    if select.args.get("group") is not None:
        return True
    for func in select.find_all(exp.AggFunc):
        if func.find_ancestor(exp.Select) is select and not isinstance(
            func.find_ancestor(exp.Window, exp.Select), exp.Window
        ):
            return True
    return False


def _carry_change_columns(
    scope: Scope | None, carried: Mapping[str, tuple[str, ...]], apply: bool
) -> tuple[str, ...]:
    """The change columns `scope` outputs; with `apply`, add them to its projection.

    A SELECT keeps them when exactly one of its FROM sources has them and it
    maps rows one to one (no GROUP BY, aggregate or DISTINCT); a set operation
    when every branch does. Expression subqueries (IN, EXISTS) are never touched.
    """
    if scope is None:
        return ()
    expression = scope.expression
    if isinstance(expression, exp.SetOperation):
        branches = [
            _carry_change_columns(s, carried, apply=False) for s in scope.set_operation_scopes
        ]
        if not branches or any(b != branches[0] for b in branches) or not branches[0]:
            return ()
        if apply:
            for branch in scope.set_operation_scopes:
                _carry_change_columns(branch, carried, apply=True)
        return branches[0]
    if not isinstance(expression, exp.Select):
        return ()
    if expression.args.get("distinct") is not None or _aggregates(expression):
        return ()
    having: list[tuple[str, tuple[str, ...], Scope | None]] = []
    for name, (_, source) in scope.selected_sources.items():
        if isinstance(source, exp.Table):
            columns = (
                carried.get(source.name, ()) if isinstance(source.this, exp.Identifier) else ()
            )
            if columns:
                having.append((name, columns, None))
        else:
            columns = _carry_change_columns(source, carried, apply=False)
            if columns:
                having.append((name, columns, source))
    if len(having) != 1:
        return ()
    name, columns, inner = having[0]
    if apply:
        if inner is not None:
            _carry_change_columns(inner, carried, apply=True)
        if not _star_of(expression, name):
            present = {n.lower() for n in expression.named_selects}
            for column in columns:
                if column not in present:
                    expression.select(exp.column(column, table=name, quoted=True), copy=False)
    return columns


def _star_of(select: exp.Select, source: str) -> bool:
    """Whether the projection has `*` or `source.*`."""
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            return True
        if (
            isinstance(projection, exp.Column)
            and isinstance(projection.this, exp.Star)
            and projection.table.lower() == source.lower()
        ):
            return True
    return False
