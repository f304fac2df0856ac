"""CDC benchmark: PostgreSQL change data capture into Delta, under a sustained change workload.

    .venv/bin/python bench/cdc/run.py            # lag at 5k changes/s for 60 s, then a 1M-change catch-up
    .venv/bin/python bench/cdc/run.py --quick    # smoke: 20 s of lag, a 100k-change catch-up

A shop database (`headwater_bench_cdc`: customers, orders, payments) takes a
pgbench workload of five changes per transaction (updates, inserts, a delete;
see source.py). Three Delta tables follow it with `cdc_postgres` + cdc-apply
(one slot each).

Scenarios:
  lag      `headwater run --continuous --trigger T` while pgbench runs at R changes/s for D
           seconds; the end-to-end lag of every change (commit in PostgreSQL -> Delta commit
           published; lag.py explains how it is measured), p50/p90/p99/max.
  catchup  a backlog of B changes built with the tables stopped, then drained by one
           `headwater run` (changes/s applied into Delta); then the same changes applied by a
           high-water-mark poll (the PostgreSQL source, incremental on updated_at, merge)
           from the same starting point: the CDC / poll ratios of wall time and CPU.

Every Headwater run is a fresh child process (bench/_common.py): its CPU and
wall time are measured inside, its peak RSS by the kernel. The PostgreSQL
backends serving it are measured too (logical decoding runs in the server).
Every result is checked: the CDC tables must equal the source tables row for
row; the polled ones too, except for the deleted payments polling cannot see.
Slots are dropped with the database at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `cdc` importable

from _common import (  # noqa: E402
    MIB,
    BenchError,
    Measurement,
    load_average,
    machine_info,
    markdown_table,
    ratio,
    run_checked,
    run_measured,
    source_revision,
    write_json,
)
from cdc import source  # noqa: E402

CHILD = Path(__file__).resolve().parent / "child.py"
RESULTS = BENCH / "results"
WORK = RESULTS / "work" / "cdc"
CHILD_TIMEOUT_S = 3600
GOAL_P99_S = 2.0
GOAL_DRAIN_PER_S = 50_000

CDC_PIPELINE = """\
from headwater import table
from headwater.sources import cdc_postgres

for name in ("customers", "orders", "payments"):
    table(f"bronze.{{name}}", source=cdc_postgres("shop", f"public.{{name}}"{chunk}),
          strategy="cdc-apply", keys=["id"], sequence_by="_seq", op_column="_op")
"""

HWM_PIPELINE = """\
from headwater import table
from headwater.sources import postgres

for name in ("customers", "orders", "payments"):
    table(f"bronze.{{name}}", source=postgres(f"public.{{name}}", connection="shop",
                                             cursor="updated_at"{chunk}),
          strategy="merge", keys=["id"])
"""


def write_project(root: Path, pipeline: str, chunk_rows: int | None, parallel: int) -> Path:
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    (root / "pipelines").mkdir(parents=True)
    shop = "\n".join(f"{k} = {json.dumps(v)}" for k, v in source.settings().items())
    (root / "headwater.toml").write_text(
        f'[project]\nname = "bench_cdc"\n\n[defaults]\nparallel_tables = {parallel}\n\n'
        f"[connections.shop]\n{shop}\n"
    )
    chunk = f", chunk_rows={chunk_rows}" if chunk_rows else ""
    (root / "pipelines" / "shop.py").write_text(pipeline.format(chunk=chunk))
    return root


def headwater(root: Path, *args: str) -> None:
    run_checked([sys.executable, "-m", "headwater", "--project", str(root), *args])


def child(*args: str) -> list[str]:
    return [sys.executable, str(CHILD), *args]


def pgbench_wait(process: subprocess.Popen[str], log: Path) -> str:
    out, _ = process.communicate()
    log.write_text(out)
    if process.returncode != 0:
        raise BenchError(f"pgbench failed ({process.returncode}); its output is in {log}")
    return out


def measured(argv: list[str]) -> tuple[Measurement, dict[str, float]]:
    """A child run, with the CPU of the server backends that served it."""
    with source.server_cpu() as server:
        m = run_measured(argv, timeout_s=CHILD_TIMEOUT_S)
    return m, server


def wait_for_slots(upto: int, timeout_s: float) -> float:
    """Wait until every table's slot is confirmed at `upto` (all changes committed to Delta)."""
    started = time.monotonic()
    while True:
        with source.connect() as conn:
            rows = conn.execute(
                "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots "
                "WHERE database = %s AND slot_name LIKE 'headwater%%'",
                [source.DATABASE],
            ).fetchall()
        if len(rows) == len(source.TABLES) and all(
            r[1] and source.lsn_int(r[1]) >= upto for r in rows
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise BenchError(f"the tables did not catch up within {timeout_s:.0f}s: {rows}")
        time.sleep(0.1)


# -- scenarios ---------------------------------------------------------------------------------


def continuous_under_load(
    args: argparse.Namespace, work: Path, root: Path, name: str, truth: bool
) -> dict[str, Any]:
    """`headwater run --continuous` (a measured child) while pgbench runs; until caught up.

    CDC tables have caught up when every slot is confirmed at the WAL position
    where pgbench stopped; polled ones after two cycles that began after it.
    """
    script = source.write_workload(work)
    ready, stop = work / f"{name}.ready", work / f"{name}.stop"
    ready.unlink(missing_ok=True)
    stop.unlink(missing_ok=True)
    result: dict[str, Any] = {}

    def cycles() -> int:
        try:
            return int(ready.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def run_continuous() -> None:
        if args.profile:
            out = RESULTS / "cdc-profile-cycles.txt"
            ready.write_text("1")
            n = str(int(args.seconds / args.trigger))
            trigger = str(args.trigger)
            run_checked(child("phases", str(root), str(out), "--cycles", n, "--trigger", trigger))
            result["profiled"] = str(out)
            return
        try:
            result["m"], result["server"] = measured(
                child(
                    "continuous",
                    str(root),
                    "--trigger",
                    str(args.trigger),
                    "--ready",
                    str(ready),
                    "--stop",
                    str(stop),
                )
            )
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    runner = threading.Thread(target=run_continuous)
    runner.start()
    try:
        while not cycles():
            if "error" in result:
                raise result["error"]
            time.sleep(0.1)
        if truth:
            source.create_truth_slot()
        load = load_average()
        bench = source.pgbench(
            script,
            args.rows,
            rate=args.rate / source.CHANGES_PER_TRANSACTION,
            seconds=args.seconds,
            clients=args.clients,
            synchronous_commit=args.synchronous_commit,
        )
        pgbench_wait(bench, work / f"{name}-pgbench.log")
        started = time.monotonic()
        if args.profile:
            pass
        elif truth:
            wait_for_slots(source.wal_lsn(), timeout_s=600)
        else:
            done = cycles()
            while cycles() < done + 2 and "error" not in result:
                time.sleep(0.1)
        caught_up_s = time.monotonic() - started
    finally:
        stop.touch()
        runner.join()
    if "error" in result:
        raise result["error"]
    return {**result, "caught_up_after_load_s": caught_up_s, "load_average": load}


def scenario_lag(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"== lag: {args.rate} changes/s for {args.seconds}s, trigger {args.trigger}s", flush=True)
    source.create_database(args.rows)
    cdc = write_project(work / "lag", CDC_PIPELINE, args.chunk_rows, args.parallel)
    headwater(cdc, "cdc", "setup")
    headwater(cdc, "run")  # the initial copy, not measured
    run = continuous_under_load(args, work, cdc, "lag", truth=True)
    if "profiled" in run:
        print(f"    profile: {run['profiled']}", flush=True)
        return {"profile": run["profiled"]}
    m: Measurement = run["m"]
    out = work / "lag.json"
    run_checked(child("lag", str(cdc), str(out)))
    lag = json.loads(out.read_text())
    run_checked(child("verify", str(cdc), "cdc", str(work / "lag-verify.json")))
    if lag["not_visible"]:
        raise BenchError(f"{lag['not_visible']} changes never reached the Delta tables")
    print(
        f"    {lag['changes']} changes at {lag['changes_per_s']:.0f}/s: lag p50 {lag['p50_s']:.2f}s, "
        f"p99 {lag['p99_s']:.2f}s, max {lag['max_s']:.2f}s; Headwater CPU {m.cpu_s:.1f}s, "
        f"server CPU {run['server']['cpu_s']:.1f}s, peak RSS {m.peak_rss_mib:.0f} MiB",
        flush=True,
    )
    outcome: dict[str, Any] = {
        "lag": lag,
        "headwater": m,
        "server": run["server"],
        "catch_up_after_load_s": run["caught_up_after_load_s"],
        "load_average": run["load_average"],
    }
    if args.poll_lag:
        outcome["poll"] = poll_under_load(args, work)
    return outcome


def poll_under_load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same workload applied by a continuous high-water-mark poll: its cost per change."""
    print(f"== the same workload, polled (updated_at, lag={args.poll_lag!r})", flush=True)
    source.create_database(args.rows)
    pipeline = HWM_PIPELINE.replace(
        'cursor="updated_at"', f'cursor="updated_at", lag={args.poll_lag!r}'
    )
    poll = write_project(work / "lag-poll", pipeline, None, args.parallel)
    headwater(poll, "run")  # the initial load, not measured
    before = source.counts()
    run = continuous_under_load(args, work, poll, "lag-poll", truth=False)
    changes = (source.counts() - before).changes
    m: Measurement = run["m"]
    verify = work / "lag-poll-verify.json"
    code = subprocess.call(child("verify", str(poll), "hwm", str(verify)))
    print(
        f"    {changes} changes: Headwater CPU {m.cpu_s:.1f}s, server CPU "
        f"{run['server']['cpu_s']:.1f}s, peak RSS {m.peak_rss_mib:.0f} MiB"
        + ("" if code == 0 else "; the polled tables DIFFER from the source (above)"),
        flush=True,
    )
    return {
        "changes": changes,
        "headwater": m,
        "server": run["server"],
        "load_average": run["load_average"],
        "verify": json.loads(verify.read_text()),
        "matches_source": code == 0,
    }


def scenario_catchup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"== catch-up: a backlog of {args.backlog} changes", flush=True)
    source.create_database(args.rows)
    cdc = write_project(work / "catchup-cdc", CDC_PIPELINE, args.chunk_rows, args.parallel)
    hwm = write_project(work / "catchup-poll", HWM_PIPELINE, None, args.parallel)
    headwater(cdc, "cdc", "setup")
    headwater(cdc, "run")  # initial copies, not measured
    headwater(hwm, "run")
    script = source.write_workload(work)
    before, wal_before = source.counts(), source.wal_lsn()
    clients = args.clients
    per_client = -(-args.backlog // (source.CHANGES_PER_TRANSACTION * clients))
    started = time.monotonic()
    pgbench_wait(
        source.pgbench(
            script,
            args.rows,
            transactions=per_client,
            clients=clients,
            synchronous_commit=False,
        ),
        work / "catchup-pgbench.log",
    )
    built_s = time.monotonic() - started
    wal = source.wal_lsn() - wal_before  # also: the last commits are flushed, readable
    changes = source.counts() - before
    print(
        f"    backlog: {changes.changes} changes ({changes.inserts} inserts, {changes.updates} "
        f"updates, {changes.deletes} deletes) in {built_s:.0f}s, {wal / MIB:.0f} MiB of WAL",
        flush=True,
    )
    runs: dict[str, Any] = {}
    if args.profile:
        out = RESULTS / "cdc-profile.txt"
        print(f"    cdc: draining under cProfile -> {out}", flush=True)
        with source.server_cpu() as server:
            run_checked(child("profile", str(cdc), str(out)))
        print(f"    server CPU {server['cpu_s']:.1f}s", flush=True)
        # The profiled run drained the backlog: build another one for the timed steps.
        before = source.counts()
        pgbench_wait(
            source.pgbench(
                script,
                args.rows,
                transactions=per_client,
                clients=clients,
                synchronous_commit=False,
            ),
            work / "catchup-pgbench.log",
        )
        print(f"    {(source.counts() - before).changes} more changes; timed steps:", flush=True)
        run_checked(child("phases", str(cdc), str(RESULTS / "cdc-profile-phases.txt")))
        return {"changes": changes.__dict__ | {"total": changes.changes}, "profile": str(out)}
    for name, root in (("cdc", cdc), ("poll", hwm)):
        load = load_average()
        print(f"    {name}: draining", flush=True)
        m, server = measured(child("drain", str(root)))
        run_checked(
            child(
                "verify",
                str(root),
                "cdc" if name == "cdc" else "hwm",
                str(work / f"catchup-{name}-verify.json"),
            )
        )
        verified = json.loads((work / f"catchup-{name}-verify.json").read_text())
        runs[name] = {"headwater": m, "server": server, "load_average": load, "verify": verified}
        print(
            f"    {name}: {m.wall_s:.1f}s ({changes.changes / m.wall_s:.0f} changes/s), CPU "
            f"{m.cpu_s:.1f}s + server {server['cpu_s']:.1f}s, peak RSS {m.peak_rss_mib:.0f} MiB",
            flush=True,
        )
    return {
        "changes": changes.__dict__ | {"total": changes.changes},
        "wal_bytes": wal,
        "backlog_build_s": built_s,
        "runs": runs,
    }


# -- report ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    parts = []
    if "lag" in results and "lag" in results["lag"]:
        r = results["lag"]
        lag, m = r["lag"], r["headwater"]
        parts.append(
            markdown_table(
                [
                    "changes/s (target)",
                    "changes",
                    "trigger s",
                    "lag p50 s",
                    "p90 s",
                    "p99 s",
                    "max s",
                    "Headwater CPU s (% of a core)",
                    "server CPU s",
                    "peak RSS MiB",
                    "load avg",
                ],
                [
                    [
                        f"{lag['changes_per_s']:.0f} ({args.rate})",
                        lag["changes"],
                        args.trigger,
                        lag["p50_s"],
                        lag["p90_s"],
                        lag["p99_s"],
                        lag["max_s"],
                        f"{m.cpu_s:.1f} ({100 * m.cpu_s / m.wall_s:.0f}%)",
                        r["server"]["cpu_s"],
                        m.peak_rss_mib,
                        r["load_average"][0],
                    ]
                ],
            )
        )
        verdict = "met" if lag["p99_s"] < GOAL_P99_S else "NOT met"
        parts.append(f"goal p99 lag < {GOAL_P99_S:.0f}s at {args.rate} changes/s: {verdict}")
        if "poll" in r:
            p = r["poll"]
            pm = p["headwater"]
            per = {
                "cdc": (
                    m.cpu_s / lag["changes"] * 1e6,
                    r["server"]["cpu_s"] / lag["changes"] * 1e6,
                ),
                "poll": (pm.cpu_s / p["changes"] * 1e6, p["server"]["cpu_s"] / p["changes"] * 1e6),
            }
            parts.append(
                markdown_table(
                    [
                        "micro-batches",
                        "changes",
                        "Headwater CPU µs/change",
                        "server CPU µs/change",
                        "peak RSS MiB",
                        "matches the source",
                    ],
                    [
                        ["cdc", lag["changes"], *per["cdc"], m.peak_rss_mib, "yes"],
                        [
                            f"poll (lag={args.poll_lag})",
                            p["changes"],
                            *per["poll"],
                            pm.peak_rss_mib,
                            "except deletes" if p["matches_source"] else "NO",
                        ],
                        [
                            "ratio cdc / poll",
                            None,
                            ratio(per["cdc"][0], per["poll"][0]),
                            ratio(per["cdc"][1], per["poll"][1]),
                            ratio(m.peak_rss_bytes, pm.peak_rss_bytes),
                            None,
                        ],
                    ],
                )
            )
    if "catchup" in results and "runs" in results["catchup"]:
        r = results["catchup"]
        n = r["changes"]["total"]
        cdc, poll = r["runs"]["cdc"], r["runs"]["poll"]
        rows: list[list[Any]] = []
        for name, run in (("cdc (pgoutput, cdc-apply)", cdc), ("poll (updated_at, merge)", poll)):
            m = run["headwater"]
            read = sum(t.get("rows_in", 0) for t in m.extra["rows"].values())
            rows.append(
                [
                    name,
                    n,
                    read,
                    m.wall_s,
                    n / m.wall_s,
                    m.cpu_s,
                    run["server"]["cpu_s"],
                    m.peak_rss_mib,
                    run["load_average"][0],
                ]
            )
        cm, pm = cdc["headwater"], poll["headwater"]
        rows.append(
            [
                "ratio cdc / poll",
                None,
                None,
                ratio(cm.wall_s, pm.wall_s),
                None,
                ratio(cm.cpu_s, pm.cpu_s),
                ratio(cdc["server"]["cpu_s"], poll["server"]["cpu_s"]),
                ratio(cm.peak_rss_bytes, pm.peak_rss_bytes),
                None,
            ]
        )
        parts.append(
            markdown_table(
                [
                    "catch-up",
                    "source changes",
                    "rows read",
                    "wall s",
                    "changes/s",
                    "Headwater CPU s",
                    "server CPU s",
                    "peak RSS MiB",
                    "load avg",
                ],
                rows,
            )
        )
        rate = n / cm.wall_s
        verdict = "met" if rate >= GOAL_DRAIN_PER_S else "NOT met"
        parts.append(f"goal >= {GOAL_DRAIN_PER_S} changes/s drained: {rate:.0f} ({verdict})")
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=100_000, help="customers and payments rows (orders: 2x)"
    )
    parser.add_argument("--rate", type=int, default=5000, help="changes/s of the lag scenario")
    parser.add_argument("--seconds", type=int, default=60, help="duration of the lag scenario")
    parser.add_argument("--trigger", type=float, default=1.0, help="continuous trigger interval, s")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="changes of the catch-up")
    parser.add_argument("--chunk-rows", type=int, default=None, help="cdc_postgres(chunk_rows=)")
    parser.add_argument("--parallel", type=int, default=3, help="[defaults] parallel_tables")
    parser.add_argument(
        "--poll-lag",
        default="5s",
        help="lag: also poll the same workload continuously, with this look-back (empty: skip)",
    )
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument(
        "--synchronous-commit",
        action="store_true",
        help="lag workload commits wait for their WAL flush (default off: pgbench keeps the rate "
        "on a busy machine; the reader then waits for the WAL writer, which adds to the lag)",
    )
    parser.add_argument("--scenarios", default="lag,catchup")
    parser.add_argument("--quick", action="store_true", help="20k rows, 20 s of lag, 100k backlog")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile Headwater instead of measuring it (lag: the micro-batch cycles; catchup: the drain)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (and its slots!)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.seconds, args.backlog = 20_000, 20, 100_000
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    WORK.mkdir(parents=True, exist_ok=True)
    machine = machine_info(["headwater", "deltalake", "duckdb", "psycopg", "pyarrow"])
    results: dict[str, Any] = {}
    try:
        if "lag" in scenarios:
            results["lag"] = scenario_lag(args, WORK)
        if "catchup" in scenarios:
            results["catchup"] = scenario_catchup(args, WORK)
    finally:
        if not args.keep:
            source.drop_database()  # and its replication slots: a leftover one keeps WAL forever
    table = report(args, results)
    print()
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"cdc-{stamp}.json"
    write_json(
        out,
        {
            "benchmark": "cdc",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine,
            "revision": source_revision(BENCH.parent),
            "postgres": os.environ.get("PGVERSION"),
            "results": results,
            "table": table,
        },
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
