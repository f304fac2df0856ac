"""Measurement helpers shared by the benchmarks in `bench/`.

Each contestant runs in a fresh child process so that its peak memory is its
own: the parent reads the child's peak resident set size from the kernel
(`os.wait4` rusage, exact on Linux) and the child reports the wall time of the
measured operation itself, so interpreter start-up and imports are not timed.

The parent stays small on purpose (no pyarrow, DuckDB or delta-rs imports):
on Linux a child's `ru_maxrss` can include the parent's resident size at the
moment of `fork`/`vfork`, so a large parent would inflate every child's figure.
Children therefore also report their own high-water mark (`VmHWM`), which
counts only their own address space, as a cross-check.

Child side:

    from _common import Stopwatch, child_report
    with Stopwatch() as watch:
        do_the_work()
    child_report(watch.wall_s, watch.cpu_s, rows=...)

Parent side:

    m = run_measured([sys.executable, "child.py", ...])
    m.wall_s, m.peak_rss_bytes
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULT_ENV = "HW_BENCH_RESULT"
MIB = 1 << 20


class BenchError(RuntimeError):
    """A benchmark step failed; its message says which and why."""


@dataclass
class Measurement:
    """One run of one contestant in its own child process."""

    wall_s: float  # the measured operation, timed inside the child
    cpu_s: float  # CPU time of the operation, all threads (steadier than wall on a busy host)
    peak_rss_bytes: int  # the child's peak resident set size (kernel rusage)
    hwm_bytes: int  # the child's own VmHWM, as it reported it
    base_rss_bytes: int  # the child's resident size just before the operation
    process_s: float  # the child's whole life, start-up and imports included
    user_s: float
    sys_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / MIB


# -- child side ------------------------------------------------------------


def _status_kib(field_name: str) -> int:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS), or 0 where there is none."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def current_rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_self_bytes() -> int:
    return _status_kib("VmHWM") * 1024


class Stopwatch:
    """Wall and process CPU time (all threads) of a `with` block."""

    wall_s = 0.0
    cpu_s = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def child_report(wall_s: float, cpu_s: float, base_rss_bytes: int = 0, **extra: Any) -> None:
    """Called once by a measured child: hand its timing and facts to the parent."""
    path = os.environ.get(RESULT_ENV)
    payload = {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "hwm_bytes": peak_rss_self_bytes(),
        "base_rss_bytes": base_rss_bytes,
        "extra": extra,
    }
    if path is None:  # run by hand: show what would have been reported
        print(json.dumps(payload, indent=2, default=str))
        return
    with open(path, "w") as handle:
        json.dump(payload, handle, default=str)


# -- parent side -----------------------------------------------------------


def run_measured(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> Measurement:
    """Run `argv` in a fresh process and return its reported time and peak memory.

    The child must call `child_report` exactly once. Its stdout and stderr pass
    through. A non-zero exit, a timeout or a missing report raises BenchError.
    """
    with tempfile.NamedTemporaryFile(prefix="hw-bench-", suffix=".json", delete=False) as tmp:
        report_path = tmp.name
    child_env = dict(os.environ if env is None else env)
    child_env[RESULT_ENV] = report_path
    started = time.perf_counter()
    try:
        process = subprocess.Popen(list(argv), cwd=cwd, env=child_env)
        status, usage = _wait(process, timeout_s)
        elapsed = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        process.returncode = code  # reaped here, so Popen must not wait for it again
        if code != 0:
            raise BenchError(f"{' '.join(argv[1:3])} exited with status {code}")
        with open(report_path) as handle:
            text = handle.read()
        if not text:
            raise BenchError(f"{' '.join(argv[1:3])} finished without reporting")
        report = json.loads(text)
    finally:
        os.unlink(report_path)
    return Measurement(
        wall_s=float(report["wall_s"]),
        cpu_s=float(report["cpu_s"]),
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports kilobytes
        hwm_bytes=int(report["hwm_bytes"]),
        base_rss_bytes=int(report["base_rss_bytes"]),
        process_s=elapsed,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        extra=dict(report["extra"]),
    )


def _wait(process: subprocess.Popen[bytes], timeout_s: float | None) -> tuple[int, Any]:
    """`os.wait4` the child (its own rusage, not the sum over all children)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, 0 if deadline is None else os.WNOHANG)
        if pid == process.pid:
            return status, usage
        if deadline is not None and time.monotonic() > deadline:
            process.kill()
            os.wait4(process.pid, 0)
            process.returncode = -9
            raise BenchError(f"child {process.pid} timed out after {timeout_s:.0f}s")
        time.sleep(0.05)


def run_checked(argv: Sequence[str], *, cwd: str | Path | None = None) -> None:
    """Run an unmeasured helper step (data generation, verification); fail loudly."""
    code = subprocess.call(list(argv), cwd=cwd)
    if code != 0:
        raise BenchError(f"{' '.join(argv[1:3])} failed with status {code}")


# -- summaries -------------------------------------------------------------


@dataclass
class Repeats:
    """One contestant's measured runs of one scenario, summarised as a table shows them."""

    runs: list[Measurement] = field(default_factory=list, kw_only=True)
    loads: list[tuple[float, float, float]] = field(default_factory=list, kw_only=True)

    @property
    def wall_s(self) -> float:
        return median(m.wall_s for m in self.runs)

    @property
    def cpu_s(self) -> float:
        return median(m.cpu_s for m in self.runs)

    @property
    def peak_rss_bytes(self) -> int:
        return max(m.peak_rss_bytes for m in self.runs)

    @property
    def base_rss_bytes(self) -> int:
        return min(m.base_rss_bytes for m in self.runs)


def peer_python(venv: Path, requirements: Sequence[str]) -> Path:
    """The interpreter of a peer's own virtualenv (under bench/results/), made on first use.

    Peers live outside the project's venv so that their pins (e.g. an older
    python-dateutil) never change what Headwater runs with. The venv is reused
    while its requirement list is unchanged, and made afresh when it changes.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing {', '.join(requirements)} into {venv} (once)", flush=True)
    run_checked([sys.executable, "-m", "venv", "--clear", str(venv)])
    run_checked([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run_checked([str(python), "-m", "pip", "install", "--quiet", *requirements])
    stamp.write_text(wanted)
    return python


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers depend on: host, cores, memory, load and library versions."""
    mem_kib = 0
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "load_average": load_average(),
        "packages": versions,
    }


def source_revision(repo: str | Path) -> str:
    """The commit the measured code is at, marked `+dirty` when its sources have changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def write_json(path: str | Path, data: Any) -> None:
    """Write results as JSON (dataclasses become dicts), creating the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_plain(data), indent=2, default=str) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Measurement):
        return {**asdict(value), "peak_rss_mib": round(value.peak_rss_mib, 1)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numeric columns right-aligned, None shown as a dash."""
    raw = [list(row) for row in rows]
    numeric = [
        all(row[i] is None or isinstance(row[i], int | float) for row in raw)
        for i in range(len(headers))
    ]
    body = [[_cell(v) for v in row] for row in raw]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    rule = ["-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric, strict=True)]
    lines = [_line(list(headers), widths, [False] * len(headers)), _line(rule, widths, numeric)]
    lines += [_line(row, widths, numeric) for row in body]
    return "\n".join(lines)


def _line(cells: list[str], widths: list[int], right: list[bool]) -> str:
    padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
    return "| " + " | ".join(padded) + " |"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
