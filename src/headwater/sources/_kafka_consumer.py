"""One Kafka consumer kept open across micro-batches, driven from Delta-committed offsets.

The consumer never decides where to read: every read starts by placing each
partition it owns at the offset the table committed (or the configured start),
and it ends once every owned partition has reported its end (partition EOF
from a fetch), so draining never depends on the broker's list-offsets answer.
In a consumer group, partitions handed over by a rebalance are placed the same
way from the offsets the micro-batches of this read build on.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ..errors import HeadwaterError, TransientError

log = logging.getLogger("headwater.kafka")
Partition = tuple[str, int]
Offsets = dict[Partition, int]
# Settings Headwater owns: offsets live in Delta, so the consumer never stores or
# resets them on its own, and reports each partition's end.
_FIXED = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "error",
}
_DEFAULTS = {"fetch.wait.max.ms": 100, "client.id": "headwater"}
_FATAL_CODES = {
    KafkaError._AUTHENTICATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._SSL,
    KafkaError._INVALID_ARG,
}
_open: weakref.WeakSet[Session] = weakref.WeakSet()


@dataclass
class Settings:
    """Everything a session needs, fixed when the source is first read."""

    table: str
    connection: str | None
    config: dict[str, Any]
    secrets: list[str]  # values never to show in a message
    topics: list[str]
    group: bool  # partitions shared by the consumer group's members (subscribe)
    start: str | datetime  # earliest | latest | a time
    read_timeout: float


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Session:
    """A consumer and what it knows: the partitions it owns and where each read stands."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fatal: str | None = None
        self.last_error: str | None = None
        config = {
            **_DEFAULTS,
            **settings.config,
            **_FIXED,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
        }
        try:
            self.consumer = Consumer(config, logger=log)
        except (KafkaException, ValueError, TypeError) as exc:
            raise HeadwaterError(
                f"table {settings.table}: Kafka consumer settings rejected: {self._text(exc)}",
                "check the connection's settings (keys are librdkafka settings, dots written as underscores)",
            ) from exc
        self.owned: set[Partition] = set()
        self.joined = not settings.group
        self.rebalancing = False
        self.subscribed = False
        # Where the read under way stands: the next offset of every partition, moved
        # on as each message is handed out (so a partition re-placed by a rebalance
        # mid-read resumes after the messages already taken).
        self.chain: Offsets = {}
        self.pending: set[Partition] = set()  # owned partitions not yet at their end
        self.progress = time.monotonic()
        # Held by a read from begin() to its end; between reads, a keeper thread
        # polls instead, so a member waiting for the table's writer lock (or for
        # its next trigger) still takes part in the group's rebalances.
        self.guard = threading.Lock()
        self.reading = False
        self.closed = threading.Event()
        self.keeper: threading.Thread | None = None
        _open.add(self)

    # -- errors ------------------------------------------------------------------
    def _text(self, error: object) -> str:
        if (
            isinstance(error, KafkaException)
            and error.args
            and isinstance(error.args[0], KafkaError)
        ):
            error = error.args[0]
        text = error.str() if isinstance(error, KafkaError) else str(error)
        return scrub(text, self.settings.secrets)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() in _FATAL_CODES:
            self.fatal = self._text(error)
        else:
            self.last_error = self._text(error)

    def _raise_fatal(self) -> None:
        if self.fatal is None:
            return
        where = f"connection {self.settings.connection!r}" if self.settings.connection else "Kafka"
        fatal, self.fatal = self.fatal, None
        raise HeadwaterError(
            f"table {self.settings.table}: {where}: {fatal}",
            "check the connection's bootstrap_servers, credentials and topic permissions",
        )

    # -- where partitions start --------------------------------------------------
    def partitions(self) -> list[Partition]:
        """All partitions of the topics (from the broker's metadata)."""
        found: list[Partition] = []
        for topic in self.settings.topics:
            try:
                meta = self._metadata(topic)
            except KafkaException as exc:
                raise TransientError(
                    f"table {self.settings.table}: cannot reach the Kafka brokers for topic {topic}: {self._text(exc)}",
                    "check bootstrap_servers; the next run starts from the committed offsets",
                ) from exc
            info = meta.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                reason = (
                    self._text(info.error) if info is not None and info.error else "no partitions"
                )
                raise HeadwaterError(
                    f"table {self.settings.table}: topic {topic}: {reason}",
                    "check the topic's name, or create it",
                )
            found += [(topic, p) for p in sorted(info.partitions)]
        return found

    def _metadata(self, topic: str) -> Any:
        """The topic's metadata; an authentication failure ends the wait at once."""
        deadline = time.monotonic() + self.settings.read_timeout
        while True:
            try:
                return self.consumer.list_topics(
                    topic, timeout=max(0.1, min(1.0, deadline - time.monotonic()))
                )
            except KafkaException:
                self.consumer.poll(0)  # serves error_cb: an authentication failure is fatal
                self._raise_fatal()
                if time.monotonic() >= deadline:
                    raise

    def placed(self, partitions: list[Partition]) -> list[TopicPartition]:
        """Partitions with the offset to read from: committed, else the configured start."""
        placed: list[TopicPartition] = []
        by_time: list[TopicPartition] = []
        for topic, partition in partitions:
            offset = self.chain.get((topic, partition))
            if offset is not None:
                placed.append(TopicPartition(topic, partition, offset))
            elif isinstance(self.settings.start, datetime):
                millis = int(self.settings.start.timestamp() * 1000)
                by_time.append(TopicPartition(topic, partition, millis))
            else:
                start = OFFSET_END if self.settings.start == "latest" else OFFSET_BEGINNING
                placed.append(TopicPartition(topic, partition, start))
        if by_time:
            try:
                found = self.consumer.offsets_for_times(by_time, timeout=self.settings.read_timeout)
            except KafkaException as exc:
                raise TransientError(
                    f"table {self.settings.table}: cannot look up the offsets at {self.settings.start.isoformat()}"  # type: ignore[union-attr]
                    f": {self._text(exc)}",
                    "check the brokers; the next run tries again",
                ) from exc
            # No message at or after the time: start at the partition's end.
            placed += [
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                for tp in found
            ]
        return placed

    # -- consumer group ----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        handed = [(tp.topic, tp.partition) for tp in partitions]
        placed = self.placed(handed)
        consumer.assign(placed)
        if placed:
            # A partition keeps its paused state through a revoke and a new assignment,
            # so a partition this member had paused between reads would never be fetched.
            if self.reading:
                consumer.resume(placed)
            else:
                consumer.pause(placed)  # the next read places and resumes them
        self.owned = set(handed)
        self.pending = set(handed)
        self.joined, self.rebalancing = True, False
        self.progress = time.monotonic()
        log.info("table %s: partitions assigned: %s", self.settings.table, _names(handed))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.owned -= gone
        self.pending -= gone
        self.rebalancing = True
        self.progress = time.monotonic()
        consumer.unassign()
        log.info("table %s: partitions revoked: %s", self.settings.table, _names(sorted(gone)))

    # -- between reads -------------------------------------------------------------
    def _keep(self) -> None:
        while not self.closed.is_set():
            if self.guard.acquire(timeout=0.5):
                try:
                    if not self.closed.is_set():
                        self.consumer.poll(0.2)  # rebalance callbacks; partitions are paused
                finally:
                    self.guard.release()
            self.closed.wait(0.3)

    # -- reading -----------------------------------------------------------------
    def begin(self, committed: Offsets) -> None:
        """Place every owned partition at its committed offset, to read up to its end.

        The caller holds `guard` until the read ends (see `end`).
        """
        self.reading = True
        self._raise_fatal()
        self.chain = dict(committed)
        self.progress = time.monotonic()
        if not self.settings.group:
            self.owned = set(self.partitions())
            self.consumer.assign(self.placed(sorted(self.owned)))
            self.pending = set(self.owned)
            return
        if not self.subscribed:
            self.consumer.subscribe(
                self.settings.topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            self.subscribed = True
            self.keeper = threading.Thread(
                target=self._keep, name=f"headwater-kafka-{self.settings.table}", daemon=True
            )
            self.keeper.start()
            return
        if self.owned and not self.rebalancing:
            # Re-placing resets each partition's fetch, so its end is reported again.
            placed = self.placed(sorted(self.owned))
            self.consumer.assign(placed)
            self.consumer.resume(placed)
        self.pending = set(self.owned)

    def end(self) -> None:
        if self.settings.group and self.owned:
            # Nothing is fetched between reads (the next read places them again).
            with contextlib.suppress(KafkaException):
                self.consumer.pause([TopicPartition(t, p) for t, p in sorted(self.owned)])
        self.reading = False

    def messages(self, limit: int) -> Iterator[Message]:
        """Messages until every owned partition reached its end (or `limit` per call)."""
        first = True
        while first or self.pending or self.rebalancing or not self.joined:
            first = False
            batch = self.consumer.consume(max(1, min(limit, 10_000)), 0.2)
            self._raise_fatal()
            if batch:
                self.progress = time.monotonic()
            for message in batch:
                error = message.error()
                if error is not None:
                    self._handle(message, error)
                    continue
                tp = (str(message.topic()), int(message.partition() or 0))
                offset = int(message.offset() or 0)
                # A partition re-placed by a rebalance mid-read (or a fetch made before
                # it was re-placed) delivers messages this read already holds, or that
                # the table already has: each message is taken once, in offset order.
                if offset < self.chain.get(tp, -1):
                    continue
                self.chain[tp] = offset + 1
                yield message
            if time.monotonic() - self.progress > self.settings.read_timeout:
                waiting = (
                    "joining the consumer group"
                    if not self.joined
                    else _names(sorted(self.pending))
                )
                last = f" (last error: {self.last_error})" if self.last_error else ""
                raise TransientError(
                    f"table {self.settings.table}: no answer from Kafka for {self.settings.read_timeout:.0f} s "
                    f"while reading {waiting}{last}",
                    "check the brokers; the rows read so far are committed, the next run goes on from there",
                )

    def replay(self, start: Offsets, until: Offsets) -> Iterator[Message]:
        """Exactly the messages from `start` up to (not including) `until`, partition by
        partition: a micro-batch read again after a crash (assigned, not as a group member)."""
        self.reading = True
        self.chain = dict(start)
        self.progress = time.monotonic()
        need = sorted(tp for tp, end in until.items() if start.get(tp, -1) < end)
        if not need:
            return
        self.consumer.assign(self.placed(need))
        self.pending = set(need)
        while self.pending:
            batch = self.consumer.consume(10_000, 0.2)
            self._raise_fatal()
            if batch:
                self.progress = time.monotonic()
            for message in batch:
                tp = (str(message.topic()), int(message.partition() or 0))
                end = until.get(tp)
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    if tp in self.pending and end is not None and int(message.offset() or 0) < end:
                        raise HeadwaterError(
                            f"table {self.settings.table}: topic {tp[0]} partition {tp[1]} ends at offset "
                            f"{message.offset()}, before the offset {end} a crashed micro-batch had read up to",
                            "the broker lost messages; rebuild the table with --full-refresh",
                        )
                    continue
                if error is not None:
                    self._handle(message, error)
                    continue
                if tp not in self.pending or end is None or int(message.offset() or 0) >= end:
                    continue
                yield message
                if int(message.offset() or 0) + 1 >= end:
                    self.pending.discard(tp)
            if time.monotonic() - self.progress > self.settings.read_timeout:
                raise TransientError(
                    f"table {self.settings.table}: no answer from Kafka for {self.settings.read_timeout:.0f} s "
                    f"while reading {_names(sorted(self.pending))} again",
                    "check the brokers; the next run tries again",
                )

    def _handle(self, message: Message, error: KafkaError) -> None:
        topic, partition = str(message.topic()), int(message.partition() or 0)
        if error.code() == KafkaError._PARTITION_EOF:
            end = int(message.offset() or 0)
            tp = (topic, partition)
            # Nothing lies between: the position may move to the end (past a compacted
            # tail, or recording where a partition started at `latest`/a time stands).
            known = tp in self.chain or self.settings.start != "earliest"
            if known and end > self.chain.get(tp, -1):
                self.chain[tp] = end
            self.pending.discard(tp)
            return
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            raise HeadwaterError(
                f"table {self.settings.table}: topic {topic} partition {partition}: the committed "
                f"offset {self.chain.get((topic, partition))} is no longer on the broker ({self._text(error)})",
                "the messages in between were deleted by retention before they were loaded; "
                "rebuild with --full-refresh to start again from `start`",
            )
        if (
            error.fatal()
            or error.code() in _FATAL_CODES
            or error.code()
            in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._UNKNOWN_TOPIC,
                KafkaError._UNKNOWN_PARTITION,
            )
        ):
            self.fatal = f"topic {topic} partition {partition}: {self._text(error)}"
            self._raise_fatal()
        self.last_error = self._text(error)

    def lag(self) -> dict[Partition, int]:
        """Messages behind each owned partition's end, from the last fetch (no broker query)."""
        lags: dict[Partition, int] = {}
        for topic, partition in sorted(self.owned):
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            at = self.chain.get((topic, partition))
            if high >= 0 and at is not None:
                lags[(topic, partition)] = max(0, high - at)
        return lags

    def commit(self, offsets: Offsets) -> None:
        """Store offsets in the consumer group (monitoring and lag tools); best effort."""
        mine = {tp: o for tp, o in offsets.items() if not self.settings.group or tp in self.owned}
        if not mine or not self.joined or self.rebalancing:
            return
        try:
            # Asynchronous: a coordinator busy with a rebalance may leave a synchronous
            # commit waiting for a minute, and nothing depends on it. Closing the
            # consumer waits for the commits under way.
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(mine.items())],
                asynchronous=True,
            )
        except KafkaException as exc:
            self._on_commit(exc.args[0] if exc.args else exc, [])

    def _on_commit(self, error: object, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.info(
                "table %s: offsets not stored in the consumer group: %s",
                self.settings.table,
                self._text(error),
            )

    def close(self) -> None:
        _open.discard(self)
        self.closed.set()
        if self.keeper is not None and self.keeper is not threading.current_thread():
            self.keeper.join(5)
        with self.guard, contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()


def _names(partitions: list[Partition] | list[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "none"


def consumer_config(
    settings: dict[str, Any], group_id: str, extra: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """librdkafka settings from a connection (keys with dots written as underscores)."""
    config: dict[str, Any] = {"group.id": group_id}
    secrets: list[str] = []
    for key, value in {**settings, **extra}.items():
        if key.startswith("schema_registry"):
            continue
        name = key.replace("_", ".")
        if name in _FIXED:
            continue
        config[name] = value
        if _secret(name) and isinstance(value, str):
            secrets.append(value)
    return config, secrets


def _secret(name: str) -> bool:
    return any(
        word in name for word in ("password", "secret", "token", "pem", "jaas", "credential")
    )


@atexit.register
def _close_all() -> None:
    # Leaving the group on exit hands partitions to other members at once,
    # instead of after the session timeout.
    for session in list(_open):
        session.close()
