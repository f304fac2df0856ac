"""Orchestrator overhead: Headwater's scheduler vs Dagster vs Prefect, side by side.

    .venv/bin/python bench/orchestrate/run.py                 # 1,000 tables, 3 repeats
    .venv/bin/python bench/orchestrate/run.py --tables 200 --repeat 1

One graph of N trivial tables — a root, N-2 tables reading it (fan-out), one
sink reading all of those (fan-in) — run once from end to end by each
contestant in a fresh child process. Every task does the same trivial work,
timed inside the task. Scheduler overhead per task = (wall time of the graph
run - summed work) / tasks.

- headwater: `headwater.orchestrate.scheduler.Scheduler` with its real SQLite
  (WAL) metadata DB, run history, leases and on_upstream triggers; the root is
  requested, the rest cascade. Its executor does the trivial work instead of a
  Delta write (the engine's own cost is measured by the other benchmarks).
- dagster: software-defined assets, `dagster.materialize` (in-process
  executor) with a persistent SQLite instance under a temporary DAGSTER_HOME.
- prefect: a local `@flow` calling a `@task` per table (the flow is run once
  before timing, to start Prefect's local API server and database).

Dagster and Prefect run from their own virtualenv, bench/results/orchestrate-peers-venv,
which this script creates on first use (or pass `--peers-python`): installing them
into the project's venv would downgrade python-dateutil (4.0 -> 2.9), which
croniter depends on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    BenchError,
    Measurement,
    load_average,
    machine_info,
    markdown_table,
    median,
    peer_python,
    run_measured,
    source_revision,
    write_json,
)

CHILD = Path(__file__).resolve().parent / "child.py"
RESULTS = BENCH / "results"
# fastapi capped: newer releases dropped Body(min_items=...), which Prefect 3.8 still uses.
PEER_REQUIREMENTS = ("dagster==1.13.*", "prefect==3.8.*", "fastapi<0.140")
GOAL = 10.0  # Headwater's overhead per task at least 10x lower than each peer's


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "from importlib import metadata\n"
        "for p in ('dagster', 'prefect'):\n"
        "    try: print(p, metadata.version(p))\n"
        "    except Exception: print(p, 'missing')\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["headwater", "dagster", "prefect"], action="append")
    parser.add_argument("--peers-python", type=Path, help="default: a venv made on first use")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    contestants = args.only or ["headwater", "dagster", "prefect"]
    if any(c != "headwater" for c in contestants) and args.peers_python is None:
        args.peers_python = peer_python(RESULTS / "orchestrate-peers-venv", PEER_REQUIREMENTS)
    runs: dict[str, list[Measurement]] = {c: [] for c in contestants}
    loads = []
    failures: list[str] = []
    for repeat in range(args.repeat):
        # Alternate who goes first, so nobody always inherits a warmer machine.
        order = contestants if repeat % 2 == 0 else list(reversed(contestants))
        for name in order:
            python = sys.executable if name == "headwater" else str(args.peers_python)
            loads.append(load_average())
            print(f"[{repeat + 1}/{args.repeat}] {name}: {args.tables} tables", flush=True)
            argv = [python, str(CHILD), name, "--tables", str(args.tables)]
            try:
                m = run_measured(argv, timeout_s=args.timeout)
            except BenchError as exc:
                # Prefect's own local API server answers 503 now and then on a loaded
                # machine; one more try, reported, rather than losing the whole run.
                print(f"    {exc}; trying once more", flush=True)
                failures.append(f"{name} repeat {repeat + 1}: {exc}")
                m = run_measured(argv, timeout_s=args.timeout)
            if int(m.extra["tasks"]) != args.tables:
                raise BenchError(f"{name} ran {m.extra['tasks']} tasks, not {args.tables}")
            runs[name].append(m)
            print(f"    wall {m.wall_s:.2f}s, work {m.extra['work_s']:.4f}s", flush=True)

    def overhead_ms(m: Measurement) -> float:
        return (m.wall_s - float(m.extra["work_s"])) / args.tables * 1000

    def cpu_ms(m: Measurement) -> float:
        return (m.cpu_s - float(m.extra["work_s"])) / args.tables * 1000

    base = median(overhead_ms(m) for m in runs["headwater"]) if "headwater" in runs else None
    rows = []
    for name in contestants:
        wall = median(m.wall_s for m in runs[name])
        over = median(overhead_ms(m) for m in runs[name])
        cpu = median(cpu_ms(m) for m in runs[name])
        ratio = over / base if base else None
        rows.append([name, args.tables, wall, over, cpu, ratio])
    table = markdown_table(
        ["contestant", "tables", "wall s", "overhead ms/task", "cpu ms/task", "x Headwater"], rows
    )
    print()
    print(table)
    if base:
        for name in contestants:
            if name != "headwater":
                ratio = median(overhead_ms(m) for m in runs[name]) / base
                verdict = "met" if ratio >= GOAL else "NOT met"
                print(f"goal >= {GOAL:.0f}x lower overhead than {name}: {ratio:.1f}x ({verdict})")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"orchestrate-{stamp}.json"
    write_json(
        out,
        {
            "benchmark": "orchestrate",
            "tables": args.tables,
            "machine": machine_info(["headwater", "croniter", "psycopg"]),
            "peers": peer_versions(args.peers_python) if args.peers_python is not None else {},
            "revision": source_revision(BENCH.parent),
            "loads": loads,
            "failed_attempts": failures,
            "runs": runs,
            "table": table,
        },
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
