"""The Kafka source against a real broker: positions, micro-batches, formats, quarantine, errors."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from headwater import Project, Runner, table
from headwater.config import load_config
from headwater.errors import ConfigError
from headwater.sources.base import ReadContext
from headwater.sources.kafka import KafkaSource, kafka

from .kafka_broker import TEST_CONSUMER, Broker, kafka_broker, tansu
from .lake import Lake

__all__ = ["kafka_broker"]  # the fixture, used by name


@pytest.fixture
def sources() -> Iterator[list[KafkaSource]]:
    """Sources made by a test; their consumers are closed at its end."""
    made: list[KafkaSource] = []
    yield made
    for source in made:
        source.close()


def _source(sources: list[KafkaSource], broker: Broker, topic: str, **options: Any) -> KafkaSource:
    options.setdefault("consumer_options", dict(TEST_CONSUMER))
    source = kafka(topic, bootstrap_servers=broker.bootstrap, **options)
    sources.append(source)
    return source


def _lake(tmp_path: Path, source: KafkaSource, name: str = "bronze.events", **options: Any) -> Lake:
    lake = Lake(tmp_path)
    options.setdefault("strategy", "append")
    lake.declare(lambda: table(name, source=source, **options))
    return lake


def _loaded(lake: Lake, name: str = "bronze.events") -> list[tuple[int, int]]:
    data = lake.table(name)
    return sorted(zip(data["_partition"].to_pylist(), data["_offset"].to_pylist(), strict=True))


def _commit_sizes(lake: Lake, name: str = "bronze.events") -> list[int]:
    """Rows added by each of the table's commits, oldest first."""
    history = lake.target(name).table.history()
    sizes = []
    for entry in reversed(history):
        metrics = (entry.get("headwater") or {}).get("metrics") or {}
        if "headwater" in entry:
            sizes.append(int(metrics.get("inserted", 0)))
    return sizes


def test_every_message_lands_once_and_the_position_is_per_partition(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("orders", partitions=3)
    # Partition 2 stays idle: the read must still end (its end is reported by a fetch).
    kafka_broker.produce(
        topic,
        [(i % 2, f"k{i}", {"order_id": i, "amount": i * 1.5}) for i in range(500)],
        headers=[("origin", b"shop")],
    )
    source = _source(sources, kafka_broker, topic, max_records=120)
    lake = _lake(tmp_path, source)
    (run,) = lake.run()
    assert run.status == "committed"
    assert run.positions["source"] == {topic: {"0": 250, "1": 250}}
    # Bounded micro-batches: every commit holds at most max_records rows.
    assert run.commits >= 5
    rows = lake.rows("bronze.events", "order_id")
    assert [r["order_id"] for r in rows] == list(range(500))
    first = rows[0]
    assert first["_topic"] == topic and first["_key"] == "k0" and first["_partition"] == 0
    assert first["_offset"] == 0 and first["amount"] == 0.0
    assert dict(first["_headers"]) == {"origin": b"shop"}
    assert isinstance(first["_timestamp"], datetime)
    assert abs((first["_timestamp"] - datetime.now(UTC)).total_seconds()) < 3600

    # New messages, including on the idle partition: only they are loaded.
    kafka_broker.produce(topic, [(2, None, {"order_id": 500 + i, "amount": 1.0}) for i in range(7)])
    (run,) = lake.run()
    assert run.positions["source"] == {topic: {"0": 250, "1": 250, "2": 7}}
    assert _loaded(lake) == sorted(
        [(i % 2, i // 2) for i in range(500)] + [(2, i) for i in range(7)]
    )
    (again,) = lake.run()
    assert again.status == "up-to-date"


def test_micro_batches_are_bounded_by_records_and_bytes(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("sized")
    payload = "x" * 1000
    kafka_broker.produce(topic, [(0, None, {"n": i, "pad": payload}) for i in range(300)])
    source = _source(sources, kafka_broker, topic, max_bytes="20KB")
    lake = _lake(tmp_path, source)
    (run,) = lake.run()
    sizes = _commit_sizes(lake)
    assert sum(sizes) == 300 and run.commits == len(sizes) >= 10
    assert max(sizes) <= 21  # a batch stops at the first message reaching the bound
    assert _loaded(lake) == [(0, i) for i in range(300)]


def test_the_table_position_wins_over_the_consumer_group_offsets(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("truth", partitions=2)
    kafka_broker.produce(topic, [(i % 2, None, {"n": i}) for i in range(40)])
    source = _source(sources, kafka_broker, topic, group_id="truth-group")
    lake = _lake(tmp_path, source)
    lake.run()
    # acknowledge() stored the committed offsets in the group, for lag tooling
    # (asynchronously: closing the consumer waits for the commit).
    source.close()
    probe = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "truth-group"})
    try:
        stored = probe.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert sorted(tp.offset for tp in stored) == [20, 20]
        # Someone moves the group's offsets: the table's own position still decides.
        probe.commit(
            offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 35)], asynchronous=False
        )
    finally:
        probe.close()
    kafka_broker.produce(topic, [(i % 2, None, {"n": 40 + i}) for i in range(10)])
    source.close()  # a fresh consumer, as after a restart
    lake.run()
    ns = sorted(lake.table("bronze.events")["n"].to_pylist())
    assert ns == list(range(50))


def test_undecodable_messages_go_to_quarantine_with_topic_partition_and_offset(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("dirty", partitions=2)
    messages: list[tuple[int, Any, Any]] = [(0, "a", {"id": 1}), (0, "b", b"{not json")]
    messages += [(1, "c", b"[1, 2]"), (1, b"\xff\xfe", {"id": 4}), (1, "e", {"id": 5})]
    messages += [(0, "f", None)]  # a tombstone: a row with the key and no value fields
    kafka_broker.produce(topic, messages)
    source = _source(sources, kafka_broker, topic)
    lake = _lake(tmp_path, source)
    lake.run()
    rows = lake.rows("bronze.events", "_partition", "_offset")
    assert [(r["_partition"], r["_offset"], r["_key"], r["id"]) for r in rows] == [
        (0, 0, "a", 1),
        (0, 2, "f", None),
        (1, 2, "e", 5),
    ]
    quarantined = lake.rows("bronze.events__quarantine", "source", "location")
    found = [(q["source"], q["location"], q["check"]) for q in quarantined]
    assert found == [
        (f"{topic}[0]", "offset 1", "malformed"),
        (f"{topic}[1]", "offset 0", "malformed"),
        (f"{topic}[1]", "offset 1", "malformed"),
    ]
    reasons = [q["reason"] for q in quarantined]
    assert reasons[0].startswith("not JSON") and "JSON object" in reasons[1]
    assert "key_format='binary'" in reasons[2]
    assert quarantined[0]["record"] == "{not json"
    # Nothing is quarantined twice when the table runs again.
    lake.run()
    assert lake.table("bronze.events__quarantine").num_rows == 3


def test_declared_columns_send_values_of_the_wrong_type_to_quarantine(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("typed")
    values = [{"id": 1, "amount": 2.5}, {"id": "two", "amount": 1.0}, {"id": 3, "extra": "x"}]
    kafka_broker.produce(topic, [(0, None, v) for v in values])
    source = _source(sources, kafka_broker, topic, columns={"id": "int64", "amount": "double"})
    lake = _lake(tmp_path, source)
    lake.run()
    rows = lake.rows("bronze.events", "id")
    assert [(r["id"], r["amount"], r.get("extra")) for r in rows] == [
        (1, 2.5, None),
        (3, None, "x"),
    ]
    (bad,) = lake.table("bronze.events__quarantine").to_pylist()
    assert bad["location"] == "offset 1" and bad["check"] == "type"


def test_raw_string_and_avro_values(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    schema = {
        "type": "record",
        "name": "Click",
        "fields": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}],
    }
    parsed = fastavro.parse_schema(schema)

    def datum(record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    topic = kafka_broker.topic("formats")
    kafka_broker.produce(
        topic,
        [
            (0, None, datum({"user": "ann", "n": 1})),
            (0, None, b"\xff\xff"),
            (0, None, datum({"user": "bo", "n": 2})),
        ],
    )
    lake = Lake(tmp_path)
    avro = _source(sources, kafka_broker, topic, format="avro", avro_schema=json.dumps(schema))
    raw = _source(sources, kafka_broker, topic, format="raw")
    text = _source(sources, kafka_broker, topic, format="string", key_format="binary")
    lake.declare(lambda: table("bronze.avro", source=avro, strategy="append"))
    lake.declare(lambda: table("bronze.raw", source=raw, strategy="append"))
    lake.declare(lambda: table("bronze.text", source=text, strategy="append"))
    lake.run()
    assert [(r["user"], r["n"]) for r in lake.rows("bronze.avro", "n")] == [("ann", 1), ("bo", 2)]
    (bad,) = lake.table("bronze.avro__quarantine").to_pylist()
    assert bad["location"] == "offset 1" and "Avro" in bad["reason"]
    raw_rows = lake.rows("bronze.raw", "_offset")
    assert [r["_value"] for r in raw_rows][1] == b"\xff\xff"
    assert lake.table("bronze.raw").schema.field("_value").type == pa.binary()
    # A value that is not UTF-8 is quarantined by format="string", kept by "raw".
    assert lake.table("bronze.text").num_rows == 2
    assert lake.table("bronze.text").schema.field("_key").type == pa.binary()


class _Registry(BaseHTTPRequestHandler):
    """A Confluent-compatible schema registry: GET /schemas/ids/<id>, basic auth."""

    schemas: dict[int, dict[str, Any]] = {}
    asked: list[int] = []
    credentials = "Basic " + base64.b64encode(b"reader:registry-secret").decode()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        status, body = 404, {"error_code": 40403, "message": "Schema not found"}
        if self.headers.get("Authorization") != self.credentials:
            status, body = 401, {"error_code": 401, "message": "Unauthorized"}
        elif self.path.startswith("/schemas/ids/"):
            schema_id = int(self.path.rsplit("/", 1)[1])
            self.asked.append(schema_id)
            if schema_id in self.schemas:
                status, body = 200, {"schema": json.dumps(self.schemas[schema_id])}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_avro_in_the_schema_registry_wire_format_with_two_schema_versions(
    kafka_broker: Broker,
    tmp_path: Path,
    sources: list[KafkaSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = {
        "type": "record",
        "name": "Click",
        "fields": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}],
    }
    v2 = {**v1, "fields": [*v1["fields"], {"name": "country", "type": ["null", "string"]}]}
    _Registry.schemas, _Registry.asked = {7: v1, 8: v2}, []

    def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(struct.pack(">bI", 0, schema_id))  # magic byte, schema id
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
        return out.getvalue()

    topic = kafka_broker.topic("registry")
    kafka_broker.produce(
        topic,
        [
            (0, None, framed(7, v1, {"user": "ann", "n": 1})),
            (0, None, framed(8, v2, {"user": "bo", "n": 2, "country": "NO"})),
            (0, None, b'{"user": "not avro"}'),
            (0, None, framed(7, v1, {"user": "cy", "n": 3})),
        ],
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("REGISTRY_PASSWORD", "registry-secret")
    try:
        (tmp_path / "headwater.toml").write_text(
            f"""
[connections.events]
bootstrap_servers = "{kafka_broker.bootstrap}"
schema_registry_url = "http://127.0.0.1:{server.server_address[1]}"
schema_registry_username = "reader"
schema_registry_password_env = "REGISTRY_PASSWORD"
"""
        )
        source = kafka(topic, connection="events", format="avro")
        sources.append(source)
        lake = _lake(tmp_path, source)
        project = Project.of_specs(tmp_path, lake.specs, load_config(tmp_path))
        (run,) = Runner(project).run(["bronze.events"])
        assert run.status == "committed", run.error
    finally:
        server.shutdown()
        server.server_close()
    rows = lake.rows("bronze.events", "_offset")
    # Both writer schemas' records land in one table; v1 records have no country.
    assert [(r["user"], r["n"], r["country"], r["_offset"]) for r in rows] == [
        ("ann", 1, None, 0),
        ("bo", 2, "NO", 1),
        ("cy", 3, None, 3),
    ]
    (bad,) = lake.table("bronze.events__quarantine").to_pylist()
    assert bad["location"] == "offset 2" and "wire format" in bad["reason"]
    assert sorted(_Registry.asked) == [7, 8]  # each schema fetched once


def test_debezium_change_events_over_kafka_apply_by_key(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    def event(op: str, before: Any, after: Any, lsn: int) -> dict[str, Any]:
        source = {"connector": "postgresql", "lsn": lsn, "ts_ms": 1_700_000_000_000 + lsn}
        return {"op": op, "before": before, "after": after, "source": source}

    topic = kafka_broker.topic("dbz", partitions=2)
    events: list[tuple[int, Any, Any]] = [
        (0, '{"id":1}', event("c", None, {"id": 1, "name": "ann"}, 10)),
        (0, '{"id":2}', event("c", None, {"id": 2, "name": "bo"}, 11)),
        (0, '{"id":1}', event("u", {"id": 1}, {"id": 1, "name": "anne"}, 12)),
        (0, '{"id":2}', event("d", {"id": 2, "name": "bo"}, None, 13)),
        (0, '{"id":2}', None),  # the tombstone after a delete
        (0, None, {"op": "t", "source": {"lsn": 14}}),  # a truncate cannot apply by key
    ]
    kafka_broker.produce(topic, events)
    source = _source(sources, kafka_broker, topic, format="debezium")
    lake = _lake(
        tmp_path, source, "bronze.customers", strategy="cdc-apply", keys=["id"], sequence_by="_seq"
    )
    lake.run()
    rows = lake.rows("bronze.customers", "id")
    assert [(r["id"], r["name"]) for r in rows] == [(1, "anne")]
    (bad,) = lake.table("bronze.customers__quarantine").to_pylist()
    assert bad["location"] == "offset 5" and "truncate" in bad["reason"]

    # Later changes, as Kafka Connect's JSON converter sends them (schema + payload),
    # keyed to two partitions: the next run applies only them, in log order.
    row_schema = {
        "type": "struct",
        "fields": [
            {"field": "id", "type": "int64", "optional": False},
            {"field": "name", "type": "string", "optional": True},
        ],
    }
    schema = {
        "type": "struct",
        "fields": [
            {**row_schema, "field": "before", "optional": True},
            {**row_schema, "field": "after", "optional": True},
            {"field": "op", "type": "string"},
        ],
    }

    def wrapped(op: str, before: Any, after: Any, lsn: int) -> dict[str, Any]:
        return {"schema": schema, "payload": event(op, before, after, lsn)}

    kafka_broker.produce(
        topic,
        [
            (0, '{"id":2}', wrapped("c", None, {"id": 2, "name": "bob"}, 20)),
            (1, '{"id":3}', wrapped("c", None, {"id": 3, "name": "cy"}, 21)),
            (1, '{"id":3}', wrapped("u", None, {"id": 3, "name": "cyd"}, 22)),
            (0, '{"id":1}', wrapped("d", {"id": 1, "name": "anne"}, None, 23)),
        ],
    )
    (run,) = lake.run()
    assert run.positions["source"] == {topic: {"0": 8, "1": 2}}
    rows = lake.rows("bronze.customers", "id")
    assert [(r["id"], r["name"]) for r in rows] == [(2, "bob"), (3, "cyd")]


def test_a_read_reports_lag_from_fetched_high_watermarks(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("lag", partitions=2)
    kafka_broker.produce(topic, [(i % 2, None, {"n": i}) for i in range(100)])
    source = _source(sources, kafka_broker, topic, max_records=30)
    ctx = ReadContext("bronze.lag", tmp_path, datetime.now(UTC))
    increments = list(source.read(None, ctx))
    assert sum(i.info["records"] for i in increments) == 100
    assert increments[-1].info["lag"] == 0
    # Lag is what the fetches showed still ahead of each increment's position.
    for increment in increments[:-1]:
        assert increment.info["lag"] is None or increment.info["lag"] >= 0
    assert increments[-1].position == {topic: {"0": 50, "1": 50}}
    # Reading again from the last position: nothing new, nothing yielded.
    assert list(source.read(increments[-1].position, ctx)) == []


def test_a_micro_batch_has_one_order_whichever_way_it_was_fetched(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("order", partitions=3)
    base = 1_704_067_200_000
    # Message n has timestamp base + n s, on partition n % 3; n = 9 and 10 share one.
    stamps = [base + n * 1000 for n in range(10)] + [base + 9000, base + 11000]
    kafka_broker.produce(topic, [(n % 3, None, {"n": n}, ts) for n, ts in enumerate(stamps)])
    source = _source(sources, kafka_broker, topic)
    ctx = ReadContext("bronze.order", tmp_path, datetime.now(UTC))
    (read,) = list(source.read(None, ctx))
    assert read.position == {topic: {"0": 4, "1": 4, "2": 4}}
    # Partitions merged by timestamp, each in offset order (ties: by partition).
    assert read.reader().read_all()["n"].to_pylist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    # Read again up to the same offsets (a replay after a crash): the same order.
    (again,) = list(source.read_until(None, read.position, ctx))
    assert again.reader().read_all()["n"].to_pylist() == list(range(12))
    assert again.position == read.position


def test_full_refresh_reads_the_topic_again_from_the_start(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    topic = kafka_broker.topic("refresh")
    kafka_broker.produce(topic, [(0, None, {"n": i}) for i in range(20)])
    source = _source(sources, kafka_broker, topic)
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.events", source=source, strategy="overwrite"))
    lake.run()
    kafka_broker.produce(topic, [(0, None, {"n": 20})])
    lake.run(full_refresh=True)
    assert sorted(lake.table("bronze.events")["n"].to_pylist()) == list(range(21))


def test_configuration_mistakes_are_one_line_errors(
    kafka_broker: Broker, tmp_path: Path, sources: list[KafkaSource]
) -> None:
    with pytest.raises(ConfigError, match="no broker given"):
        kafka("t")
    with pytest.raises(ConfigError, match="format must be one of"):
        kafka("t", bootstrap_servers="x:1", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="start must be"):
        kafka("t", bootstrap_servers="x:1", start="yesterday")
    with pytest.raises(ConfigError, match="must not hold credentials"):
        kafka("t", bootstrap_servers="x:1", consumer_options={"sasl.password": "p"})
    topic = kafka_broker.topic("conf")
    kafka_broker.produce(topic, [(0, None, {"n": 1})])
    source = _source(sources, kafka_broker, topic, consumer_options={"no.such.setting": 1})
    lake = _lake(tmp_path, source)
    (run,) = lake.run(check=False)
    assert run.status == "failed" and run.error is not None
    assert run.error.startswith("table bronze.events: Kafka consumer settings rejected")
    assert "no.such.setting" in run.error and "\n" not in run.error


def test_a_wrong_password_fails_without_showing_it(
    tmp_path: Path,
    sources: list[KafkaSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its own Tansu that asks for SASL credentials, whatever broker the other tests use.
    secret = "hunter2-do-not-print"
    monkeypatch.setenv("EVENTS_PASSWORD", secret)
    with tansu(authentication=True) as guarded:
        (tmp_path / "headwater.toml").write_text(
            f"""
[connections.events]
bootstrap_servers = "{guarded.bootstrap}"
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "ingest"
sasl_password_env = "EVENTS_PASSWORD"
"""
        )
        source = kafka("events", connection="events", read_timeout="60s")
        sources.append(source)
        lake = _lake(tmp_path, source)
        project = Project.of_specs(tmp_path, lake.specs, load_config(tmp_path))
        (run,) = Runner(project).run(["bronze.events"])
    assert run.status == "failed" and run.error is not None
    assert run.error.startswith("table bronze.events: connection 'events': ")
    # The broker's refusal is reported at once, not after read_timeout of silence.
    assert "authentication failed" in run.error and run.failure == "fatal"
    shown = f"{run.error} {run.hint} {run.exception!r}"
    assert secret not in shown
    assert "\n" not in run.error
