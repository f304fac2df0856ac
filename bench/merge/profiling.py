"""Where Headwater's merge spends time and memory (child side of `run.py --profile`).

`phases`: the engine's steps are wrapped (from outside; the engine is not
changed) to record, per step, calls, inclusive and self time, and the peak RSS
reached inside it. The kernel's high-water mark is reset on entering a step
(`/proc/self/clear_refs`), so each step's peak is its own, not the process's.

`cprofile`: the whole merge under cProfile, top functions by cumulative and by
own time. Time inside DuckDB, Arrow and delta-rs is charged to the Python call
that entered it.
"""

from __future__ import annotations

import cProfile
import functools
import io
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from _common import MIB, current_rss_bytes, peak_rss_self_bytes
from merge.contestants import headwater_merge


@dataclass
class _Frame:
    path: tuple[str, ...]
    started: float
    child_s: float = 0.0
    peak: int = 0


@dataclass
class _Stats:
    calls: int = 0
    total_s: float = 0.0
    self_s: float = 0.0
    peak: int = 0
    rss_after: int = 0


@dataclass
class Tracker:
    stack: list[_Frame] = field(default_factory=list)
    stats: dict[tuple[str, ...], _Stats] = field(default_factory=dict)
    queries: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def query(self, sql: str, phase: str, seconds: float) -> None:
        entry = self.queries.setdefault((phase, " ".join(sql.split())), [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def enter(self, name: str) -> None:
        hwm = peak_rss_self_bytes()
        for frame in self.stack:
            frame.peak = max(frame.peak, hwm)
        _reset_peak()
        path = (*self.stack[-1].path, name) if self.stack else (name,)
        self.stats.setdefault(path, _Stats())  # listed in order of first entry
        self.stack.append(_Frame(path, time.perf_counter()))

    def leave(self) -> None:
        frame = self.stack.pop()
        elapsed = time.perf_counter() - frame.started
        frame.peak = max(frame.peak, peak_rss_self_bytes())
        if self.stack:
            self.stack[-1].child_s += elapsed
            self.stack[-1].peak = max(self.stack[-1].peak, frame.peak)
        entry = self.stats[frame.path]
        entry.calls += 1
        entry.total_s += elapsed
        entry.self_s += elapsed - frame.child_s
        entry.peak = max(entry.peak, frame.peak)
        entry.rss_after = current_rss_bytes()

    def report(self, wall_s: float) -> str:
        lines = [
            f"Headwater merge by phase (wall {wall_s:.2f}s; peak = highest RSS inside the phase)",
            "",
            f"{'phase':<58} {'calls':>5} {'total s':>8} {'self s':>7} {'peak MiB':>9} {'RSS after':>9}",
        ]
        for path, s in self.stats.items():
            label = "  " * (len(path) - 1) + path[-1]
            lines.append(
                f"{label:<58} {s.calls:>5} {s.total_s:>8.2f} {s.self_s:>7.2f} "
                f"{s.peak / MIB:>9.0f} {s.rss_after / MIB:>9.0f}"
            )
        if self.queries:
            lines += ["", "DuckDB queries by time (the step that ran them; SQL shortened):", ""]
            ranked = sorted(self.queries.items(), key=lambda item: -item[1][1])
            for (phase, sql), (calls, seconds) in ranked[:12]:
                short = sql if len(sql) <= 150 else sql[:147] + "..."
                lines.append(f"{seconds:>7.2f}s {int(calls):>3}x  [{phase}] {short}")
        return "\n".join(lines)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # then peaks are the process's peak so far: still an upper bound


def _wrap(tracker: Tracker, owner: Any, attr: str, name: str) -> None:
    original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    if isinstance(original, cached_property):
        func = _wrapped(tracker, original.func, name)
        replacement = cached_property(func)
        replacement.__set_name__(owner, attr)
        setattr(owner, attr, replacement)
        return
    setattr(owner, attr, _wrapped(tracker, original, name))


def _wrapped(tracker: Tracker, func: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        tracker.enter(name)
        try:
            return func(*args, **kwargs)
        finally:
            tracker.leave()

    return inner


def instrument(tracker: Tracker) -> None:
    """Wrap the steps of a merge run: engine, source, strategy, writer, commit."""
    from headwater.engine import run as engine_run
    from headwater.sources.files import FilesSource
    from headwater.tables.delta import DeltaTarget
    from headwater.tables.strategies._keyed import KeyedStrategy
    from headwater.tables.strategies.base import WriteContext
    from headwater.tables.writer import FileWriter

    steps: list[tuple[Any, str, str]] = [
        (engine_run.Runner, "_attempt", "Runner._attempt"),
        (engine_run.Runner, "_stage", "Runner._stage"),
        (engine_run.Runner, "_commit", "Runner._commit"),
        (engine_run, "read_committed_state", "read_committed_state"),
        (engine_run, "find_commit_version", "find_commit_version"),
        (engine_run, "plan_schema", "plan_schema"),
        (engine_run, "conform_batch", "conform_batch"),
        (engine_run, "commit", "commit (delta-rs transaction)"),
        (FilesSource, "_read_file", "FilesSource._read_file"),
        (DeltaTarget, "load", "DeltaTarget.load"),
        (DeltaTarget, "add_actions", "DeltaTarget.add_actions"),
        (DeltaTarget, "dataset", "DeltaTarget.dataset"),
        (WriteContext, "live_files", "WriteContext.live_files"),
        (KeyedStrategy, "stage", "KeyedStrategy.stage"),
        (KeyedStrategy, "_stage", "KeyedStrategy._stage"),
        (KeyedStrategy, "_check_null_keys", "_check_null_keys"),
        (KeyedStrategy, "_prepare_source", "_prepare_source"),
        (KeyedStrategy, "_candidate_files", "_candidate_files"),
        (KeyedStrategy, "_locate", "_locate"),
        (KeyedStrategy, "plan", "plan"),
        (KeyedStrategy, "skipped", "skipped"),
        (KeyedStrategy, "_rewrite_file", "_rewrite_file"),
        (FileWriter, "write", "FileWriter.write"),
        (FileWriter, "_flush", "FileWriter._flush (parquet)"),
        (FileWriter, "_finish", "FileWriter._finish (footer, stats)"),
    ]
    for owner, attr, name in steps:
        _wrap(tracker, owner, attr, name)
    _time_queries(tracker)


def _time_queries(tracker: Tracker) -> None:
    """Time each statement DuckDB's relation API runs (materialising results included)."""
    try:
        from duckdb import _seam
    except ImportError:
        return  # another DuckDB layout: the phase table still stands
    submit = _seam.submit

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return submit(*args, **kwargs)
        finally:
            phase = tracker.stack[-1].path[-1] if tracker.stack else "-"
            tracker.query(str(args[1]), phase, time.perf_counter() - started)

    _seam.submit = timed


def run(kind: str, root: Path, upsert: Path, out: Path) -> None:
    if kind == "phases":
        tracker = Tracker()
        instrument(tracker)
        timed = headwater_merge(root, upsert)
        out.write_text(tracker.report(timed.watch.wall_s) + f"\n\nmetrics: {timed.metrics}\n")
        return
    import headwater.engine.run  # noqa: F401 - imports are not part of the merge

    profiler = cProfile.Profile()
    timed = profiler.runcall(headwater_merge, root, upsert)
    text = io.StringIO()
    text.write(
        f"Headwater merge under cProfile (wall {timed.watch.wall_s:.2f}s with profiling overhead)\n"
    )
    for order in ("cumulative", "tottime"):
        text.write(f"\n--- top 30 by {order} ---\n")
        stats = pstats.Stats(profiler, stream=text)
        stats.strip_dirs().sort_stats(order).print_stats(30)
    out.write_text(text.getvalue())
