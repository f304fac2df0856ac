"""Live progress of a run, fed by the Runner's progress callback."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..engine.interval import Interval
from ..engine.run import FINISHED, Runner, TableRun
from ..project import Project


class RunProgress:
    """One line per table: a spinner while it works, then its last step.

    Tables of independent branches run side by side, so each table has its own
    line until the runner reports it finished. On a terminal the lines are live
    and vanish once the summary is printed; piped, each step is one log line.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.fields[table]}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()  # tables report from their own threads

    def __enter__(self) -> RunProgress:
        if self.live:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live:
            self._progress.stop()

    def __call__(self, table: str, message: str) -> None:
        with self._lock:
            if not self.live:
                if message != FINISHED:
                    self.console.print(
                        Text.assemble((table, "bold"), f": {message}"), soft_wrap=True
                    )
                return
            task = self._tasks.get(table)
            if message == FINISHED:
                if task is not None:
                    self._progress.update(task, completed=1)
            elif task is None:
                self._tasks[table] = self._progress.add_task(message, total=1, table=table)
            else:
                self._progress.update(task, description=message)


def run_with_progress(
    project: Project,
    tables: list[str] | None,
    console: Console,
    *,
    full_refresh: bool = False,
    interval: Interval | None = None,
) -> list[TableRun]:
    with RunProgress(console) as progress:
        runner = Runner(project, full_refresh=full_refresh, progress=progress, interval=interval)
        return runner.run(tables or None)


def current_versions(project: Project, results: list[TableRun]) -> dict[str, int | None]:
    """The version each table the run did not commit to is at (None: not built)."""
    return {
        r.table: project.target(r.table).version
        for r in results
        if r.version is None and r.status == "up-to-date"
    }
