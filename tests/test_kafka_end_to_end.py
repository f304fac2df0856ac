"""Kafka into Delta as a user runs it: the `headwater` command in separate processes,
killed with SIGKILL at every step of the commit protocol, and a consumer group
whose members join and leave mid-stream. Every test compares the table with an
oracle of the messages produced: each one loaded exactly once, or quarantined
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from headwater import Project
from headwater.engine.position import read_committed_state

from .conftest import run_cli, write_pipeline
from .kafka_broker import TEST_CONSUMER, Broker, kafka_broker

__all__ = ["kafka_broker"]  # the fixture, used by name

PIPELINE = """
import os
from headwater import table
from headwater.sources.kafka import kafka

@table("bronze.events",
       source=kafka({topic!r}, connection="events", max_records={max_records},
                    group={group}, group_id={group_id!r}, consumer_options={consumer!r}),
       strategy="append")
def events(source):
    # Which process loaded each row (the consumer-group test looks at it).
    return source.project("*, {{}}::BIGINT AS loader_pid".format(os.getpid()))
"""
BAD = b"{broken"


def _project(
    root: Path, broker: Broker, topic: str, *, group: bool = False, max_records: int = 100
) -> str:
    group_id = f"headwater-test-{uuid.uuid4().hex[:8]}"
    (root / "headwater.toml").write_text(
        f'[project]\nname = "kafka"\n\n[connections.events]\nbootstrap_servers = "{broker.bootstrap}"\n'
    )
    (root / "pipelines").mkdir(exist_ok=True)
    code = PIPELINE.format(
        topic=topic,
        max_records=max_records,
        group=group,
        group_id=group_id,
        consumer=dict(TEST_CONSUMER),
    )
    write_pipeline(root, "events", code)
    return group_id


def _produce(
    broker: Broker, topic: str, first: int, count: int, partitions: list[int]
) -> dict[str, Any]:
    """Messages numbered first.. spread over `partitions`; every 37th is not JSON."""
    messages = []
    good: list[int] = []
    bad: list[int] = []
    for n in range(first, first + count):
        partition = partitions[n % len(partitions)]
        if n % 37 == 0:
            messages.append((partition, str(n), BAD))
            bad.append(n)
        else:
            messages.append((partition, str(n), {"n": n}))
            good.append(n)
    broker.produce(topic, messages)
    return {"good": good, "bad": bad}


def _table(root: Path, name: str = "bronze.events") -> Any:
    layer, table = name.split(".")
    path = root / "warehouse" / layer / table
    if not (path / "_delta_log").exists():
        return None
    return DeltaTable(str(path)).to_pyarrow_table()


def _loaded(root: Path) -> Counter[int]:
    data = _table(root)
    return Counter() if data is None else Counter(data["n"].to_pylist())


def _quarantined(root: Path) -> Counter[tuple[str, str]]:
    data = _table(root, "bronze.events__quarantine")
    if data is None:
        return Counter()
    return Counter((r["source"], r["location"]) for r in data.to_pylist())


def _committed_position(root: Path) -> dict[str, Any]:
    project = Project.load(root)
    spec = project.spec("bronze.events")
    return dict(
        read_committed_state(project.target("bronze.events"), spec.app_id).position("source")
    )


def _group_offsets(broker: Broker, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group_id})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


@pytest.mark.parametrize(
    "failpoint",
    [
        "after_commit@2",  # between the Delta commit and the offset commit
        "after_stage@2",
        pytest.param("after_read@2", marks=pytest.mark.soak),
        pytest.param("after_quarantine@3", marks=pytest.mark.soak),
        pytest.param("after_commit@1", marks=pytest.mark.soak),
    ],
)
def test_killed_at_any_step_then_restarted_loads_every_message_exactly_once(
    kafka_broker: Broker, tmp_path: Path, failpoint: str
) -> None:
    # Three partitions, the last one idle: a run still ends (each partition reports its end).
    topic = kafka_broker.topic("crash", partitions=3)
    group_id = _project(tmp_path, kafka_broker, topic, max_records=100)
    produced = _produce(kafka_broker, topic, 0, 600, [0, 1])

    killed = run_cli(tmp_path, "run", env={"HEADWATER_FAILPOINTS": failpoint}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if failpoint.startswith("after_commit"):
        # Killed between the Delta commit and the offset commit: the group's offsets
        # lag behind what the table holds, and must not be where the restart begins.
        position = _committed_position(tmp_path)[topic]
        stored = _group_offsets(kafka_broker, group_id, topic, 3)
        assert sum(position.values()) > sum(stored.values())
        assert sum(position.values()) == sum(_loaded(tmp_path).values()) + sum(
            _quarantined(tmp_path).values()
        )

    more = _produce(kafka_broker, topic, 600, 150, [0, 1, 2])
    done = run_cli(tmp_path, "run")
    assert "failed" not in done.stdout
    assert _loaded(tmp_path) == Counter(produced["good"] + more["good"])
    assert _quarantined(tmp_path).total() == len(produced["bad"] + more["bad"])
    assert max(_quarantined(tmp_path).values()) == 1
    # After a clean run the group's offsets caught up with the table (for lag tools).
    position = _committed_position(tmp_path)[topic]
    assert _group_offsets(kafka_broker, group_id, topic, 3) == {
        int(p): o for p, o in position.items()
    }


def _start(root: Path, name: str) -> subprocess.Popen[str]:
    # Output goes to a file: an unread pipe fills up and stalls the process.
    log = (root / f"{name}.log").open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater",
            "--project",
            str(root),
            "run",
            "--continuous",
            "--trigger",
            # Members take turns at the table's writer lock; a trigger longer than a
            # cycle leaves the other member room to take it.
            "1s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HEADWATER_FAILPOINTS": ""},
    )


def _loaders(root: Path) -> dict[int, set[int]]:
    """Partitions each process loaded rows of (by its pid)."""
    data = _table(root)
    found: dict[int, set[int]] = {}
    if data is None:
        return found
    for pid, partition in zip(
        data["loader_pid"].to_pylist(), data["_partition"].to_pylist(), strict=True
    ):
        found.setdefault(pid, set()).add(partition)
    return found


def _wait(condition: Any, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.3)


@pytest.mark.parametrize("leaves", ["stopped", pytest.param("killed", marks=pytest.mark.soak)])
def test_consumer_group_members_join_and_leave_mid_stream_without_loss_or_duplicates(
    kafka_broker: Broker, tmp_path: Path, leaves: str
) -> None:
    partitions = [0, 1, 2, 3]
    topic = kafka_broker.topic("group", partitions=len(partitions))
    _project(tmp_path, kafka_broker, topic, group=True, max_records=100)
    produced = _produce(kafka_broker, topic, 0, 400, partitions)
    first = _start(tmp_path, "first")
    second: subprocess.Popen[str] | None = None
    try:
        _wait(lambda: first.pid in _loaders(tmp_path), "the first member to load rows")
        second = _start(tmp_path, "second")
        next_n = 400

        # Keep producing while the second member joins: the group rebalances mid-stream.
        def both_loading() -> bool:
            nonlocal next_n
            batch = _produce(kafka_broker, topic, next_n, 40, partitions)
            produced["good"] += batch["good"]
            produced["bad"] += batch["bad"]
            next_n += 40
            loaders = _loaders(tmp_path)
            return first.pid in loaders and second is not None and second.pid in loaders

        _wait(both_loading, "both members to load rows")
        owned_by_second = set(_loaders(tmp_path)[second.pid])
        assert owned_by_second < set(partitions)  # the partitions were shared
        # The first member leaves: cleanly (SIGTERM ends its loop and leaves the group)
        # or by dying (the group notices after the session timeout).
        first.send_signal(signal.SIGTERM if leaves == "stopped" else signal.SIGKILL)
        first.wait(60)
        gone = len(produced["good"])
        more = _produce(kafka_broker, topic, next_n, 200, partitions)
        produced["good"] += more["good"]
        produced["bad"] += more["bad"]

        def took_over() -> bool:
            late = _table(tmp_path)
            if late is None:
                return False
            rows = late.to_pylist()
            mine = {
                r["_partition"] for r in rows if r["loader_pid"] == second.pid and r["n"] >= next_n
            }
            return mine == set(partitions)

        _wait(took_over, "the remaining member to take over every partition")
        _wait(lambda: _loaded(tmp_path).total() >= len(produced["good"]), "every message to load")
        assert gone < len(produced["good"])
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    assert _loaded(tmp_path) == Counter(produced["good"]), _duplicates(tmp_path)
    assert _quarantined(tmp_path).total() == len(produced["bad"])
    assert max(_quarantined(tmp_path).values()) == 1


def _duplicates(root: Path) -> str:
    """Rows loaded more than once, with where they came from (a failure's explanation)."""
    data = _table(root)
    if data is None:
        return "no table"
    seen = Counter(data["n"].to_pylist())
    rows = [
        (r["n"], r["_partition"], r["_offset"], r["loader_pid"])
        for r in data.select(["n", "_partition", "_offset", "loader_pid"]).to_pylist()
        if seen[r["n"]] > 1
    ]
    return f"loaded twice (n, partition, offset, pid): {sorted(rows)[:20]}"
