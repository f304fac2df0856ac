"""The SQLite connector: high-water mark, full reload. (Files: tests/test_sources_files.py.)"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from headwater import table
from headwater.sources import sqlite

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
