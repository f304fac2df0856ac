"""The Nexmark benchmark's own parts: the generator, and the Headwater pipelines against
the DuckDB batch floor (the check every benchmark figure must pass)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

STREAM = Path(__file__).resolve().parents[1] / "bench" / "stream"
sys.path[:0] = [str(STREAM), str(STREAM.parent)]

import nexmark  # noqa: E402


def test_generator_proportions_ids_and_time() -> None:
    tables = nexmark.generate_slice(0, 5000, seed=42)
    assert {k: t.num_rows for k, t in tables.items()} == {
        "person": 100,
        "auction": 300,
        "bid": 4600,
    }
    # Ids count up from 1000 without gaps; bids only name auctions and people that exist.
    assert tables["person"].column("id").to_pylist() == list(range(1000, 1100))
    assert tables["auction"].column("id").to_pylist() == list(range(1000, 1300))
    assert pc.max(tables["bid"].column("auction")).as_py() < 1300
    assert pc.max(tables["bid"].column("bidder")).as_py() < 1100
    # Event n happens at base + n x 100 µs: 5000 events span half a second, in order.
    times = pc.cast(tables["bid"].column("dateTime"), "int64").to_pylist()
    assert times == sorted(times)
    assert times[-1] - nexmark.BASE_TIME_US // 1000 == 499


def test_generator_is_deterministic_per_slice() -> None:
    first = nexmark.generate_slice(1000, 1000, seed=7)
    again = nexmark.generate_slice(1000, 1000, seed=7)
    other = nexmark.generate_slice(1000, 1000, seed=8)
    assert all(first[k].equals(again[k]) for k in first)
    assert not first["bid"].equals(other["bid"])


def _step(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STREAM / "child.py"), *argv], capture_output=True, text=True
    )


def _check(tmp_path: Path, queries: list[str], events: int) -> None:
    data = tmp_path / "data"
    assert _step("generate", str(data), "--events", str(events), "--files", "4").returncode == 0
    for query in queries:
        floor = tmp_path / f"floor-{query}.parquet"
        work = tmp_path / f"hw-{query}"
        assert _step("duckdb", str(data), query, str(floor)).returncode == 0
        run = _step("headwater", str(data), query, str(work))
        assert run.returncode == 0, run.stderr[-2000:]
        check = _step(
            "verify", str(data), query, str(floor), "parquet", str(work / "result.parquet")
        )
        assert check.returncode == 0, check.stdout + check.stderr[-2000:]
        report = json.loads(check.stdout.splitlines()[0])
        assert report["checked_rows"] > 0 and report["missing"] == report["extra"] == 0


def test_headwater_pipelines_match_the_floor(tmp_path: Path) -> None:
    # A filter and a session window: a stateless and a stateful table, 40 s of event time.
    _check(tmp_path, ["q2", "q11"], 400_000)


@pytest.mark.soak
def test_every_query_matches_the_floor(tmp_path: Path) -> None:
    _check(tmp_path, ["q0", "q1", "q5", "q7", "q8"], 400_000)
