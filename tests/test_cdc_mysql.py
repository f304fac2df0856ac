"""MySQL/MariaDB binlog change data capture against the local MariaDB server.

Each test works in a database of its own (dropped afterwards) and compares the
Delta table with `SELECT *` of the source table. The server must have the
binary log in row format (scripts/services.sh); binlog_row_metadata=FULL is set
here, as `headwater cdc setup` would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pymysql
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from headwater import table
from headwater.cli.main import app
from headwater.engine.position import read_committed_state
from headwater.errors import ConfigError
from headwater.sources._binlog_types import position_sequence
from headwater.sources.base import ReadContext
from headwater.sources.cdc_mysql import (
    apply_fixes,
    binlog_backlog,
    cdc_mysql,
    check_prerequisites,
)

from .conftest import write_pipeline
from .lake import Lake

SERVER = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
META = ("_op", "_seq", "_commit_ts")


def server() -> pymysql.Connection[Any]:
    return pymysql.connect(**SERVER, autocommit=True)  # type: ignore[arg-type]


def wait_for_server(seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = server()
        except pymysql.MySQLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        with conn.cursor() as cur:
            # Column names in row events (what `headwater cdc setup` applies).
            cur.execute("SET GLOBAL binlog_row_metadata = 'FULL'")
        conn.close()
        return


@pytest.fixture(scope="module", autouse=True)
def _row_metadata() -> None:
    wait_for_server()


class Maria:
    """A database of its own on the local server, and SQL in it (times in UTC)."""

    def __init__(self) -> None:
        self.db = "hw_" + uuid.uuid4().hex[:10]
        admin = server()
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.db}`")
        admin.close()
        self.conn = self._connect()

    def _connect(self) -> pymysql.Connection[Any]:
        return pymysql.connect(
            **SERVER,  # type: ignore[arg-type]
            database=self.db,
            autocommit=True,
            init_command="SET time_zone = '+00:00'",
        )

    def _live(self) -> None:
        """Reconnect after a server restart."""
        try:
            self.conn.ping()
        except pymysql.MySQLError:
            self.conn = self._connect()

    @property
    def settings(self) -> dict[str, Any]:
        return {**SERVER, "database": self.db}

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        self._live()
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def changed(self, statement: str, params: Any = None) -> int:
        """Run a statement; the number of rows it changed."""
        self._live()
        with self.conn.cursor() as cur:
            return int(cur.execute(statement, params))

    def transaction(self, statements: list[tuple[str, Any]]) -> int:
        """Run statements in one transaction; the number of rows they changed."""
        self._live()
        changed = 0
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            for statement, params in statements:
                changed += int(cur.execute(statement, params))
            cur.execute("COMMIT")
        return changed

    def rows(self, name: str) -> list[dict[str, Any]]:
        conn = pymysql.connect(
            **SERVER,  # type: ignore[arg-type]
            database=self.db,
            cursorclass=pymysql.cursors.DictCursor,
            init_command="SET time_zone = '+00:00'",
        )
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM `{name}`")
            rows = list(cur.fetchall())
        conn.close()
        return rows

    def close(self) -> None:
        self._live()
        with self.conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.db}`")
        self.conn.close()


@pytest.fixture
def maria() -> Iterator[Maria]:
    db = Maria()
    yield db
    db.close()


def delta_rows(lake: Lake, name: str, drop: tuple[str, ...] = META) -> list[dict[str, Any]]:
    return lake.rows(name, "id", drop=drop)


def by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["id"])


ORDERS = """CREATE TABLE orders (
    id INT PRIMARY KEY,
    customer VARCHAR(20) NOT NULL,
    amount DECIMAL(10,2),
    status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new',
    updated DATETIME(6) NOT NULL,
    note TEXT NULL
) ENGINE=InnoDB"""


class Workload:
    """Random inserts, updates, deletes, key changes and multi-row transactions."""

    def __init__(self, db: Maria, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.next_id = 1
        self.clock = datetime(2024, 1, 1)

    def _row(self, key: int) -> tuple[Any, ...]:
        self.clock += timedelta(seconds=1, microseconds=self.rng.randrange(10**6))
        note = self.rng.choice([None, "", "fragile", "gift ✓", "x" * 300])
        return (
            key,
            f"c{self.rng.randrange(50)}",
            Decimal(self.rng.randrange(-(10**5), 10**6)) / 100,
            self.rng.choice(["new", "paid", "shipped"]),
            self.clock,
            note,
        )

    def _ids(self) -> list[int]:
        return [r[0] for r in self.db.sql("SELECT id FROM orders")]

    def statement(self) -> tuple[str, Any]:
        ids = self._ids()
        choice = self.rng.random()
        if not ids or choice < 0.35:
            self.next_id += 1
            return "INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s)", self._row(self.next_id)
        key = self.rng.choice(ids)
        if choice < 0.70:
            _, customer, amount, status, updated, note = self._row(key)
            return (
                "UPDATE orders SET customer=%s, amount=%s, status=%s, updated=%s, note=%s WHERE id=%s",
                (customer, amount, status, updated, note, key),
            )
        if choice < 0.85:
            return "DELETE FROM orders WHERE id=%s", (key,)
        self.next_id += 1  # the primary key itself changes
        return "UPDATE orders SET id=%s WHERE id=%s", (self.next_id, key)

    def run(self, operations: int) -> None:
        done = 0
        while done < operations:
            kind = self.rng.random()
            if kind < 0.6:
                self.db.sql(*self.statement())
                done += 1
            elif kind < 0.9:
                size = self.rng.randrange(2, 12)
                self.db.transaction([self.statement() for _ in range(size)])
                done += size
            else:
                # A multi-row statement, and a transaction that is rolled back (never logged).
                self.db.sql("UPDATE orders SET amount = amount + 1 WHERE id %% 3 = %s", (done % 3,))
                self.db.conn.begin()
                with self.db.conn.cursor() as cur:
                    cur.execute("DELETE FROM orders")
                self.db.conn.rollback()
                done += 1


@pytest.mark.parametrize("resume", ["position", "gtid"])
def test_random_workload_streams_into_an_identical_table(
    tmp_path: Path, maria: Maria, resume: str
) -> None:
    maria.sql(ORDERS)
    work = Workload(maria, seed=7 if resume == "position" else 11)
    work.run(30)
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "orders", resume=resume, chunk_rows=25)  # type: ignore[arg-type]
    lake.declare(
        lambda: table(
            "bronze.orders", source=source, strategy="cdc-apply", keys=["id"], sequence_by="_seq"
        )
    )
    for cycle in range(3):
        (_run,) = lake.run()
        assert delta_rows(lake, "bronze.orders") == by_id(maria.rows("orders")), f"cycle {cycle}"
        work.run(40)
    lake.run()
    assert delta_rows(lake, "bronze.orders") == by_id(maria.rows("orders"))
    committed = committed_position(lake, "bronze.orders")
    assert committed["mode"] == resume and committed["skip"] == 0
    assert bool(committed.get("gtid")) and ("domain" in committed) == (resume == "gtid")


def committed_position(lake: Lake, name: str) -> dict[str, Any]:
    return dict(read_committed_state(lake.target(name), f"headwater/{name}").positions["source"])


def test_a_transaction_larger_than_a_chunk_commits_in_parts_and_resumes_exactly(
    tmp_path: Path, maria: Maria
) -> None:
    maria.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "t", chunk_rows=10)
    lake.declare(
        lambda: table("bronze.log", source=source, strategy="append")  # every change, exactly once
    )
    lake.run()
    maria.transaction([("INSERT INTO t VALUES (%s, %s)", (i, i)) for i in range(35)])
    # What `headwater cdc status` shows: binlog written but not yet read by the table.
    assert (binlog_backlog(maria.settings, committed_position(lake, "bronze.log")) or 0) > 0
    (run,) = lake.run()
    assert run.commits == 4  # 10 + 10 + 10 + 5 changes of one transaction
    log = lake.rows("bronze.log", "_seq")
    assert [r["id"] for r in log] == list(range(35))
    assert len({r["_seq"] for r in log}) == 35
    lake.run()
    assert len(lake.rows("bronze.log", "_seq")) == 35
    gone = {**committed_position(lake, "bronze.log"), "file": "mysql-bin.000000"}
    assert binlog_backlog(maria.settings, gone) is None  # a purged position


@pytest.mark.parametrize("method", ["auto", "lock"])
def test_snapshot_hand_off_under_concurrent_writes_has_no_gap_and_no_duplicate(
    tmp_path: Path, maria: Maria, method: str
) -> None:
    """A writer bumps counters while the snapshot runs; every bump appears exactly once."""
    maria.sql("CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL, pad VARCHAR(50))")
    maria.sql("INSERT INTO counters SELECT seq, 0, 'x' FROM seq_1_to_200")
    lake = Lake(tmp_path)
    settings = maria.settings
    lake.declare(
        lambda: (
            table(
                "bronze.counters",
                source=cdc_mysql(settings, "counters", chunk_rows=40, snapshot=method),  # type: ignore[arg-type]
                strategy="cdc-apply",
                keys=["id"],
                sequence_by="_seq",
            ),
            table(
                "bronze.counter_log",
                source=cdc_mysql(settings, "counters", chunk_rows=40, change_type=False),
                strategy="append",
            ),
        )
    )
    started, stop = threading.Event(), threading.Event()
    bumps = [0]

    def writer() -> None:
        conn = pymysql.connect(**settings, autocommit=True)  # type: ignore[arg-type]
        rng = random.Random(3)
        with conn.cursor() as cur:
            while not stop.is_set() and bumps[0] < 400:
                key = rng.randrange(1, 201)
                cur.execute("UPDATE counters SET n = n + 1 WHERE id = %s", (key,))
                bumps[0] += 1
                started.set()
                stop.wait(0.002)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        started.wait()
        before = bumps[0]
        lake.run()
        during = bumps[0] - before
    finally:
        stop.set()
        thread.join()
    assert during > 0, "the writer made no change while the snapshot was taken"
    lake.run()
    assert delta_rows(lake, "bronze.counters") == by_id(maria.rows("counters"))
    # Per key, the log holds the snapshot's value and then every bump after it, once each.
    log = lake.rows("bronze.counter_log", "_seq")
    reads = [r for r in log if r["_op"] == "r"]
    assert sorted(r["id"] for r in reads) == list(range(1, 201))
    history: dict[int, list[int]] = {}
    for r in log:
        history.setdefault(r["id"], []).append(r["n"])
    for key, values in history.items():
        assert values == list(range(values[0], values[0] + len(values))), f"counter {key}"
    final = {r["id"]: r["n"] for r in maria.rows("counters")}
    assert {k: v[-1] for k, v in history.items()} == final
    assert sum(final.values()) == bumps[0]


PIPELINE = """
from headwater import table
from headwater.sources.cdc_mysql import cdc_mysql

table("bronze.orders", source=cdc_mysql("shop", "orders"),
      strategy="cdc-apply", keys=["id"], sequence_by="_seq")
table("bronze.orders_log", source=cdc_mysql("shop", "orders", change_type=False), strategy="append")
"""

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
print(json.dumps([[r.table, r.status, r.error] for r in results]))
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def run_driver(root: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
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


def seed_orders(db: Maria, n: int) -> None:
    """The orders table with rows 1..n."""
    db.sql(ORDERS)
    for i in range(1, n + 1):
        db.sql(
            "INSERT INTO orders VALUES (%s, %s, %s, 'new', '2024-01-01 00:00:00.5', 'n')",
            (i, f"c{i}", i),
        )


def cdc_project(root: Path, db: Maria, name: str, chunk_rows: int) -> None:
    """A project streaming `orders` (PIPELINE), connected without a password in the file."""
    connection = {k: v for k, v in db.settings.items() if k != "password"}
    (root / "headwater.toml").write_text(
        f'[project]\nname = "{name}"\n[defaults]\nchunk_rows = {chunk_rows}\n[connections.shop]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in connection.items())
    )
    (root / "pipelines").mkdir()
    write_pipeline(root, "cdc", PIPELINE)


def mutate(db: Maria, first: int, offset: int) -> int:
    """Deterministic changes; returns how many row changes the binlog gets."""
    changes = 0
    for i in range(first, first + 6):  # new rows, beyond any snapshot boundary
        changes += db.changed(
            "INSERT INTO orders VALUES (%s, 'n', %s, 'new', '2024-02-01', NULL)", (i, i)
        )
    for key in (2 + offset, 17 + offset, 33 + offset):  # below and above a chunk boundary
        changes += db.changed("UPDATE orders SET amount = amount + 10 WHERE id = %s", (key,))
    changes += db.changed("DELETE FROM orders WHERE id = %s", (5 + offset,))
    # A key change is a delete and an insert.
    changes += 2 * db.changed("UPDATE orders SET id = %s WHERE id = %s", (first + 100, 20 + offset))
    # One transaction larger than a chunk (chunk_rows = 10).
    changes += db.transaction(
        [("UPDATE orders SET note = %s WHERE id = %s", (f"t{offset}", k)) for k in range(21, 36)]
    )
    return changes


@pytest.mark.parametrize(
    ("phase", "point", "nth"),
    [
        (1, "after_commit", 2),  # inside the snapshot: it resumes from a new one
        (2, "after_commit", 2),  # while streaming: between the commit and the acknowledgement
        (2, "after_stage", 3),  # between writing the data and committing it
        (2, "after_read", 4),
    ],
)
def test_sigkill_at_any_step_loses_and_repeats_nothing(
    tmp_path: Path, maria: Maria, phase: int, point: str, nth: int
) -> None:
    seed_orders(maria, 40)
    cdc_project(tmp_path, maria, "cdc", chunk_rows=10)
    failpoint = f"{point}@{nth}"

    def run(crash: bool) -> None:
        done = run_driver(tmp_path, failpoint if crash else None)
        expected = -signal.SIGKILL if crash else 0
        assert done.returncode == expected, done.stdout + done.stderr

    if phase == 1:
        run(crash=True)  # inside the snapshot
    else:
        run(crash=False)
    made = [(binlog_sequence(maria), mutate(maria, 220, 1))]
    if phase == 2:
        run(crash=True)  # while streaming those changes
    run(crash=False)
    warehouse = tmp_path / "warehouse" / "bronze"
    applied = (
        DeltaTable(str(warehouse / "orders"))
        .to_pyarrow_table()
        .drop_columns(["_seq", "_commit_ts"])
    )
    assert by_id(applied.to_pylist()) == by_id(maria.rows("orders"))
    log = DeltaTable(str(warehouse / "orders_log")).to_pyarrow_table().to_pylist()
    streamed = [r for r in log if r["_op"] != "r"]
    # Tables run concurrently, so the log's snapshot may come before or after the first changes.
    snapshot_at = min(r["_seq"] for r in log if r["_op"] == "r")
    changes = sum(n for at, n in made if at >= snapshot_at)
    assert len(streamed) == changes, "changes lost or applied twice"
    assert len({r["_seq"] for r in streamed}) == len(streamed)


def binlog_sequence(db: Maria) -> Decimal:
    """The sequence number a change made now would at least have."""
    ((file, pos, *_),) = db.sql("SHOW MASTER STATUS")
    return Decimal(position_sequence(str(file), int(pos), 0))


def test_the_reader_reconnects_when_the_server_restarts_mid_stream(
    tmp_path: Path, maria: Maria
) -> None:
    maria.sql("CREATE TABLE big (id INT PRIMARY KEY, body MEDIUMTEXT)")
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "big", reconnect_seconds=120)
    lake.declare(
        lambda: table(
            "bronze.big", source=source, strategy="cdc-apply", keys=["id"], sequence_by="_seq"
        )
    )
    lake.run()
    # More binlog than socket buffers hold, so the stream is still open when the server goes.
    body = "x" * 8000
    for start in range(0, 3000, 500):
        maria.transaction(
            [("INSERT INTO big VALUES (%s, %s)", (i, body)) for i in range(start, start + 500)]
        )
    position = lake.target("bronze.big").table.history(1)[0]["headwater"]["positions"]["source"]
    ctx = ReadContext("bronze.big", tmp_path, datetime.now(UTC), chunk_rows=100)
    increments = source.read(position, ctx)
    first = next(increments)
    restart_server()
    rest = list(increments)
    assert ids_of([first, *rest]) == list(range(3000)), (
        "changes lost or repeated across the restart"
    )
    assert sum(inc.info.get("reconnects", 0) for inc in rest) >= 1
    # The table itself follows across the restart (the binlog moved to a new file).
    maria.sql("UPDATE big SET body = 'after' WHERE id < 10")
    lake.run()
    assert lake.rows("bronze.big", "id", drop=META) == by_id(maria.rows("big"))


def ids_of(increments: list[Any]) -> list[int]:
    rows = [i.reader().read_all() for i in increments]
    return [k for t in rows if t.num_rows for k in t.column("id").to_pylist()]


def restart_server() -> None:
    subprocess.run(
        ["mariadb-admin", "-h127.0.0.1", "-uroot", "shutdown"], check=True, capture_output=True
    )
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "MariaDB did not stop"
        time.sleep(0.2)
    subprocess.run(
        [
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ],
        check=True,
        capture_output=True,
    )
    wait_for_server()


def test_a_killed_replication_connection_resumes_where_it_was(tmp_path: Path, maria: Maria) -> None:
    maria.sql("CREATE TABLE big (id INT PRIMARY KEY, body MEDIUMTEXT)")
    source = cdc_mysql(maria.settings, "big", server_id=4242001)
    ctx = ReadContext("bronze.big", tmp_path, datetime.now(UTC), chunk_rows=100)
    snapshot = list(source.read(None, ctx))
    position = snapshot[-1].position
    body = "y" * 8000
    for start in range(0, 2000, 500):
        maria.transaction(
            [("INSERT INTO big VALUES (%s, %s)", (i, body)) for i in range(start, start + 500)]
        )
    increments = source.read(position, ctx)
    first = next(increments)
    dumps = maria.sql(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%%'"
    )
    for (thread_id,) in dumps:
        maria.sql(f"KILL {int(thread_id)}")
    rest = list(increments)
    assert ids_of([first, *rest]) == list(range(2000))
    assert sum(inc.info.get("reconnects", 0) for inc in rest) >= 1


def test_add_column_reaches_the_table_and_freeze_refuses_it(tmp_path: Path, maria: Maria) -> None:
    maria.sql("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(10))")
    maria.sql("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    lake = Lake(tmp_path)
    settings = maria.settings
    lake.declare(
        lambda: (
            table(
                "bronze.t",
                source=cdc_mysql(settings, "t"),
                strategy="cdc-apply",
                keys=["id"],
                sequence_by="_seq",
            ),
            table(
                "bronze.frozen",
                source=cdc_mysql(settings, "t"),
                strategy="cdc-apply",
                keys=["id"],
                sequence_by="_seq",
                schema="freeze",
            ),
        )
    )
    lake.run()
    maria.sql("INSERT INTO t VALUES (3, 'c')")  # before the new column, in the same increment
    maria.sql("ALTER TABLE t ADD COLUMN score DECIMAL(5,1) NULL")
    maria.sql("UPDATE t SET score = 9.5 WHERE id = 1")
    maria.sql("INSERT INTO t VALUES (4, 'd', 1.0)")
    results = lake.run(check=False)
    status = {r.table: r for r in results}
    assert status["bronze.t"].status == "committed"
    assert delta_rows(lake, "bronze.t") == by_id(maria.rows("t"))
    assert lake.table("bronze.t").schema.field("score").type == pa.decimal128(5, 1)
    frozen = status["bronze.frozen"]
    assert frozen.status == "failed" and "score" in (frozen.error or "")


TYPES = """CREATE TABLE types (
    id INT PRIMARY KEY,
    d DECIMAL(20,6), dt DATETIME(6), ts TIMESTAMP(6) NULL, j JSON, e ENUM('small','large'),
    s SET('red','green','blue'), b BLOB, vb VARBINARY(16), txt TEXT, u BIGINT UNSIGNED,
    ti TINYINT UNSIGNED, bits BIT(7), tm TIME(2), day DATE, y YEAR, f FLOAT, g DOUBLE, c CHAR(4)
)"""
VALUES = [
    (
        Decimal("-12345678901234.123456"),
        datetime(2024, 2, 29, 23, 59, 58, 123456),
        datetime(2024, 3, 1, 12, 0, 0, 500000),
        '{"a": [1, 2.5, null], "b": "ü"}',
        "large",
        "blue,red",
        bytes(range(256)),
        b"\x00\x01\xff",
        "emoji 😀 and ü",
        2**64 - 1,
        255,
        0b1010101,
        "-12:34:56.78",
        date(1999, 12, 31),
        2155,
        1.5,
        -2.25e-300,
        "ab",
    ),
    tuple([None] * 18),
]


def test_types_round_trip_the_same_from_the_snapshot_and_the_binlog(
    tmp_path: Path, maria: Maria
) -> None:
    maria.sql(TYPES)
    placeholders = ", ".join(["%s"] * 19)
    for i, values in enumerate(VALUES):
        maria.sql(f"INSERT INTO types VALUES ({placeholders})", (i, *values))
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "types")
    lake.declare(
        lambda: table(
            "bronze.types", source=source, strategy="cdc-apply", keys=["id"], sequence_by="_seq"
        )
    )
    lake.run()  # the snapshot
    for i, values in enumerate(VALUES):
        maria.sql(f"INSERT INTO types VALUES ({placeholders})", (100 + i, *values))
    lake.run()  # the same values from the binlog
    rows = {r["id"]: r for r in delta_rows(lake, "bronze.types")}
    for i in range(len(VALUES)):
        snap, streamed = dict(rows[i]), dict(rows[100 + i])
        snap.pop("id"), streamed.pop("id")
        assert snap == streamed, f"row {i} differs between snapshot and binlog"
    got = rows[100]
    assert got["d"] == Decimal("-12345678901234.123456")
    assert got["dt"] == datetime(2024, 2, 29, 23, 59, 58, 123456)
    assert got["ts"] == datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert json.loads(got["j"]) == {"a": [1, 2.5, None], "b": "ü"}
    assert (got["e"], got["s"]) == ("large", "red,blue")  # SET in definition order
    assert got["b"] == bytes(range(256)) and got["vb"] == b"\x00\x01\xff"
    assert got["txt"] == "emoji 😀 and ü" and got["c"] == "ab"
    assert got["u"] == Decimal(2**64 - 1) and got["ti"] == 255 and got["bits"] == 0b1010101
    assert got["tm"] == -(12 * 3600 + 34 * 60 + 56) * 10**6 - 780000  # microseconds
    assert (got["day"], got["y"], got["f"], got["g"]) == (date(1999, 12, 31), 2155, 1.5, -2.25e-300)
    assert all(v is None for k, v in rows[101].items() if k != "id")
    # An update streams the whole new row image.
    maria.sql("UPDATE types SET d = 0.000001, s = 'green', tm = '838:59:59.99' WHERE id = 0")
    lake.run()
    updated = {r["id"]: r for r in delta_rows(lake, "bronze.types")}[0]
    assert (updated["d"], updated["s"]) == (Decimal("0.000001"), "green")
    assert updated["tm"] == (838 * 3600 + 59 * 60 + 59) * 10**6 + 990000


def test_scd2_keeps_the_history_of_binlog_changes(tmp_path: Path, maria: Maria) -> None:
    maria.sql("CREATE TABLE people (id INT PRIMARY KEY, city VARCHAR(20))")
    maria.sql("INSERT INTO people VALUES (1, 'Oslo'), (2, 'Rome')")
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "people")
    lake.declare(
        lambda: table(
            "silver.people",
            source=source,
            strategy="scd2",
            keys=["id"],
            order_by="_seq",
            tracked_columns=["city"],
        )
    )
    lake.run()
    maria.sql("UPDATE people SET city = 'Bergen' WHERE id = 1")
    maria.sql("UPDATE people SET city = 'Lima' WHERE id = 1")  # collapses within the increment
    maria.sql("DELETE FROM people WHERE id = 2")
    lake.run()
    rows = lake.rows("silver.people", "id", "valid_from")
    assert [(r["id"], r["city"], r["is_current"]) for r in rows] == [
        (1, "Oslo", False),
        (1, "Lima", True),
        (2, "Rome", False),  # the delete closed it
    ]


def test_truncate_stops_the_table_with_a_clear_error_until_a_full_refresh(
    tmp_path: Path, maria: Maria
) -> None:
    maria.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    maria.sql("INSERT INTO t VALUES (1, 1), (2, 2)")
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "t")
    lake.declare(
        lambda: table(
            "bronze.t", source=source, strategy="cdc-apply", keys=["id"], sequence_by="_seq"
        )
    )
    lake.run()
    maria.sql("UPDATE t SET v = 10 WHERE id = 1")
    maria.sql("TRUNCATE TABLE t")
    maria.sql("INSERT INTO t VALUES (7, 7)")
    (run,) = lake.run(check=False)
    assert run.status == "failed"
    assert "was truncated" in (run.error or "") and "--full-refresh" in (run.hint or "")
    assert {r["id"]: r["v"] for r in lake.rows("bronze.t", "id")} == {1: 10, 2: 2}
    lake.run(full_refresh=True)
    assert delta_rows(lake, "bronze.t") == by_id(maria.rows("t"))


def test_prerequisites_name_what_is_missing_and_setup_fixes_variables(maria: Maria) -> None:
    checks = {c.name: c for c in check_prerequisites(maria.settings, [f"{maria.db}.t"])}
    assert all(checks[n].ok for n in ("log_bin", "binlog_format", "binlog_row_image", "server_id"))
    assert not checks[f"table {maria.db}.t"].ok  # it does not exist
    user, password = "hw_" + uuid.uuid4().hex[:8], "pw-" + uuid.uuid4().hex[:8]
    maria.sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    try:
        maria.sql(f"GRANT SELECT ON `{maria.db}`.* TO '{user}'@'%'")
        limited = {**SERVER, "user": user, "password": password, "database": maria.db}
        found = {c.name: c for c in check_prerequisites(limited)}
        missing = found["privilege REPLICATION SLAVE"]
        assert not missing.ok and "GRANT REPLICATION SLAVE" in missing.fix
        assert found["privilege SELECT"].ok
        assert password not in " ".join(c.line() for c in found.values())
        wrong = check_prerequisites({**limited, "password": "nope"})
        assert [c.name for c in wrong] == ["connection"] and not wrong[0].ok
        assert "nope" not in wrong[0].line()
    finally:
        maria.sql(f"DROP USER '{user}'@'%'")
    maria.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        failed = [c for c in check_prerequisites(maria.settings) if not c.ok]
        assert [c.name for c in failed] == ["binlog_row_metadata"]
        assert apply_fixes(maria.settings, failed) == ["SET GLOBAL binlog_row_metadata = 'FULL'"]
        assert all(c.ok for c in check_prerequisites(maria.settings))
    finally:
        wait_for_server()  # FULL again, whatever happened


def test_cdc_commands_and_run_from_the_cli(tmp_path: Path, maria: Maria) -> None:
    """The user's path: cdc setup checks the server, run streams, cdc status shows where."""
    seed_orders(maria, 40)
    cdc_project(tmp_path, maria, "cdc", chunk_rows=10)
    cli = CliRunner()

    def headwater(*args: str) -> Any:
        return cli.invoke(app, ["--project", str(tmp_path), *args], env={"COLUMNS": "200"})

    setup = headwater("cdc", "setup", "--dry-run")
    assert setup.exit_code == 0, setup.output
    assert "binlog_format" in setup.output and "failed" not in setup.output
    assert headwater("run").exit_code == 0
    mutate(maria, 220, 1)
    ran = headwater("run")
    assert ran.exit_code == 0, ran.output
    applied = (
        DeltaTable(str(tmp_path / "warehouse" / "bronze" / "orders"))
        .to_pyarrow_table()
        .drop_columns(["_seq", "_commit_ts"])
    )
    assert by_id(applied.to_pylist()) == by_id(maria.rows("orders"))
    status = headwater("cdc", "status", "bronze.orders")
    assert status.exit_code == 0, status.output
    ((file, _pos, *_),) = maria.sql("SHOW MASTER STATUS")
    # The table's committed binlog position is shown next to the table.
    assert "bronze.orders" in status.output and f"{file}:" in status.output
    # A table nobody declared is named, not silently ignored.
    wrong = headwater("cdc", "status", "bronze.nope")
    assert wrong.exit_code != 0 and "bronze.nope" in str(wrong.exception)


def test_events_without_column_names_fail_with_the_setting_to_change(
    tmp_path: Path, maria: Maria
) -> None:
    maria.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    lake = Lake(tmp_path)
    source = cdc_mysql(maria.settings, "t")
    lake.declare(
        lambda: table(
            "bronze.t", source=source, strategy="cdc-apply", keys=["id"], sequence_by="_seq"
        )
    )
    lake.run()
    maria.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        maria.sql("INSERT INTO t VALUES (1, 1)")
    finally:
        wait_for_server()
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "binlog_row_metadata" in (run.error or "")
    assert "--full-refresh" in (run.hint or "")


def test_declaration_errors_are_one_line_and_name_the_table(tmp_path: Path, maria: Maria) -> None:
    maria.sql("CREATE TABLE nokey (v INT)")
    lake = Lake(tmp_path)
    settings = maria.settings
    lake.declare(
        lambda: table("bronze.nokey", source=cdc_mysql(settings, "nokey"), strategy="append")
    )
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "no primary key" in (run.error or "")
    assert "bronze.nokey" in (run.error or "")
    with pytest.raises(ConfigError, match="resume must be"):
        cdc_mysql(settings, "t", resume="lsn")  # type: ignore[arg-type]
    bad = Lake(tmp_path / "other")
    unreachable = {**SERVER, "port": 1, "password": "top-secret"}
    bad.declare(lambda: table("bronze.x", source=cdc_mysql(unreachable, "db.x"), strategy="append"))
    (run,) = bad.run(check=False)
    assert run.status == "failed" and "cannot reach MySQL at 127.0.0.1:1" in (run.error or "")
    assert "top-secret" not in f"{run.error} {run.hint}"


@pytest.mark.soak
def test_soak_random_workload_with_random_crashes(tmp_path: Path, maria: Maria) -> None:
    """Many cycles of random changes, each run killed at a random step, then resumed."""
    maria.sql(ORDERS)
    work = Workload(maria, seed=2024)
    work.run(200)
    cdc_project(tmp_path, maria, "soak", chunk_rows=5)
    rng = random.Random(99)
    for _ in range(12):
        point = rng.choice(["after_read", "after_stage", "after_commit"])
        crashed = run_driver(tmp_path, f"{point}@{rng.randrange(1, 30)}")
        assert crashed.returncode in (0, -signal.SIGKILL), crashed.stdout + crashed.stderr
        work.run(rng.randrange(20, 120))
    resumed = run_driver(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    applied = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "orders")).to_pyarrow_table()
    assert by_id(applied.drop_columns(["_seq", "_commit_ts"]).to_pylist()) == by_id(
        maria.rows("orders")
    )
    log = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "orders_log")).to_pyarrow_table()
    streamed = [
        s
        for s, op in zip(log.column("_seq").to_pylist(), log.column("_op").to_pylist(), strict=True)
        if op != "r"
    ]
    assert len(set(streamed)) == len(streamed), "a change was applied twice"
