"""MySQL/MariaDB source on the local server: modes, types, errors and a SIGKILL mid-extract.

Each test works in a database of its own, dropped afterwards.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest
from deltalake import DeltaTable

from headwater import table
from headwater.sources import mysql

from .test_sources_postgres import (
    PASSWORD_ENV,
    SECRET,
    ConfiguredLake,
    lake_with,
    positions,
    run_error,
    run_project,
)

MY = {"host": "127.0.0.1", "port": 3306, "user": "root"}
T0 = datetime(2024, 3, 1)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


class My:
    """A database of its own on the local server, and SQL in it."""

    def __init__(self) -> None:
        self.database = "hw_" + uuid.uuid4().hex[:10]
        self.conn = pymysql.connect(**MY, autocommit=True)  # type: ignore[arg-type]
        self.sql(f"CREATE DATABASE `{self.database}`")
        self.conn.select_db(self.database)

    def sql(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def many(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(statement, rows)

    def rows(self, relation: str) -> list[dict[str, Any]]:
        return self.sql(f"SELECT * FROM {relation} ORDER BY id")

    def close(self) -> None:
        self.sql(f"DROP DATABASE `{self.database}`")
        self.conn.close()


@pytest.fixture
def my() -> Iterator[My]:
    db = My()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def lake(tmp_path: Path, my: My, monkeypatch: pytest.MonkeyPatch) -> ConfiguredLake:
    monkeypatch.setenv(PASSWORD_ENV, "")  # root has no password here
    return lake_with(tmp_path, {"my": {**MY, "database": my.database}})


def orders(my: My, count: int) -> None:
    my.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(10,2), updated_at DATETIME(6))"
    )
    my.many(
        "INSERT INTO orders VALUES (%s, %s, %s, %s)",
        [(i, f"c{i % 5}", Decimal(i) / 4, at(i // 4)) for i in range(count)],
    )


def landed(my: My, lake: ConfiguredLake, name: str) -> list[dict[str, Any]]:
    """Table rows, with timestamps back in the source's terms (naive, UTC)."""
    out = []
    for r in lake.rows(name, "id"):
        out.append(
            {k: v.replace(tzinfo=None) if isinstance(v, datetime) else v for k, v in r.items()}
        )
    return out


def test_incremental_with_ties_across_chunks_and_late_rows(my: My, lake: ConfiguredLake) -> None:
    orders(my, 30)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=mysql("orders", connection="my", cursor="updated_at", lag="5m", chunk_rows=7),
            strategy="merge",
            keys=["id"],
        )
    )
    (run,) = lake.run()
    assert run.commits == 5  # 7+7+7+7+2, the primary key as tie-break
    assert landed(my, lake, "bronze.orders") == my.rows("orders")
    mark = positions(lake, "bronze.orders")[-1]["mark"]
    my.sql("UPDATE orders SET amount = 99, updated_at = %s WHERE id = 3", [at(100)])
    my.sql("INSERT INTO orders VALUES (100, 'late', 1, %s)", [at(6)])  # below the mark
    lake.run()
    assert landed(my, lake, "bronze.orders") == my.rows("orders")
    assert positions(lake, "bronze.orders")[-1]["mark"] != mark
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_every_type_round_trips_with_nulls(my: My, lake: ConfiguredLake) -> None:
    my.sql(
        "CREATE TABLE everything (id INT PRIMARY KEY, tiny TINYINT, small SMALLINT UNSIGNED, "
        "big BIGINT, ubig BIGINT UNSIGNED, price DECIMAL(12,2), ratio DOUBLE, r FLOAT, "
        "flag BOOLEAN, name VARCHAR(20), code CHAR(3), body TEXT, doc JSON, "
        "kind ENUM('a','b'), opts SET('x','y'), raw BLOB, bin VARBINARY(4), bits BIT(3), "
        "day DATE, clock TIME, local_at DATETIME(3), utc_at TIMESTAMP NULL, yr YEAR, ident UUID)"
    )
    my.sql(
        "INSERT INTO everything VALUES (1, -5, 65535, -9007199254740993, 18446744073709551615, "
        "12345678.91, 0.1, 1.5, TRUE, 'héllo ✓', 'ab', 'long text', '{\"a\": [1, 2]}', 'b', "
        "'x,y', x'00ff', x'01', b'101', '2024-02-29', '-01:02:03', '2024-06-01 12:00:00.125', "
        "'2024-06-01 12:00:00', 2024, '12345678-1234-5678-1234-567812345678')"
    )
    my.sql("INSERT INTO everything (id) VALUES (2)")
    lake.declare(
        lambda: table(
            "bronze.everything",
            source=mysql("everything", connection="my", mode="full", timezone="Europe/Paris"),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    first, second = lake.rows("bronze.everything", "id")
    assert first == {
        "id": 1,
        "tiny": -5,
        "small": 65535,
        "big": -9007199254740993,
        "ubig": Decimal("18446744073709551615"),  # beyond a signed 64-bit integer
        "price": Decimal("12345678.91"),
        "ratio": 0.1,
        "r": 1.5,
        "flag": 1,
        "name": "héllo ✓",
        "code": "ab",
        "body": "long text",
        "doc": '{"a": [1, 2]}',
        "kind": "b",
        "opts": "x,y",
        "raw": b"\x00\xff",
        "bin": b"\x01",
        "bits": b"\x05",
        "day": date(2024, 2, 29),
        "clock": -(3600 + 120 + 3) * 1_000_000,  # TIME is a duration: microseconds
        "local_at": datetime(2024, 6, 1, 10, 0, 0, 125000, tzinfo=UTC),  # Paris -> UTC
        "utc_at": datetime(2024, 6, 1, 12, 0, tzinfo=UTC),  # TIMESTAMP is UTC already
        "yr": 2024,
        "ident": "12345678-1234-5678-1234-567812345678",
    }
    assert second == {k: (2 if k == "id" else None) for k in first}
    assert str(lake.target("bronze.everything").schema.field("price").type) == "decimal128(12, 2)"


def test_a_custom_query_with_a_literal_percent(my: My, lake: ConfiguredLake) -> None:
    orders(my, 10)
    lake.declare(
        lambda: table(
            "bronze.q",
            source=mysql(
                query="SELECT id, UPPER(customer) AS customer, updated_at FROM orders WHERE customer LIKE 'c%' AND id > 1",
                connection="my",
                cursor="updated_at",
                tiebreak="id",
                chunk_rows=3,
            ),
            strategy="append",
        )
    )
    lake.run()
    rows = lake.rows("bronze.q", "id")
    assert [r["id"] for r in rows] == list(range(2, 10)) and rows[0]["customer"] == "C2"


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_hash_diff_and_delete_detection(my: My, lake: ConfiguredLake, deletes: str) -> None:
    my.sql("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), qty DECIMAL(8,2))")
    my.many("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"i{i}", i) for i in range(12)])
    orders(my, 9)
    lake.declare(
        lambda: [
            table(
                "bronze.items",
                source=mysql("items", connection="my", mode="hash-diff", chunk_rows=5),
                strategy="merge",
                keys=["id"],
                deletes=deletes,
            ),
            table(
                "bronze.orders",
                source=mysql("orders", connection="my", cursor="updated_at", detect_deletes=True),
                strategy="merge",
                keys=["id"],
                deletes=deletes,
            ),
        ]
    )
    lake.run()
    my.sql("UPDATE items SET qty = 0 WHERE id = 7")
    my.sql("DELETE FROM items WHERE id IN (2, 11)")
    my.sql("DELETE FROM orders WHERE id = 4")
    items_run, _ = lake.run()
    assert items_run.metrics["rows_in"] == 3  # one update, two deletes
    for name, relation in (("bronze.items", "items"), ("bronze.orders", "orders")):
        rows = landed(my, lake, name)
        alive = [{k: v for k, v in r.items() if k != "_deleted_at"} for r in rows]
        if deletes == "soft":
            alive = [a for a, r in zip(alive, rows, strict=True) if r["_deleted_at"] is None]
        assert alive == my.rows(relation)
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]


def test_errors_name_the_table_the_column_and_the_connection(
    my: My, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders(my, 2)
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    bad = {**MY, "port": 1, "password_env": PASSWORD_ENV}
    lake = lake_with(tmp_path, {"my": {**MY, "database": my.database}, "down": bad})
    lake.declare(lambda: table("bronze.a", source=mysql("nope", connection="my", cursor="x")))
    message = run_error(lake)
    assert "bronze.a" in message and "'my'" in message and "nope" in message
    assert "doesn't exist" in message
    lake.specs.clear()
    lake.declare(lambda: table("bronze.b", source=mysql("orders", connection="my", cursor="x")))
    assert "no column 'x'" in run_error(lake)
    lake.specs.clear()
    lake.declare(lambda: table("bronze.c", source=mysql("orders", connection="down", cursor="x")))
    message = run_error(lake)
    assert "cannot connect to mysql connection 'down' (127.0.0.1:1/)" in message


PIPELINE = """
from headwater import table
from headwater.sources import mysql

table("bronze.orders",
      source=mysql("orders", connection="my", cursor="updated_at", chunk_rows=9),
      strategy="merge", keys=["id"])
"""


@pytest.mark.parametrize("point", ["after_read@3", "after_commit@2"])
def test_sigkill_mid_extract_then_resume_matches_the_source(
    my: My, tmp_path: Path, point: str
) -> None:
    orders(my, 50)
    lake_with(tmp_path, {"my": {**MY, "database": my.database}})
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "shop.py").write_text(PIPELINE)
    crashed = run_project(tmp_path, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    resumed = run_project(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    table_rows = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "orders")).to_pyarrow_table()
    got = sorted(table_rows.to_pylist(), key=lambda r: r["id"])
    for r in got:
        r["updated_at"] = r["updated_at"].replace(tzinfo=None)
    assert got == my.rows("orders")  # no loss, no duplicates
    assert json.loads(run_project(tmp_path).stdout)[0][1] == "up-to-date"
