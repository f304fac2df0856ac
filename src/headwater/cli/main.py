"""The `headwater` command.

    headwater [--project DIR] [--debug] COMMAND ...

Every failure a user can act on prints `error: ...` and `hint: ...` and exits
non-zero; anything unexpected prints one line too, and its traceback only with
--debug.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text
from rich.traceback import Traceback

from .. import __version__
from ..engine.run import TableRun
from ..errors import ConfigError, HeadwaterError
from ..project import Project
from . import contract, render
from .cdc import app as cdc_app
from .graph import register_graph_commands
from .orchestrate import register_orchestrate_commands
from .stream import app as stream_app

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds

app = typer.Typer(
    name="headwater",
    help="Lakehouse data pipelines into Delta Lake tables, with exactly-once results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cdc_app, name="cdc")  # headwater cdc setup | status | teardown
app.add_typer(stream_app, name="stream")  # headwater stream lateness TABLE


@dataclass
class _Options:
    project: Path = Path(".")
    debug: bool = False


OPTIONS = _Options()


def _print_version(value: bool) -> None:
    if value:
        print(f"headwater {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    project: Annotated[
        Path,
        typer.Option(
            "--project",
            "-p",
            envvar="HEADWATER_PROJECT",
            help="Project directory (holds headwater.toml).",
            file_okay=False,
        ),
    ] = Path("."),
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logging.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    OPTIONS.project = project
    OPTIONS.debug = debug
    if debug:
        from rich.logging import RichHandler

        # Headwater's own debug logging; other libraries stay at warnings.
        logging.basicConfig(
            level=logging.WARNING,
            format="%(name)s: %(message)s",
            handlers=[RichHandler(console=render.err(), show_path=False)],
        )
        logging.getLogger("headwater").setLevel(logging.DEBUG)


def _load(discover: bool = True) -> Project:
    return Project.load(OPTIONS.project, discover=discover)


def _built(project: Project, name: str) -> None:
    """Fail with the tables that do exist when `name` has not been built."""
    target = project.target(name)
    if target.exists:
        return
    built = project.existing_tables()
    raise HeadwaterError(
        f"table {name} does not exist",
        f"tables in the warehouse: {', '.join(built)}"
        if built
        else "nothing is built yet; run `headwater run`",
    )


# -- init ---------------------------------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")],
) -> None:
    """Create a project: headwater.toml, an example pipeline and its data."""
    from .scaffold import scaffold

    created = scaffold(directory)
    out = render.out()
    out.print(Text.assemble("Created project in ", (str(directory), "bold")))
    for path in created:
        out.print(f"  {path.relative_to(directory).as_posix()}", style="dim")
    where = "" if directory.resolve() == Path.cwd() else f" --project {directory}"
    out.print("\nNext:")
    out.print(f"  headwater{where} run", markup=False)
    out.print(f"  headwater{where} show silver.orders", markup=False)


# -- run ------------------------------------------------------------------------------


@app.command()
def run(
    tables: Annotated[
        list[str] | None,
        typer.Argument(help="Tables to run (default: all), in dependency order."),
    ] = None,
    full_refresh: Annotated[
        bool,
        typer.Option("--full-refresh", help="Rebuild from the inputs instead of incrementally."),
    ] = False,
    continuous: Annotated[
        bool,
        typer.Option("--continuous", help="Keep running on the trigger interval until stopped."),
    ] = False,
    trigger: Annotated[
        str, typer.Option("--trigger", help="Interval between continuous runs, e.g. 1s, 5m.")
    ] = "1s",
    cycles: Annotated[
        int | None, typer.Option("--cycles", min=1, help="Stop after this many continuous runs.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start", help="Rebuild an interval of event time from here (a date or time)."
        ),
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="... up to here (exclusive).")] = None,
) -> None:
    """Bring tables up to date with their inputs (once, or continuously)."""
    from .progress import current_versions, run_with_progress

    project = _load()
    if continuous:
        if full_refresh:
            raise ConfigError(
                "--full-refresh and --continuous do not go together", "run the refresh once first"
            )
        _run_continuously(project, tables, trigger, cycles)
        return
    interval = None
    if start is not None or end is not None:
        from ..engine.interval import Interval

        if start is None or end is None or not tables:
            raise ConfigError(
                "an interval run needs --start, --end and the tables to rebuild",
                "e.g. headwater run gold.daily_revenue --start 2024-05-01 --end 2024-05-08",
            )
        interval = Interval.of(start, end)
    results = run_with_progress(
        project, tables, render.err(), full_refresh=full_refresh, interval=interval
    )
    render.out().print(render.run_summary(results, current_versions(project, results)))
    contract.print_check_summary(project, results)  # what the contracts' checks found
    render.run_failures(results, debug=OPTIONS.debug)
    if any(r.status in render.FAILED for r in results):
        raise typer.Exit(1)


def _run_continuously(
    project: Project, tables: list[str] | None, trigger: str, cycles: int | None
) -> None:
    from .._units import parse_duration
    from ..engine.continuous import run_continuously

    interval = parse_duration(trigger, "--trigger").total_seconds()
    err = render.err()
    err.print(
        f"running {', '.join(tables) if tables else 'all tables'} every {trigger}; Ctrl-C stops"
    )
    failures = 0

    def report(cycle: int, results: list[TableRun]) -> None:
        nonlocal failures
        for r in results:
            if r.status == "committed":
                rows = r.metrics.get("rows_in", 0)
                err.print(
                    f"cycle {cycle}: {r.table} committed version {r.version} ({rows:,} rows in)"
                )
            elif r.status in render.FAILED:
                failures += 1
                err.print(f"cycle {cycle}: {r.table} failed: {r.error}")

    run_continuously(project, tables, trigger_seconds=interval, cycles=cycles, on_cycle=report)
    if failures and cycles is not None:
        raise typer.Exit(1)


# -- reading --------------------------------------------------------------------------


@app.command()
def show(
    table: Annotated[str, typer.Argument(help="layer.table")],
    version: Annotated[
        int | None, typer.Option("--version", "-v", help="Read this version.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Read the table as of a time, e.g. 2024-05-01T12:00:00Z."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Rows to show.")] = 20,
) -> None:
    """Print rows of a table, now or as it was."""
    from ..tables.time_travel import snapshot_at

    project = _load(discover=False)
    _built(project, table)
    snapshot = snapshot_at(project.target(table), version=version, as_of=as_of)
    dataset = snapshot.to_pyarrow_dataset()
    total = dataset.count_rows()
    rows = _first_rows(dataset, limit)
    title = f"{table} · version {snapshot.version()} · {total:,} row{'s' if total != 1 else ''}"
    if rows.num_rows < total:
        title += f" (first {rows.num_rows:,} shown)"
    render.out().print(render.rows_table(rows.column_names, rows.to_pylist(), title=title))


def _first_rows(dataset: ds.Dataset, limit: int) -> pa.Table:
    """The first `limit` rows, read on this thread and stopped cleanly.

    `Dataset.head` leaves read-ahead running when it stops early, and those reads
    can abort the process as it exits ("terminate called without an active
    exception")."""
    import pyarrow as pa

    scanner = dataset.scanner(use_threads=False, batch_readahead=0, fragment_readahead=0)
    reader = scanner.to_reader()
    batches: list[pa.RecordBatch] = []
    rows = 0
    try:
        while rows < limit:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batches.append(batch)
            rows += batch.num_rows
    finally:
        reader.close()
    return pa.Table.from_batches(batches, schema=dataset.schema).slice(0, limit)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="DuckDB SQL; tables are named layer.table.")],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="How to print the result.")
    ] = OutputFormat.table,
) -> None:
    """Query the warehouse's tables with DuckDB SQL."""
    from .query import print_result, run_query

    project = _load(discover=False)
    result = run_query(project, query)
    if result is not None:
        print_result(result, fmt.value)


@app.command()
def history(
    table: Annotated[str, typer.Argument(help="layer.table")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Newest commits to show.")
    ] = 20,
) -> None:
    """List a table's commits: what each run read and wrote."""
    from ..tables.time_travel import history as table_history

    project = _load(discover=False)
    _built(project, table)
    entries = table_history(project.target(table), limit)
    render.out().print(render.history_table(entries, title=f"{table} · history (newest first)"))


@app.command("tables")
def list_tables() -> None:
    """List the declared tables and their current versions."""
    project = _load()
    listing = render.new_table()
    for column in ("table", "strategy", "keys", "inputs", "version"):
        listing.add_column(column, justify="right" if column == "version" else "left")
    for name in project.order():
        spec = project.spec(name)
        version = project.target(name).version
        listing.add_row(
            name,
            spec.strategy,
            ", ".join(spec.options.keys),
            "\n".join(source.describe() for source in spec.inputs.values()),
            Text("not built", style="dim") if version is None else str(version),
        )
    render.out().print(listing)
    undeclared = sorted(set(project.existing_tables()) - set(project.tables))
    if undeclared:
        render.out().print(
            f"In the warehouse but declared by no pipeline: {', '.join(undeclared)}",
            style="dim",
            markup=False,
        )


# -- maintenance ------------------------------------------------------------------------


@app.command()
def maintain(
    tables: Annotated[
        list[str] | None,
        typer.Argument(help="Tables to maintain (default: every declared table that exists)."),
    ] = None,
    retention_hours: Annotated[
        float | None,
        typer.Option(
            "--retention-hours", min=0, help="Keep unreferenced files this long (time travel)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Allow a retention under the 168-hour safety floor."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be done; change nothing.")
    ] = False,
) -> None:
    """Compact small files, z-order, checkpoint and vacuum tables."""
    from .maintain import maintain_tables

    if not maintain_tables(
        _load(), tables or None, retention_hours=retention_hours, force=force, dry_run=dry_run
    ):
        raise typer.Exit(1)


# -- demo ---------------------------------------------------------------------------------


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Build the demo project here (kept) instead of a temporary folder."
        ),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary project.")] = False,
) -> None:
    """Build a bronze -> silver -> gold shop pipeline twice: all, then only the changes."""
    from .demo import run_demo

    run_demo(directory, keep=keep, debug=OPTIONS.debug)


register_graph_commands(app, _load)  # headwater dag, headwater lineage
register_orchestrate_commands(app, _load)  # headwater serve, backfill, runs, status


app.add_typer(contract.app, name="contract")


# -- entry point ----------------------------------------------------------------------------


def main() -> None:
    try:
        app(prog_name="headwater")
    except HeadwaterError as exc:
        if OPTIONS.debug:
            render.err().print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        render.error(exc.message, exc.hint)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except Exception as exc:
        if OPTIONS.debug:
            render.err().print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        render.error(
            f"{type(exc).__name__}: {render.first_line(str(exc))}",
            None if OPTIONS.debug else "run with --debug for the traceback",
        )
        sys.exit(1)
