"""`headwater serve`, `backfill`, `runs` and `status`: the orchestrator's doors."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from . import render

if TYPE_CHECKING:
    from ..orchestrate.history import RunRecord
    from ..project import Project


class Format(StrEnum):
    table = "table"
    json = "json"


class OnFailure(StrEnum):
    stop = "stop"
    continue_ = "continue"


def register_orchestrate_commands(app: typer.Typer, load: Callable[[], Project]) -> None:
    """Add serve, backfill, runs and status to the `headwater` app."""

    @app.command()
    def serve(
        workers: Annotated[
            int | None, typer.Option("--workers", min=1, help="Runs at a time.")
        ] = None,
        max_runs: Annotated[
            int | None,
            typer.Option("--max-runs", min=1, help="Stop after this many runs have finished."),
        ] = None,
    ) -> None:
        """Run the scheduler: triggers, retries, backfills, SLAs, until stopped (Ctrl-C)."""
        from ..orchestrate.scheduler import Scheduler

        project = load()
        _log_alerts()
        scheduler = Scheduler(project, workers=workers)
        err = render.err()
        scheduled = [n for n in project.order() if project.spec(n).orchestration.trigger]
        err.print(
            f"serving {len(scheduled)} scheduled table(s) of {len(project.tables)} "
            f"with {scheduler.workers} worker(s); metadata: {scheduler.meta.where}; Ctrl-C stops",
            markup=False,
            highlight=False,
        )
        scheduler.on_finish.append(lambda run, result: _print_run(run))
        stop = threading.Event()
        previous = _on_signals(stop)
        try:
            scheduler.serve(stop, max_runs=max_runs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        err.print("scheduler stopped", markup=False)

    @app.command()
    def backfill(
        table: Annotated[str, typer.Argument(help="layer.table")],
        start: Annotated[str, typer.Option("--start", help="First interval (a date or time).")],
        end: Annotated[str, typer.Option("--end", help="End of the range (exclusive).")],
        parallel: Annotated[
            int, typer.Option("--parallel", min=1, help="Intervals running at once.")
        ] = 1,
        on_failure: Annotated[
            OnFailure,
            typer.Option(
                "--on-failure", help="stop: cancel what has not started; continue: run the rest."
            ),
        ] = OnFailure.stop,
        with_downstream: Annotated[
            bool, typer.Option("--with-downstream", help="Also rebuild the tables downstream.")
        ] = False,
        rerun: Annotated[
            bool, typer.Option("--rerun", help="Run intervals already complete again.")
        ] = False,
        throttle: Annotated[
            str, typer.Option("--throttle", help="At most one interval start per this long.")
        ] = "0s",
        interval: Annotated[
            str | None,
            typer.Option("--interval", help="Interval length when the table declares none."),
        ] = None,
        submit_only: Annotated[
            bool,
            typer.Option("--submit", help="Only record the plan; a running `serve` executes it."),
        ] = False,
    ) -> None:
        """Rebuild a range of a table's intervals; resumes where a stopped one left off."""
        from .._units import parse_duration
        from ..orchestrate import backfill as backfills
        from ..orchestrate.scheduler import Scheduler

        project = load()
        _log_alerts()
        request = backfills.BackfillRequest.of(
            table,
            start,
            end,
            parallel=parallel,
            on_failure=on_failure.value,
            with_downstream=with_downstream,
            rerun=rerun,
            throttle=parse_duration(throttle, "--throttle"),
            interval=parse_duration(interval, "--interval") if interval else None,
        )
        backfills.plan(project, request)  # bad options fail before anything is written
        scheduler = Scheduler(project, triggers=False, workers=max(parallel, 1))
        err = render.err()
        if submit_only:
            made = backfills.submit(scheduler, request, hand_over=True)
            scheduler.meta.close()
            err.print(
                f"backfill {made.backfill_id} submitted: {made.planned} run(s); "
                "a running `headwater serve` executes it",
                markup=False,
            )
            return
        scheduler.on_finish.append(lambda run, result: _print_run(run))
        with scheduler:
            made, status = backfills.run(scheduler, request)
            rows = backfills.report(scheduler.history, made.backfill_id)
        verb = "resumed" if made.resumed else "ran"
        render.out().print(_backfill_table(rows, f"backfill {made.backfill_id} ({verb}): {status}"))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        err.print(f"{len(rows)} interval run(s): {summary}", markup=False)
        if status != "succeeded":
            raise typer.Exit(1)

    @app.command()
    def runs(
        table: Annotated[str | None, typer.Argument(help="Only this table.")] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest runs.")] = 30,
        status: Annotated[
            str | None, typer.Option("--status", help="Only runs in this status.")
        ] = None,
        backfill_id: Annotated[
            str | None, typer.Option("--backfill", help="Only the runs of this backfill.")
        ] = None,
        fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
    ) -> None:
        """List runs from the run history: status, interval, attempts, rows, version."""
        from ..orchestrate.history import History
        from ..orchestrate.metadata import open_metadata

        project = load()
        if table is not None:
            project.spec(table)
        history = History(open_metadata(project))
        found = history.runs(
            table, status=[status] if status else None, backfill_id=backfill_id, limit=limit
        )
        if fmt is Format.json:
            print(json.dumps([_run_json(r) for r in found], indent=2))
            return
        if not found:
            render.out().print("no runs recorded yet (start `headwater serve`)", markup=False)
            return
        listing = render.new_table("runs (newest first)")
        for column in (
            "run",
            "table",
            "kind",
            "interval",
            "status",
            "tries",
            "rows in",
            "rows out",
            "version",
            "seconds",
            "error",
        ):
            listing.add_column(
                column,
                justify="right"
                if column in ("tries", "rows in", "rows out", "version", "seconds")
                else "left",
            )
        for r in found:
            listing.add_row(
                r.run_id,
                r.table,
                r.kind,
                _interval(r),
                _status(r.status),
                str(r.attempts),
                render.number(r.rows_in),
                render.number(r.rows_out),
                "" if r.version is None else str(r.version),
                "" if r.seconds is None else f"{r.seconds:.2f}",
                render.first_line(r.error or ""),
            )
        render.out().print(listing)

    @app.command()
    def status(
        fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
    ) -> None:
        """Per table: last run, freshness, SLA state and next run."""
        from ..orchestrate.clock import SystemClock
        from ..orchestrate.metadata import open_metadata
        from ..orchestrate.status import table_status

        project = load()
        states = table_status(project, open_metadata(project), SystemClock())
        if fmt is Format.json:
            print(json.dumps([_status_json(s) for s in states], indent=2, default=str))
            return
        listing = render.new_table("tables")
        for column in ("table", "trigger", "last run", "freshness", "SLA", "next run", "alerts"):
            listing.add_column(column)
        for s in states:
            last = (
                Text("never run", style="dim")
                if s.last is None
                else Text.assemble(
                    _status(s.last.status), f" {_when(s.last.finished_at or s.last.created_at)}"
                )
            )
            sla = (
                Text("-", style="dim")
                if not s.slas
                else Text(
                    "; ".join(
                        ("BREACHED " if st.breached else "ok ")
                        + st.sla.describe()
                        + (f" ({st.observed * 100:.1f}%)" if st.observed is not None else "")
                        for st in s.slas
                    ),
                    style="red"
                    if any(st.breached or st.slo_breached for st in s.slas)
                    else "green",
                )
            )
            listing.add_row(
                s.table,
                s.trigger,
                last,
                "-" if s.freshness is None else _age(s.freshness),
                sla,
                s.next_run,
                Text("\n".join(s.alerts), style="red") if s.alerts else "",
            )
        render.out().print(listing)


# -- helpers ---------------------------------------------------------------------------


def _log_alerts() -> None:
    """Alerts and scheduler messages reach the terminal even without --debug."""
    for name in ("headwater.alerts", "headwater.orchestrate"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def _on_signals(stop: threading.Event) -> dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _print_run(run: RunRecord) -> None:
    where = f" [{_interval(run)}]" if run.interval else ""
    line = f"{run.table}{where}: {run.status}"
    if run.version is not None and run.status == "committed":
        line += f" version {run.version}"
    if run.rows_in:
        line += f" ({run.rows_in:,} rows in)"
    if run.error and run.status not in ("committed", "up-to-date"):
        line += f" - {render.first_line(run.error)}"
    render.err().print(line, markup=False, highlight=False)


def _interval(run: RunRecord) -> str:
    if run.interval is None:
        return ""
    start, end = run.interval.start, run.interval.end
    if end - start == timedelta(days=1) and start.hour == 0 and start.minute == 0:
        return start.date().isoformat()
    return f"{start.isoformat(timespec='minutes')} .. {end.isoformat(timespec='minutes')}"


def _status(status: str) -> Text:
    style = {
        "committed": "green",
        "up-to-date": "green",
        "failed": "red",
        "upstream-failed": "red",
        "cancelled": "yellow",
        "retrying": "yellow",
        "waiting": "yellow",
        "running": "cyan",
        "skipped": "dim",
    }.get(status, "")
    return Text(status, style=style)


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _run_json(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "table": r.table,
        "kind": r.kind,
        "trigger": r.trigger,
        "interval": r.interval.as_json() if r.interval else None,
        "covers": r.covers.as_json() if r.covers else None,
        "status": r.status,
        "attempts": r.attempts,
        "failure": r.failure,
        "error": r.error,
        "created_at": _when(r.created_at),
        "started_at": _when(r.started_at),
        "finished_at": _when(r.finished_at),
        "seconds": r.seconds,
        "rows_in": r.rows_in,
        "rows_out": r.rows_out,
        "version": r.version,
        "positions": r.positions,
        "backfill_id": r.backfill_id,
    }


def _status_json(s: Any) -> dict[str, Any]:
    return {
        "table": s.table,
        "trigger": s.trigger,
        "last_run": _run_json(s.last) if s.last else None,
        "last_good_at": _when(s.last_good.finished_at) if s.last_good else None,
        "freshness_seconds": None if s.freshness is None else s.freshness.total_seconds(),
        "slas": [
            {
                "sla": st.sla.describe(),
                "breached": st.breached,
                "detail": st.detail,
                "slo_observed": st.observed,
                "slo_breached": st.slo_breached,
            }
            for st in s.slas
        ],
        "next_run": s.next_run,
        "alerts": s.alerts,
    }


def _backfill_table(rows: list[Any], title: str) -> Any:
    listing = render.new_table(title)
    for column in (
        "interval",
        "table",
        "status",
        "tries",
        "rows in",
        "rows out",
        "version",
        "error",
    ):
        listing.add_column(
            column,
            justify="right" if column in ("tries", "rows in", "rows out", "version") else "left",
        )
    for row in rows:
        interval = row.interval
        label = ""
        if interval is not None:
            start, end = interval.start, interval.end
            label = (
                start.date().isoformat()
                if end - start == timedelta(days=1) and start.hour == 0
                else f"{start.isoformat(timespec='minutes')} .. {end.isoformat(timespec='minutes')}"
            )
        listing.add_row(
            label,
            row.table,
            _status(row.status),
            str(row.attempts),
            render.number(row.rows_in),
            render.number(row.rows_out),
            "" if row.version is None else str(row.version),
            render.first_line(row.error or ""),
        )
    return listing
