"""Child-process steps of the CDC benchmark (run.py starts them; never run in-process).

child.py drain      PROJECT            one `headwater run` of every table (Runner), timed
child.py continuous PROJECT --trigger S --ready FILE --stop FILE
                                       `headwater run --continuous` until FILE exists, timed
child.py profile    PROJECT OUT        the drain under cProfile
child.py phases     PROJECT OUT        a drain with the CDC steps timed (no profiler overhead)
child.py verify     PROJECT KIND OUT   compare the Delta tables with the source tables
child.py lag        PROJECT OUT        end-to-end lag of every change (truth slot + Delta logs)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `cdc` importable

from _common import Stopwatch, child_report, current_rss_bytes  # noqa: E402


def drain(root: Path) -> None:
    from headwater import Project, Runner

    project = Project.load(root)
    base = current_rss_bytes()
    with Stopwatch() as watch:
        results = Runner(project).run()
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise SystemExit(f"{failed[0].table}: {failed[0].error}")
    child_report(
        watch.wall_s,
        watch.cpu_s,
        base,
        commits={r.table: r.commits for r in results},
        rows={r.table: dict(r.metrics) for r in results},
    )


def profile(root: Path, out: Path, cycles: int, trigger: float) -> None:
    """A drain (or `cycles` micro-batch cycles) under cProfile, tables one after the other."""
    import cProfile
    import pstats
    import time

    from headwater import Project, Runner

    project = Project.load(root)
    profiler = cProfile.Profile()
    with Stopwatch() as watch:
        for _ in range(max(1, cycles)):
            started = time.monotonic()
            runner = Runner(project)  # a cycle of continuous mode is a new run
            for name in project.order(None):  # in this thread: cProfile sees one thread
                profiler.runcall(runner.run_table, name)
            if cycles:
                time.sleep(max(0.0, trigger - (time.monotonic() - started)))
    with out.open("w") as handle:
        handle.write(f"wall {watch.wall_s:.2f}s cpu {watch.cpu_s:.2f}s\n")
        stats = pstats.Stats(profiler, stream=handle)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(35)
    child_report(watch.wall_s, watch.cpu_s)


def phases(root: Path, out: Path, cycles: int = 0, trigger: float = 1.0) -> None:
    """A drain (or `cycles` micro-batch cycles), tables one after the other, with the
    CDC steps timed from outside.

    Each step's wall time and this thread's CPU time (`thread_time`; DuckDB's
    and delta-rs's own threads are not in it) are summed over its calls, so
    the shares are those of the real run, without a profiler's overhead.
    """
    import functools
    import importlib
    import time
    from collections import defaultdict

    from headwater import Project, Runner
    from headwater.engine import commit as engine_commit
    from headwater.engine import run as engine_run
    from headwater.sources import _pgoutput_columns
    from headwater.tables import delta
    from headwater.tables.strategies import _keyed, base

    # The module (the package exports a function of the same name).
    cdc_postgres = importlib.import_module("headwater.sources.cdc_postgres")

    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])

    def timed(owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapper(*args: object, **kwargs: object) -> object:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry = totals[label]
                entry[0] += time.perf_counter() - wall
                entry[1] += time.thread_time() - cpu
                entry[2] += 1

        setattr(owner, attribute, wrapper)

    source = cdc_postgres.PostgresCdcSource
    timed(source, "_peek", "peek: server decoding + fetch (one value)")
    timed(_pgoutput_columns.ColumnAssembler, "assemble_frames", "pgoutput bytes -> change columns")
    timed(source, "_batch_table", "change columns -> Arrow")
    timed(source, "_advance", "advance the slot")
    timed(source, "_metrics", "metrics queries")
    timed(engine_run.Runner, "_write", "write: stage + merge + commit")
    timed(engine_run.Runner, "_stage", "  stage (fit, merge into files)")
    timed(_keyed.KeyedStrategy, "_prepare_source", "    prepare the increment")
    timed(_keyed.KeyedStrategy, "_candidate_files", "    prune files by statistics")
    timed(_keyed.KeyedStrategy, "_locate", "    locate touched rows")
    timed(_keyed.KeyedStrategy, "plan", "    plan")
    timed(_keyed.KeyedStrategy, "_rewrite_all", "    rewrite touched files")
    timed(base.WriteContext, "close", "    close the write's DuckDB")
    timed(engine_run.Runner, "_commit", "  commit (with its version lookup)")
    timed(engine_commit, "_check_removes_still_live", "    check removed files still live")
    timed(engine_run, "find_commit_version", "    find the commit's version")
    timed(engine_run, "read_committed_state", "read the committed state")
    timed(engine_run, "fit_increment", "  fit the increment to the table")
    timed(delta.DeltaTarget, "load", "open the Delta table (or cached)")
    timed(source, "acknowledge", "acknowledge after the commit")
    timed(engine_run.Runner, "run_table", "a table's run (cycle)")
    project = Project.load(root)
    with Stopwatch() as watch:
        for _ in range(max(1, cycles)):
            started = time.monotonic()
            runner = Runner(project)  # a cycle of continuous mode is a new run
            for name in project.order(None):
                runner.run_table(name)
            if cycles:
                time.sleep(max(0.0, trigger - (time.monotonic() - started)))
    what = f"{cycles} cycles" if cycles else "drain"
    lines = [f"{what}: wall {watch.wall_s:.2f}s, process CPU {watch.cpu_s:.2f}s"]
    lines.append(f"{'step':<50} {'calls':>6} {'wall s':>8} {'thread CPU s':>13}")
    for label, (wall, cpu, calls) in totals.items():
        lines.append(f"{label:<50} {int(calls):>6} {wall:>8.2f} {cpu:>13.2f}")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    child_report(watch.wall_s, watch.cpu_s, phases=totals)


def continuous(root: Path, trigger: float, ready: Path, stop_file: Path) -> None:
    from headwater import Project
    from headwater.engine.continuous import run_continuously

    project = Project.load(root)
    stop = threading.Event()
    cycles = {"n": 0, "failed": 0}

    def on_cycle(n: int, results: list) -> None:  # type: ignore[type-arg]
        cycles["n"] = n
        cycles["failed"] += sum(r.status == "failed" for r in results)
        for r in results:
            if r.status == "failed":
                print(f"cycle {n}: {r.table} failed: {r.error}", file=sys.stderr, flush=True)
        ready.write_text(str(n))  # cycles done; the first (connections, catalog) is behind us
        if stop_file.exists():
            stop.set()

    base = current_rss_bytes()
    with Stopwatch() as watch:
        run_continuously(project, trigger_seconds=trigger, stop=stop, on_cycle=on_cycle)
    child_report(watch.wall_s, watch.cpu_s, base, cycles=cycles["n"], failed=cycles["failed"])


def verify(root: Path, kind: str, out: Path) -> int:
    """Each Delta table against its source table: equal rows (CDC), or what polling can see."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from cdc import source

    columns = {
        "customers": ["id", "name", "balance", "updated_at"],
        "orders": ["id", "customer_id", "amount", "status", "note", "updated_at"],
        "payments": ["id", "order_id", "amount", "method", "updated_at"],
    }
    report: dict[str, dict[str, int]] = {}
    ok = True
    for name, cols in columns.items():
        delta = DeltaTable(str(root / "warehouse" / "bronze" / name)).to_pyarrow_table(columns=cols)
        got = {tuple(r.values()) for r in delta.to_pylist()}
        with source.connect() as conn:
            want = {tuple(r) for r in conn.execute(f"SELECT {', '.join(cols)} FROM {name}")}
        missing, extra = want - got, got - want
        report[name] = {
            "source_rows": len(want),
            "table_rows": delta.num_rows,
            "missing": len(missing),
            "extra": len(extra),
            "duplicate_keys": delta.num_rows - len(pc.unique(delta.column("id"))),
        }
        exact = not missing and not extra and report[name]["duplicate_keys"] == 0
        # Polling cannot see deletes: its tables keep the deleted payments, nothing else differs.
        expected = exact if kind == "cdc" else (not missing and (not extra or name == "payments"))
        if not expected:
            ok = False
            print(f"WRONG RESULT in {kind} table {name}: {report[name]}", file=sys.stderr)
            for row in sorted(missing)[:3]:
                print(f"  missing {row}", file=sys.stderr)
            for row in sorted(extra)[:3]:
                print(f"  extra   {row}", file=sys.stderr)
    out.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def lag(root: Path, out: Path) -> None:
    from cdc import lag as measure

    out.write_text(json.dumps(measure.measure(root), indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="child.py")
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("drain")
    p.add_argument("project", type=Path)
    p = steps.add_parser("continuous")
    p.add_argument("project", type=Path)
    p.add_argument("--trigger", type=float, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--stop", type=Path, required=True)
    p = steps.add_parser("profile")
    p.add_argument("project", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--cycles", type=int, default=0)
    p.add_argument("--trigger", type=float, default=1.0)
    p = steps.add_parser("phases")
    p.add_argument("project", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--cycles", type=int, default=0)
    p.add_argument("--trigger", type=float, default=1.0)
    p = steps.add_parser("verify")
    p.add_argument("project", type=Path)
    p.add_argument("kind", choices=["cdc", "hwm"])
    p.add_argument("out", type=Path)
    p = steps.add_parser("lag")
    p.add_argument("project", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.step == "drain":
        drain(args.project)
    elif args.step == "continuous":
        continuous(args.project, args.trigger, args.ready, args.stop)
    elif args.step == "profile":
        profile(args.project, args.out, args.cycles, args.trigger)
    elif args.step == "phases":
        phases(args.project, args.out, args.cycles, args.trigger)
    elif args.step == "verify":
        return verify(args.project, args.kind, args.out)
    elif args.step == "lag":
        lag(args.project, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
