"""SIGKILL a real `headwater run` of streaming tables at each step of a micro-batch's
commit, restart, and compare with the batch oracle: nothing lost, nothing twice.

Steps: after staging (before any side commit), between the side commits
(`__state`, `__late`) and the table's commit, and after the table's commit but
before the state store's working copy and the source's acknowledgement. The
crashes follow one another on the same project, so each restart recovers from
the one before.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from headwater.sources.generator import GeneratorSource

from . import stream_oracle as oracle
from .conftest import run_cli, write_pipeline

SECOND = 1_000_000
GENERATOR = dict(
    events=1500,
    partitions=3,
    seed=11,
    every="1s",
    disorder="25s",
    late_fraction=0.04,
    late_by="4m",
    duplicates=0.05,
    keys=4,
    batch_size=250,
)
PIPELINE = f"""
from headwater import table
from headwater.sources import generator
from headwater.stream import avg, count, dedup, first, last, max_, min_, session, stream, sum_, tumbling

AGGREGATES = {{"n": count(), "total": sum_("amount"), "lo": min_("value"), "hi": max_("value"),
              "first_v": first("value"), "last_v": last("value"), "avg_v": avg("value")}}
table("silver.per_minute", source=generator(**{GENERATOR!r}),
      stream=stream(event_time="ts", watermark="30s", dedup=dedup("event_id", within="10m"),
                    window=tumbling("1m"), group_by=["key"], aggregates=AGGREGATES,
                    allowed_lateness="1m"))
table("silver.sessions", source=generator(**{GENERATOR!r}),
      stream=stream(event_time="ts", watermark="30s", window=session(gap="20s"),
                    group_by=["key"], aggregates={{"n": count(), "total": sum_("amount")}}))
"""


def events() -> list[oracle.Event]:
    rows = GeneratorSource(**GENERATOR).rows(0, int(GENERATOR["events"]))  # type: ignore[arg-type]
    out = []
    for i, row in enumerate(rows.to_pylist()):
        ts = int(row["ts"].timestamp() * SECOND)
        out.append(oracle.Event(i, ts, str(row["partition"]), row))
    return out


def table_rows(root: Path, name: str) -> list[dict[str, Any]]:
    layer, short = name.split(".")
    path = root / "warehouse" / layer / short
    if not path.exists():
        return []
    out = []
    for row in DeltaTable(str(path)).to_pyarrow_table().to_pylist():
        for column in ("window_start", "window_end"):
            if column in row:
                row[column] = int(row[column].timestamp() * SECOND)
        if row.get("avg_v") is not None:
            row["avg_v"] = round(row["avg_v"], 9)
        out.append(row)
    return sorted(out, key=lambda r: (r["key"], r["window_start"]))


def check_oracle(root: Path) -> None:
    evs = events()
    judged = oracle.watermarks(evs, 30 * SECOND, None)
    wms = judged.watermarks

    accepted, _, dedup_late = oracle.dedup(evs, wms, "event_id", 600 * SECOND)
    pairs, window_late = oracle.tumbling_windows(evs, wms, accepted, 60 * SECOND, 60 * SECOND)
    expected = oracle.aggregate_sql(evs, pairs, 60 * SECOND, ["key"], judged.final)
    for r in expected:
        r["avg_v"] = round(r["avg_v"], 9)
    got = table_rows(root, "silver.per_minute")
    assert got == sorted(expected, key=lambda r: (r["key"], r["window_start"]))
    late = table_rows_late(root, "silver.per_minute")
    assert late == sorted(
        [(evs[i].row["event_id"], evs[i].seq, "dedup horizon") for i in dedup_late]
        + [(evs[i].row["event_id"], evs[i].seq, "window closed") for i in window_late]
    )

    on_time = [i for i, e in enumerate(evs) if e.ts >= wms[i]]
    sessions = oracle.sessions_sql(evs, on_time, 20 * SECOND, ["key"], judged.final)
    assert table_rows(root, "silver.sessions") == sorted(
        sessions, key=lambda r: (r["key"], r["window_start"])
    )
    assert [(e, r) for e, _, r in table_rows_late(root, "silver.sessions")] == sorted(
        (evs[i].row["event_id"], "window closed") for i, e in enumerate(evs) if e.ts < wms[i]
    )


def table_rows_late(root: Path, name: str) -> list[tuple[str, int, str]]:
    """(event id, arrival number, reason) of the late events: a duplicate write shows twice."""
    layer, short = name.split(".")
    path = root / "warehouse" / layer / f"{short}__late"
    if not path.exists():
        return []
    late = DeltaTable(str(path)).to_pyarrow_table()
    seqs = _arrivals()
    return sorted(
        (e, seqs[(e, str(p), t)].pop(0), r)
        for e, p, t, r in zip(
            late.column("event_id").to_pylist(),
            late.column("partition").to_pylist(),
            late.column("ts").to_pylist(),
            late.column("_reason").to_pylist(),
            strict=True,
        )
    )


def _arrivals() -> dict[tuple[str, str, Any], list[int]]:
    """Arrival numbers of each (id, partition, time): copies of an event differ by arrival."""
    out: dict[tuple[str, str, Any], list[int]] = {}
    for e in events():
        out.setdefault((e.row["event_id"], e.partition, e.row["ts"]), []).append(e.seq)
    return out


def test_sigkill_at_each_commit_step_then_restart_matches_the_oracle(project_dir: Path) -> None:
    write_pipeline(project_dir, "stream", PIPELINE)
    # Hits count per process over both tables' micro-batches (6 each).
    for point in ("after_stage@3", "after_quarantine@3", "after_commit@3", "after_commit@2"):
        crashed = run_cli(project_dir, "run", env={"HEADWATER_FAILPOINTS": point}, check=False)
        assert crashed.returncode == -signal.SIGKILL, (
            f"expected a SIGKILL at {point}: {crashed.stdout}{crashed.stderr}"
        )
    run_cli(project_dir, "run")
    check_oracle(project_dir)
    # Up to date now: another run commits nothing.
    before = {
        n: DeltaTable(str(project_dir / "warehouse" / "silver" / n)).version()
        for n in ("per_minute", "sessions")
    }
    again = run_cli(project_dir, "run")
    after = {
        n: DeltaTable(str(project_dir / "warehouse" / "silver" / n)).version()
        for n in ("per_minute", "sessions")
    }
    assert before == after, again.stdout
