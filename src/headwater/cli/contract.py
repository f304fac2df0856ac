"""`headwater contract ...`: data contracts from the command line.

    headwater contract init TABLE        write contracts/<layer>/<table>.yaml from the table
    headwater contract diff OLD NEW      breaking or compatible? (non-zero if breaking without a major bump)
    headwater contract check TABLE       every check of the contract over the whole table
    headwater contract validate          load every contract of the project
    headwater contract results [TABLE]   check results of the latest run(s), from audit.check_results

`print_check_summary(project, results)` is what `headwater run` prints after
its run summary: one line per table whose checks did more than pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import ConfigError, HeadwaterError
from . import render

if TYPE_CHECKING:
    from ..engine.run import TableRun
    from ..project import Project
    from ..quality.diff import ContractDiff

app = typer.Typer(
    help="Data contracts (ODCS v3): bootstrap, compare, check, and see check results.",
    no_args_is_help=True,
)

OUTCOME_STYLE = {
    "passed": "green",
    "quarantined": "yellow",
    "warned": "yellow",
    "blocked": "bold red",
}


def _project(discover: bool = True) -> Project:
    from ..project import Project
    from .main import OPTIONS  # imported late: main imports this module

    return Project.load(OPTIONS.project, discover=discover)


# -- init -------------------------------------------------------------------------------


@app.command()
def init(
    table: Annotated[str, typer.Argument(help="layer.table (must exist in the warehouse)")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write (default contracts/<layer>/<table>.yaml)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    stdout: Annotated[
        bool, typer.Option("--stdout", help="Print instead of writing a file.")
    ] = False,
) -> None:
    """Write a first contract from a table: types, nullability, key; ranges and enums as suggestions."""
    from ..quality.bootstrap import render as render_contract
    from ..quality.gates import CONTRACTS_DIR

    project = _project()
    text = render_contract(project, table)
    if stdout:
        typer.echo(text, nl=False)
        return
    layer, name = table.split(".", 1)
    path = output or project.root / CONTRACTS_DIR / layer / f"{name}.yaml"
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.exists() and not force:
        raise HeadwaterError(f"{path} exists already", "pass --force to overwrite it, or --stdout")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    render.err().print(Text.assemble("wrote ", (str(path), "bold"), f" (contract of {table})"))
    if (
        output is not None
        and path.resolve().parent != (project.root / CONTRACTS_DIR / layer).resolve()
    ):
        render.err().print(
            f"declare table(..., contract={str(path)!r}) so that runs of {table} use it",
            style="dim",
            markup=False,
        )


# -- diff -------------------------------------------------------------------------------


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The contract as it was (e.g. from git show).")],
    new: Annotated[Path, typer.Argument(help="The contract as it is now.")],
) -> None:
    """Classify each change as breaking or compatible; exit 1 if breaking without a major bump."""
    from ..quality.diff import diff as contract_diff
    from ..quality.odcs import load

    result = contract_diff(load(old), load(new))
    render.out().print(diff_table(result, f"{old} -> {new}"))
    verdict = result.verdict()
    style = "green" if result.ok else "bold red"
    render.out().print(Text(verdict, style=style))
    if not result.ok:
        raise typer.Exit(1)


def diff_table(result: ContractDiff, title: str) -> Table:
    table = render.new_table(title)
    for column in ("change", "element", "what"):
        table.add_column(column, overflow="fold")
    for change in result.changes:
        style = "red" if change.kind == "breaking" else "green"
        table.add_row(Text(change.kind, style=style), change.element, change.description)
    return table


# -- check ------------------------------------------------------------------------------


@app.command()
def check(
    table: Annotated[str, typer.Argument(help="layer.table")],
    contract: Annotated[
        Path | None, typer.Option("--contract", help="A contract file other than the table's own.")
    ] = None,
) -> None:
    """Check the whole table against its contract now (nothing is written); exit 1 on an error."""
    from ..quality.contract import ContractGate, load_plan, relative
    from ..quality.gates import contract_path

    project = _project()
    path = contract
    if path is None:
        spec = project.tables.get(table)
        path = (
            contract_path(spec, project)
            if spec is not None
            else _undeclared_contract(project, table)
        )
        if path is None:
            raise ConfigError(
                f"table {table} has no contract",
                f"write one with `headwater contract init {table}`",
            )
    target = project.target(table)
    if not target.refresh().exists:
        raise HeadwaterError(f"table {table} does not exist", "build it first with `headwater run`")
    plan = load_plan(path, table, relative(path, project))
    results = ContractGate(plan, table, project).check_all(target.dataset())
    rows = [
        {
            "table": table,
            "check": r.check,
            "severity": r.severity,
            "passed": r.passed,
            "observed": r.observed,
            "failing_rows": r.failing_rows,
            "quarantined": 0,
            "message": r.message,
        }
        for r in results
    ]
    render.out().print(results_table(rows, f"{table} · {relative(path, project)}"))
    if any(r.blocks for r in results):
        raise typer.Exit(1)


def _undeclared_contract(project: Project, table: str) -> Path | None:
    from ..quality.gates import CONTRACTS_DIR

    layer, name = table.split(".", 1)
    for candidate in (
        project.root / CONTRACTS_DIR / layer / f"{name}.yaml",
        project.root / CONTRACTS_DIR / f"{table}.yaml",
    ):
        if candidate.exists():
            return candidate
    return None


# -- validate ---------------------------------------------------------------------------


@app.command()
def validate() -> None:
    """Load every contract of the project's tables; report the first problem of each."""
    from ..quality.contract import load_plan, relative
    from ..quality.gates import CONTRACTS_DIR, contract_path

    project = _project()
    seen: set[Path] = set()
    problems = 0
    out = render.out()
    for name in sorted(project.tables):
        try:
            path = contract_path(project.tables[name], project)
            if path is None:
                continue
            seen.add(path.resolve())
            plan = load_plan(path, name, relative(path, project))
        except HeadwaterError as exc:
            problems += 1
            render.error(exc.message, exc.hint)
            continue
        out.print(
            f"{name}: {relative(path, project)} version {plan.contract.version}"
            f" ({plan.contract.status}, owner {plan.contract.owner or 'not named'}), "
            f"{len(plan.row_checks)} row check(s), {len(plan.table_checks)} table check(s)",
            markup=False,
        )
    folder = project.root / CONTRACTS_DIR
    for path in sorted(folder.rglob("*.yaml")) if folder.exists() else []:
        if path.resolve() not in seen:
            out.print(
                f"{relative(path, project)}: no declared table uses it", style="dim", markup=False
            )
    if problems:
        raise typer.Exit(1)


# -- results ----------------------------------------------------------------------------


@app.command()
def results(
    table: Annotated[str | None, typer.Argument(help="layer.table (default: every table)")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="The run to show (default: the latest).")
    ] = None,
    failures: Annotated[
        bool, typer.Option("--failures", help="Only checks that did not pass.")
    ] = False,
) -> None:
    """Check results of a run, from audit.check_results."""
    from ..quality.report import latest_run_id
    from ..quality.report import results as audit_results

    project = _project(discover=False)
    if run_id is None:
        tables = [table] if table else sorted({r["table"] for r in audit_results(project)})
        runs = [r for r in (latest_run_id(project, t) for t in tables) if r is not None]
    else:
        runs = [run_id]
    rows = audit_results(project, runs, table, failures_only=failures)
    if not rows:
        render.out().print("no check results" + (f" for {table}" if table else ""), style="dim")
        return
    render.out().print(results_table(rows, "check results · " + ", ".join(runs)))


def results_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    from ..quality.report import outcome

    table = render.new_table(title)
    for column in ("table", "check", "severity", "outcome", "observed", "failing rows", "message"):
        table.add_column(
            column, justify="right" if column == "failing rows" else "left", overflow="fold"
        )
    for row in rows:
        kind = "passed" if row["passed"] else outcome(row)
        table.add_row(
            row["table"],
            row["check"],
            row["severity"],
            Text(kind, style=OUTCOME_STYLE[kind]),
            render.cell(row["observed"]),
            render.number(row["failing_rows"]),
            row["message"] or "",
        )
    return table


# -- after a run ----------------------------------------------------------------------------


def print_check_summary(
    project: Project, results: Sequence[TableRun], console: Console | None = None
) -> None:
    """After `headwater run`: per table, checks that warned, quarantined or blocked (and how many passed).

    Prints nothing when no table of the run has a contract or gate.
    """
    from ..quality.report import results as audit_results
    from ..quality.report import tally

    rows = audit_results(project, [r.run_id for r in results])
    if not rows:
        return
    console = console or render.out()
    for t in tally(rows):
        parts: list[str | Text] = [f"{t.passed} passed"]
        if t.warned:
            parts.append(Text(f"{t.warned} warned", style="yellow"))
        if t.quarantined_checks:
            parts.append(
                Text(
                    f"{t.quarantined_checks} quarantined ({t.quarantined_rows:,} row failures)",
                    style="yellow",
                )
            )
        if t.blocked:
            parts.append(Text(f"{t.blocked} blocked", style="bold red"))
        line = Text.assemble(f"checks {t.table}: ", *_joined(parts))
        console.print(line)
    failures = [r for r in rows if not r["passed"]]
    if failures:
        console.print(results_table(failures))
        console.print(
            "all results: headwater contract results; or "
            'headwater sql "SELECT * FROM audit.check_results WHERE NOT passed"',
            style="dim",
            markup=False,
        )


def _joined(parts: list[str | Text]) -> list[str | Text]:
    out: list[str | Text] = []
    for i, part in enumerate(parts):
        if i:
            out.append(", ")
        out.append(part)
    return out
