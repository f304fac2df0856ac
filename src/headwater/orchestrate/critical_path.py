"""The critical path of the table graph, from recent run durations.

Each table's duration is the median of its last good runs. A table can start
once all its inputs are done; the graph's length is its longest chain. A
table's *slack* is how much longer it could take without making the whole
graph later; tables with no slack form the critical path — speed those up to
make the data arrive earlier.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    table: str
    seconds: float  # typical duration (median of recent good runs; 0 when never run)
    runs: int  # how many runs the figure is based on
    start: float  # earliest start, seconds after the graph starts
    finish: float
    slack: float


@dataclass(frozen=True)
class CriticalPath:
    path: list[str]
    length: float
    timings: dict[str, Timing]


def compute(
    order: Sequence[str],
    upstream: Mapping[str, Sequence[str]],
    durations: Mapping[str, Sequence[float]],
) -> CriticalPath:
    """`order`: tables upstream first; `durations`: recent good-run seconds per table."""
    typical = {t: statistics.median(durations[t]) if durations.get(t) else 0.0 for t in order}
    start: dict[str, float] = {}
    finish: dict[str, float] = {}
    for table in order:
        start[table] = max((finish[u] for u in upstream.get(table, ()) if u in finish), default=0.0)
        finish[table] = start[table] + typical[table]
    length = max(finish.values(), default=0.0)
    downstream: dict[str, list[str]] = {t: [] for t in order}
    for table in order:
        for u in upstream.get(table, ()):
            if u in downstream:
                downstream[u].append(table)
    latest_finish: dict[str, float] = {}
    for table in reversed(order):
        latest_finish[table] = min(
            (latest_finish[d] - typical[d] for d in downstream[table]), default=length
        )
    timings = {
        t: Timing(
            t,
            typical[t],
            len(durations.get(t, ())),
            start[t],
            finish[t],
            max(0.0, latest_finish[t] - finish[t]),
        )
        for t in order
    }
    # Walk back from the table that finishes last along inputs that finish last.
    path: list[str] = []
    if order:
        # Ties go to the table further down the graph, so the path spans it.
        index = {t: i for i, t in enumerate(order)}
        step: str | None = max(order, key=lambda t: (finish[t], index[t]))
        while step is not None:
            path.append(step)
            inputs = [u for u in upstream.get(step, ()) if u in finish]
            step = max(inputs, key=lambda u: finish[u]) if inputs else None
        path.reverse()
    return CriticalPath(path, length, timings)


def from_history(project: object, history: object, last: int = 10) -> CriticalPath:
    """The critical path of a project's graph from its run history."""
    from ..project import Project
    from .history import History

    assert isinstance(project, Project) and isinstance(history, History)
    order = project.order()
    upstream = {
        n: [u for u in project.spec(n).upstream_tables() if u in project.tables] for n in order
    }
    return compute(order, upstream, {t: history.durations(t, last) for t in order})


def render(result: CriticalPath) -> list[str]:
    """Lines for `headwater dag --critical-path`."""
    if not result.timings:
        return ["no tables declared"]
    lines = [
        f"critical path ({_s(result.length)}): " + " -> ".join(result.path),
        "",
    ]
    width = max(len(t) for t in result.timings)
    lines.append(
        f"  {'table':<{width}}  {'typical':>8}  {'start':>8}  {'finish':>8}  {'slack':>8}  runs"
    )
    on_path = set(result.path)
    for t in sorted(result.timings.values(), key=lambda x: (x.start, x.table)):
        mark = "*" if t.table in on_path else " "
        lines.append(
            f"{mark} {t.table:<{width}}  {_s(t.seconds):>8}  {_s(t.start):>8}  {_s(t.finish):>8}  "
            f"{_s(t.slack):>8}  {t.runs}"
        )
    if any(t.runs == 0 for t in result.timings.values()):
        lines.append("")
        lines.append("(tables without a good run in the history count as 0 s)")
    return lines


def _s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.2f}s"


def critical_path_lines(project: object) -> list[str]:
    """`headwater dag --critical-path`: the project's critical path from its run history."""
    from ..project import Project
    from .history import History
    from .metadata import open_metadata

    assert isinstance(project, Project)
    return render(from_history(project, History(open_metadata(project))))
