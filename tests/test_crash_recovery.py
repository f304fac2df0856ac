"""SIGKILL a real run at each step of the commit protocol, restart, compare with an oracle.

Steps: (a) after reading an increment, (b) after writing data files but before
the commit, (c) after the commit but before acknowledging the source. Tables:
append (files source that archives on acknowledge), merge (SQLite high-water
mark in chunks) and SCD2 (reading the merge table's changes).
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from .conftest import write_pipeline

PIPELINE = """
from headwater import table
from headwater.sources import files, sqlite

table("bronze.customers", source=sqlite("shop.db", "customers", cursor="updated_at", tiebreak="id", chunk_rows=40),
      strategy="merge", keys=["id"], version_column="updated_at")
table("silver.customers", inputs=["bronze.customers"], strategy="scd2", keys=["id"], tracked_columns=["name", "city"])
table("bronze.events", source=files("landing/*.ndjson", archive_to="archive", chunk_files=2), strategy="append")
"""

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
print(json.dumps([[r.table, r.status, r.error] for r in results]))
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""

BASE = datetime(2024, 3, 1, tzinfo=UTC)


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")


def make_project(root: Path) -> None:
    (root / "headwater.toml").write_text('[project]\nname = "crash"\n')
    (root / "pipelines").mkdir()
    write_pipeline(root, "crash", PIPELINE)
    db = sqlite3.connect(root / "shop.db")
    db.execute(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, updated_at TIMESTAMP)"
    )
    # Groups of three rows share an updated_at, so chunk ends fall inside ties.
    db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?)",
        [(i, f"name{i}", f"city{i % 7}", stamp(i // 3)) for i in range(200)],
    )
    db.commit()
    db.close()
    (root / "landing").mkdir()
    write_events(root, range(10))


def write_events(root: Path, file_numbers: range) -> None:
    for n in file_numbers:
        lines = [json.dumps({"event_id": f"f{n}-{i}", "n": i}) for i in range(20)]
        (root / "landing" / f"events-{n:03d}.ndjson").write_text("\n".join(lines) + "\n")


def mutate(root: Path) -> None:
    db = sqlite3.connect(root / "shop.db")
    for i in range(0, 200, 7):  # 29 customers move city
        db.execute(
            "UPDATE customers SET city = ?, updated_at = ? WHERE id = ?",
            (f"moved{i}", stamp(1000 + i), i),
        )
    db.commit()
    db.close()
    write_events(root, range(10, 14))


def run(root: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HEADWATER_FAILPOINTS": failpoint} if failpoint else {}
    import os

    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def check_oracle(root: Path, phase: int) -> None:
    warehouse = root / "warehouse"
    source = sqlite3.connect(root / "shop.db")
    expected = {r[0]: (r[1], r[2]) for r in source.execute("SELECT id, name, city FROM customers")}
    source.close()

    bronze = DeltaTable(str(warehouse / "bronze" / "customers")).to_pyarrow_table().to_pylist()
    assert len(bronze) == len(expected), "bronze.customers lost or duplicated rows"
    assert {r["id"]: (r["name"], r["city"]) for r in bronze} == expected

    silver = DeltaTable(str(warehouse / "silver" / "customers")).to_pyarrow_table().to_pylist()
    current = [r for r in silver if r["is_current"]]
    assert {r["id"]: (r["name"], r["city"]) for r in current} == expected
    assert len(current) == len(expected), "more than one current version for a key"
    assert len({(r["id"], r["valid_from"]) for r in silver}) == len(silver), (
        "duplicated SCD2 versions"
    )
    by_id: dict[int, list[dict]] = {}
    for r in silver:
        by_id.setdefault(r["id"], []).append(r)
    for key, versions in by_id.items():
        versions.sort(key=lambda r: r["valid_from"])
        moved = phase == 2 and key % 7 == 0
        assert len(versions) == (2 if moved else 1), f"customer {key} has {len(versions)} versions"
        for older, newer in itertools.pairwise(versions):
            assert older["valid_to"] == newer["valid_from"] and not older["is_current"]

    events = (
        DeltaTable(str(warehouse / "bronze" / "events"))
        .to_pyarrow_table()
        .column("event_id")
        .to_pylist()
    )
    files = 10 if phase == 1 else 14
    assert sorted(events) == sorted(f"f{n}-{i}" for n in range(files) for i in range(20)), (
        "events lost or duplicated"
    )
    # Every committed file was acknowledged (archived) in the end, none is left behind.
    assert not list((root / "landing").glob("*.ndjson"))
    assert len(list((root / "archive").glob("*.ndjson"))) == files


@pytest.mark.parametrize("point", ["after_read", "after_stage", "after_commit"])
@pytest.mark.parametrize(("first", "second"), [(1, 1), (4, 2), (7, 3), (11, 4)])
def test_sigkill_at_any_step_then_restart_matches_the_oracle(
    tmp_path: Path, point: str, first: int, second: int
) -> None:
    make_project(tmp_path)
    for phase, nth in ((1, first), (2, second)):
        if phase == 2:
            mutate(tmp_path)
        crashed = run(tmp_path, f"{point}@{nth}")
        assert crashed.returncode == -signal.SIGKILL, (
            f"expected a SIGKILL at {point}@{nth}: {crashed.stdout}{crashed.stderr}"
        )
        resumed = run(tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        check_oracle(tmp_path, phase)
        again = run(tmp_path)  # nothing new: every table is up to date
        assert all(status == "up-to-date" for _, status, _ in json.loads(again.stdout)), (
            again.stdout
        )
