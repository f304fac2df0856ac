"""Apache Flink (PyFlink, local mini cluster, Flink SQL) running one Nexmark query.

    <flink venv>/bin/python flink_child.py ROOT QUERY OUT [--parallelism 2] [--checkpoint 1s]

Streaming mode, exactly-once checkpoints, the Nexmark suite's SQL, the events
as one CSV file per stream (the formats PyFlink ships: no Parquet; one file,
because Flink's file source reads the files of a folder in no fixed order and
its watermark is per reader, not per file, so a file read after a later one
would be late and dropped by the windows) and a CSV filesystem
sink under OUT (committed on checkpoints, like Headwater's Delta commits), so
the result can be checked against the floor. Flink runs in a JVM started by
PyFlink: its CPU time and peak memory are read from /proc and added to this
process's own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from queries import FLINK, FLINK_SINKS, READS, flink_source  # noqa: E402

from _common import child_report, current_rss_bytes, peak_rss_self_bytes  # noqa: E402

CLOCK = os.sysconf("SC_CLK_TCK")


def _descendants() -> list[int]:
    """Processes started by this one (the JVM of PyFlink's gateway), recursively."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except OSError:
            continue
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                found.append(pid)
                frontier.append(pid)
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK
    except OSError:
        return 0.0


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("query")
    parser.add_argument("out", type=Path)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--checkpoint", default="1s")
    args = parser.parse_args()

    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("execution.checkpointing.interval", args.checkpoint)
    config.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    # Checkpoints go to local files (the default, in the JobManager's memory, caps state at 5 MB).
    checkpoints = args.out.resolve().parent / f"{args.out.name}.checkpoints"
    config.set("execution.checkpointing.storage", "filesystem")
    config.set("execution.checkpointing.dir", f"file://{checkpoints}")
    # A failed checkpoint fails the job instead of retrying forever.
    config.set("execution.checkpointing.tolerable-failed-checkpoints", "0")
    # One file per stream: one source subtask reads it, the other has no split and
    # finishes at once, which releases its hold on the watermark.
    for stream in READS[args.query]:
        env.execute_sql(flink_source(stream, str(args.root.resolve() / "flink" / stream)))
    columns = ", ".join(
        f"`{c.split(' ', 1)[0]}` {c.split(' ', 1)[1]}" for c in FLINK_SINKS[args.query].split(", ")
    )
    env.execute_sql(
        f"CREATE TABLE sink ({columns}) WITH ('connector' = 'filesystem', "
        f"'path' = 'file://{args.out.resolve()}', 'format' = 'csv')"
    )
    jvms = _descendants()
    cpu_before = time.process_time() + sum(_cpu_seconds(p) for p in jvms)
    base = current_rss_bytes() + sum(_hwm(p) for p in jvms)
    started = time.perf_counter()
    env.execute_sql(f"INSERT INTO sink {FLINK[args.query]}").wait()
    wall = time.perf_counter() - started
    jvms = _descendants()
    cpu = time.process_time() + sum(_cpu_seconds(p) for p in jvms) - cpu_before
    total_hwm = peak_rss_self_bytes() + sum(_hwm(p) for p in jvms)
    child_report(wall, cpu, base, total_hwm_bytes=total_hwm, jvm_processes=len(jvms))


if __name__ == "__main__":
    main()
