"""The local connectors: SQLite (high-water mark, full reload) and files (each file once)."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater import table
from headwater.sources import files, sqlite

from .lake import Lake


def shop(path: Path, rows: list[tuple[int, str, str]]) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, updated_at TIMESTAMP)"
    )
    db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()


def test_high_water_mark_with_ties_across_chunk_boundaries_skips_nothing(tmp_path: Path) -> None:
    # Ten rows share one timestamp; chunks of three end in the middle of the tie.
    shop(tmp_path / "db.sqlite", [(i, f"n{i}", "2024-01-01 00:00:00") for i in range(10)])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.items",
            source=sqlite("db.sqlite", "items", cursor="updated_at", tiebreak="id", chunk_rows=3),
            strategy="append",
        )
    )
    (run,) = lake.run()
    assert run.commits == 4  # 3 + 3 + 3 + 1: each chunk committed with its position
    shop(
        tmp_path / "db.sqlite",
        [(10, "n10", "2024-01-01 00:00:00"), (3, "n3-new", "2024-01-02 00:00:00")],
    )
    lake.run()
    ids = [r["id"] for r in lake.rows("bronze.items", "id", "updated_at")]
    assert ids == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10]  # id 3 twice: its update, appended


def test_full_mode_reloads_everything_and_resumes_an_interrupted_reload(tmp_path: Path) -> None:
    shop(tmp_path / "db.sqlite", [(i, f"n{i}", "2024-01-01") for i in range(7)])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.items",
            source=sqlite("db.sqlite", "items", mode="full", tiebreak="id", chunk_rows=3),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    state = lake.target("bronze.items").table.history(1)[0]["headwater"]["positions"]["source"]
    assert state["complete"] is True
    shop(tmp_path / "db.sqlite", [(2, "changed", "2024-01-01")])
    lake.run()  # a complete reload starts again from the first row
    assert lake.rows("bronze.items", "id")[2]["name"] == "changed"


def test_sqlite_types_map_to_delta_types(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.sqlite")
    db.execute(
        "CREATE TABLE t (id INTEGER, price DECIMAL(10,2), at DATETIME, day DATE, ok BOOLEAN, note TEXT, ratio REAL, raw BLOB)"
    )
    db.execute(
        "INSERT INTO t VALUES (1, '12.50', '2024-05-01T10:00:00+02:00', '2024-05-01', 1, NULL, 0.25, x'00ff')"
    )
    db.commit()
    db.close()
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.t",
            source=sqlite("t.sqlite", "t", mode="full", tiebreak="id"),
            strategy="overwrite",
        )
    )
    lake.run()
    (row,) = lake.rows("bronze.t", "id")
    assert row == {
        "id": 1,
        "price": Decimal("12.50"),
        "at": datetime(2024, 5, 1, 8, 0, tzinfo=UTC),  # converted to UTC
        "day": date(2024, 5, 1),
        "ok": True,
        "note": None,
        "ratio": 0.25,
        "raw": b"\x00\xff",
    }


def test_a_custom_query_is_a_source(tmp_path: Path) -> None:
    shop(tmp_path / "db.sqlite", [(1, "a", "2024-01-01"), (2, "b", "2024-01-02")])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.q",
            source=sqlite(
                "db.sqlite",
                query="SELECT id, upper(name) AS name, updated_at FROM items",
                cursor="updated_at",
                tiebreak="id",
            ),
            strategy="append",
        )
    )
    lake.run()
    assert [r["name"] for r in lake.rows("bronze.q", "id")] == ["A", "B"]


def test_a_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.q",
            source=sqlite("nope.sqlite", "items", cursor="updated_at"),
            strategy="append",
        )
    )
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "nope.sqlite does not exist" in (run.error or "")


def write_ndjson(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_files_load_once_and_again_when_modified(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.events", source=files("in/*.ndjson"), strategy="append"))
    write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}])
    write_ndjson(tmp_path / "in" / "b.ndjson", [{"id": 2}])
    (tmp_path / "in" / "_SUCCESS").write_text("")
    lake.run()
    assert [r.status for r in lake.run()] == ["up-to-date"]
    write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}, {"id": 11}])  # rewritten in place
    os.utime(tmp_path / "in" / "a.ndjson", ns=(10**18, 10**18))
    write_ndjson(tmp_path / "in" / "c.ndjson", [{"id": 3}])
    (run,) = lake.run()
    assert run.metrics["inserted"] == 3
    assert sorted(r["id"] for r in lake.rows("bronze.events")) == [1, 1, 2, 3, 11]


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_files_in_each_format(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if fmt == "json":
        (folder / "x.json").write_text(json.dumps([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    elif fmt == "csv":
        (folder / "x.csv").write_text("id,name\n1,a\n2,b\n")
    else:
        pq.write_table(pa.table({"id": [1, 2], "name": ["a", "b"]}), folder / "x.parquet")
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files(f"in/*.{fmt}"), strategy="append"))
    lake.run()
    assert lake.rows("bronze.x", "id") == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_a_malformed_file_names_the_file_and_publishes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.events", source=files("in/*.ndjson"), strategy="append"))
    write_ndjson(tmp_path / "in" / "good.ndjson", [{"id": 1}])
    (tmp_path / "in" / "bad.ndjson").write_text('{"id": 2}\n{"id": \n')
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "bad.ndjson" in (run.error or "")
    assert not lake.project.target("bronze.events").exists
