"""SIGKILL a real `headwater run` of streaming tables at each step of a micro-batch's
commit, restart, and compare with the batch oracle: nothing lost, nothing twice.

Steps: after staging (before any side commit), between the side commits
(`__state`, `__late`) and the table's commit, and after the table's commit but
before the state store's working copy and the source's acknowledgement. The
crashes follow one another on the same project, so each restart recovers from
the one before.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.sources.generator import GeneratorSource

from . import stream_oracle as oracle
from .conftest import run_cli, write_pipeline

SECOND = 1_000_000
GENERATOR: dict[str, Any] = dict(
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
PIPELINE = """
from headwater import table
from headwater.sources import generator
from headwater.stream import avg, count, dedup, first, last, max_, min_, session, stream, sum_, tumbling

AGGREGATES = {{"n": count(), "total": sum_("amount"), "lo": min_("value"), "hi": max_("value"),
              "first_v": first("value"), "last_v": last("value"), "avg_v": avg("value")}}
table("silver.per_minute", source=generator(**{options!r}),
      stream=stream(event_time="ts", watermark="30s", dedup=dedup("event_id", within="10m"),
                    window=tumbling("1m"), group_by=["key"], aggregates=AGGREGATES,
                    allowed_lateness="1m"))
table("silver.sessions", source=generator(**{options!r}),
      stream=stream(event_time="ts", watermark="30s", window=session(gap="20s"),
                    group_by=["key"], aggregates={{"n": count(), "total": sum_("amount")}}))
"""


def events(options: dict[str, Any]) -> list[oracle.Event]:
    rows = GeneratorSource(**options).rows(0, int(options["events"]))
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


def check_oracle(root: Path, options: dict[str, Any]) -> None:
    evs = events(options)
    judged = oracle.watermarks(evs, 30 * SECOND, None)
    wms = judged.watermarks

    accepted, _, dedup_late = oracle.dedup(evs, wms, "event_id", 600 * SECOND)
    pairs, window_late = oracle.tumbling_windows(evs, wms, accepted, 60 * SECOND, 60 * SECOND)
    expected = oracle.aggregate_sql(evs, pairs, 60 * SECOND, ["key"], judged.final)
    for r in expected:
        r["avg_v"] = round(r["avg_v"], 9)
    got = table_rows(root, "silver.per_minute")
    assert got == sorted(expected, key=lambda r: (r["key"], r["window_start"]))
    late = table_rows_late(root, "silver.per_minute", evs)
    assert late == sorted(
        [(evs[i].row["event_id"], evs[i].seq, "dedup horizon") for i in dedup_late]
        + [(evs[i].row["event_id"], evs[i].seq, "window closed") for i in window_late]
    )

    on_time = [i for i, e in enumerate(evs) if e.ts >= wms[i]]
    sessions = oracle.sessions_sql(evs, on_time, 20 * SECOND, ["key"], judged.final)
    assert table_rows(root, "silver.sessions") == sorted(
        sessions, key=lambda r: (r["key"], r["window_start"])
    )
    assert [(e, r) for e, _, r in table_rows_late(root, "silver.sessions", evs)] == sorted(
        (evs[i].row["event_id"], "window closed") for i, e in enumerate(evs) if e.ts < wms[i]
    )


def table_rows_late(root: Path, name: str, evs: list[oracle.Event]) -> list[tuple[str, int, str]]:
    """(event id, arrival number, reason) of the late events: a duplicate write shows twice."""
    layer, short = name.split(".")
    path = root / "warehouse" / layer / f"{short}__late"
    if not path.exists():
        return []
    late = DeltaTable(str(path)).to_pyarrow_table()
    seqs = _arrivals(evs)
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


def _arrivals(evs: list[oracle.Event]) -> dict[tuple[str, str, Any], list[int]]:
    """Arrival numbers of each (id, partition, time): copies of an event differ by arrival."""
    out: dict[tuple[str, str, Any], list[int]] = {}
    for e in evs:
        out.setdefault((e.row["event_id"], e.partition, e.row["ts"]), []).append(e.seq)
    return out


def test_sigkill_at_each_commit_step_then_restart_matches_the_oracle(project_dir: Path) -> None:
    write_pipeline(project_dir, "stream", PIPELINE.format(options=GENERATOR))
    # Hits count per process over both tables' micro-batches (6 each).
    for point in ("after_stage@3", "after_quarantine@3", "after_commit@3", "after_commit@2"):
        crashed = run_cli(project_dir, "run", env={"HEADWATER_FAILPOINTS": point}, check=False)
        assert crashed.returncode == -signal.SIGKILL, (
            f"expected a SIGKILL at {point}: {crashed.stdout}{crashed.stderr}"
        )
    run_cli(project_dir, "run")
    check_oracle(project_dir, GENERATOR)
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


@pytest.mark.soak
@settings(
    max_examples=int(os.environ.get("HEADWATER_STREAM_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 1000),
    batch_size=st.integers(60, 400),
    crashes=st.lists(
        st.tuples(
            st.sampled_from(["after_read", "after_stage", "after_quarantine", "after_commit"]),
            st.integers(1, 4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_random_sigkills_then_restart_match_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    batch_size: int,
    crashes: list[tuple[str, int]],
) -> None:
    """Random crash points and restarts over random streams (soak: `--soak`)."""
    root = tmp_path_factory.mktemp("crash")
    (root / "headwater.toml").write_text('[project]\nname = "crash"\n')
    (root / "pipelines").mkdir()
    options = {**GENERATOR, "events": 600, "seed": seed, "batch_size": batch_size}
    write_pipeline(root, "stream", PIPELINE.format(options=options))
    for point, nth in crashes:
        # A run may finish before its nth hit (nothing left to read): that is fine too.
        run_cli(root, "run", env={"HEADWATER_FAILPOINTS": f"{point}@{nth}"}, check=False)
    run_cli(root, "run")
    check_oracle(root, options)


FILES_PIPELINE = """
from headwater import table
from headwater.sources import files
from headwater.stream import count, stream, sum_, tumbling

table("silver.per_minute",
      source=files("{folder}/*.ndjson", format="ndjson", chunk_files=1),
      stream=stream(event_time="ts", watermark="30s", window=tumbling("1m"),
                    group_by=["key"], aggregates={{"n": count(), "total": sum_("amount")}}))
"""


START = datetime(2026, 1, 1, 12, 0, 20, tzinfo=UTC)


def _write_event_files(folder: Path, files: int, per_file: int) -> None:
    """Arriving files of events a few seconds apart, some out of order."""
    folder.mkdir()
    for f in range(files):
        lines = []
        for i in range(per_file):
            n = f * per_file + i
            at = START + timedelta(seconds=n * 2 - (15 if n % 7 == 0 else 0))
            ts = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(
                f'{{"event_id": {n}, "key": "k{n % 3}", "ts": "{ts}", "amount": {n % 11}}}'
            )
        path = folder / f"part-{f:03d}.ndjson"
        path.write_text("\n".join(lines) + "\n")
        os.utime(path, (1_700_000_000 + f, 1_700_000_000 + f))


def _sorted_rows(root: Path) -> list[dict[str, Any]]:
    path = root / "warehouse" / "silver" / "per_minute"
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: (r["key"], r["window_start"]))


def test_sigkill_before_the_commit_replays_a_files_micro_batch_once(tmp_path: Path) -> None:
    """Files are read one micro-batch ahead; the replay of a micro-batch cut short
    between its side commits and its commit must still be followed by the next files,
    not by the replayed ones again."""
    folder = tmp_path / "events"
    _write_event_files(folder, files=6, per_file=40)
    roots = []
    for name in ("crashed", "clean"):
        root = tmp_path / name
        (root / "pipelines").mkdir(parents=True)
        (root / "headwater.toml").write_text(f'[project]\nname = "{name}"\n')
        write_pipeline(root, "stream", FILES_PIPELINE.format(folder=folder))
        roots.append(root)
    crashed, clean = roots
    killed = run_cli(
        crashed, "run", env={"HEADWATER_FAILPOINTS": "after_quarantine@3"}, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    run_cli(crashed, "run")
    run_cli(clean, "run")
    expected = _sorted_rows(clean)
    assert sum(r["n"] for r in expected) > 0
    assert _sorted_rows(crashed) == expected
