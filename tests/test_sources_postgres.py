"""PostgreSQL source on the local server: every mode, types, queries, errors and a SIGKILL.

Each test works in a schema of its own in database `test`, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from headwater import Project, table
from headwater.config import load_config
from headwater.errors import HeadwaterError
from headwater.sources import postgres

from .lake import Lake

PG = {"host": "127.0.0.1", "port": 5432, "database": "test", "user": "postgres"}
PASSWORD_ENV = "HW_TEST_PG_PASSWORD"
SECRET = "s3cret-never-shown"


class ConfiguredLake(Lake):
    """A Lake whose project reads headwater.toml (for its connections)."""

    @property
    def project(self) -> Project:
        return Project.of_specs(self.root, self.specs, load_config(self.root))


def lake_with(root: Path, connections: dict[str, dict[str, Any]]) -> ConfiguredLake:
    lines = []
    for name, settings in connections.items():
        lines.append(f"[connections.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (root / "headwater.toml").write_text("\n".join(lines) + "\n")
    return ConfiguredLake(root)


class Pg:
    """A schema of its own on the local server, and SQL in it."""

    def __init__(self) -> None:
        self.schema = "hw_" + uuid.uuid4().hex[:10]
        self.conn = psycopg.connect(
            host=PG["host"],
            port=PG["port"],
            dbname=PG["database"],
            user=PG["user"],
            autocommit=True,
        )
        self.conn.execute(f'CREATE SCHEMA "{self.schema}"')
        self.conn.execute(f'SET search_path TO "{self.schema}"')

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def many(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(statement, rows)

    def name(self, relation: str) -> str:
        return f"{self.schema}.{relation}"

    def close(self) -> None:
        self.conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')
        self.conn.close()


@pytest.fixture(name="pg")
def pg_schema() -> Iterator[Pg]:
    db = Pg()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(name="lake")
def pg_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfiguredLake:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)  # trust auth ignores it; it must never be shown
    return lake_with(tmp_path, {"pg": {**PG, "password_env": PASSWORD_ENV}})


T0 = datetime(2024, 3, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def orders(pg: Pg, count: int) -> None:
    pg.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), updated_at timestamptz)"
    )
    # Groups of four orders share an updated_at: chunk ends fall inside ties.
    pg.many(
        "INSERT INTO orders VALUES (%s, %s, %s, %s)",
        [(i, f"c{i % 5}", Decimal(i) / 4, at(i // 4)) for i in range(count)],
    )


def source_rows(pg: Pg, relation: str, order: str = "id") -> list[dict[str, Any]]:
    with pg.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT * FROM {relation} ORDER BY {order}")
        return list(cur.fetchall())


def positions(lake: Lake, name: str) -> list[Any]:
    """The source positions committed by the table's commits, oldest first."""
    found = []
    for entry in reversed(lake.target(name).table.history()):
        hw = entry.get("headwater") or {}
        if "positions" in hw and entry.get("operation") != "CREATE TABLE":
            found.append(hw["positions"].get("source"))
    return found


# -- incremental ---------------------------------------------------------------------


def test_incremental_with_ties_across_chunks_skips_nothing_and_picks_up_changes(
    pg: Pg, lake: ConfiguredLake
) -> None:
    orders(pg, 30)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", cursor="updated_at", chunk_rows=7),
            strategy="merge",
            keys=["id"],
            version_column="updated_at",
        )
    )
    (run,) = lake.run()
    assert run.commits == 5  # 7+7+7+7+2: one commit per chunk, tie-break from the primary key
    pg.sql("UPDATE orders SET amount = 99, updated_at = %s WHERE id IN (3, 17)", [at(100)])
    pg.sql("INSERT INTO orders VALUES (30, 'new', 1.5, %s), (31, 'new', 2.5, %s)", [at(100)] * 2)
    (run,) = lake.run()
    assert run.metrics["rows_in"] == 4  # only what changed after the mark
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_lookback_rereads_rows_committed_late_and_the_mark_never_moves_back(
    pg: Pg, lake: ConfiguredLake
) -> None:
    orders(pg, 12)  # updated_at up to at(2)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(
                pg.name("orders"), connection="pg", cursor="updated_at", lag="5m", chunk_rows=5
            ),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    mark = positions(lake, "bronze.orders")[-1]["mark"]
    # A long transaction stamped this row at(1) but committed it after the run: it sits
    # below the mark, where a plain high-water mark never looks again.
    pg.sql("INSERT INTO orders VALUES (100, 'late', 7, %s)", [at(1)])
    pg.sql("UPDATE orders SET amount = 0 WHERE id = 5")  # late too: same updated_at
    (run,) = lake.run()
    assert run.commits == 1
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")
    assert positions(lake, "bronze.orders")[-1]["mark"] == mark  # re-reads never move it back
    # Nothing late, nothing new: the window is read again and changes nothing.
    assert [r.status for r in lake.run()] == ["up-to-date"]
    pg.sql("INSERT INTO orders VALUES (101, 'next', 1, %s)", [at(50)])
    lake.run()
    assert positions(lake, "bronze.orders")[-1]["mark"][1] == 101


def test_lookback_outside_the_window_is_not_reread(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 12)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", cursor="updated_at", lag="30s"),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    pg.sql("INSERT INTO orders VALUES (100, 'too late', 7, %s)", [at(0)])  # 2 minutes below
    lake.run()
    assert 100 not in [r["id"] for r in lake.rows("bronze.orders", "id")]


# -- full ---------------------------------------------------------------------------------


def test_full_mode_reloads_in_chunks_and_merge_absorbs_the_reload(
    pg: Pg, lake: ConfiguredLake
) -> None:
    orders(pg, 20)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", mode="full", chunk_rows=6),
            strategy="merge",
            keys=["id"],
        )
    )
    (run,) = lake.run()
    assert run.commits == 5  # 4 chunks by primary key + the commit recording completion
    # Changes that no cursor would show: full mode sees them.
    pg.sql("UPDATE orders SET customer = 'changed' WHERE id = 4")
    lake.run()
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")


def test_full_mode_with_overwrite_replaces_the_table(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 10)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=postgres(pg.name("orders"), connection="pg", mode="full", chunk_rows=4),
            strategy="overwrite",
        )
    )
    lake.run()
    pg.sql("DELETE FROM orders WHERE id < 5")
    lake.run()
    assert lake.rows("bronze.orders", "id") == source_rows(pg, "orders")


# -- types ---------------------------------------------------------------------------------

TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE everything (
  id int PRIMARY KEY, small smallint, big bigint, price numeric(12,2), free numeric,
  ratio double precision, r real, ok boolean, name text, code char(3), label varchar(8),
  day date, clock time, at_local timestamp, at_utc timestamptz(3), doc json, docb jsonb,
  ident uuid, tags text[], nums int[], feeling mood, raw bytea, span interval, addr inet
)"""


def test_every_type_round_trips_with_nulls(pg: Pg, lake: ConfiguredLake) -> None:
    for statement in TYPES.split(";"):
        pg.sql(statement)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    pg.sql(
        "INSERT INTO everything VALUES (1, -7, 9007199254740993, 12345678.91, 0.000000001, "
        "0.1, 1.5, true, 'héllo ✓', 'ab', 'x''y%%', '2024-02-29', '23:59:59.5', "
        "'2024-06-01 12:00:00', '2024-06-01 12:00:00.123+02', '{\"a\": [1, 2]}', "
        "'{\"b\": null}', %s, '{a,\"b c\",NULL}', '{1,NULL,3}', 'happy', '\\x00ff', "
        "'1 day 2 hours', '10.0.0.1')",
        [ident],
    )
    pg.sql("INSERT INTO everything (id) VALUES (2)")  # every other column NULL
    lake.declare(
        lambda: table(
            "bronze.everything",
            source=postgres(
                pg.name("everything"), connection="pg", mode="full", timezone="Europe/Paris"
            ),
            strategy="merge",
            keys=["id"],
        )
    )
    lake.run()
    first, second = lake.rows("bronze.everything", "id")
    assert first == {
        "id": 1,
        "small": -7,
        "big": 9007199254740993,  # beyond a double's exact integers
        "price": Decimal("12345678.91"),
        "free": Decimal("0.000000001"),  # numeric without precision: decimal(38,9)
        "ratio": 0.1,
        "r": 1.5,
        "ok": True,
        "name": "héllo ✓",
        "code": "ab ",
        "label": "x'y%",
        "day": date(2024, 2, 29),
        "clock": "23:59:59.500000",  # Delta has no time of day: ISO text
        "at_local": datetime(2024, 6, 1, 10, 0, tzinfo=UTC),  # Paris summer time -> UTC
        "at_utc": datetime(2024, 6, 1, 10, 0, 0, 123000, tzinfo=UTC),
        "doc": '{"a": [1, 2]}',
        "docb": '{"b": null}',
        "ident": str(ident),
        "tags": ["a", "b c", None],
        "nums": [1, None, 3],
        "feeling": "happy",
        "raw": b"\x00\xff",
        "span": "P1DT2H",
        "addr": "10.0.0.1/32",
    }
    assert second == {k: (2 if k == "id" else None) for k in first}
    schema = lake.target("bronze.everything").schema
    assert str(schema.field("price").type) == "decimal128(12, 2)"
    assert str(schema.field("at_local").type) == "timestamp[us, tz=UTC]"


def test_the_source_time_zone_is_recorded_with_each_increment(pg: Pg) -> None:
    from headwater.config import ProjectConfig
    from headwater.sources.base import ReadContext

    pg.sql("CREATE TABLE t (id int PRIMARY KEY, at timestamp)")
    pg.sql("INSERT INTO t VALUES (1, '2024-01-15 12:00:00')")
    source = postgres(pg.name("t"), connection="pg", cursor="at", timezone="America/New_York")
    config = ProjectConfig(connections={"pg": PG})
    ctx = ReadContext("bronze.t", Path("."), datetime.now(UTC), config=config)
    (increment,) = list(source.read(None, ctx))
    assert increment.info["source_time_zone"] == "America/New_York"
    assert increment.data.column("at").to_pylist() == [datetime(2024, 1, 15, 17, 0, tzinfo=UTC)]
    # The mark keeps the source's own value, so the next read compares like with like.
    assert increment.position == {"mark": [{"datetime": "2024-01-15T12:00:00"}, 1]}


# -- reading ahead -----------------------------------------------------------------------


def _reading_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "headwater-pg-read"]


@pytest.fixture(name="small_batches")
def small_batches_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny driver batches and a one-batch read-ahead, so the reading thread waits on the consumer."""
    import importlib

    module = importlib.import_module("headwater.sources.postgres")
    monkeypatch.setattr(module, "BATCH_BYTES", 4096)
    monkeypatch.setattr(module, "READ_AHEAD_BATCHES", 1)


def _read_ctx() -> Any:
    from headwater.config import ProjectConfig
    from headwater.sources.base import ReadContext

    config = ProjectConfig(connections={"pg": PG})
    return ReadContext("bronze.orders", Path("."), datetime.now(UTC), config=config)


def test_a_read_stopped_early_stops_reading_ahead(pg: Pg, small_batches: None) -> None:
    orders(pg, 20_000)
    source = postgres(pg.name("orders"), connection="pg", cursor="updated_at", chunk_rows=1000)
    reads = source.read(None, _read_ctx())
    first = next(reads)
    # Rows arrive whole and in cursor order although a thread read them ahead.
    assert first.data.column("id").to_pylist() == list(range(1000))
    assert _reading_threads() == ["headwater-pg-read"]  # waiting for room in its queue
    reads.close()  # what a failed write does to the read
    assert _reading_threads() == []
    # The same source reads again, to the end, in as many chunks as rows allow.
    again = list(source.read(None, _read_ctx()))
    assert sum(i.data.num_rows for i in again) == 20_000 and len(again) == 20
    assert _reading_threads() == []


def test_a_server_error_mid_stream_is_one_clear_line(pg: Pg, small_batches: None) -> None:
    orders(pg, 20_000)
    pg.sql("ANALYZE orders")
    # Fails on the server after about 15 000 rows, while the thread reads ahead.
    query = f"SELECT id, 1 / (15000 - id) AS ratio, updated_at FROM {pg.name('orders')}"
    source = postgres(query=query, connection="pg", mode="full", tiebreak="id", chunk_rows=1000)
    read = []
    with pytest.raises(HeadwaterError) as failed:
        for increment in source.read(None, _read_ctx()):
            read.append(increment.data.num_rows)
    assert "division by zero" in str(failed.value)
    # The key order comes from the primary key's index, so rows stream as they are
    # computed and the ones before the failure came through first.
    assert 0 < sum(read) < 15_000
    assert _reading_threads() == []


# -- queries -------------------------------------------------------------------------------


def test_a_custom_query_and_a_column_subset(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 12)
    query = (
        f"SELECT o.id, upper(o.customer) AS customer, o.updated_at FROM {pg.name('orders')} o "
        "WHERE o.customer LIKE 'c%' AND o.id <> 3"
    )
    lake.declare(
        lambda: [
            table(
                "bronze.q",
                source=postgres(
                    query=query, connection="pg", cursor="updated_at", tiebreak="id", chunk_rows=4
                ),
                strategy="append",
            ),
            table(
                "bronze.cols",
                source=postgres(
                    pg.name("orders"), connection="pg", columns=["id", "amount"], mode="full"
                ),
                strategy="merge",
                keys=["id"],
            ),
        ]
    )
    lake.run()
    rows = lake.rows("bronze.q", "id")
    assert [r["id"] for r in rows] == [i for i in range(12) if i != 3]
    assert rows[0]["customer"] == "C0"
    assert lake.table("bronze.cols").schema.names == ["id", "amount"]
    pg.sql("INSERT INTO orders VALUES (50, 'c1', 1, %s)", [at(60)])
    lake.run()
    assert [r["id"] for r in lake.rows("bronze.q", "id")][-1] == 50


# -- errors --------------------------------------------------------------------------------


def run_error(lake: Lake) -> str:
    (run,) = lake.run(check=False)
    assert run.status == "failed"
    message = f"{run.error} {run.hint}"
    assert SECRET not in message and "\n" not in (run.error or "")
    return message


def test_an_unknown_table_is_one_clear_line(pg: Pg, lake: ConfiguredLake) -> None:
    lake.declare(
        lambda: table(
            "bronze.x",
            source=postgres(pg.name("nope"), connection="pg", cursor="updated_at"),
            strategy="append",
        )
    )
    message = run_error(lake)
    assert "bronze.x" in message and "'pg'" in message and "nope" in message
    assert "does not exist" in message


def test_an_unknown_cursor_column_is_named(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 3)
    lake.declare(
        lambda: table(
            "bronze.x",
            source=postgres(pg.name("orders"), connection="pg", cursor="modified"),
            strategy="append",
        )
    )
    message = run_error(lake)
    assert "no column 'modified'" in message and "updated_at" in message


def test_an_unknown_column_in_columns_is_named(pg: Pg, lake: ConfiguredLake) -> None:
    orders(pg, 3)
    lake.declare(
        lambda: table(
            "bronze.x",
            source=postgres(
                pg.name("orders"), connection="pg", columns=["id", "nope"], mode="full"
            ),
            strategy="append",
        )
    )
    message = run_error(lake)
    assert '"nope"' in message and "does not exist" in message


def test_cannot_connect_names_the_connection_never_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    lake = lake_with(tmp_path, {"shop": {**PG, "port": 1, "password_env": PASSWORD_ENV}})
    lake.declare(
        lambda: table(
            "bronze.x",
            source=postgres("orders", connection="shop", cursor="updated_at"),
            strategy="append",
        )
    )
    message = run_error(lake)
    assert "cannot connect to postgres connection 'shop' (127.0.0.1:1/test)" in message


def test_bad_declarations_fail_at_declaration() -> None:
    from headwater.errors import ConfigError

    with pytest.raises(ConfigError, match="needs cursor="):
        postgres("t", connection="pg")
    with pytest.raises(ConfigError, match="needs tiebreak="):
        postgres(query="SELECT 1", connection="pg", cursor="x")
    with pytest.raises(ConfigError, match="unknown time zone"):
        postgres("t", connection="pg", cursor="x", timezone="Mars/Base")
    with pytest.raises(ConfigError, match="give connection="):
        postgres("t", cursor="x")


# -- crash in the middle of a multi-chunk extract --------------------------------------------

PIPELINE = """
from headwater import table
from headwater.sources import postgres

table("bronze.orders",
      source=postgres("{schema}.orders", connection="pg", cursor="updated_at", chunk_rows=9),
      strategy="{strategy}", keys=["id"])
"""

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
print(json.dumps([[r.table, r.status, r.error] for r in results]))
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def run_project(root: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, PASSWORD_ENV: SECRET}
    env.pop("HEADWATER_FAILPOINTS", None)
    if failpoint:
        env["HEADWATER_FAILPOINTS"] = failpoint
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("strategy", "point"),
    [("merge", "after_read@3"), ("merge", "after_commit@2"), ("append", "after_stage@4")],
)
def test_sigkill_mid_extract_then_resume_matches_the_source(
    pg: Pg, tmp_path: Path, strategy: str, point: str
) -> None:
    orders(pg, 50)  # 6 chunks of 9 rows; ties of four straddle chunk ends
    lake_with(tmp_path, {"pg": {**PG, "password_env": PASSWORD_ENV}})
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "shop.py").write_text(
        PIPELINE.format(schema=pg.schema, strategy=strategy)
    )
    crashed = run_project(tmp_path, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    resumed = run_project(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    landed = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "orders")).to_pyarrow_table()
    got = sorted(landed.to_pylist(), key=lambda r: r["id"])
    assert got == source_rows(pg, "orders")  # no loss, no duplicates
    again = run_project(tmp_path)
    assert json.loads(again.stdout)[0][1] == "up-to-date"
