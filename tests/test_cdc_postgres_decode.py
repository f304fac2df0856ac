"""The column-wise pgoutput decoder against the message-by-message one, on bytes the real
server produced: every change kind, every mapped type, TOAST, key changes, REPLICA
IDENTITY FULL, TRUNCATE, ADD COLUMN, other tables' changes, and rounds cut short."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from headwater.errors import DataError
from headwater.sources._pgoutput import Begin, Commit, decode
from headwater.sources._pgoutput_columns import PG_EPOCH_MICROS, ColumnAssembler
from headwater.sources._pgoutput_types import to_arrow

from .pgoutput_reference import Assembler

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SESSION = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8"
)

KINDS = """
CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
CREATE TABLE kinds (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, o oid, f4 real, f8 double precision,
    n numeric(12, 3), free numeric, yes boolean, raw bytea, day date,
    local timestamp, moment timestamptz, label text, code varchar(8), uid uuid,
    doc jsonb, span interval, dom positive, tags int4[],
    big text
);
ALTER TABLE kinds ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE other (id int PRIMARY KEY, v text);
"""
ROW = (
    "INSERT INTO kinds VALUES (%s, 7, -70000, 42, 1.5, 2.25, 12.345, 1e-30, true, "
    "'\\x00ff'::bytea, '2024-02-29', '2024-01-02 03:04:05.123456', "
    "'2024-01-02 03:04:05.5+02', %s, 'abc', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    "'{\"k\": [1, 2]}', '1 day 02:03:04', 5, '{1,2,3}', %s)"
)


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    name = "hw_pgo_" + uuid.uuid4().hex[:10]
    with psycopg.connect(**SERVER, dbname="postgres", autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = psycopg.connect(**SERVER, dbname=name, autocommit=True, options=SESSION)  # type: ignore[arg-type]
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(**SERVER, dbname="postgres", autocommit=True) as admin:  # type: ignore[arg-type]
            for (slot,) in admin.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall():
                admin.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def workload(conn: psycopg.Connection[Any]) -> None:
    big = "x" * 5000 + "ü"  # out of line (STORAGE EXTERNAL): an update may leave it out
    for i in range(1, 6):
        conn.execute(ROW, [i, f"row {i} — naïve ☃" if i % 2 else f"row {i}", big + str(i)])
    with conn.transaction():
        conn.execute("UPDATE kinds SET label = 'touched', i2 = NULL WHERE id = 1")  # big unchanged
        conn.execute("UPDATE kinds SET label = 'again' WHERE id = 1")  # twice in one batch
        conn.execute("INSERT INTO other VALUES (1, 'not ours')")
        conn.execute("UPDATE kinds SET id = 100, label = 'moved' WHERE id = 2")  # key change
        conn.execute("DELETE FROM kinds WHERE id = 3")
    conn.execute("UPDATE kinds SET id = 300 WHERE id = 4")  # key change, big unchanged
    conn.execute("UPDATE kinds SET label = 'unseen before' WHERE id = 5")  # big: Pending
    conn.execute("ALTER TABLE kinds REPLICA IDENTITY FULL")
    conn.execute("UPDATE kinds SET label = 'full' WHERE id = 1")  # big from the old row
    conn.execute("DELETE FROM kinds WHERE id = 100")
    conn.execute("ALTER TABLE kinds REPLICA IDENTITY DEFAULT")
    conn.execute("TRUNCATE kinds")
    conn.execute(ROW, [7, "after truncate", "small"])
    conn.execute("ALTER TABLE kinds ADD COLUMN extra text DEFAULT 'd'")
    conn.execute(ROW.replace(", %s)", ", %s, 'e')"), [8, "with extra", "small"])
    conn.execute("UPDATE kinds SET extra = NULL WHERE id = 7")
    conn.execute("INSERT INTO other VALUES (2, 'still not ours')")


def reference(messages: list[bytes], start: int, oid: int) -> Any:
    assembler = Assembler("public.kinds", ["id"], [oid], ("public", "kinds"), start)
    return assembler.assemble([decode(m) for m in messages])


def columnar(messages: list[bytes], start: int, oid: int) -> Any:
    return ColumnAssembler("public.kinds", ["id"], [oid], ("public", "kinds"), start).assemble(
        messages
    )


def assert_same(messages: list[bytes], start: int, oid: int) -> int:
    want = reference(messages, start, oid)
    got = columnar(messages, start, oid)
    assert list(got.columns) == list(want.columns)
    assert got.ops == [r.op for r in want.rows]
    assert got.seqs == [r.seq for r in want.rows]
    assert got.times == [int(r.commit_ts.timestamp() * 1e6) for r in want.rows]
    for name in want.columns:
        cells = got.values[name]
        if isinstance(cells, pa.Array):  # cut out of the buffer as Arrow text
            assert cells.type == pa.string()
            cells = cells.to_pylist()
        assert cells == [r.values.get(name) for r in want.rows], name
    assert (got.transactions, got.last_end) == (want.transactions, want.last_end)
    want_ts = None if want.last_commit_ts is None else int(want.last_commit_ts.timestamp() * 1e6)
    assert got.last_commit_micros == want_ts
    assert got.pending == any(
        type(v).__name__ == "Pending" for r in want.rows for v in r.values.values()
    )
    truncates = [i for i, r in enumerate(want.rows) if r.op == "t"]
    assert got.seen == {i: want.rows[i].seen for i in truncates}
    return len(got)


def test_columns_equal_the_message_assembler_on_server_bytes(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(KINDS)
    conn.execute("CREATE PUBLICATION pub FOR TABLE kinds, other")
    conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    workload(conn)
    oid = conn.execute("SELECT 'kinds'::regclass::oid::int").fetchone()[0]  # type: ignore[index]
    messages = [
        bytes(r[0])
        for r in conn.cursor(binary=True).execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'pub')"
        )
    ]
    # Everything: inserts, updates, TOAST, key changes, FULL identity, truncate, a new column.
    changes = assert_same(messages, 0, oid)
    assert changes >= 18
    got = columnar(messages, 0, oid)
    assert set(got.ops) == {"c", "u", "d", "t"}
    assert "extra" in got.values and got.values["extra"][-1] is None
    # From every transaction's start on (earlier ones are skipped), and rounds cut
    # short at every message (the unfinished transaction is left for the next round).
    begins = [decode(m).final_lsn for m in messages if m[:1] == b"B"]  # type: ignore[union-attr]
    for start in begins:
        assert_same(messages, start, oid)
    # Without the inserts in the round, unchanged TOASTed values are left to fill.
    assert any(columnar(messages, start, oid).pending for start in begins)
    for cut in range(1, len(messages)):
        assert_same(messages[:cut], 0, oid)
    # Rounds of plain changes only are cut out of the buffer as Arrow, the rest row by row.
    paths = {type(columnar(messages[:cut], 0, oid).values.get("id")) for cut in range(5, 40)}
    assert paths == {pa.StringArray, list}
    # Cut a few bytes of values at a time: the same columns.
    plain = messages[:12]
    small = ColumnAssembler("public.kinds", ["id"], [oid], ("public", "kinds"), 0)
    small.gather_bytes = 7
    cut_small = small.assemble(plain).values
    whole = columnar(plain, 0, oid).values
    assert isinstance(cut_small["big"], pa.Array) and len(cut_small["big"]) >= 3
    assert all(cut_small[name].equals(whole[name]) for name in whole)
    commits = [decode(m) for m in messages if m[:1] == b"C"]
    assert all(isinstance(c, Commit) for c in commits)
    assert isinstance(decode(messages[0]), Begin)
    # Another table's changes only: nothing of ours.
    other = conn.execute("SELECT 'other'::regclass::oid::int").fetchone()[0]  # type: ignore[index]
    none = ColumnAssembler("public.x", ["id"], [other + 10**6], ("public", "x"), 0).assemble(
        messages
    )
    # The position still moves past the transactions read.
    assert len(none) == 0 and none.transactions == 0 and none.last_end == got.last_end


def test_every_mapped_type_arrives_as_its_arrow_type(conn: psycopg.Connection[Any]) -> None:
    conn.execute(KINDS)
    conn.execute("CREATE PUBLICATION pub FOR TABLE kinds")
    conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    conn.execute(ROW, [1, "olá ☃", "small"])
    conn.execute("INSERT INTO kinds (id) VALUES (2)")  # every other value NULL
    conn.execute(
        "INSERT INTO kinds (id, day, local, moment, yes) "
        "VALUES (3, '-infinity', 'infinity', '-infinity', false)"
    )
    messages = [
        bytes(r[0])
        for r in conn.cursor(binary=True).execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'pub')"
        )
    ]
    oid = conn.execute("SELECT 'kinds'::regclass::oid::int").fetchone()[0]  # type: ignore[index]
    batch = columnar(messages, 0, oid)
    assert all(isinstance(v, pa.Array) for v in batch.values.values())  # plain inserts: numpy
    bases = dict(
        conn.execute(
            "SELECT oid::int, typbasetype::int FROM pg_type WHERE typtype = 'd'"
        ).fetchall()
    )
    arrays = {
        name: to_arrow(
            batch.values[name],
            bases.get(c.type_oid, c.type_oid),
            c.typmod,
            "public.kinds",
            name,
        )
        for name, c in batch.columns.items()
    }
    for name, c in batch.columns.items():  # the same from Python lists of text
        text = batch.values[name].to_pylist()
        same = to_arrow(text, bases.get(c.type_oid, c.type_oid), c.typmod, "public.kinds", name)
        assert same.equals(arrays[name]), name
    types = {name: a.type for name, a in arrays.items()}
    assert types == {
        "id": pa.int64(),
        "i2": pa.int16(),
        "i4": pa.int32(),
        "o": pa.int64(),
        "f4": pa.float32(),
        "f8": pa.float64(),
        "n": pa.decimal128(12, 3),
        "free": pa.string(),
        "yes": pa.bool_(),
        "raw": pa.binary(),
        "day": pa.date32(),
        "local": pa.timestamp("us"),
        "moment": pa.timestamp("us", "UTC"),
        "label": pa.string(),
        "code": pa.string(),
        "uid": pa.string(),
        "doc": pa.string(),
        "span": pa.string(),
        "dom": pa.int32(),
        "tags": pa.string(),
        "big": pa.string(),
    }
    first = {name: a[0].as_py() for name, a in arrays.items()}
    assert first["n"] == Decimal("12.345") and first["free"] == "0." + "0" * 29 + "1"
    assert first["moment"] == datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC)
    assert first["local"] == datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert first["raw"] == b"\x00\xff" and first["yes"] is True and first["dom"] == 5
    assert first["label"] == "olá ☃" and first["tags"] == "{1,2,3}"
    assert first["span"] == "1 day 02:03:04" and first["doc"] == '{"k": [1, 2]}'
    assert first["f4"] == 1.5 and first["i4"] == -70000 and first["o"] == 42
    assert all(a[1].as_py() is None for name, a in arrays.items() if name != "id")
    assert arrays["day"][2].as_py().year == 1 and arrays["local"][2].as_py().year == 9999
    assert arrays["moment"][2].as_py().year == 1 and arrays["yes"][2].as_py() is False
    assert batch.times[0] > PG_EPOCH_MICROS  # after 2000-01-01


def test_a_change_without_its_key_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE nokey (id int, v text)")
    conn.execute("ALTER TABLE nokey REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION pub FOR TABLE nokey")
    conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    conn.execute("INSERT INTO nokey VALUES (NULL, 'a')")
    messages = [
        bytes(r[0])
        for r in conn.cursor(binary=True).execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'pub')"
        )
    ]
    oid = conn.execute("SELECT 'nokey'::regclass::oid::int").fetchone()[0]  # type: ignore[index]
    with pytest.raises(DataError, match="INSERT carries no value for key column 'id'"):
        ColumnAssembler("public.nokey", ["id"], [oid], ("public", "nokey"), 0).assemble(messages)
    with pytest.raises(DataError, match="INSERT carries no value for key column 'id'"):
        Assembler("public.nokey", ["id"], [oid], ("public", "nokey"), 0).assemble(
            [decode(m) for m in messages]
        )
