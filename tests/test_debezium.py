"""Debezium change events from files land in cdc-apply tables; bad events are quarantined."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater import table
from headwater.errors import ConfigError
from headwater.sources._binlog_types import position_sequence
from headwater.sources.debezium import EnvelopeDecoder, EnvelopeError, debezium, parse_event

from .conftest import write_pipeline
from .lake import Lake

PG_SOURCE = {"connector": "postgresql", "db": "shop", "schema": "public", "table": "products"}
MYSQL_SOURCE = {"connector": "mysql", "db": "shop", "table": "products", "server_id": 1}

FIELDS = [
    {"field": "id", "type": "int32", "optional": False},
    {"field": "name", "type": "string", "optional": True},
    {
        "field": "price",
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
    },
    {
        "field": "created",
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.MicroTimestamp",
    },
    {
        "field": "seen",
        "type": "string",
        "optional": True,
        "name": "io.debezium.time.ZonedTimestamp",
    },
    {"field": "born", "type": "int32", "optional": True, "name": "io.debezium.time.Date"},
    {"field": "tags", "type": "string", "optional": True, "name": "io.debezium.data.Json"},
    {"field": "active", "type": "boolean", "optional": True},
]
ROW_SCHEMA = {"type": "struct", "optional": True, "fields": FIELDS}


def money(value: str) -> str:
    """A decimal as Kafka Connect's JSON converter writes it (unscaled, base64)."""
    unscaled = int(Decimal(value).scaleb(2))
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    return base64.b64encode(raw).decode()


def product(pid: int, name: str, price: str = "9.99") -> dict[str, Any]:
    return {
        "id": pid,
        "name": name,
        "price": money(price),
        "created": 1_700_000_000_123_456,  # microseconds since the epoch
        "seen": "2024-03-01T12:00:00.5+02:00",
        "born": 19_000,  # days since the epoch
        "tags": '{"a": [1, 2]}',
        "active": True,
    }


def pg(op: str, lsn: int, before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """A PostgreSQL change event with the schema/payload wrapper."""
    schema = {
        "type": "struct",
        "name": "shop.public.products.Envelope",
        "fields": [
            {**ROW_SCHEMA, "field": "before"},
            {**ROW_SCHEMA, "field": "after"},
            {"type": "struct", "field": "source", "fields": []},
            {"type": "string", "field": "op"},
            {"type": "int64", "field": "ts_ms", "optional": True},
        ],
    }
    payload = {
        "before": before,
        "after": after,
        "source": {**PG_SOURCE, "lsn": lsn, "txId": 700 + lsn, "ts_ms": 1_709_294_400_000 + lsn},
        "op": op,
        "ts_ms": 1_709_294_500_000,
    }
    return json.dumps({"schema": schema, "payload": payload})


def my(
    op: str, pos: int, row: int, before: Any, after: Any, file: str = "mysql-bin.000003"
) -> dict[str, Any]:
    """A MySQL change event without the wrapper (schemas.enable=false)."""
    return {
        "before": before,
        "after": after,
        "source": {
            **MYSQL_SOURCE,
            "file": file,
            "pos": pos,
            "row": row,
            "ts_ms": 1_709_294_400_000,
        },
        "op": op,
        "ts_ms": 1_709_294_500_000,
    }


def write(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def declare(lake: Lake, pattern: str, **options: Any) -> None:
    lake.declare(
        lambda: table(
            "bronze.products",
            source=debezium(pattern),
            strategy="cdc-apply",
            keys=["id"],
            sequence_by="_seq",
            **options,
        )
    )


def test_postgres_events_with_schemas_land_as_typed_rows(tmp_path: Path) -> None:
    write(
        tmp_path / "landing" / "001.ndjson",
        pg("r", 100, None, product(1, "apple")),
        pg("r", 100, None, product(2, "pear")),
        pg("c", 110, None, product(3, "plum", "0.05")),
        pg("u", 120, product(1, "apple"), product(1, "green apple", "-1234.50")),
        pg("d", 130, {"id": 2, "name": None, "price": None}, None),
        "null",  # the tombstone after a delete
        json.dumps({"schema": None, "payload": None}),
    )
    lake = Lake(tmp_path)
    declare(lake, "landing/*.ndjson")
    (run,) = lake.run()
    assert run.metrics["quarantined"] == 0
    rows = {r["id"]: r for r in lake.rows("bronze.products", "id")}
    assert sorted(rows) == [1, 3]
    apple = rows[1]
    assert apple["name"] == "green apple" and apple["price"] == Decimal("-1234.50")
    assert rows[3]["price"] == Decimal("0.05")
    assert apple["created"] == datetime(2023, 11, 14, 22, 13, 20, 123456)
    assert apple["seen"] == datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert apple["born"] == date(2022, 1, 8) and apple["tags"] == '{"a": [1, 2]}'
    assert apple["_seq"] == Decimal(120)
    assert apple["_commit_ts"] == datetime(2024, 3, 1, 12, 0, 0, 120000, tzinfo=UTC)  # source.ts_ms
    schema = lake.table("bronze.products").schema
    assert schema.field("price").type == pa.decimal128(10, 2)
    assert schema.field("born").type == pa.date32()
    assert "_op" not in schema.names  # the operation steers cdc-apply and is not stored


def test_mysql_events_one_per_file_in_arrays_and_in_lines(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    a = {"id": 1, "name": "a", "qty": 1}
    (landing / "1-create.json").write_text(json.dumps(my("c", 400, 0, None, a), indent=2))
    os.utime(landing / "1-create.json", (1, 1))
    (landing / "2-batch.json").write_text(
        json.dumps(
            [
                my("c", 500, 0, None, {"id": 2, "name": "b", "qty": 2}),
                my("c", 500, 1, None, {"id": 3, "name": "c", "qty": 3}),
                my("u", 600, 0, a, {**a, "qty": 5}),
                my("u", 600, 1, a, {**a, "qty": 6}),  # later in the same event: wins
            ]
        )
    )
    os.utime(landing / "2-batch.json", (2, 2))
    write(
        landing / "3-more.jsonl",
        json.dumps(my("d", 700, 0, {"id": 3, "name": "c", "qty": 3}, None)),
        json.dumps(my("c", 90, 0, None, {"id": 4, "name": "d", "qty": 4}, "mysql-bin.000004")),
    )
    os.utime(landing / "3-more.jsonl", (3, 3))
    lake = Lake(tmp_path)
    declare(lake, "landing/*")
    lake.run()
    rows = lake.rows("bronze.products", "id", drop=("_seq", "_commit_ts"))
    assert rows == [
        {"id": 1, "name": "a", "qty": 6},
        {"id": 2, "name": "b", "qty": 2},
        {"id": 4, "name": "d", "qty": 4},
    ]
    four = lake.rows("bronze.products", "id")[-1]
    # The same numbering as the cdc_mysql source: file, position, row.
    assert four["_seq"] == Decimal(position_sequence("mysql-bin.000004", 90, 0))


def test_redelivered_and_out_of_order_events_are_ignored_by_the_sequence_guard(
    tmp_path: Path,
) -> None:
    landing = tmp_path / "landing"
    write(
        landing / "001.ndjson",
        pg("c", 10, None, product(1, "v1")),
        pg("u", 30, product(1, "v1"), product(1, "v3")),
        pg("c", 11, None, product(2, "kept")),
    )
    lake = Lake(tmp_path)
    # Soft deletes keep the deleted row's sequence, so an older create cannot bring it back.
    declare(lake, "landing/*.ndjson", deletes="soft")
    lake.run()
    write(landing / "002.ndjson", pg("d", 40, product(2, "kept"), None))
    lake.run()
    # A connector restart redelivers older events, out of order, in a later file.
    write(
        landing / "003.ndjson",
        pg("u", 20, product(1, "v1"), product(1, "v2")),  # older than v3
        pg("c", 10, None, product(1, "v1")),  # the very first event again
        pg("c", 11, None, product(2, "kept")),  # before its delete
        pg("u", 50, product(1, "v3"), product(1, "v5")),  # new
        pg("u", 45, product(1, "v3"), product(1, "v4")),  # older than the line above
    )
    (run,) = lake.run()
    rows = {r["id"]: r for r in lake.rows("bronze.products", "id")}
    assert rows[1]["name"] == "v5" and rows[1]["_seq"] == Decimal(50)
    assert rows[2]["_deleted_at"] is not None, "an older create resurrected a deleted row"
    assert run.metrics["skipped_older"] >= 1


def test_malformed_events_are_quarantined_with_file_line_and_reason(tmp_path: Path) -> None:
    good = pg("c", 10, None, product(1, "ok"))
    write(
        tmp_path / "landing" / "bad.ndjson",
        good,
        "{not json",
        json.dumps({"after": {"id": 2}, "source": PG_SOURCE}),  # no op
        json.dumps({"op": "c", "source": {**PG_SOURCE, "lsn": 12}}),  # no row image
        json.dumps({"op": "t", "source": {**PG_SOURCE, "lsn": 13}}),  # truncate
        json.dumps({"op": "u", "after": {"id": 3}}),  # no source block
        json.dumps({"op": "u", "after": {"id": 3}, "source": {"connector": "oracle", "scn": "5"}}),
        "[1, 2]",
        pg("c", 14, None, product(4, "also ok")),
    )
    lake = Lake(tmp_path)
    declare(lake, "landing/*.ndjson")
    (run,) = lake.run()
    assert [r["id"] for r in lake.rows("bronze.products", "id")] == [1, 4]
    assert run.metrics["quarantined"] == 7
    bad = {r["location"]: r for r in lake.rows("bronze.products__quarantine", "location")}
    assert set(bad) == {f"line {n}" for n in range(2, 9)}
    assert all(r["source"] == "landing/bad.ndjson" for r in bad.values())
    assert bad["line 2"]["check"] == "malformed" and bad["line 2"]["record"] == "{not json"
    assert "no 'op' field" in bad["line 3"]["reason"]
    assert "without a 'after' row image" in bad["line 4"]["reason"]
    assert "truncate" in bad["line 5"]["reason"]
    assert "no 'source' block" in bad["line 6"]["reason"]
    assert "neither 'lsn'" in bad["line 7"]["reason"] and "oracle" in bad["line 7"]["reason"]
    assert "JSON object" in bad["line 8"]["reason"]


def test_the_decoder_takes_message_values_as_a_kafka_source_would() -> None:
    decoder = EnvelopeDecoder(change_type=False)
    messages = [
        pg("c", 5, None, product(1, "a")).encode(),
        None,  # tombstone
        b"\xff\xfe garbage",
        json.dumps(my("u", 77, 2, {"id": 1}, {"id": 1, "name": "b"})).encode(),
    ]
    for offset, value in enumerate(messages):
        decoder.add(value, source="shop.public.products[0]", location=f"offset {offset}")
    assert decoder.tombstones == 1
    rows, rejected = decoder.take("bronze.products")
    assert rows.column("_op").to_pylist() == ["c", "u"]
    assert rows.column("_seq").to_pylist() == [
        Decimal(5),
        Decimal(position_sequence("mysql-bin.000003", 77, 2)),
    ]
    assert "_change_type" not in rows.schema.names
    assert [(r["location"], r["check"]) for r in rejected] == [("offset 2", "malformed")]
    assert len(decoder) == 0 and decoder.take()[0].num_rows == 0


def test_parse_event_unwraps_payloads_and_rejects_what_it_cannot_order() -> None:
    change = parse_event(pg("d", 9, {"id": 7, "name": "x"}, None))
    assert change is not None and (change.op, change.row["id"], change.sequence) == ("d", 7, 9)
    assert parse_event("null") is None and parse_event(b"") is None
    with pytest.raises(EnvelopeError, match="Headwater adds"):
        parse_event(my("c", 1, 0, None, {"id": 1, "_seq": 3}))
    with pytest.raises(EnvelopeError, match="position is not usable"):
        parse_event({"op": "c", "after": {"id": 1}, "source": {"lsn": "0/16B3748"}})
    with pytest.raises(ConfigError, match="format must be"):
        debezium("x/*.json", format="avro")  # type: ignore[arg-type]


PIPELINE = """
from headwater import table
from headwater.sources.debezium import debezium

table("bronze.changes", source=debezium("landing/*.ndjson", change_type=False), strategy="append")
"""

DRIVER = """
import sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def test_a_crash_inside_a_large_file_resumes_after_the_committed_events(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text(
        '[project]\nname = "dbz"\n[defaults]\nchunk_rows = 10\n'
    )
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "dbz", PIPELINE)
    write(
        tmp_path / "landing" / "big.ndjson",
        *(pg("c", 1000 + i, None, product(i, f"p{i}")) for i in range(35)),
    )
    env = {k: v for k, v in os.environ.items() if k != "HEADWATER_FAILPOINTS"}
    command = [sys.executable, "-c", DRIVER, str(tmp_path)]
    crashed = subprocess.run(
        command,
        env={**env, "HEADWATER_FAILPOINTS": "after_commit@2"},
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    rows = DeltaTable(str(tmp_path / "warehouse" / "bronze" / "changes")).to_pyarrow_table()
    assert sorted(rows.column("id").to_pylist()) == list(range(35)), "events lost or repeated"
