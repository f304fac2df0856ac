"""Pooled DuckDB databases of writes: a reused database shows nothing of its last write."""

from __future__ import annotations

import pyarrow as pa
import pytest

from headwater.tables.databases import DatabasePool


def _objects(con) -> set[str]:  # type: ignore[no-untyped-def]
    tables = con.sql("SELECT table_name FROM duckdb_tables()").fetchall()
    views = con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return {r[0] for r in tables + views}


def test_a_returned_database_is_reused_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pool = DatabasePool()
    first = pool.borrow(1, "256MB", str(tmp_path))
    con = first.con
    con.register("incoming", pa.table({"id": [1, 2]}))
    con.execute("CREATE OR REPLACE TABLE pairs AS SELECT * FROM incoming")
    con.execute("CREATE OR REPLACE VIEW fresh AS SELECT * FROM pairs")
    con.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    assert {"incoming", "pairs", "fresh", "scratch"} <= _objects(con)
    database = first._database
    first.release()

    second = pool.borrow(1, "256MB", str(tmp_path))
    assert second._database is database  # reused, not opened again
    assert _objects(second.con) == set()
    with pytest.raises(Exception, match="incoming"):
        second.con.sql("SELECT * FROM incoming").fetchall()
    second.release()
    pool.clear()


def test_writes_side_by_side_get_their_own_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pool = DatabasePool()
    one = pool.borrow(1, "256MB", str(tmp_path))
    two = pool.borrow(1, "256MB", str(tmp_path))
    assert one._database is not two._database
    one.con.execute("CREATE TABLE pairs AS SELECT 1 AS k")
    two.con.execute("CREATE TABLE pairs AS SELECT 2 AS k")  # no clash with the other write
    assert one.con.sql("SELECT k FROM pairs").fetchall() == [(1,)]
    one.release()
    two.release()
    other = pool.borrow(2, "256MB", str(tmp_path))  # another configuration: a database of its own
    assert other._database not in (one._database, two._database)
    other.release()
    pool.clear()
