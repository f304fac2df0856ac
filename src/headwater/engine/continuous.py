"""Continuous mode: run tables again and again on a trigger interval.

Each cycle is an ordinary run (its own run id and timestamp), so every commit
follows the same protocol as a one-off run; a table with nothing new makes no
commit. SIGINT or SIGTERM ends the loop after the cycle under way, and a table
that fails in one cycle is simply tried again in the next.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType

from ..project import Project
from .run import Progress, Runner, TableRun

Report = Callable[[int, list[TableRun]], None]


def run_continuously(
    project: Project,
    names: Iterable[str] | None = None,
    *,
    trigger_seconds: float = 1.0,
    cycles: int | None = None,
    stop: threading.Event | None = None,
    on_cycle: Report | None = None,
    progress: Progress | None = None,
) -> int:
    """Run until stopped (or `cycles` cycles); returns the number of cycles run."""
    stop = stop or threading.Event()
    selected = list(names) if names else None
    previous = _install_signal_handlers(stop)
    done = 0
    try:
        while not stop.is_set() and (cycles is None or done < cycles):
            started = time.monotonic()
            results = Runner(project, progress=progress).run(selected)
            done += 1
            if on_cycle is not None:
                on_cycle(done, results)
            # The trigger interval counts from the start of a cycle, like a fixed-rate timer.
            stop.wait(max(0.0, trigger_seconds - (time.monotonic() - started)))
    finally:
        _restore_signal_handlers(previous)
    return done


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]
