"""Streaming tables fed by Kafka: watermarks per Kafka partition, an idle partition,
and a windowed, deduplicated, joined stream run from the CLI with crashes.

Kafka gives no order between partitions: a fetch may hand over one partition's
messages before another's. The events are therefore produced in rounds, each
drained by a run before the next one, and laid out so that no event's fate
(on time, late, duplicate) depends on how partitions interleave within a round.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from headwater import table
from headwater.engine.position import read_committed_state
from headwater.sources.kafka import KafkaSource, kafka
from headwater.stream import count, event_time, stream, sum_, tumbling

from .conftest import run_cli, write_pipeline
from .kafka_broker import TEST_CONSUMER, Broker, kafka_broker
from .lake import Lake

__all__ = ["kafka_broker"]  # the fixture, used by name

MS = 1
SECOND = 1000 * MS
MINUTE = 60 * SECOND
BASE = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * SECOND)


def _minute(ms: int) -> datetime:
    """The start of the one-minute window holding `ms` (epoch milliseconds)."""
    return datetime.fromtimestamp((ms - ms % MINUTE) / SECOND, UTC)


# -- an idle partition -----------------------------------------------------------------------


def _windowed(broker: Broker, topic: str, idle: str | None) -> Any:
    source = kafka(topic, bootstrap_servers=broker.bootstrap, consumer_options=dict(TEST_CONSUMER))
    return source, stream(
        event_time=event_time("ts", unit="ms"),
        watermark="5s",
        idle_timeout=idle,
        window=tumbling("1m"),
        aggregates={"events": count(), "total": sum_("v")},
    )


def test_an_idle_partition_does_not_hold_back_the_watermark(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic("idle", partitions=3)
    made: list[KafkaSource] = []
    lake = Lake(tmp_path)

    def declare(name: str, idle: str | None) -> None:
        source, spec = _windowed(kafka_broker, topic, idle)
        made.append(source)
        table(name, source=source, stream=spec)

    lake.declare(lambda: declare("silver.windows", "45s"))
    sent: list[dict[str, Any]] = []

    def round_(start: int, partitions: list[int]) -> None:
        # 30 s of events per partition, 1.5 s apart: a round moves the stream's
        # newest event time by less than the idle timeout, whatever the interleaving.
        events = [
            (p, None, {"id": f"{p}-{start + i * 1500}", "ts": start + i * 1500, "v": p + 1})
            for p in partitions
            for i in range(20)
        ]
        kafka_broker.produce(topic, events)
        sent.extend(value for _, _, value in events)
        lake.run()

    try:
        round_(BASE, [0, 1, 2])
        for k in range(1, 6):  # partition 2 stays quiet from here on
            round_(BASE + k * 30 * SECOND, [0, 1])
        # The newest events are at 2:58.5; partition 2's at 0:28.5.
        app = lake.project.spec("silver.windows").app_id
        state = read_committed_state(lake.target("silver.windows"), app)
        assert state.position("source") == {topic: {"0": 120, "1": 120, "2": 20}}
        assert state.stream is not None
        # Partition 2 went idle: the watermark is the active partitions' 2:58.5 - 5 s.
        assert state.stream["watermark"]["watermark"] == (BASE + 173_500) * 1000
        windows = lake.rows("silver.windows", "window_start")
        expected = Counter(_minute(e["ts"]) for e in sent)
        totals = Counter[datetime]()
        for e in sent:
            totals[_minute(e["ts"])] += e["v"]
        # That closed the first two minutes, and no event was judged late.
        assert [(w["window_start"], w["events"], w["total"]) for w in windows] == [
            (m, expected[m], totals[m]) for m in sorted(expected)[:2]
        ]
        assert not lake.target("silver.windows__late").exists

        # Partition 2 speaks again: it rejoins the watermark, its events are on time.
        round_(BASE + 180 * SECOND, [0, 1, 2])
        windows = lake.rows("silver.windows", "window_start")
        assert [(w["window_start"], w["events"]) for w in windows] == [
            (m, expected[m]) for m in sorted(expected)[:3]
        ]
        assert not lake.target("silver.windows__late").exists
    finally:
        for source in made:
            source.close()


# -- from the CLI, with crashes ---------------------------------------------------------------

STREAM_PIPELINE = """
from headwater import table
from headwater.sources import files
from headwater.sources.kafka import kafka
from headwater.stream import count, dedup, event_time, stream, sum_, temporal_join, tumbling

# Customer segments with their validity (the dimension, one row per version).
table("bronze.segments", source=files("landing/segments.ndjson"), strategy="append")

table(
    "silver.revenue",
    source=kafka({topic!r}, connection="events", group_id={group_id!r}, consumer_options={consumer!r}),
    stream=stream(
        event_time=event_time("ts", unit="ms"),
        watermark="10s",
        dedup=dedup("order_id", within="10m"),
        join=temporal_join("bronze.segments", on="customer", columns=["segment"]),
        window=tumbling("1m"),
        group_by=["segment"],
        aggregates={{"orders": count(), "revenue": sum_("amount")}},
        max_records=40,
    ),
)
"""
# customer -> [(valid from, valid to, segment)]: c2 moves to "business" at 2:00.
SEGMENTS = {
    "c0": [(-1440, None, "retail")],
    "c1": [(-1440, None, "retail")],
    "c2": [(-1440, 2, "retail"), (2, None, "business")],
    "c3": [(-1440, None, "business")],
}
# Partition 0 carries c0 and c2, partition 1 c1 and c3.
CUSTOMERS = {0: ["c0", "c2"], 1: ["c1", "c3"]}


def _segment(customer: str, ts: int) -> str:
    for start, end, segment in SEGMENTS[customer]:
        if BASE + start * MINUTE <= ts and (end is None or ts < BASE + end * MINUTE):
            return segment
    raise AssertionError(f"no segment for {customer} at {ts}")


def _write_segments(root: Path) -> None:
    def at(minutes: int | None) -> str | None:
        if minutes is None:
            return None
        return (datetime.fromtimestamp(BASE / SECOND, UTC) + timedelta(minutes=minutes)).isoformat()

    lines = [
        json.dumps({"customer": c, "segment": s, "valid_from": at(f), "valid_to": at(t)})
        for c, versions in SEGMENTS.items()
        for f, t, s in versions
    ]
    (root / "landing").mkdir()
    (root / "landing" / "segments.ndjson").write_text("\n".join(lines) + "\n")


class Orders:
    """What was produced, and what the table must hold: the oracle."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.counted: dict[str, dict[str, Any]] = {}  # order id -> the event that counts
        self.late: list[str] = []
        self.sent: Counter[str] = Counter()  # messages per partition

    def send(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        self.broker.produce(self.topic, [(p, e["order_id"], e) for p, e in events])
        self.sent.update(str(p) for p, _ in events)

    def minute(self, k: int, *, duplicates: int = 0, late: int = 0) -> None:
        """Orders every 2 s of minute k on both partitions; then `duplicates` of them
        sent again (on both partitions) and `late` orders of minute k - 2, whose
        window the watermark has closed before they arrive whatever the interleaving."""
        events: list[tuple[int, dict[str, Any]]] = []
        for p, customers in CUSTOMERS.items():
            for i in range(30):
                ts = BASE + k * MINUTE + i * 2 * SECOND
                order = {
                    "order_id": f"o{k}-{p}-{i}",
                    "customer": customers[i % 2],
                    "ts": ts,
                    "amount": 1 + (i * 7 + p * 3 + k) % 50,
                }
                events.append((p, order))
                self.counted[order["order_id"]] = order
        for j in range(duplicates):
            _, twin = events[j * 5]
            events += [(0, dict(twin)), (1, dict(twin))]
        for j in range(late):
            order = {
                "order_id": f"late{k}-{j}",
                "customer": "c0",
                "ts": BASE + (k - 2) * MINUTE + j * SECOND,
                "amount": 1000,
            }
            events.append((j % 2, order))
            self.late.append(order["order_id"])
        self.send(events)

    def windows(self, closed: int) -> list[tuple[str, datetime, int, int]]:
        """(segment, window start, orders, revenue) of the first `closed` minutes."""
        orders: Counter[tuple[str, datetime]] = Counter()
        revenue: Counter[tuple[str, datetime]] = Counter()
        for order in self.counted.values():
            if order["ts"] < BASE + closed * MINUTE:
                key = (_segment(order["customer"], order["ts"]), _minute(order["ts"]))
                orders[key] += 1
                revenue[key] += order["amount"]
        return sorted((s, m, orders[(s, m)], revenue[(s, m)]) for s, m in orders)


def _delta(root: Path, name: str) -> Any:
    layer, table_name = name.split(".")
    path = root / "warehouse" / layer / table_name
    return DeltaTable(str(path)).to_pyarrow_table() if (path / "_delta_log").exists() else None


def _stream_position(root: Path) -> dict[str, int]:
    """The Kafka position in the table's latest commit (read from the Delta log, as
    the restart does; the pipeline is not loaded into this process)."""
    path = root / "warehouse" / "silver" / "revenue"
    latest = DeltaTable(str(path)).history(1)[0]
    (offsets,) = latest["headwater"]["positions"]["source"].values()
    return {str(p): int(o) for p, o in offsets.items()}


def _group_offsets(broker: Broker, group_id: str, topic: str) -> dict[str, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group_id})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in CUSTOMERS], timeout=10)
    finally:
        consumer.close()
    return {str(tp.partition): tp.offset for tp in found if tp.offset >= 0}


def test_a_windowed_deduplicated_joined_stream_from_kafka_runs_from_the_cli_exactly_once(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic("orders", partitions=len(CUSTOMERS))
    group_id = f"headwater-stream-{topic}"
    (tmp_path / "headwater.toml").write_text(
        f'[project]\nname = "orders"\n\n[connections.events]\nbootstrap_servers = "{kafka_broker.bootstrap}"\n'
    )
    (tmp_path / "pipelines").mkdir()
    code = STREAM_PIPELINE.format(topic=topic, group_id=group_id, consumer=dict(TEST_CONSUMER))
    write_pipeline(tmp_path, "orders", code)
    _write_segments(tmp_path)
    orders = Orders(kafka_broker, topic)

    orders.minute(0)
    run_cli(tmp_path, "run")  # builds bronze.segments first: the stream joins it
    # Killed between a micro-batch's Delta commit and its Kafka offset commit.
    orders.minute(1)
    orders.minute(2, duplicates=4)
    killed = run_cli(tmp_path, "run", env={"HEADWATER_FAILPOINTS": "after_commit@2"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    position = _stream_position(tmp_path)
    assert sum(position.values()) > sum(_group_offsets(kafka_broker, group_id, topic).values())
    # Killed after the micro-batch's state was committed, before its own commit:
    # the restart must read exactly the same messages again.
    orders.minute(3)
    killed = run_cli(
        tmp_path, "run", env={"HEADWATER_FAILPOINTS": "after_quarantine@2"}, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_cli(tmp_path, "run")
    # Drained up to 3:58: orders of minute 2 that arrive now are late on any partition.
    orders.minute(4, late=3)
    done = run_cli(tmp_path, "run")
    assert "failed" not in done.stdout, done.stdout

    # The watermark is at 4:58 - 10 s: minutes 0 to 3 are closed, each written once.
    revenue = _delta(tmp_path, "silver.revenue")
    found = sorted(
        (r["segment"], r["window_start"], r["orders"], r["revenue"]) for r in revenue.to_pylist()
    )
    assert found == orders.windows(closed=4)
    late = _delta(tmp_path, "silver.revenue__late")
    assert sorted(late["order_id"].to_pylist()) == sorted(orders.late)
    assert set(late["_reason"].to_pylist()) == {"window closed"}
    # After the clean run the group's offsets caught up with the table's position.
    assert _group_offsets(kafka_broker, group_id, topic) == _stream_position(tmp_path)


def _start(root: Path) -> subprocess.Popen[str]:
    log = (root / "continuous.log").open("a")
    command = ["run", "--continuous", "--trigger", "0.5s"]
    return subprocess.Popen(
        [sys.executable, "-m", "headwater", "--project", str(root), *command],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HEADWATER_FAILPOINTS": ""},
    )


def _drained(root: Path, orders: Orders, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = root / "warehouse" / "silver" / "revenue" / "_delta_log"
        if path.exists() and _stream_position(root) == dict(orders.sent):
            return
        time.sleep(0.2)
    log = (root / "continuous.log").read_text()[-2000:]
    raise AssertionError(f"the stream did not reach {dict(orders.sent)}:\n{log}")


def _moved(root: Path, before: dict[str, int], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while _stream_position(root) == before:
        if time.monotonic() > deadline:
            raise AssertionError("the stream committed nothing new")
        time.sleep(0.05)


@pytest.mark.soak
def test_a_continuous_stream_from_kafka_killed_at_random_moments_loses_and_repeats_nothing(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic("orders", partitions=len(CUSTOMERS))
    (tmp_path / "headwater.toml").write_text(
        f'[project]\nname = "orders"\n\n[connections.events]\nbootstrap_servers = "{kafka_broker.bootstrap}"\n'
    )
    (tmp_path / "pipelines").mkdir()
    code = STREAM_PIPELINE.format(
        topic=topic, group_id=f"headwater-stream-{topic}", consumer=dict(TEST_CONSUMER)
    )
    write_pipeline(tmp_path, "orders", code)
    _write_segments(tmp_path)
    orders = Orders(kafka_broker, topic)
    rng = random.Random(7)
    process = _start(tmp_path)
    unfinished = 0  # kills that interrupted a stream with messages left to commit
    try:
        orders.minute(0)
        _drained(tmp_path, orders)  # every partition has delivered: its watermark counts
        for k in (1, 3):
            before = _stream_position(tmp_path)
            orders.minute(k)
            orders.minute(k + 1, duplicates=4 if k == 1 else 0)
            # Once the first micro-batch of the two minutes is committed, SIGKILL
            # somewhere in reading, committing state or rows, or acknowledging.
            _moved(tmp_path, before)
            time.sleep(rng.uniform(0.0, 0.3))
            unfinished += _stream_position(tmp_path) != dict(orders.sent)
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            process = _start(tmp_path)
            _drained(tmp_path, orders)
        # Sent once everything before is committed: late on any partition.
        orders.minute(5, late=3)
        orders.minute(6)
        _drained(tmp_path, orders)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert unfinished >= 1
    revenue = _delta(tmp_path, "silver.revenue")
    found = sorted(
        (r["segment"], r["window_start"], r["orders"], r["revenue"]) for r in revenue.to_pylist()
    )
    assert found == orders.windows(closed=6)
    late = _delta(tmp_path, "silver.revenue__late")
    assert sorted(late["order_id"].to_pylist()) == sorted(orders.late)
