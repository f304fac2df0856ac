"""Nexmark: Headwater streaming tables vs Apache Flink (PyFlink) vs a DuckDB batch floor.

    .venv/bin/python bench/stream/run.py                        # 10M events, all queries
    .venv/bin/python bench/stream/run.py --events 1000000 --queries q0,q5
    .venv/bin/python bench/stream/run.py --no-latency --only headwater,duckdb

The Nexmark events (nexmark.py) are generated once and cached as CSV under
bench/results/data/nexmark/. For every query, side by side, each in a fresh
child process:

- duckdb: the query as one batch query over all events (the floor);
- headwater: the query's streaming tables (pipelines.py), exactly-once, one Delta
  commit (with the state checkpoint) per micro-batch of --files-per-batch files
  (default 10: 1,000,000 events, committed about as often as Flink checkpoints);
- flink: PyFlink's local mini cluster, Flink SQL (queries.py), streaming mode,
  exactly-once checkpoints every second to local files, parallelism 2, CSV sink.
  PyFlink is installed by this script into bench/results/flink-venv.

Every contestant's result is checked against the floor's over the windows that
are closed at the end of the input (child.py verify); a figure whose check
failed is marked and does not count. Then Headwater's end-to-end latency is
measured with events offered at a fixed rate (paced.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path[:0] = [str(HERE), str(BENCH)]

from pipelines import FILES_PER_BATCH  # noqa: E402
from queries import QUERIES  # noqa: E402

from _common import (  # noqa: E402
    MIB,
    BenchError,
    Measurement,
    load_average,
    machine_info,
    markdown_table,
    peer_python,
    run_measured,
    source_revision,
    write_json,
)

RESULTS = BENCH / "results"
CHILD = HERE / "child.py"
FLINK_CHILD = HERE / "flink_child.py"
FLINK_VENV = RESULTS / "flink-venv"
FLINK_VERSION = "2.3.0"
EVENTS_PER_FILE = 100_000
GOAL_FLINK = 1.0  # Headwater events/s >= Flink's
GOAL_FLOOR = 3.0  # Headwater time <= 3x the batch floor's


def ensure_flink() -> Path:
    """PyFlink in its own virtualenv (it pins its own pyarrow, pandas, ...)."""
    return peer_python(FLINK_VENV, (f"apache-flink=={FLINK_VERSION}",))


def ensure_data(events: int, files: int) -> Path:
    root = RESULTS / "data" / "nexmark" / f"v1-{events}-{files}"
    if not (root / "meta.json").exists():
        print(f"generating {events:,} Nexmark events into {root} ...", flush=True)
        m = run_measured(
            [
                sys.executable,
                str(CHILD),
                "generate",
                str(root),
                "--events",
                str(events),
                "--files",
                str(files),
            ]
        )
        print(f"    {m.wall_s:.1f}s", flush=True)
    return root


def _verify(
    root: Path, query: str, floor: Path, kind: str, path: Path, files_per_batch: int
) -> bool:
    out = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "verify",
            str(root),
            query,
            str(floor),
            kind,
            str(path),
            "--files-per-batch",
            str(files_per_batch),
        ],
        capture_output=True,
        text=True,
    )
    print("    check: " + (out.stdout.strip() or out.stderr.strip()[-500:]).replace("\n", "\n    "))
    return out.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--only", default="duckdb,headwater,flink")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument(
        "--files-per-batch",
        type=int,
        default=FILES_PER_BATCH,
        help="Headwater: CSV files (100,000 events each) per micro-batch and Delta commit",
    )
    parser.add_argument("--latency-rate", type=float, default=10_000, help="events/s offered")
    parser.add_argument("--latency-events", type=int, default=300_000)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", type=Path, help="print the tables of a saved run and stop")
    args = parser.parse_args()
    if args.summarise is not None:
        return print_saved(args.summarise)
    queries = [q for q in args.queries.split(",") if q]
    contestants = [c for c in ("duckdb", "headwater", "flink") if c in args.only.split(",")]
    files = max(1, -(-args.events // EVENTS_PER_FILE))
    root = ensure_data(args.events, files)
    flink = ensure_flink() if "flink" in contestants else None
    work = RESULTS / "work" / "stream"
    work.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict[str, Any]] = {}
    for query in queries:
        runs[query] = {}
        floor = work / f"floor-{query}.parquet"
        for name in contestants:
            print(f"{query} {name} (load {load_average()[0]:.1f})", flush=True)
            if name == "duckdb":
                argv = [sys.executable, str(CHILD), "duckdb", str(root), query, str(floor)]
            elif name == "headwater":
                argv = [
                    sys.executable,
                    str(CHILD),
                    "headwater",
                    str(root),
                    query,
                    str(work / f"headwater-{query}"),
                    "--files-per-batch",
                    str(args.files_per_batch),
                ]
            else:
                out = work / f"flink-{query}"
                subprocess.call(["rm", "-rf", str(out), f"{out}.checkpoints"])
                argv = [
                    str(flink),
                    str(FLINK_CHILD),
                    str(root),
                    query,
                    str(out),
                    "--parallelism",
                    str(args.parallelism),
                ]
            entry: dict[str, Any] = {"load": load_average()}
            try:
                m = run_measured(argv, timeout_s=args.timeout)
            except BenchError as exc:
                print(f"    FAILED: {exc}", flush=True)
                entry["error"] = str(exc)
                runs[query][name] = entry
                continue
            entry["m"] = m
            print(
                f"    wall {m.wall_s:.1f}s cpu {m.cpu_s:.1f}s peak {_peak(name, m) / MIB:.0f} MiB",
                flush=True,
            )
            if name == "headwater":
                entry["ok"] = _verify(
                    root,
                    query,
                    floor,
                    "parquet",
                    work / f"headwater-{query}" / "result.parquet",
                    args.files_per_batch,
                )
            elif name == "flink":
                entry["ok"] = _verify(
                    root, query, floor, "flink-csv", work / f"flink-{query}", args.files_per_batch
                )
            else:
                entry["ok"] = True
            runs[query][name] = entry
        # Saved after every query: a long run that is stopped keeps its figures.
        save(args, files, runs, {})

    latency: dict[str, Any] = {}
    if not args.no_latency and "headwater" in contestants:
        from child import LATENCY_QUERIES

        for query in [q for q in queries if q in LATENCY_QUERIES]:
            print(f"{query} headwater latency at {args.latency_rate:.0f} events/s", flush=True)
            try:
                m = run_measured(
                    [
                        sys.executable,
                        str(CHILD),
                        "latency",
                        str(root),
                        query,
                        str(work / f"latency-{query}"),
                        "--events",
                        str(args.latency_events),
                        "--rate",
                        str(args.latency_rate),
                    ],
                    timeout_s=args.timeout,
                )
            except BenchError as exc:
                print(f"    FAILED: {exc}", flush=True)
                latency[query] = {"error": str(exc)}
                continue
            latency[query] = {"m": m}
            print(f"    p50 {m.extra['p50_ms']} ms, p99 {m.extra['p99_ms']} ms", flush=True)

    out = save(args, files, runs, latency)
    print()
    print(summarise(runs, args.events)[0])
    for line in summarise(runs, args.events)[1]:
        print(line)
    if latency:
        print()
        print(summarise_latency(latency, args.latency_rate))
    print(f"results: {out}")
    return 0


_STAMP = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def save(
    args: argparse.Namespace, files: int, runs: dict[str, Any], latency: dict[str, Any]
) -> Path:
    table, verdicts = summarise(runs, args.events)
    out: Path = args.out or RESULTS / f"stream-{_STAMP}.json"
    write_json(
        out,
        {
            "benchmark": "stream (Nexmark)",
            "events": args.events,
            "files": files,
            "parallelism": args.parallelism,
            "files_per_batch": args.files_per_batch,
            "machine": machine_info(["headwater", "duckdb", "deltalake", "pyarrow"]),
            "flink": FLINK_VERSION,
            "revision": source_revision(BENCH.parent),
            "runs": runs,
            "latency": latency,
            "table": table,
            "latency_table": summarise_latency(latency, args.latency_rate) if latency else "",
            "verdicts": verdicts,
        },
    )
    return out


def print_saved(path: Path) -> int:
    """The tables of a results JSON written by `save`, with this version's columns."""
    saved = json.loads(path.read_text())

    def measurement(value: dict[str, Any]) -> Measurement:
        return Measurement(**{k: v for k, v in value.items() if k != "peak_rss_mib"})

    runs = {
        q: {n: {**e, "m": measurement(e["m"])} if "m" in e else e for n, e in by.items()}
        for q, by in saved["runs"].items()
    }
    latency = {
        q: {**e, "m": measurement(e["m"])} if "m" in e else e for q, e in saved["latency"].items()
    }
    table, verdicts = summarise(runs, saved["events"])
    print(f"{saved['events']:,} events, revision {saved['revision']}, {saved['machine']['when']}")
    print(table)
    for line in verdicts:
        print(line)
    if latency:
        rate = (
            next(iter(latency.values()))["m"].extra["rate"]
            if "m" in next(iter(latency.values()))
            else 0
        )
        print()
        print(summarise_latency(latency, float(rate)))
    return 0


def _peak(name: str, m: Measurement) -> int:
    # Flink's memory is its JVM's: the child sums its own and the JVM's high-water marks.
    return (
        int(m.extra.get("total_hwm_bytes", m.peak_rss_bytes))
        if name == "flink"
        else m.peak_rss_bytes
    )


def summarise(runs: dict[str, dict[str, Any]], events: int) -> tuple[str, list[str]]:
    rows: list[list[Any]] = []
    verdicts: list[str] = []
    for query, by_name in runs.items():

        def rate(name: str, by_name: dict[str, Any] = by_name) -> float | None:
            entry = by_name.get(name, {})
            return events / entry["m"].wall_s if "m" in entry and entry.get("ok") else None

        def cpu(name: str, by_name: dict[str, Any] = by_name) -> float | None:
            entry = by_name.get(name, {})
            return float(entry["m"].cpu_s) if "m" in entry and entry.get("ok") else None

        hw, fl, floor = rate("headwater"), rate("flink"), rate("duckdb")
        flink_cpu, floor_cpu = cpu("flink"), cpu("duckdb")
        for name in ("duckdb", "headwater", "flink"):
            entry = by_name.get(name)
            if entry is None:
                continue
            if "m" not in entry:
                rows.append([query, name, None, None, None, None, None, None, None, None, "failed"])
                continue
            m: Measurement = entry["m"]
            mine = rate(name)
            rows.append(
                [
                    query,
                    name,
                    round(events / m.wall_s),
                    m.wall_s,
                    m.cpu_s,
                    round(_peak(name, m) / MIB),
                    mine / fl if mine and fl and name != "flink" else None,
                    floor / mine if mine and floor and name != "duckdb" else None,
                    m.cpu_s / flink_cpu
                    if flink_cpu and entry.get("ok") and name != "flink"
                    else None,
                    m.cpu_s / floor_cpu
                    if floor_cpu and entry.get("ok") and name != "duckdb"
                    else None,
                    "yes" if entry.get("ok") else "MISMATCH",
                ]
            )
        if hw and fl:
            verdicts.append(
                f"{query}: Headwater {hw / fl:.2f}x Flink's events/s "
                f"({'met' if hw / fl >= GOAL_FLINK else 'NOT met'}, goal >= {GOAL_FLINK:.0f}x)"
            )
        if hw and floor:
            verdicts.append(
                f"{query}: Headwater time {floor / hw:.2f}x the floor's "
                f"({'met' if floor / hw <= GOAL_FLOOR else 'NOT met'}, goal <= {GOAL_FLOOR:.0f}x)"
            )
    table = markdown_table(
        [
            "query",
            "contestant",
            "events/s",
            "wall s",
            "cpu s",
            "peak RSS MiB",
            "events/s x Flink",
            "time x floor",
            "CPU x Flink",
            "CPU x floor",
            "result checked",
        ],
        rows,
    )
    return table, verdicts


def summarise_latency(latency: dict[str, Any], rate: float) -> str:
    rows = []
    for query, entry in latency.items():
        if "m" not in entry:
            rows.append([query, None, round(rate), None, None, None, None, "failed"])
            continue
        m: Measurement = entry["m"]
        x = m.extra
        rows.append(
            [
                query,
                x["table"],
                round(rate),
                x["rows"],
                x["commits"],
                x["p50_ms"],
                x["p99_ms"],
                round(m.peak_rss_bytes / MIB),
            ]
        )
    return markdown_table(
        [
            "query",
            "table",
            "events/s offered",
            "output rows",
            "commits",
            "p50 ms",
            "p99 ms",
            "peak RSS MiB",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
