"""`headwater dag` and `headwater lineage`: the table graph and where columns come from."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import HeadwaterError
from . import render

if TYPE_CHECKING:
    from ..project import Project
    from ..transform.lineage import ColumnNode


def register_graph_commands(app: typer.Typer, load: Callable[[], Project]) -> None:
    """Add the graph commands to the `headwater` app (`load` loads the project)."""

    @app.command()
    def dag(
        table: Annotated[
            str | None,
            typer.Argument(help="Show only this table and what it reads and feeds (layer.table)."),
        ] = None,
        critical_path: Annotated[
            bool,
            typer.Option(
                "--critical-path", help="Durations from the run history, slack per table."
            ),
        ] = False,
    ) -> None:
        """Print the table graph in stages: each table, its strategy and what it reads."""
        if critical_path:
            from ..orchestrate.critical_path import critical_path_lines

            for line in critical_path_lines(load()):
                _print(line)
            return
        for line in dag_lines(load(), table):
            _print(line)

    @app.command("lineage")
    def lineage_command(
        target: Annotated[str, typer.Argument(help="layer.table or layer.table.column")],
    ) -> None:
        """Show where a column (or every column of a table) comes from."""
        for line in lineage_lines(load(), target):
            _print(line)


def _print(line: str) -> None:
    render.out().print(line, markup=False, highlight=False, soft_wrap=True)


# -- dag ---------------------------------------------------------------------------------


def dag_lines(project: Project, table: str | None = None) -> list[str]:
    """The graph as text: one stage per depth, upstream first."""
    from ..transform.graph import downstream_of
    from ..transform.lineage import relative

    names = project.order()
    if table is not None:
        project.spec(table)
        keep = {table} | _closure(project, table, lambda n: project.spec(n).upstream_tables())
        keep |= _closure(project, table, lambda n: downstream_of(project.tables, n))
        names = [n for n in names if n in keep]
    if not names:
        return ["no tables declared (pipelines/*.py, models/<layer>/<table>.sql)"]
    depth: dict[str, int] = {}
    for name in project.order():  # upstream first, so every input's depth is known
        upstream = project.spec(name).upstream_tables()
        depth[name] = 1 + max((depth[u] for u in upstream if u in depth), default=0)
    rows: list[tuple[int, str, str, str, str]] = []
    for name in names:
        spec = project.spec(name)
        keys = f" [{', '.join(spec.options.keys)}]" if spec.options.keys else ""
        reads = ", ".join(
            f"{source.describe()}" if source.upstream_tables() else f"source {source.describe()}"
            for source in spec.inputs.values()
        )
        rows.append(
            (depth[name], name, spec.strategy + keys, reads, relative(project, spec.defined_at))
        )
    widths = [max(len(r[1]) for r in rows), max(len(r[2]) for r in rows)]
    widths.append(max(len(r[3]) for r in rows))
    lines: list[str] = []
    for stage in sorted({r[0] for r in rows}):
        lines.append(f"stage {stage}")
        for _, name, strategy, reads, where in (r for r in rows if r[0] == stage):
            lines.append(
                f"  {name:<{widths[0]}}  {strategy:<{widths[1]}}  <- {reads:<{widths[2]}}  {where}"
            )
    return lines


def _closure(project: Project, start: str, step: Callable[[str], list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in step(todo.pop()):
            if nxt not in seen and nxt in project.tables:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# -- lineage -----------------------------------------------------------------------------


def lineage_lines(project: Project, target: str) -> list[str]:
    """Lineage trees of one column, or of every column of a SQL model, or a table's inputs."""
    from ..transform.lineage import (
        Schemas,
        column_lineage,
        model_columns,
        table_lineage,
    )
    from ..transform.sql_models import model_of

    parts = target.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise HeadwaterError(
            f"{target!r} is not a table or column",
            "name a table as layer.table, a column as layer.table.column",
        )
    name = ".".join(parts[:2])
    spec = project.spec(name)
    schemas = Schemas(project)
    lines: list[str] = []
    if len(parts) == 3:
        node = column_lineage(project, name, parts[2], schemas)
        lines += _tree(project, node)
        if model_of(spec) is None:
            lines.append(f"({name} is declared in Python: its columns are traced at table level)")
        return lines
    if model_of(spec) is None:
        return _tree(project, table_lineage(project, name))
    columns = model_columns(project, name, schemas)
    if not columns:
        raise HeadwaterError(
            f"the columns of model {name} are not known yet (its query selects *)",
            "build its inputs with `headwater run`, or name a column: layer.table.column",
        )
    for column in columns:
        lines += _tree(project, column_lineage(project, name, column, schemas))
    return lines


def _tree(project: Project, root: ColumnNode) -> list[str]:
    lines = [_describe(project, root)]

    def walk(node: ColumnNode, prefix: str) -> None:
        for index, child in enumerate(node.sources):
            last = index == len(node.sources) - 1
            lines.append(prefix + ("└── " if last else "├── ") + _describe(project, child))
            walk(child, prefix + ("    " if last else "│   "))

    walk(root, "")
    return lines


def _describe(project: Project, node: ColumnNode) -> str:
    from ..transform.lineage import relative

    where = relative(project, node.defined_at) if node.defined_at else ""
    if node.kind == "missing":
        return f"{node.label}  (not declared)"
    if node.kind == "managed":
        return f"{node.label}  (kept by the {node.note} strategy; {where})"
    if node.kind == "untraced":
        return f"{node.label}  (not traced further: {node.note}; {where})"
    text = node.label
    if node.expression is not None:
        text += f" = {node.expression}"
    details = []
    if node.reads:
        details.append(f"read as {node.reads}")
    kinds = {"model": "SQL model", "python": "Python table", "source": f"lands {node.lands}"}
    details.append(kinds.get(node.kind, node.kind))
    return f"{text}  ({'; '.join(details)}; {where})"
