"""Modes shared by every SQL source: hash-diff, delete detection, periodic full reload.

Run against the local PostgreSQL server (the MySQL tests repeat the key ones),
and SQLite where the base must keep working for it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from headwater import table
from headwater.config import ProjectConfig
from headwater.sources import postgres, sqlite
from headwater.sources.base import ReadContext

from .test_sources_postgres import (
    PG,
    ConfiguredLake,
    Pg,
    at,
    orders,
    positions,
    source_rows,
)
from .test_sources_postgres import pg_lake as pg_lake  # the `lake` fixture
from .test_sources_postgres import pg_schema as pg_schema  # the `pg` fixture

DAY0 = datetime(2024, 6, 1, tzinfo=UTC)


def items(pg: Pg, count: int) -> None:
    """A table without any usable cursor: only a key and values."""
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty numeric(8,2), tags text[])")
    pg.many(
        "INSERT INTO items VALUES (%s, %s, %s, %s)",
        [(i, f"item{i}", Decimal(i) / 2, [f"t{i % 3}"]) for i in range(count)],
    )


def live(lake: ConfiguredLake, name: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k != "_deleted_at"}
        for r in lake.rows(name, "id")
        if r.get("_deleted_at") is None
    ]


# -- hash-diff -------------------------------------------------------------------------------


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_hash_diff_emits_only_inserts_updates_and_deletes(
    pg: Pg, lake: ConfiguredLake, deletes: str
) -> None:
    items(pg, 20)
    lake.declare(
        lambda: table(
            "bronze.items",
            source=postgres(pg.name("items"), connection="pg", mode="hash-diff", chunk_rows=8),
            strategy="merge",
            keys=["id"],
            deletes=deletes,
        )
    )
    (first,) = lake.run()
    assert first.metrics["inserted"] == 20
    pg.sql("UPDATE items SET qty = 100 WHERE id IN (2, 13)")
    pg.sql("UPDATE items SET tags = '{changed}' WHERE id = 19")
    pg.sql("DELETE FROM items WHERE id IN (0, 9, 10)")
    pg.sql("INSERT INTO items VALUES (20, 'new', 1, '{}'), (21, 'newer', NULL, NULL)")
    (second,) = lake.run()
    # 3 updates + 2 inserts + 3 deletes reached the table; the 14 unchanged rows did not.
    assert second.metrics["rows_in"] == 8
    assert live(lake, "bronze.items") == source_rows(pg, "items")
    if deletes == "soft":
        gone = [r for r in lake.rows("bronze.items", "id") if r["_deleted_at"] is not None]
        assert [r["id"] for r in gone] == [0, 9, 10]
        assert gone[0]["name"] == "item0"  # a soft delete keeps the last values
    else:
        assert len(lake.rows("bronze.items", "id")) == 19
    # Nothing changed: no row sent, no commit made.
    assert [r.status for r in lake.run()] == ["up-to-date"]
    # A deleted key that comes back is live again.
    pg.sql("INSERT INTO items VALUES (9, 'back', 9, NULL)")
    lake.run()
    assert live(lake, "bronze.items") == source_rows(pg, "items")


def test_hash_diff_resumes_an_interrupted_pass_without_false_deletes(
    pg: Pg, lake: ConfiguredLake
) -> None:
    items(pg, 12)
    source = postgres(pg.name("items"), connection="pg", mode="hash-diff", chunk_rows=5)
    lake.declare(lambda: table("bronze.items", source=source, strategy="merge", keys=["id"]))
    lake.run()
    pg.sql("UPDATE items SET name = 'x' WHERE id IN (1, 11)")
    # A pass interrupted after its first chunk (keys 0..4) was committed:
    state = {"after": [4], "complete": False}
    ctx = ReadContext(
        "bronze.items",
        lake.root,
        datetime.now(UTC),
        config=ProjectConfig(connections={"pg": PG}),
        resolve=lake.project.target,
    )
    increments = list(source.read(state, ctx))
    emitted = [r for i in increments for r in i.data.to_pylist()]
    # Keys 0..4 were read before the interruption: they are not deleted, and
    # the change to key 1 waits for the next pass; key 11 is picked up now.
    assert [(r["id"], r["_change_type"]) for r in emitted] == [(11, "update_postimage")]
    assert increments[-1].position["complete"] is True


# -- delete detection -----------------------------------------------------------------------


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_delete_detection_reconciles_keys(pg: Pg, lake: ConfiguredLake, deletes: str) -> None:
    orders(pg, 15)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(
                pg.name("orders"),
                connection="pg",
                cursor="updated_at",
                detect_deletes=True,
                chunk_rows=6,
            ),
            strategy="merge",
            keys=["id"],
            deletes=deletes,
        )
    )
    run_ts = DAY0
    lake.run(run_ts=run_ts)
    pg.sql("DELETE FROM orders WHERE id IN (3, 4, 14)")
    lake.run(run_ts=run_ts + timedelta(hours=1))
    assert live(lake, "bronze.orders") == source_rows(pg, "orders")
    rows = lake.rows("bronze.orders", "id")
    if deletes == "soft":
        assert {r["id"]: r["_deleted_at"] for r in rows if r["_deleted_at"]} == {
            i: run_ts + timedelta(hours=1) for i in (3, 4, 14)
        }
    else:
        assert [r["id"] for r in rows] == [i for i in range(15) if i not in (3, 4, 14)]
    # Reconciled: another run finds nothing to delete and commits nothing.
    assert [r.status for r in lake.run(run_ts=run_ts + timedelta(hours=2))] == ["up-to-date"]
    pg.sql("INSERT INTO orders VALUES (3, 'again', 1, %s)", [at(500)])
    lake.run(run_ts=run_ts + timedelta(hours=3))
    assert live(lake, "bronze.orders") == source_rows(pg, "orders")


def test_delete_detection_in_full_mode(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 8)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", mode="full", detect_deletes=True),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    pg.sql("DELETE FROM orders WHERE id > 5")
    lake.run()
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")


def test_an_emptied_source_deletes_nothing_without_a_full_refresh(
    pg: Pg, lake: ConfiguredLake
) -> None:
    orders(pg, 5)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", mode="full", detect_deletes=True),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    before = lake.rows("bronze.orders", "id")
    pg.sql("DELETE FROM orders")
    (run,) = lake.run(check=False)
    assert run.status == "failed"
    assert "returned no rows" in (run.error or "") and "--full-refresh" in (run.hint or "")
    assert lake.rows("bronze.orders", "id") == before
    lake.run(full_refresh=True)
    assert lake.rows("bronze.orders", "id") == []


# -- periodic full reload -------------------------------------------------------------------


def test_periodic_full_reload_catches_what_the_cursor_missed(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 10)
    source = postgres(
        pg.name("orders"),
        connection="pg",
        cursor="updated_at",
        full_reload_every="7d",
        chunk_rows=4,
    )
    lake.declare(lambda: table("bronze.orders", source=source, strategy="merge", keys=["id"]))
    lake.run(run_ts=DAY0)
    assert positions(lake, "bronze.orders")[-1]["reloaded_at"] == DAY0.isoformat()
    # A change that forgot to bump updated_at: invisible to the high-water mark.
    pg.sql("UPDATE orders SET customer = 'fixed by hand' WHERE id = 6")
    assert [r.status for r in lake.run(run_ts=DAY0 + timedelta(days=1))] == ["up-to-date"]
    assert lake.rows("bronze.orders", "id")[6]["customer"] == "c1"
    before = positions(lake, "bronze.orders")[-1]["mark"]
    # A week later the reload is due: everything again, by key, in chunks; then incremental.
    pg.sql("INSERT INTO orders VALUES (10, 'new', 1, %s)", [at(100)])
    lake.run(run_ts=DAY0 + timedelta(days=8))
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")
    committed = positions(lake, "bronze.orders")
    during = [p for p in committed if "reload" in p]
    assert len(during) == 3 and all(p["mark"] == before for p in during)  # 4 + 4 + 3 rows
    last = committed[-1]
    assert "reload" not in last and last["reloaded_at"] == (DAY0 + timedelta(days=8)).isoformat()
    assert last["mark"][1] == 10
    # The next day: not due again.
    assert [r.status for r in lake.run(run_ts=DAY0 + timedelta(days=9))] == ["up-to-date"]


def test_an_interrupted_reload_resumes_after_its_last_key(pg: Pg) -> None:
    orders(pg, 10)
    source = postgres(
        pg.name("orders"),
        connection="pg",
        cursor="updated_at",
        full_reload_every="7d",
        chunk_rows=4,
    )
    ctx = ReadContext(
        "bronze.orders", Path("."), DAY0, config=ProjectConfig(connections={"pg": PG})
    )
    mark = [{"datetime": at(2).isoformat()}, 9]
    state = {"mark": mark, "reloaded_at": DAY0.isoformat(), "reload": {"after": [5]}}
    increments = list(source.read(state, ctx))
    reloaded = [
        r["id"] for i in increments if i.info["phase"] == "reload" for r in i.data.to_pylist()
    ]
    assert reloaded == [6, 7, 8, 9]  # resumed after key 5, not from the start
    assert all(i.position["mark"] == mark for i in increments)  # the mark never moved back
    assert increments[-1].position == {"mark": mark, "reloaded_at": DAY0.isoformat()}


# -- SQLite on the shared base ----------------------------------------------------------------


def test_sqlite_gets_the_shared_modes(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"n{i}") for i in range(7)])
    db.commit()
    local = ConfiguredLake(tmp_path)
    (tmp_path / "headwater.toml").write_text("")
    local.declare(
        lambda: table(
            "bronze.items",
            source=sqlite("shop.db", "items", mode="hash-diff", tiebreak="id", chunk_rows=3),
            strategy="merge",
            keys=["id"],
        )
    )
    local.run()
    db.execute("UPDATE items SET name = 'changed' WHERE id = 5")
    db.execute("DELETE FROM items WHERE id = 1")
    db.commit()
    (run,) = local.run()
    assert run.metrics["rows_in"] == 2
    expected = [{"id": i, "name": "changed" if i == 5 else f"n{i}"} for i in range(7) if i != 1]
    assert local.rows("bronze.items", "id") == expected
    db.close()
