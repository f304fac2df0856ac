"""One measured step of the Nexmark benchmark, in its own process (see run.py).

child.py generate ROOT --events N --files F
child.py duckdb ROOT QUERY OUT.parquet
child.py headwater ROOT QUERY WORK [--files-per-batch N]   (result in WORK/result.parquet)
child.py verify ROOT QUERY FLOOR.parquet KIND PATH [--files-per-batch N]
                                            (KIND: parquet | flink-csv)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from queries import (  # noqa: E402
    CHECK,
    COLUMNS,
    DUCKDB,
    FLINK_SINKS,
    HEADWATER_RESULT,
    READS,
)

from _common import Stopwatch, child_report, current_rss_bytes  # noqa: E402

META = "meta.json"


def generate(root: Path, events: int, files: int) -> None:
    import nexmark

    with Stopwatch() as watch:
        counts = nexmark.write(root, events, files)
    # Flink reads one file per stream, in event-time order (see flink_child.py).
    for stream in ("person", "auction", "bid"):
        (root / "flink" / stream).mkdir(parents=True, exist_ok=True)
        with open(root / "flink" / stream / f"{stream}.csv", "wb") as whole:
            for part in sorted((root / stream).glob("part-*.csv")):
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, whole)
    (root / META).write_text(json.dumps(counts.__dict__ | {"files": files}))
    child_report(watch.wall_s, watch.cpu_s, counts=counts.__dict__)


def _duckdb_columns(stream: str) -> str:
    return "{" + ", ".join(f"'{n}': '{t}'" for n, t in COLUMNS[stream]) + "}"


def csv_views(con: object, root: Path, streams: tuple[str, ...]) -> None:
    for stream in streams:
        con.execute(  # type: ignore[attr-defined]
            f"CREATE OR REPLACE VIEW {stream} AS SELECT * FROM read_csv('{root / stream}/*.csv', "
            f"header = false, columns = {_duckdb_columns(stream)})"
        )


def duckdb_floor(root: Path, query: str, out: Path) -> None:
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    base = current_rss_bytes()
    with Stopwatch() as watch:
        csv_views(con, root, READS[query])
        con.execute(f"COPY ({DUCKDB[query]}) TO '{out}' (FORMAT parquet)")
    rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()
    child_report(watch.wall_s, watch.cpu_s, base, output_rows=rows[0] if rows else None)


def headwater(root: Path, query: str, work: Path, files_per_batch: int) -> None:
    import pipelines

    from headwater import Project, Runner
    from headwater.declare import collecting

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "headwater.toml").write_text('[project]\nname = "nexmark"\n')
    with collecting() as found:
        names = pipelines.declare(root, query, files_per_batch=files_per_batch)
    project = Project.of_specs(work, found)
    base = current_rss_bytes()
    results = []
    with Stopwatch() as watch:
        # One table after the other: a temporal join's dimension must be built first.
        for name in names:
            (result,) = Runner(project, threads=2).run([name])
            if result.status == "failed":
                traceback.print_exception(result.exception)
                raise SystemExit(f"headwater {query}: {result.error}")
            results.append(result)
    export_result(project.target(names[-1]).refresh().dataset(), query, work / "result.parquet")
    commits = {r.table: r.commits for r in results}
    child_report(watch.wall_s, watch.cpu_s, base, commits=commits, files_per_batch=files_per_batch)


LATENCY_QUERIES = ("q0", "q1", "q2", "q5", "q7", "q11")


def latency(root: Path, query: str, work: Path, events: int, rate: float) -> None:
    """Run the query's first streaming table on events offered at `rate` per second of wall
    clock; report the end-to-end latency of every output row: the time of the Delta commit
    that made it visible minus the time its input was offered (for a window: the event
    that moved the watermark past the window's end)."""
    import nexmark
    import paced
    import pipelines

    from headwater import Project, Runner
    from headwater.declare import collecting

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "headwater.toml").write_text('[project]\nname = "nexmark"\n')
    sources: list[paced.PacedNexmark] = []

    def source(stream: str) -> paced.PacedNexmark:
        sources.append(paced.PacedNexmark(stream, events, rate, 0.0))
        return sources[-1]

    with collecting() as found:
        name = pipelines.declare(root, query, source)[0]
    project = Project.of_specs(work, [s for s in found if s.name == name])
    start = time.time() + 1.0
    for s in sources:
        s.start = start
    base = current_rss_bytes()
    with Stopwatch() as watch:
        (result,) = Runner(project, threads=2, progress=_progress).run([name])
    if result.status == "failed":
        traceback.print_exception(result.exception)
        raise SystemExit(f"headwater {query}: {result.error}")
    delays = _commit_latencies(project.target(name).uri, sources[0], query)
    import numpy as np

    child_report(
        watch.wall_s,
        watch.cpu_s,
        base,
        table=name,
        rate=rate,
        events=events,
        rows=len(delays),
        commits=result.commits,
        p50_ms=float(np.percentile(delays, 50)) * 1000 if delays else None,
        p99_ms=float(np.percentile(delays, 99)) * 1000 if delays else None,
        max_ms=float(max(delays)) * 1000 if delays else None,
        watermark_s=int(pipelines.WATERMARK.rstrip("s")),
        base_time_us=nexmark.BASE_TIME_US,
    )


def _progress(table: str, message: str) -> None:
    if os.environ.get("NEXMARK_PROGRESS"):
        print(f"{time.time():.3f} {table}: {message}", file=sys.stderr, flush=True)


def _commit_latencies(table_path: object, source: object, query: str) -> list[float]:
    """Latency (s) of each output row: its commit's time minus its trigger event's offer."""
    from urllib.parse import unquote

    import nexmark
    import pipelines
    import pyarrow.parquet as pq

    log = Path(str(table_path).removeprefix("file://")) / "_delta_log"
    delay_us = int(pipelines.WATERMARK.rstrip("s")) * 1_000_000
    delays: list[float] = []
    for entry in sorted(log.glob("*.json")):
        committed_ms, added = None, []
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                committed_ms = action["commitInfo"].get("timestamp")
            if "add" in action:
                added.append(unquote(action["add"]["path"]))
        if committed_ms is None:
            continue
        for path in added:
            rows = pq.read_table(log.parent / path)
            if "window_end" in rows.schema.names:
                # The event that moved the watermark past the window's end triggered it.
                end = _micros(rows.column("window_end"))
                times = [e + delay_us for e in end]
            else:
                times = _micros(rows.column("dateTime"))
            for t in times:
                event = -(-(t - nexmark.BASE_TIME_US) // nexmark.INTER_EVENT_US)
                delays.append(committed_ms / 1000 - source.offered_at(event))  # type: ignore[attr-defined]
    return delays


def _micros(column: object) -> list[int]:
    import pyarrow as pa

    values = column.cast(pa.timestamp("us", tz=getattr(column.type, "tz", None)))  # type: ignore[attr-defined]
    return values.cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]


def export_result(dataset: object, query: str, out: Path) -> None:
    """The result table, in the floor's column names, as Parquet (outside the timing)."""
    import duckdb

    con = duckdb.connect()
    con.register("result", dataset)
    con.execute(f"COPY (SELECT {HEADWATER_RESULT[query]} FROM result) TO '{out}' (FORMAT parquet)")


def watermark_s(query: str, files_per_batch: int) -> int:
    """The query's watermark delay (s) in Headwater's pipelines (pipelines.py)."""
    import pipelines

    return int(pipelines.WATERMARK.rstrip("s"))


def _final_watermark(con: object, root: Path, query: str, files_per_batch: int) -> int:
    """The newest event time over the query's inputs (the least of their newest), minus
    the query's watermark delay."""
    newest = [
        con.execute(f"SELECT epoch_ms(max(dateTime)) FROM {s}").fetchone()[0]  # type: ignore[attr-defined]
        for s in READS[query]
    ]
    return int(min(newest)) - 1000 * watermark_s(query, files_per_batch)


def verify(
    root: Path, query: str, floor: Path, kind: str, path: Path, files_per_batch: int
) -> None:
    """Compare a contestant's result with the floor's over closed windows; exit 1 if they differ."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    con.execute("SET TimeZone = 'UTC'")
    csv_views(con, root, READS[query])
    wm = _final_watermark(con, root, query, files_per_batch)
    if kind == "flink-csv":
        types = {
            c.split(" ", 1)[0]: c.split(" ", 1)[1].replace("STRING", "VARCHAR").replace("(3)", "")
            for c in FLINK_SINKS[query].split(", ")
        }
        columns = "{" + ", ".join(f"'{n}': '{t}'" for n, t in types.items()) + "}"
        con.execute(
            f"CREATE VIEW got AS SELECT * FROM read_csv('{path}/**/part-*', header = false, "
            f"columns = {columns})"
        )
    else:
        con.execute(f"CREATE VIEW got AS SELECT * FROM '{path}'")
    con.execute(f"CREATE VIEW want AS SELECT * FROM '{floor}'")
    select, where = CHECK[query]
    where = where.format(wm=wm)
    for name in ("got", "want"):
        con.execute(f"CREATE TEMP TABLE c_{name} AS SELECT {select} FROM {name} WHERE {where}")
    missing = con.execute("SELECT count(*) FROM (FROM c_want EXCEPT ALL FROM c_got)").fetchone()[0]
    extra = con.execute("SELECT count(*) FROM (FROM c_got EXCEPT ALL FROM c_want)").fetchone()[0]
    rows = con.execute("SELECT count(*) FROM c_want").fetchone()[0]
    report = {"query": query, "checked_rows": rows, "missing": missing, "extra": extra, "wm": wm}
    print(json.dumps(report))
    if missing or extra:
        for label, sql in (
            ("missing", "FROM c_want EXCEPT ALL FROM c_got"),
            ("extra", "FROM c_got EXCEPT ALL FROM c_want"),
        ):
            for row in con.execute(f"{sql} ORDER BY ALL LIMIT 5").fetchall():
                print(f"  {label}: {row}")
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["generate", "duckdb", "headwater", "verify", "latency"])
    parser.add_argument("root", type=Path)
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10_000)
    # One file per micro-batch unless told (run.py passes its --files-per-batch).
    parser.add_argument("--files-per-batch", type=int, default=1)
    args = parser.parse_args()
    args.root = args.root.resolve()  # a project resolves relative paths against its own root
    if args.step == "generate":
        generate(args.root, args.events, args.files)
    elif args.step == "duckdb":
        duckdb_floor(args.root, args.rest[0], Path(args.rest[1]))
    elif args.step == "latency":
        latency(args.root, args.rest[0], Path(args.rest[1]), args.events, args.rate)
    elif args.step == "headwater":
        headwater(args.root, args.rest[0], Path(args.rest[1]), args.files_per_batch)
    else:
        query, floor, kind, path = args.rest
        verify(args.root, query, Path(floor), kind, Path(path), args.files_per_batch)


if __name__ == "__main__":
    main()
