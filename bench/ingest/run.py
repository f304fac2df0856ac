"""Ingest benchmark: a PostgreSQL table into a bronze Delta table, Headwater vs dlt vs COPY.

    .venv/bin/python bench/ingest/run.py            # 10M rows, full load then 1% incremental
    .venv/bin/python bench/ingest/run.py --quick    # 200k rows, 1 repeat

Each repeat: the source table is put back in its original state; the full
load runs (the bare COPY floor, Headwater, dlt, each in a fresh child process
on an empty destination); 1% of the rows change (plus N/10 000 inserts); the
incremental load runs (the floor reads only the changed rows; Headwater and dlt
run again on their destinations, reading after their saved position).

Every Headwater and dlt load is checked before it counts: the destination's
rows, distinct ids and sums over key, cursor and value columns must equal the
source's. dlt runs from its own virtualenv (bench/results/ingest-peers-venv),
created by this script when missing. See bench/ingest/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `ingest` importable

from _common import (  # noqa: E402
    MIB,
    BenchError,
    Repeats,
    load_average,
    machine_info,
    markdown_table,
    peer_python,
    ratio,
    run_checked,
    run_measured,
    source_revision,
    write_json,
)
from ingest import contestants  # noqa: E402  (standard library only at import)

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
RESULTS = BENCH / "results"
WORK = RESULTS / "work" / "ingest"
PEERS_VENV = RESULTS / "ingest-peers-venv"
PEER_PACKAGES = ("dlt[deltalake,parquet,sql-database]==1.31.0", "psycopg[binary]==3.3.9")
CONTESTANTS = ("floor", "headwater", "dlt")
PHASES = ("full", "incremental")
CHILD_TIMEOUT_S = 4 * 3600
GOAL_THROUGHPUT = 1.5  # Headwater rows/s >= 1.5x dlt's
GOAL_RSS = 0.5  # Headwater peak RSS <= 0.5x dlt's
GOAL_FLOOR = 2.0  # Headwater wall time <= 2x the bare COPY's


@dataclass
class Outcome(Repeats):
    phase: str
    contestant: str
    rows: int = 0  # rows the phase moves (counted in the source)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the peers' virtualenv -------------------------------------------------------


def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_peers() -> None:
    """Create (or reuse) the virtualenv dlt runs from; remade when the pins change."""
    peer_python(PEERS_VENV, PEER_PACKAGES)


def peer_versions() -> dict[str, str]:
    code = (
        "from importlib import metadata\n"
        "for p in ('dlt', 'deltalake', 'pyarrow', 'sqlalchemy', 'psycopg'):\n"
        "    try: print(p, metadata.version(p))\n"
        "    except Exception: print(p, 'missing')\n"
    )
    out = subprocess.run([str(peers_python()), "-c", code], capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# -- steps -----------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    dsn: str
    admin_dsn: str
    table: str

    def connection(self) -> dict[str, Any]:
        a = self.args
        return {"host": a.host, "port": a.port, "database": a.database, "user": a.user}


def _json_step(argv: list[str]) -> Any:
    with tempfile.NamedTemporaryFile(prefix="hw-ingest-", suffix=".json", delete=False) as tmp:
        out = tmp.name
    try:
        run_checked([*argv, "--out", out])
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def ensure_source(setup: Setup) -> None:
    run_checked(
        [
            sys.executable,
            str(CHILD),
            "data",
            "ensure",
            "--dsn",
            setup.dsn,
            "--admin-dsn",
            setup.admin_dsn,
            "--database",
            setup.args.database,
            "--rows",
            str(setup.args.rows),
        ]
    )


def source_fingerprint(setup: Setup, incremental: bool = False) -> dict[str, Any]:
    argv = [sys.executable, str(CHILD), "fingerprint", "source", "--dsn", setup.dsn]
    argv += ["--rows", str(setup.args.rows)] + (["--incremental"] if incremental else [])
    return dict(_json_step(argv))


def delta_fingerprint(path: Path, latest_per_id: bool) -> dict[str, Any]:
    argv = [sys.executable, str(CHILD), "fingerprint", "delta", str(path)]
    return dict(_json_step(argv + (["--latest-per-id"] if latest_per_id else [])))


def apply_change(setup: Setup) -> dict[str, int]:
    argv = [sys.executable, str(CHILD), "data", "change", "--dsn", setup.dsn]
    return dict(_json_step([*argv, "--rows", str(setup.args.rows)]))


def floor_select(setup: Setup, phase: str) -> str:
    """The floor's query: the same columns, all rows or only the changed ones."""
    from ingest import data

    select = f"SELECT {', '.join(data.NAMES)} FROM public.{setup.table}"
    if phase == "incremental":
        select += f" WHERE {data.incremental_filter()}"
    return select


def workdir(contestant: str) -> Path:
    return WORK / contestant


def fresh_destination(setup: Setup, contestant: str) -> None:
    root = workdir(contestant)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if contestant == "headwater":
        contestants.write_headwater_project(
            root, setup.connection(), setup.table, setup.args.hw_chunk, setup.args.strategy
        )


def load_argv(setup: Setup, contestant: str, phase: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if contestant == "floor":
        argv = [sys.executable, str(CHILD), "load", "floor", "--dsn", setup.dsn]
        return [*argv, "--select", floor_select(setup, phase)], env
    root = workdir(contestant)
    if contestant == "headwater":
        return [sys.executable, str(CHILD), "load", "headwater", str(root)], env
    env.update(contestants.dlt_environment())
    argv = [str(peers_python()), str(CHILD), "load", "dlt", str(root), "--dsn", setup.dsn]
    argv += ["--table", setup.table, "--chunk-size", str(setup.args.dlt_chunk)]
    return [*argv, "--strategy", setup.args.strategy], env


def destination(contestant: str) -> Path:
    root = workdir(contestant)
    if contestant == "headwater":
        return contestants.headwater_table_path(root)
    return contestants.dlt_table_path(root)


def verify(
    setup: Setup, contestant: str, phase: str, expected: dict[str, Any], total_rows: int
) -> dict[str, Any]:
    """The destination holds the source's rows (append: every version, newest per id = source)."""
    from ingest import data

    latest = setup.args.strategy == "append"
    found = delta_fingerprint(destination(contestant), latest)
    wrong = data.same(found, expected)
    if latest and found.get("all_rows") != total_rows:
        wrong.append(f"all_rows {found.get('all_rows')} != {total_rows}")
    if wrong:
        raise BenchError(
            f"WRONG RESULT: {contestant} after the {phase} load differs in {', '.join(wrong)}:\n"
            f"  expected {expected}\n  found    {found}\n"
            f"  (the destination is kept in {workdir(contestant)})"
        )
    return found


def _files(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*.parquet") if "_delta_log" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def run_phase(
    setup: Setup,
    phase: str,
    order: list[str],
    outcomes: dict[tuple[str, str], Outcome],
    expected: dict[str, Any],
    moved: int,
    total_rows: int,
) -> None:
    for contestant in order:
        if phase == "full" and contestant != "floor":
            fresh_destination(setup, contestant)
        argv, env = load_argv(setup, contestant, phase)
        load = load_average()
        measurement = run_measured(argv, env=env, timeout_s=CHILD_TIMEOUT_S)
        outcome = outcomes[(phase, contestant)]
        outcome.rows = moved
        if contestant != "floor":
            reported = int(measurement.extra.get("rows", -1))
            if reported != moved:
                raise BenchError(
                    f"{contestant} {phase}: loaded {reported} rows, the source has {moved} to load"
                )
            measurement.extra["fingerprint"] = verify(
                setup, contestant, phase, expected, total_rows
            )
            files, size = _files(destination(contestant))
            measurement.extra["parquet_files"] = files
            measurement.extra["parquet_bytes"] = size
        outcome.runs.append(measurement)
        outcome.loads.append(load)
        _say(
            f"{phase} {contestant}: {measurement.wall_s:.2f}s (CPU {measurement.cpu_s:.2f}s), "
            f"{moved / measurement.wall_s:,.0f} rows/s, peak RSS {measurement.peak_rss_mib:.0f} MiB, "
            f"load {load[0]:.2f}" + (" — verified" if contestant != "floor" else "")
        )


def one_repeat(
    setup: Setup, index: int, contestants_: list[str], outcomes: dict[tuple[str, str], Outcome]
) -> dict[str, Any]:
    ensure_source(setup)
    rows = setup.args.rows
    full_expected = source_fingerprint(setup)
    if full_expected["rows"] != rows:
        raise BenchError(f"the source holds {full_expected['rows']} rows, not {rows}")
    # Alternate Headwater and dlt; the floor goes first after a warm-up read of the table.
    peers = [c for c in contestants_ if c != "floor"]
    if index % 2:
        peers.reverse()
    order = (["floor"] if "floor" in contestants_ else []) + peers
    _say(f"repeat {index + 1}: warming the cache with one unmeasured COPY")
    argv, env = load_argv(setup, "floor", "full")
    run_measured(argv, env=env, timeout_s=CHILD_TIMEOUT_S)
    run_phase(setup, "full", order, outcomes, full_expected, rows, rows)
    change = apply_change(setup)
    moved = change["updated"] + change["inserted"]
    expected = source_fingerprint(setup)
    incremental = source_fingerprint(setup, incremental=True)
    if incremental["rows"] != moved:
        raise BenchError(f"the change touched {incremental['rows']} rows, not {moved}")
    _say(f"changed {change['updated']:,} rows and inserted {change['inserted']:,}")
    run_phase(setup, "incremental", order, outcomes, expected, moved, rows + moved)
    return change


# -- report --------------------------------------------------------------------------


def results_table(outcomes: list[Outcome]) -> str:
    by_key = {(o.phase, o.contestant): o for o in outcomes}
    rows: list[list[Any]] = []
    for o in outcomes:
        dlt = by_key.get((o.phase, "dlt"))
        floor = by_key.get((o.phase, "floor"))
        hw = o.contestant == "headwater"
        rows.append(
            [
                o.phase,
                o.contestant,
                o.rows,
                o.wall_s,
                o.cpu_s,
                o.rows_per_s,
                o.peak_rss_bytes / MIB,
                ratio(o.rows_per_s, dlt.rows_per_s) if hw and dlt else None,
                ratio(o.peak_rss_bytes, dlt.peak_rss_bytes) if hw and dlt else None,
                ratio(o.cpu_s, dlt.cpu_s) if hw and dlt else None,
                ratio(o.wall_s, floor.wall_s) if hw and floor else None,
            ]
        )
    return markdown_table(
        [
            "phase",
            "contestant",
            "rows",
            "wall s",
            "CPU s",
            "rows/s",
            "peak RSS MiB",
            "throughput hw/dlt",
            "RSS hw/dlt",
            "CPU hw/dlt",
            "time hw/floor",
        ],
        rows,
    )


def goal_lines(outcomes: list[Outcome]) -> list[str]:
    by_key = {(o.phase, o.contestant): o for o in outcomes}
    lines = []
    for phase in PHASES:
        hw, dlt, floor = (by_key.get((phase, c)) for c in ("headwater", "dlt", "floor"))
        if hw is None:
            continue
        if dlt is not None:
            t = hw.rows_per_s / dlt.rows_per_s
            m = hw.peak_rss_bytes / dlt.peak_rss_bytes
            lines.append(
                f"- {phase}: throughput {t:.2f}x dlt's (goal >= {GOAL_THROUGHPUT}): "
                + ("met" if t >= GOAL_THROUGHPUT else "NOT met")
            )
            lines.append(
                f"- {phase}: peak RSS {m:.2f}x dlt's (goal <= {GOAL_RSS}): "
                + ("met" if m <= GOAL_RSS else "NOT met")
            )
        if floor is not None:
            f = hw.wall_s / floor.wall_s
            lines.append(
                f"- {phase}: time {f:.2f}x the bare COPY's (goal <= {GOAL_FLOOR}): "
                + ("met" if f <= GOAL_FLOOR else "NOT met")
            )
    return lines


def render(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    machine: dict[str, Any],
    end_load: tuple[float, float, float],
) -> str:
    lines = [
        f"## Ingest: PostgreSQL ({args.rows:,} rows) into a bronze Delta table",
        "",
        results_table(outcomes),
        "",
        *goal_lines(outcomes),
        "",
        f"Strategy: {args.strategy}{' keyed on id' if args.strategy == 'merge' else ''}, "
        "cursor updated_at. Chunks: Headwater "
        f"chunk_rows={args.hw_chunk:,} (one commit each); dlt chunk_size={args.dlt_chunk:,} "
        "(rows per Arrow table; one Delta commit per run).",
        f"Machine: {machine['cpus']} cpus, {machine['memory_gib']} GiB, python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f"; dlt venv: {', '.join(f'{k} {v}' for k, v in machine.get('peers', {}).items())}"
        + f" (source {machine['headwater_revision']})",
        f"Load average (1/5/15 min): start {_loads(machine['load_average'])}, end {_loads(end_load)}; "
        "highest 1-min load before a run: "
        + ", ".join(
            f"{o.phase}/{o.contestant} {max(load[0] for load in o.loads):.2f}" for o in outcomes
        ),
        f"Repeats: {args.repeat}; wall and CPU = median, peak RSS = max; rows/s = rows / median wall.",
    ]
    return "\n".join(lines)


def _loads(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest/run.py",
        description="PostgreSQL into a bronze Delta table: Headwater vs dlt vs a bare COPY.",
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="source rows (default 10M)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200k rows, 1 repeat")
    parser.add_argument("--repeat", type=int, help="full+incremental rounds (default 3; quick 1)")
    parser.add_argument("--only", action="append", choices=CONTESTANTS, help="repeatable")
    parser.add_argument(
        "--strategy",
        choices=["merge", "append"],
        default="merge",
        help="Headwater strategy / dlt write disposition (default merge, keyed on id)",
    )
    parser.add_argument(
        "--hw-chunk", type=int, default=500_000, help="Headwater chunk_rows (default 500k)"
    )
    parser.add_argument(
        "--dlt-chunk", type=int, default=100_000, help="dlt sql_table chunk_size (default 100k)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--database", default="hw_bench_ingest")
    parser.add_argument(
        "--admin-database", default="postgres", help="where the benchmark's database is created"
    )
    parser.add_argument("--setup-peers", action="store_true", help="(re)create dlt's venv, exit")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/ingest-*)")
    args = parser.parse_args(argv)
    if args.quick and args.rows == 10_000_000:
        args.rows = 200_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_peers:
        shutil.rmtree(PEERS_VENV, ignore_errors=True)
        ensure_peers()
        return 0
    chosen = [c for c in CONTESTANTS if not args.only or c in args.only]
    from ingest import data  # psycopg only; the parent stays small (no pyarrow)

    # No password in a DSN: libpq takes PGPASSWORD or ~/.pgpass when the server asks.
    base = f"postgresql://{args.user}@{args.host}:{args.port}"
    setup = Setup(args, f"{base}/{args.database}", f"{base}/{args.admin_database}", "")
    setup.table = data.table_name(args.rows)
    machine = machine_info(["headwater", "deltalake", "pyarrow", "adbc-driver-postgresql"])
    machine["headwater_revision"] = source_revision(BENCH.parent)
    try:
        if "dlt" in chosen:
            ensure_peers()
            machine["peers"] = peer_versions()
        _say(
            f"{machine['cpus']} cpus, {machine['memory_gib']} GiB, load "
            f"{machine['load_average'][0]:.2f}; {args.rows:,} rows; {', '.join(chosen)}; "
            f"repeat {args.repeat}"
        )
        outcomes = {(p, c): Outcome(p, c) for p in PHASES for c in chosen}
        changes = [one_repeat(setup, i, chosen, outcomes) for i in range(args.repeat)]
        ordered = [outcomes[(p, c)] for p in PHASES for c in chosen]
        report = render(args, ordered, machine, load_average())
        print(report)
        out = args.out or RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
        write_json(
            out,
            {
                "benchmark": "ingest",
                "command": " ".join([".venv/bin/python", "bench/ingest/run.py", *sys.argv[1:]]),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": machine,
                "load_average_end": load_average(),
                "changes": changes,
                "results": [
                    {
                        "phase": o.phase,
                        "contestant": o.contestant,
                        "rows": o.rows,
                        "wall_s_median": o.wall_s,
                        "cpu_s_median": o.cpu_s,
                        "rows_per_s": o.rows_per_s,
                        "peak_rss_bytes_max": o.peak_rss_bytes,
                        "base_rss_bytes_min": o.base_rss_bytes,
                        "load_average_before_runs": o.loads,
                        "runs": o.runs,
                    }
                    for o in ordered
                ],
                "report": report,
            },
        )
        _say(f"results written to {out}")
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
