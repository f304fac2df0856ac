"""PostgreSQL change data capture on the local server: snapshot hand-off, changes, crashes.

Every test creates a database of its own and drops it, and every replication
slot in it, at the end (a leftover slot would keep WAL on the server forever).
Oracles: the Delta table equals `SELECT * FROM` the source table, and an
append-only log of the changes replays (insert only of an absent key, update
and delete only of a present one) to the source table: a lost change or one
applied twice breaks the replay.
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
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from psycopg import sql
from typer.testing import CliRunner

from headwater import Project, table
from headwater.cli.main import app
from headwater.engine.continuous import run_continuously
from headwater.engine.position import read_committed_state
from headwater.errors import DataError, HeadwaterError
from headwater.sources import cdc_postgres
from headwater.sources._pgoutput import UNCHANGED, DecodeError, Insert, Update, decode
from headwater.sources._pgoutput_types import to_arrow

from .conftest import run_cli, write_pipeline
from .lake import Lake

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SYSTEM = ("_op", "_seq", "_commit_ts", "_change_type")


# -- the server and a database per test ------------------------------------------------------


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(**SERVER, dbname="postgres", autocommit=True)  # type: ignore[arg-type]


def wait_for_server(seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            admin().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module", autouse=True)
def server() -> None:
    try:
        with admin() as conn:
            level = conn.execute("SHOW wal_level").fetchone()
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL on 127.0.0.1:5432 is not running ({exc}); scripts/services.sh starts it"
        )
    assert level is not None and level[0] == "logical", "scripts/services.sh sets wal_level=logical"


class Shop:
    """A database of its own, and SQL in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.settings: dict[str, Any] = {**SERVER, "database": name}
        self.conn = psycopg.connect(**SERVER, dbname=name, autocommit=True)  # type: ignore[arg-type]

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self.connect()

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**SERVER, dbname=self.name, autocommit=True)  # type: ignore[arg-type]

    def rows(self, relation: str, key: str) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} ORDER BY {}").format(
                    sql.Identifier(relation), sql.Identifier(key)
                )
            )
            return list(cur.fetchall())

    def slots(self) -> dict[str, dict[str, Any]]:
        with admin() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(
                "SELECT slot_name, confirmed_flush_lsn::text AS confirmed, restart_lsn::text AS restart, "
                "active_pid FROM pg_replication_slots WHERE database = %s",
                [self.name],
            )
            return {r["slot_name"]: r for r in cur.fetchall()}

    def close(self) -> None:
        self.conn.close()
        drop_database(self.name)


def drop_database(name: str) -> None:
    wait_for_server()
    with admin() as conn:
        for _ in range(50):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            slots = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall()
            busy = False
            for slot, pid in slots:
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                    busy = True
                    continue
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                except psycopg.errors.ObjectInUse:
                    busy = True
            if not busy:
                break
            time.sleep(0.1)
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        left = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = %s", [name]
        ).fetchone()
        assert left == (0,), f"replication slots of {name} were left behind"


@pytest.fixture
def shop() -> Iterator[Shop]:
    name = "hw_cdc_" + uuid.uuid4().hex[:10]
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    created = Shop(name)
    try:
        yield created
    finally:
        created.close()


ORDERS = """CREATE TABLE orders (
    order_id int PRIMARY KEY,
    status text NOT NULL,
    amount numeric(10, 2),
    placed timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00',
    paid boolean
)"""


def seed_orders(shop: Shop, n: int) -> None:
    shop.sql(ORDERS)
    shop.sql(
        "INSERT INTO orders SELECT g, 'new', g * 1.25, '2024-01-01'::timestamptz + g * interval '1 hour', g %% 2 = 0 "
        "FROM generate_series(1, %s) g",
        [n],
    )


def cdc_lake(root: Path, shop: Shop, **options: Any) -> Lake:
    """bronze.orders (cdc-apply) and bronze.order_log (every change, appended)."""
    lake = Lake(root)

    def declare() -> None:
        table(
            "bronze.orders",
            source=cdc_postgres(shop.settings, "public.orders", **options),
            strategy="cdc-apply",
            keys=["order_id"],
            sequence_by="_seq",
            op_column="_op",
        )
        table(
            "bronze.order_log",
            source=cdc_postgres(shop.settings, "public.orders", change_type=False, **options),
            strategy="append",
        )

    lake.declare(declare)
    return lake


def set_chunk_rows(lake: Lake, rows: int) -> None:
    """As if the declaration changed: later increments hold up to `rows` rows (one commit each)."""
    for spec in lake.specs:
        source = spec.source
        assert source is not None
        source.chunk_rows = rows  # type: ignore[attr-defined]


def table_rows(lake: Lake, name: str, key: str) -> list[dict[str, Any]]:
    return lake.rows(name, key, drop=SYSTEM)


def assert_same(lake: Lake, name: str, shop: Shop, relation: str, key: str) -> None:
    expected = shop.rows(relation, key)
    got = table_rows(lake, name, key)
    assert len(got) == len(expected), f"{name}: {len(got)} rows, the source has {len(expected)}"
    assert got == expected


def replay(log: pa.Table, key: str, strict: bool = True) -> dict[Any, dict[str, Any]]:
    """Apply a change log in `_seq` order. Strict: every change must fit the state before it.

    Not strict: a change at or before the sequence a row already has is skipped
    (how cdc-apply treats the rows of a resumed copy's newer snapshot).
    """
    state: dict[Any, dict[str, Any]] = {}
    seqs: dict[Any, str] = {}
    rows = sorted(log.to_pylist(), key=lambda r: r["_seq"])
    changes = [r["_seq"] for r in rows if r["_op"] != "r"]
    assert len(changes) == len(set(changes)), "a change was recorded twice"
    for row in rows:
        k, op, seq = row[key], row["_op"], row["_seq"]
        data = {c: v for c, v in row.items() if c not in SYSTEM}
        if not strict and k in seqs and seq <= seqs[k] and not (op == "d" and seq == seqs[k]):
            continue
        if op in ("r", "c"):
            assert not strict or k not in state, f"insert of key {k} that exists ({seq})"
            state[k] = data
        elif op == "u":
            assert not strict or k in state, f"update of missing key {k} ({seq})"
            state[k] = data
        else:
            assert op == "d", op
            assert not strict or k in state, f"delete of missing key {k} ({seq})"
            state.pop(k, None)
        seqs[k] = seq
    return state


def assert_log_replays(lake: Lake, shop: Shop, strict: bool = True) -> None:
    state = replay(lake.table("bronze.order_log"), "order_id", strict)
    expected = shop.rows("orders", "order_id")
    assert [state[k] for k in sorted(state)] == expected


class Workload:
    """Random transactions on `orders`: inserts, updates, deletes, key changes, several per transaction."""

    def __init__(self, shop: Shop, seed: int, next_id: int = 100_000) -> None:
        self.shop = shop
        self.rng = random.Random(seed)
        self.next_id = next_id
        self.transactions = 0

    def step(self, conn: psycopg.Connection[Any]) -> None:
        rng = self.rng
        with conn.transaction():
            ids = [r[0] for r in conn.execute("SELECT order_id FROM orders")]
            for _ in range(rng.randint(1, 4)):
                choice = rng.random()
                if choice < 0.4 or not ids:
                    self.next_id += 1
                    conn.execute(
                        "INSERT INTO orders VALUES (%s, 'new', %s, now(), false)",
                        [self.next_id, Decimal(rng.randint(1, 99999)) / 100],
                    )
                    ids.append(self.next_id)
                elif choice < 0.7:
                    conn.execute(
                        "UPDATE orders SET status = %s, amount = amount + 1, paid = NOT coalesce(paid, false) "
                        "WHERE order_id = %s",
                        [rng.choice(["paid", "shipped", "returned"]), rng.choice(ids)],
                    )
                elif choice < 0.85:
                    victim = rng.choice(ids)
                    conn.execute("DELETE FROM orders WHERE order_id = %s", [victim])
                    ids.remove(victim)
                else:
                    old = rng.choice(ids)
                    self.next_id += 1
                    conn.execute(
                        "UPDATE orders SET order_id = %s WHERE order_id = %s", [self.next_id, old]
                    )
                    ids[ids.index(old)] = self.next_id
        self.transactions += 1

    def run(self, transactions: int) -> None:
        with self.shop.connect() as conn:
            for _ in range(transactions):
                self.step(conn)

    def background(self, transactions: int, pause: float = 0.01) -> threading.Thread:
        """`transactions` transactions in a thread, a little apart (a busy application)."""

        def loop() -> None:
            with self.shop.connect() as conn:
                for _ in range(transactions):
                    self.step(conn)
                    time.sleep(pause)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def while_running(lake: Lake, writer: threading.Thread) -> int:
    """Run the lake again and again until `writer` is done; returns the number of runs."""
    runs = 0
    while writer.is_alive() or runs == 0:
        lake.run()
        runs += 1
    writer.join()
    return runs


def committed_lsn(lake: Lake, name: str) -> str:
    state = read_committed_state(lake.target(name), f"headwater/{name}")
    return str(state.position("source")["lsn"])


def slot_of(shop: Shop, name: str) -> str:
    return f"headwater_{shop.name}_{name.replace('.', '_')}"


def lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


# -- snapshot, changes, acknowledgement ---------------------------------------------------------


def test_snapshot_in_chunks_then_changes_match_the_source(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 23)
    lake = cdc_lake(tmp_path, shop, chunk_rows=10)
    results = lake.run()
    assert [r.commits for r in results] == [3, 3]  # 23 rows in chunks of 10, one commit each
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    log = lake.table("bronze.order_log")
    assert set(log.column("_op").to_pylist()) == {"r"}
    assert len(set(log.column("_seq").to_pylist())) == 1  # every row at the snapshot's position

    set_chunk_rows(lake, 40)
    Workload(shop, seed=1).run(20)
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    assert_log_replays(lake, shop)
    # Each commit keeps what the stream measured: lag, retained WAL, changes.
    (last,) = DeltaTable(str(lake.root / "warehouse" / "bronze" / "orders")).history(1)
    measured = last["headwater"]["source_metrics"]["postgres-cdc"]
    assert measured["changes"] > 0 and measured["transactions"] > 0
    assert measured["lag_bytes"] >= 0 and measured["lag_seconds"] >= 0
    assert measured["retained_wal_bytes"] >= 0

    # The slots are confirmed up to what each table committed, and nothing is left to read.
    slots = shop.slots()
    assert len(slots) == 2
    for name in ("bronze.orders", "bronze.order_log"):
        slot = slots[slot_of(shop, name)]
        assert lsn(slot["confirmed"]) >= lsn(committed_lsn(lake, name))
    assert {r.status for r in lake.run()} == {"up-to-date"}


def test_randomized_workload_while_streaming_matches_the_source(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 50)
    lake = cdc_lake(tmp_path, shop, chunk_rows=60)

    def history() -> None:
        table(
            "silver.order_history",
            source=cdc_postgres(shop.settings, "public.orders", slot=f"hw_{shop.name}_history"),
            strategy="scd2",
            keys=["order_id"],
            valid_from_column="_commit_ts",
            tracked_columns=["status", "amount", "paid"],
        )

    lake.declare(history)
    lake.run()
    workload = Workload(shop, seed=7)
    for cycle in range(3):
        while_running(lake, workload.background(30))  # runs while transactions keep arriving
        lake.run()
        assert_same(lake, "bronze.orders", shop, "orders", "order_id")
        assert_log_replays(lake, shop)
        history_rows = lake.table("silver.order_history").to_pylist()
        current = sorted(
            (
                {c: r[c] for c in ("order_id", "status", "amount", "paid")}
                for r in history_rows
                if r["is_current"]
            ),
            key=lambda r: r["order_id"],
        )
        expected = [
            {c: r[c] for c in ("order_id", "status", "amount", "paid")}
            for r in shop.rows("orders", "order_id")
        ]
        assert current == expected, f"cycle {cycle}: current SCD2 versions differ from the source"
    assert workload.transactions == 90


def test_snapshot_hand_off_under_concurrent_writes_has_no_gap_and_no_duplicate(
    shop: Shop, tmp_path: Path
) -> None:
    seed_orders(shop, 200)
    lake = cdc_lake(tmp_path, shop, chunk_rows=40)
    writer = Workload(shop, seed=11).background(100, pause=0.005)
    lake.run()  # the copy runs in 5 chunks while transactions commit
    writer.join()
    set_chunk_rows(lake, 5000)
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    assert_log_replays(lake, shop, strict=True)


def test_an_interrupted_copy_resumes_from_a_new_snapshot_under_concurrent_writes(
    shop: Shop, tmp_path: Path
) -> None:
    seed_orders(shop, 200)
    calls = {"n": 0}
    lake = Lake(tmp_path)

    def declare() -> None:
        @table(
            "bronze.orders",
            source=cdc_postgres(shop.settings, "public.orders", chunk_rows=20),
            strategy="cdc-apply",
            keys=["order_id"],
            sequence_by="_seq",
        )
        def orders(rows: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 4:
                raise HeadwaterError("the run dies in the middle of the copy")
            return rows

    lake.declare(declare)
    writer = Workload(shop, seed=5).background(150, pause=0.005)
    failed = lake.run(check=False)
    assert failed[0].status == "failed" and failed[0].commits == 3
    position = read_committed_state(
        lake.target("bronze.orders"), "headwater/bronze.orders"
    ).position("source")
    assert position["snapshot"]["after"] is not None  # mid-copy: three chunks of 20 rows are in
    assert lake.table("bronze.orders").num_rows == 60
    set_chunk_rows(lake, 50)
    lake.run()  # resumes the copy from a temporary slot's snapshot, then streams
    writer.join()
    set_chunk_rows(lake, 5000)
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    snapshots = {
        s for s in lake.table("bronze.orders").column("_seq").to_pylist() if int(s) % 2**32 == 0
    }
    assert len(snapshots) == 2  # rows copied before the failure, and after it from a newer snapshot
    assert set(shop.slots()) == {
        f"headwater_{shop.name}_bronze_orders"
    }  # the temporary slot is gone


def test_an_idle_table_lets_the_server_recycle_wal(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 5)
    shop.sql("CREATE TABLE other (id int PRIMARY KEY, v text)")
    lake = cdc_lake(tmp_path, shop)
    lake.run()
    before = lsn(shop.slots()[f"headwater_{shop.name}_bronze_orders"]["confirmed"])
    shop.sql("INSERT INTO other SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
    version = lake.version("bronze.orders")
    assert {r.status for r in lake.run()} == {"up-to-date"}
    assert lake.version("bronze.orders") == version  # no empty commit
    after = lsn(shop.slots()[f"headwater_{shop.name}_bronze_orders"]["confirmed"])
    assert after > before + 100_000  # moved past the other table's WAL


# -- crashes ------------------------------------------------------------------------------------

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
print(json.dumps([[r.table, r.status, r.error] for r in results]))
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""

CRASH_PIPELINE = """
from headwater import table
from headwater.sources import cdc_postgres

table("bronze.orders", source=cdc_postgres("shop", "public.orders", chunk_rows=6),
      strategy="cdc-apply", keys=["order_id"], sequence_by="_seq", op_column="_op")
table("bronze.order_log", source=cdc_postgres("shop", "public.orders", chunk_rows=6, change_type=False),
      strategy="append")
"""


def crash_project(root: Path, shop: Shop) -> None:
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in shop.settings.items())
    (root / "headwater.toml").write_text(
        f'[project]\nname = "crash"\n\n[connections.shop]\n{settings}\n'
    )
    (root / "pipelines").mkdir()
    write_pipeline(root, "cdc", CRASH_PIPELINE)


def drive(root: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HEADWATER_FAILPOINTS"}
    if failpoint:
        env["HEADWATER_FAILPOINTS"] = failpoint
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


class Deltas:
    """Lake-like reading of a project driven in subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def table(self, name: str) -> pa.Table:
        layer, rel = name.split(".")
        return DeltaTable(str(self.root / "warehouse" / layer / rel)).to_pyarrow_table()


@pytest.mark.parametrize("point", ["after_stage", "after_commit"])
def test_sigkill_during_copy_and_stream_then_restart_loses_and_repeats_nothing(
    shop: Shop, tmp_path: Path, point: str
) -> None:
    seed_orders(shop, 20)
    crash_project(tmp_path, shop)
    deltas = Deltas(tmp_path)
    workload = Workload(shop, seed=3)
    project = Project.load(tmp_path)
    for phase in (1, 2):
        if phase == 2:
            workload.run(8)  # several small rounds of changes: chunk_rows=6
        crashed = drive(tmp_path, f"{point}@3")
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        if point == "after_commit" and phase == 2:
            # Killed between a Delta commit and the slot's acknowledgement.
            behind = [
                name
                for name in ("bronze.orders", "bronze.order_log")
                if lsn(shop.slots()[slot_of(shop, name)]["confirmed"])
                < lsn(
                    read_committed_state(project.target(name), f"headwater/{name}").position(
                        "source"
                    )["lsn"]
                )
            ]
            # At least the killed table; the other runs side by side and may have been
            # caught between its own commit and acknowledgement too.
            assert behind
        resumed = drive(tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        orders = deltas.table("bronze.orders").drop_columns(["_seq", "_commit_ts"]).to_pylist()
        assert sorted(orders, key=lambda r: r["order_id"]) == shop.rows("orders", "order_id")
        # A copy resumed after a crash overlaps the stream by design (cdc-apply's guard
        # drops the overlap); changes themselves must be exactly once.
        state = replay(deltas.table("bronze.order_log"), "order_id", strict=False)
        assert [state[k] for k in sorted(state)] == shop.rows("orders", "order_id")
    again = drive(tmp_path)
    assert all(status == "up-to-date" for _, status, _ in json.loads(again.stdout)), again.stdout
    for name in ("bronze.orders", "bronze.order_log"):
        slot = shop.slots()[slot_of(shop, name)]
        committed = read_committed_state(project.target(name), f"headwater/{name}").position(
            "source"
        )["lsn"]
        assert lsn(slot["confirmed"]) >= lsn(committed)


# -- the source going away ------------------------------------------------------------------------


def test_reader_reconnects_after_backends_are_terminated_and_postgres_restarts(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_orders(shop, 30)
    lake = cdc_lake(tmp_path, shop, chunk_rows=10)
    lake.run()
    set_chunk_rows(lake, 30)
    workload = Workload(shop, seed=21)
    workload.run(10)

    # Terminate Headwater's connections (kept between runs) while a run is reading.
    monkeypatch.setenv("HEADWATER_FAILPOINTS", "after_read=sleep:0.5")
    terminated: list[int] = []

    def terminate() -> None:
        with admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'headwater' AND datname = %s",
                [shop.name],
            ).fetchall()
            terminated.append(len(rows))

    killer = threading.Timer(0.2, terminate)
    killer.start()
    lake.run()
    killer.join()
    monkeypatch.delenv("HEADWATER_FAILPOINTS")
    assert terminated and terminated[0] >= 2
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")

    # Restart the server while `run --continuous` streams and transactions keep coming.
    stop = threading.Event()
    failures: list[str | None] = []

    def cycle(n: int, results: list[Any]) -> None:
        failures.extend(r.error for r in results if r.status == "failed")

    runner = threading.Thread(
        target=run_continuously,
        args=(lake.project,),
        kwargs={"trigger_seconds": 0.2, "stop": stop, "on_cycle": cycle},
        daemon=True,
    )
    runner.start()
    try:
        workload.run(10)
        restart_postgres()
        shop.reconnect()
        with_retries(lambda: workload.run(10))
        expected = shop.rows("orders", "order_id")
        for _ in range(300):  # until the loop has caught up (bounded)
            if table_rows(lake, "bronze.orders", "order_id") == expected:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=120)
    assert not runner.is_alive()
    assert failures == []  # every cycle reconnected on its own
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    lake.run()
    assert_log_replays(lake, shop)


def restart_postgres() -> None:
    cluster = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[
        -1
    ]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_for_server()


def with_retries(action: Callable[[], None], attempts: int = 20) -> None:
    for attempt in range(attempts):
        try:
            action()
            return
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


# -- what the log leaves out ------------------------------------------------------------------------


def big_text(seed: int) -> str:
    """About 8 kB that does not compress, so PostgreSQL stores it out of line (TOAST)."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8000))


def test_updates_keep_unchanged_toasted_values(shop: Shop, tmp_path: Path) -> None:
    shop.sql("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    shop.sql("CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text)")
    shop.sql("ALTER TABLE docs_full REPLICA IDENTITY FULL")
    for relation in ("docs", "docs_full"):
        shop.sql(
            f"INSERT INTO {relation} VALUES (1, 'one', %s), (2, 'two', %s)",
            [big_text(1), big_text(2)],
        )
    lake = Lake(tmp_path)

    def declare() -> None:
        for relation in ("docs", "docs_full"):
            table(
                f"bronze.{relation}",
                source=cdc_postgres(shop.settings, f"public.{relation}"),
                strategy="cdc-apply",
                keys=["id"],
                sequence_by="_seq",
            )
        table(
            "silver.doc_history",
            source=cdc_postgres(shop.settings, "public.docs", slot=f"hw_{shop.name}_doc_history"),
            strategy="scd2",
            keys=["id"],
            valid_from_column="_commit_ts",
            tracked_columns=["title", "body"],
        )

        @table(
            "bronze.docs_renamed",
            source=cdc_postgres(shop.settings, "public.docs", slot=f"hw_{shop.name}_renamed"),
            strategy="cdc-apply",
            keys=["id"],
            sequence_by="_seq",
        )
        def renamed(rows: Any) -> Any:
            return rows.select("* EXCLUDE (body), body AS content")

    lake.declare(declare)
    lake.run()
    shop.sql("CREATE PUBLICATION probe FOR TABLE docs")
    shop.sql(
        "SELECT pg_create_logical_replication_slot('probe_' || current_database(), 'pgoutput')"
    )
    for relation in ("docs", "docs_full"):
        # A title change leaves the body out of the log: from the table written so far.
        shop.sql(f"UPDATE {relation} SET title = 'one, edited' WHERE id = 1")
    probe = shop.sql(
        "SELECT data FROM pg_logical_slot_get_binary_changes('probe_' || current_database(), NULL, NULL, "
        "'proto_version', '1', 'publication_names', 'probe')"
    )
    updates = [m for m in (decode(bytes(r[0])) for r in probe) if isinstance(m, Update)]
    assert len(updates) == 1 and updates[0].new[2] is UNCHANGED  # the server did leave it out
    shop.sql("SELECT pg_drop_replication_slot('probe_' || current_database())")
    lake.run()
    for relation in ("docs", "docs_full"):
        # Within one read: an insert and updates of it, and a key change.
        shop.sql(f"INSERT INTO {relation} VALUES (3, 'three', %s)", [big_text(3)])
        shop.sql(f"UPDATE {relation} SET title = 'three, edited' WHERE id = 3")
        with shop.conn.transaction():
            shop.sql(f"UPDATE {relation} SET title = 'two, edited' WHERE id = 2")
            shop.sql(f"UPDATE {relation} SET id = 20 WHERE id = 2")
    lake.run()
    for relation in ("docs", "docs_full"):
        assert_same(lake, f"bronze.{relation}", shop, relation, "id")
        assert all(r["body"] is not None for r in table_rows(lake, f"bronze.{relation}", "id"))
    renamed_rows = [
        {"id": r["id"], "title": r["title"], "body": r["content"]}
        for r in table_rows(lake, "bronze.docs_renamed", "id")
    ]
    assert renamed_rows == shop.rows(
        "docs", "id"
    )  # filled from the source: the table has no `body`
    current = sorted(
        (
            {"id": r["id"], "title": r["title"], "body": r["body"]}
            for r in lake.table("silver.doc_history").to_pylist()
            if r["is_current"]
        ),
        key=lambda r: r["id"],
    )
    assert current == shop.rows("docs", "id")


def test_truncate_deletes_every_row_and_later_inserts_stay(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 10)
    lake = cdc_lake(tmp_path, shop)
    lake.run()
    shop.sql("INSERT INTO orders VALUES (11, 'new', 1, now(), true)")
    shop.sql("TRUNCATE orders")
    shop.sql("INSERT INTO orders VALUES (3, 'again', 2, now(), false), (42, 'new', 3, now(), null)")
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    with shop.conn.transaction():
        shop.sql("INSERT INTO orders VALUES (7, 'new', 4, now(), true)")
        shop.sql("TRUNCATE orders")
        shop.sql("INSERT INTO orders VALUES (8, 'after', 5, now(), true)")
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    assert [r["order_id"] for r in table_rows(lake, "bronze.orders", "order_id")] == [8]


def test_replica_identity_decides_what_before_images_hold(shop: Shop, tmp_path: Path) -> None:
    shop.sql("CREATE TABLE by_key (id int PRIMARY KEY, code text NOT NULL, v text)")
    shop.sql("CREATE TABLE by_row (id int PRIMARY KEY, code text NOT NULL, v text)")
    shop.sql("ALTER TABLE by_row REPLICA IDENTITY FULL")
    shop.sql("CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, v text)")
    shop.sql("CREATE UNIQUE INDEX by_index_code ON by_index (code)")
    shop.sql("ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code")
    relations = {"by_key": "id", "by_row": "id", "by_index": "code"}
    lake = Lake(tmp_path)

    def declare() -> None:
        for relation, key in relations.items():
            table(
                f"bronze.{relation}_log",
                source=cdc_postgres(shop.settings, f"public.{relation}", change_type=False),
                strategy="append",
            )
            table(
                f"bronze.{relation}",
                source=cdc_postgres(shop.settings, f"public.{relation}"),
                strategy="cdc-apply",
                keys=[key],
                sequence_by="_seq",
            )

    lake.declare(declare)
    lake.run()
    for relation in relations:
        shop.sql(f"INSERT INTO {relation} VALUES (1, 'a', 'first'), (2, 'b', 'second')")
        shop.sql(f"UPDATE {relation} SET v = 'changed' WHERE id = 1")
        shop.sql(
            f"UPDATE {relation} SET id = 10, code = 'z' WHERE id = 2"
        )  # key (and identity) change
        shop.sql(f"DELETE FROM {relation} WHERE id = 1")
    lake.run()
    for relation, key in relations.items():
        assert_same(lake, f"bronze.{relation}", shop, relation, key)
        log = sorted(lake.table(f"bronze.{relation}_log").to_pylist(), key=lambda r: r["_seq"])
        ops = [r["_op"] for r in log]
        # insert, insert, update, key change (delete of the old key, insert of the new), delete
        assert ops == ["c", "c", "u", "d", "c", "d"], (relation, ops)
        before = [{c: r[c] for c in ("id", "code", "v")} for r in log if r["_op"] == "d"]
        if relation == "by_key":
            assert before == [
                {"id": 2, "code": None, "v": None},
                {"id": 1, "code": None, "v": None},
            ]
        elif relation == "by_row":
            assert before == [
                {"id": 2, "code": "b", "v": "second"},
                {"id": 1, "code": "a", "v": "changed"},
            ]
        else:
            assert before == [
                {"id": None, "code": "b", "v": None},
                {"id": None, "code": "a", "v": None},
            ]


def test_a_table_without_replica_identity_is_refused_with_a_clear_error(
    shop: Shop, tmp_path: Path
) -> None:
    shop.sql("CREATE TABLE heap (id int, v text)")
    shop.sql("CREATE TABLE keyed (id int PRIMARY KEY, code text)")
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.heap", source=cdc_postgres(shop.settings, "public.heap"), strategy="append"
        )
    )
    lake.declare(
        lambda: table(
            "bronze.keyed",
            source=cdc_postgres(shop.settings, "public.keyed", keys=["code"]),
            strategy="cdc-apply",
            keys=["code"],
            sequence_by="_seq",
        )
    )
    lake.declare(
        lambda: table(
            "bronze.missing", source=cdc_postgres(shop.settings, "public.nope"), strategy="append"
        )
    )
    results = {r.table: r for r in lake.run(check=False)}
    heap = results["bronze.heap"]
    assert heap.status == "failed" and "no replica identity" in (heap.error or "")
    assert "REPLICA IDENTITY FULL" in (heap.hint or "")
    keyed = results["bronze.keyed"]
    assert (
        keyed.status == "failed"
        and "'code'" in (keyed.error or "")
        and "replica identity" in (keyed.error or "")
    )
    missing = results["bronze.missing"]
    assert missing.status == "failed" and "public.nope" in (missing.error or "")
    assert shop.slots() == {}  # nothing was created for tables that cannot work


def test_a_dropped_publication_is_reported_and_a_full_refresh_recovers(
    shop: Shop, tmp_path: Path
) -> None:
    seed_orders(shop, 4)
    lake = cdc_lake(tmp_path, shop)
    lake.run()
    shop.sql(f"DROP PUBLICATION {slot_of(shop, 'bronze.orders')}")
    shop.sql("UPDATE orders SET status = 'paid' WHERE order_id = 1")
    failed = {r.table: r for r in lake.run(check=False)}["bronze.orders"]
    assert failed.status == "failed"
    assert f"publication {slot_of(shop, 'bronze.orders')} does not exist" in (failed.error or "")
    assert "--full-refresh" in (failed.hint or "")
    lake.run("bronze.orders", full_refresh=True)
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")


def test_without_the_initial_copy_only_later_changes_arrive(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 5)
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=cdc_postgres(shop.settings, "public.orders", snapshot=False),
            strategy="cdc-apply",
            keys=["order_id"],
            sequence_by="_seq",
        )
    )
    lake.run()
    assert lake.table("bronze.orders").num_rows == 0
    shop.sql("INSERT INTO orders VALUES (6, 'new', 1, now(), true)")
    shop.sql("UPDATE orders SET status = 'paid' WHERE order_id IN (1, 6)")
    lake.run()
    rows = table_rows(lake, "bronze.orders", "order_id")
    assert [(r["order_id"], r["status"]) for r in rows] == [(1, "paid"), (6, "paid")]


def test_added_columns_reach_the_table(shop: Shop, tmp_path: Path) -> None:
    seed_orders(shop, 3)
    lake = cdc_lake(tmp_path, shop)
    lake.run()
    shop.sql("ALTER TABLE orders ADD COLUMN note text, ADD COLUMN weight numeric(6, 3)")
    shop.sql("INSERT INTO orders VALUES (4, 'new', 1, now(), true, 'fragile', 1.5)")
    shop.sql("UPDATE orders SET note = 'gift' WHERE order_id = 1")
    lake.run()
    schema = lake.table("bronze.orders").schema
    assert schema.field("note").type == pa.string()
    assert schema.field("weight").type == pa.decimal128(6, 3)
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")


def test_multi_table_transactions_are_applied_whole_and_in_commit_order(
    shop: Shop, tmp_path: Path
) -> None:
    shop.sql(ORDERS)
    shop.sql("CREATE TABLE items (item_id int PRIMARY KEY, order_id int NOT NULL, sku text)")
    lake = Lake(tmp_path)

    def declare() -> None:
        for relation, key in (("orders", "order_id"), ("items", "item_id")):
            table(
                f"bronze.{relation}",
                source=cdc_postgres(shop.settings, f"public.{relation}", chunk_rows=4),
                strategy="cdc-apply",
                keys=[key],
                sequence_by="_seq",
            )

    lake.declare(declare)
    lake.run()
    with shop.connect() as conn:
        for n in range(1, 6):
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (%s, 'new', %s, now(), false)", [n, n])
                for i in range(3):
                    conn.execute(
                        "INSERT INTO items VALUES (%s, %s, %s)", [n * 10 + i, n, f"sku{i}"]
                    )
                conn.execute("UPDATE orders SET status = 'placed' WHERE order_id = %s", [n])
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    assert_same(lake, "bronze.items", shop, "items", "item_id")
    target = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "items"))
    versions = [h["version"] for h in target.history()]
    seen_before: set[str] = set()
    assert len(versions) > 3  # the transactions arrived over several commits
    for version in sorted(versions):
        target.load_as_version(version)
        rows = target.to_pyarrow_table().to_pylist()
        by_transaction: dict[int, int] = {}
        for row in rows:
            commit_lsn = int(row["_seq"]) >> 32  # _seq is (commit LSN, ordinal in the transaction)
            by_transaction[commit_lsn] = by_transaction.get(commit_lsn, 0) + 1
        assert all(n == 3 for n in by_transaction.values()), (
            f"version {version} holds part of a transaction"
        )
        new = set(by_transaction) - seen_before
        assert not seen_before or not new or min(new) > max(seen_before), (
            "transactions out of commit order"
        )
        seen_before |= set(by_transaction)


def test_text_values_become_the_column_types_postgres_declares() -> None:
    def numeric(precision: int, scale: int) -> int:
        return ((precision << 16) | scale) + 4  # atttypmod of numeric(p, s)

    assert to_arrow(["1.50", None], 1700, numeric(10, 2), "t", "c").type == pa.decimal128(10, 2)
    assert to_arrow(["1e-40"], 1700, -1, "t", "c").to_pylist() == ["1e-40"]  # kept exact, as text
    moments = to_arrow(["2024-01-02 03:04:05.5+00", "infinity"], 1184, -1, "t", "c").to_pylist()
    assert moments[0].isoformat() == "2024-01-02T03:04:05.500000+00:00"
    assert moments[1].year == 9999
    assert to_arrow(["t", "f", None], 16, -1, "t", "c").to_pylist() == [True, False, None]
    assert to_arrow(["\\x00ff"], 17, -1, "t", "c").to_pylist() == [b"\x00\xff"]
    with pytest.raises(DataError, match=r"column 'born'.*0044-03-15 BC"):
        to_arrow(["0044-03-15 BC"], 1082, -1, "public.people", "born")


# -- operations: headwater cdc setup | status | teardown -----------------------------------------------


def test_cdc_setup_status_teardown_commands(shop: Shop, project_dir: Path) -> None:
    seed_orders(shop, 5)
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in shop.settings.items())
    (project_dir / "headwater.toml").write_text(
        f'[project]\nname = "cdc"\n\n[connections.shop]\n{settings}\n'
    )
    write_pipeline(
        project_dir,
        "cdc",
        """
        from headwater import table
        from headwater.sources import cdc_postgres
        table("bronze.orders", source=cdc_postgres("shop", "public.orders"),
              strategy="cdc-apply", keys=["order_id"], sequence_by="_seq")
        table("bronze.copy", source=cdc_postgres("shop", "public.orders"),
              strategy="cdc-apply", keys=["order_id"], sequence_by="_seq")
        """,
    )
    cli = CliRunner()

    def headwater(*args: str) -> Any:
        return cli.invoke(app, ["--project", str(project_dir), *args])

    slot = slot_of(shop, "bronze.orders")
    dry = headwater("cdc", "setup", "bronze.orders", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "wal_level" in dry.output and "missing" in dry.output
    assert shop.sql("SELECT count(*) FROM pg_publication") == [(0,)]
    setup = headwater("cdc", "setup")
    assert setup.exit_code == 0, setup.output
    assert "created" in setup.output and slot in setup.output
    assert shop.sql("SELECT pubname FROM pg_publication ORDER BY 1") == [
        (slot_of(shop, "bronze.copy"),),
        (slot,),
    ]
    assert headwater("run").exit_code == 0
    shop.sql("UPDATE orders SET status = 'paid'")
    status = headwater("cdc", "status")
    assert status.exit_code == 0, status.output
    assert slot in status.output and "bronze.orders" in status.output
    lagging = headwater("cdc", "status", "bronze.orders", "--max-lag", "1")
    assert lagging.exit_code == 1 and "behind" in lagging.output
    torn = headwater("cdc", "teardown", "bronze.copy", "--yes")
    assert f"dropped replication slot {slot_of(shop, 'bronze.copy')}" in torn.output
    assert set(shop.slots()) == {slot}
    # Undeclared, bronze.copy's slot would be abandoned: status names it (re-created here).
    shop.sql(
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot_of(shop, "bronze.copy")]
    )
    (project_dir / "pipelines" / "cdc.py").write_text(
        (project_dir / "pipelines" / "cdc.py").read_text().split('table("bronze.copy"')[0]
    )
    stray = headwater("cdc", "status")
    assert stray.exit_code == 1 and "no declared table uses this slot" in stray.output
    assert headwater("cdc", "teardown", "bronze.orders", "--yes").exit_code == 0
    shop.sql("SELECT pg_drop_replication_slot(%s)", [slot_of(shop, "bronze.copy")])
    assert shop.slots() == {} and shop.sql("SELECT pubname FROM pg_publication") == []
    lost = run_cli(project_dir, "run", check=False)
    assert lost.returncode == 1
    assert (
        f"replication slot {slot} does not exist" in lost.stderr and "--full-refresh" in lost.stderr
    )
    assert "Traceback" not in lost.stderr
    assert headwater("run", "--full-refresh").exit_code == 0
    rows = DeltaTable(str(project_dir / "warehouse" / "bronze" / "orders")).to_pyarrow_table()
    assert set(rows.column("status").to_pylist()) == {"paid"}


@pytest.mark.soak
def test_soak_long_randomized_workload_with_continuous_streaming(
    shop: Shop, tmp_path: Path
) -> None:
    seed_orders(shop, 5000)
    lake = cdc_lake(tmp_path, shop, chunk_rows=500)
    stop = threading.Event()
    runner = threading.Thread(
        target=run_continuously,
        args=(lake.project,),
        kwargs={"trigger_seconds": 0.5, "stop": stop},
        daemon=True,
    )
    runner.start()
    workload = Workload(shop, seed=99)
    workload.run(3000)
    time.sleep(2)
    stop.set()
    runner.join(timeout=600)
    lake.run()
    assert_same(lake, "bronze.orders", shop, "orders", "order_id")
    assert_log_replays(lake, shop)


def test_change_messages_decode_every_value_kind_and_reject_truncation() -> None:
    """pgoutput's TupleData: text, NULL, unchanged TOAST and binary values, in order."""
    values = b"t" + (5).to_bytes(4, "big") + "olá!".encode() + b"n" + b"u"
    values += b"b" + (2).to_bytes(4, "big") + b"\x00\xff"
    message = b"I" + (16384).to_bytes(4, "big") + b"N" + (4).to_bytes(2, "big") + values
    insert = decode(message)
    assert insert == Insert(16384, ("olá!", None, UNCHANGED, b"\x00\xff"))
    for cut in (8, 12, len(message) - 1):  # inside the count, a length, the last value
        with pytest.raises(DecodeError, match=r"ends early|runs past"):
            decode(message[:cut])
    with pytest.raises(DecodeError, match="unknown tuple value kind 'x'"):
        decode(message[:8] + b"x")
