"""Kafka source: messages of one or more topics, each loaded exactly once.

    table("bronze.clicks",
          source=kafka("clicks", connection="events", format="json"),
          strategy="append")

The position is the next offset of every partition read,
`{"<topic>": {"<partition>": next_offset}}`, committed in the same Delta commit
as the rows (the table's own log is the truth). A read places each partition at
that offset (or at `start` for a partition never read), takes micro-batches of
at most `max_records` messages / `max_bytes` bytes, and stops once every
partition it owns has reported its end in a fetch (partition EOF): "available
now" never asks the broker for its latest offset. Offsets are stored in the
consumer group only after the Delta commit (`acknowledge`), for lag tooling.

With `group=True` several processes share the topic's partitions as one
consumer group. Each micro-batch's position is the committed position with
only the partitions this process read moved on. The table's writers take turns
(its writer lock) and every read starts from the table's position of that
moment, so a partition that changed owner is read by its new owner from
exactly where the table stands: neither lost nor loaded twice.

Rows are the decoded value plus `_topic`, `_partition`, `_offset`,
`_timestamp` (the message's timestamp), `_key` and `_headers`. Messages that
cannot be decoded go to the table's quarantine with topic, partition, offset
and the reason. docs/sources-kafka.md has the details.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .._units import parse_duration, parse_size
from ..engine.quarantine import MAX_TEXT, rejected_rows
from ..errors import ConfigError, HeadwaterError
from ._kafka_decode import (
    FORMATS,
    Decoded,
    Decoder,
    Format,
    KeyFormat,
    SchemaRegistry,
    decode_keys,
    decoder_for,
    load_avro_schema,
)
from .base import Increment, Position, ReadContext, Source

if TYPE_CHECKING:
    # confluent_kafka takes a fifth of a second to import: only tables that read Kafka pay it.
    from ._kafka_consumer import Offsets, Session

__all__ = ["METADATA_COLUMNS", "KafkaSource", "kafka"]

TOPIC, PARTITION, OFFSET, TIMESTAMP, KEY, HEADERS = (
    "_topic",
    "_partition",
    "_offset",
    "_timestamp",
    "_key",
    "_headers",
)
METADATA_COLUMNS = (TOPIC, PARTITION, OFFSET, TIMESTAMP, KEY, HEADERS)
_HEADERS_TYPE = pa.map_(pa.string(), pa.binary())


class KafkaSource(Source):
    """`kafka(topics, connection=..., format=...)`: messages of Kafka topics.

    topics: a topic name or a list of names.
    connection: a `[connections.NAME]` section of headwater.toml holding
      `bootstrap_servers` and any librdkafka setting (dots written as
      underscores: `security_protocol`, `sasl_mechanism`, `sasl_username`,
      `sasl_password_env`, `ssl_ca_location`...), plus `schema_registry_url`
      for Avro in the registry's wire format. `bootstrap_servers=` may be given
      directly instead (for brokers without credentials).
    format: json (one object per message), avro, string, raw (bytes) or
      debezium (change events; use with strategy="cdc-apply").
    start: where a partition never read begins: "earliest" (default),
      "latest", or a time (its first message at or after it).
    group: share the partitions with other processes of the same consumer group.
    """

    kind = "kafka"
    # Streaming tables track watermarks per Kafka partition (headwater.stream).
    partition_column = PARTITION

    def __init__(
        self,
        topics: str | Sequence[str],
        *,
        connection: str | None = None,
        bootstrap_servers: str | None = None,
        format: Format = "json",
        columns: dict[str, Any] | pa.Schema | None = None,
        avro_schema: Any = None,
        key_format: KeyFormat = "string",
        start: str | datetime = "earliest",
        group: bool = False,
        group_id: str | None = None,
        max_records: int | None = None,
        max_bytes: str | int = "128MB",
        read_timeout: str | float | timedelta = "60s",
        change_type: bool = True,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        names = [topics] if isinstance(topics, str) else list(topics)
        where = f"kafka source {','.join(names) or '(no topic)'}"
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ConfigError(f"{where}: give at least one topic name")
        if format not in FORMATS:
            raise ConfigError(
                f"{where}: format must be one of {', '.join(FORMATS)}, not {format!r}"
            )
        if key_format not in ("string", "binary"):
            raise ConfigError(f"{where}: key_format must be 'string' or 'binary'")
        if connection is None and bootstrap_servers is None:
            raise ConfigError(
                f"{where}: no broker given",
                "name a connection (connection='events' with [connections.events] in headwater.toml) "
                "or pass bootstrap_servers=",
            )
        if isinstance(start, str) and start not in ("earliest", "latest"):
            try:
                start = datetime.fromisoformat(start)
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: start must be 'earliest', 'latest' or a time, not {start!r}"
                ) from exc
        if isinstance(start, datetime) and start.tzinfo is None:
            raise ConfigError(f"{where}: start time {start.isoformat()} needs a time zone")
        if max_records is not None and max_records < 1:
            raise ConfigError(f"{where}: max_records must be at least 1")
        if format == "avro" and avro_schema is None and connection is None:
            raise ConfigError(
                f"{where}: Avro needs a schema",
                "give avro_schema=, or a connection with schema_registry_url",
            )
        if columns is not None and format != "json":
            raise ConfigError(f"{where}: columns= applies to format='json' only")
        self.topics = names
        self.connection = connection
        self.bootstrap_servers = bootstrap_servers
        self.format = format
        self.columns = _schema(columns, where)
        self.avro_schema = load_avro_schema(avro_schema, where)
        self.key_format: KeyFormat = key_format
        self.start = start
        self.group = group
        self.group_id = group_id
        self.max_records = max_records
        self.max_bytes = parse_size(max_bytes, f"{where}: max_bytes")
        self.read_timeout = parse_duration(read_timeout, f"{where}: read_timeout").total_seconds()
        self.change_type = change_type
        self.consumer_options = dict(consumer_options or {})
        for key in self.consumer_options:
            if any(w in key for w in ("password", "secret", "token")):
                raise ConfigError(
                    f"{where}: consumer_options must not hold credentials ({key})",
                    "put them in the connection, with *_env or the secrets file",
                )
        self._sessions: dict[str, Session] = {}
        self._decoders: dict[str, Decoder] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"kafka {','.join(self.topics)} ({self.format})"

    # -- the consumer ------------------------------------------------------------------
    def _session(self, ctx: ReadContext) -> Session:
        session = self._sessions.get(ctx.table)
        if session is not None:
            return session
        settings: dict[str, Any] = {}
        if self.connection is not None:
            settings = dict(ctx.connection(self.connection))
        if self.bootstrap_servers is not None:
            settings["bootstrap_servers"] = self.bootstrap_servers
        if "bootstrap_servers" not in settings and "bootstrap.servers" not in settings:
            raise ConfigError(
                f"table {ctx.table}: connection {self.connection!r} has no bootstrap_servers",
                f'add bootstrap_servers = "host:9092" to [connections.{self.connection}]',
            )
        from ._kafka_consumer import Session, Settings, consumer_config

        group_id = self.group_id or f"headwater.{ctx.table}"
        config, secrets = consumer_config(settings, group_id, self.consumer_options)
        session = Session(
            Settings(
                table=ctx.table,
                connection=self.connection,
                config=config,
                secrets=secrets,
                topics=self.topics,
                group=self.group,
                start=self.start,
                read_timeout=self.read_timeout,
            )
        )
        self._sessions[ctx.table] = session
        if ctx.table not in self._decoders:
            registry = None
            url = settings.get("schema_registry_url")
            if self.format == "avro" and url:
                user, password = (
                    settings.get("schema_registry_username"),
                    settings.get("schema_registry_password"),
                )
                auth = (str(user), str(password)) if user is not None else None
                registry = SchemaRegistry(str(url), auth, str(self.connection))
            if self.format == "avro" and registry is None and self.avro_schema is None:
                raise ConfigError(
                    f"table {ctx.table}: Avro needs a schema",
                    f"give avro_schema=, or schema_registry_url in [connections.{self.connection}]",
                )
            self._decoders[ctx.table] = decoder_for(
                self.format,
                columns=self.columns,
                avro_schema=self.avro_schema,
                registry=registry,
                change_type=self.change_type,
            )
        return session

    def close(self) -> None:
        """Close the consumers (leaving the consumer group at once)."""
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    # -- reading -------------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        limit = self.max_records or ctx.chunk_rows
        committed = _offsets(position, ctx.table)
        with self._lock:
            session = self._session(ctx)
        decoder = self._decoders[ctx.table]
        with session.guard:
            session.begin({} if ctx.full_refresh else committed)
            try:
                yield from self._drain(session, decoder, committed, limit, ctx)
            finally:
                session.end()

    def _drain(
        self, session: Session, decoder: Decoder, committed: Offsets, limit: int, ctx: ReadContext
    ) -> Iterator[Increment]:
        # Offsets of partitions other members own ride along unchanged.
        carried = dict(committed) if not ctx.full_refresh else {}
        emitted = dict(carried)
        batch: list[Any] = []
        size = 0
        started = time.monotonic()
        for message in session.messages(limit):
            batch.append(message)
            value = message.value()
            size += len(value) if value else 0
            if len(batch) >= limit or size >= self.max_bytes:
                made = self._increment(batch, session, carried, decoder, ctx, started)
                emitted = made.position_offsets
                yield made.made
                batch, size, started = [], 0, time.monotonic()
        if batch or {**carried, **session.chain} != emitted:
            yield self._increment(batch, session, carried, decoder, ctx, started).made

    def read_until(
        self, position: Position | None, until: Position, ctx: ReadContext
    ) -> Iterator[Increment]:
        """Exactly the messages from `position` up to `until` (a position an earlier
        increment returned), as one increment ending at `until`: a streaming table's
        replay of a micro-batch after a crash."""
        from ._kafka_consumer import Session

        start, end = _offsets(position, ctx.table), _offsets(until, ctx.table)
        with self._lock:
            self._session(ctx)  # settings and decoder
            settings = self._sessions[ctx.table].settings
        replayer = Session(replace(settings, group=False))
        try:
            batch = list(replayer.replay(start, end))
        finally:
            replayer.close()
        rows, rejected = self._rows(batch, self._decoders[ctx.table], ctx)
        yield Increment(
            rows,
            _position(end),
            info={"records": len(batch), "replay": True},
            rejected=rejected_rows(rejected) if rejected else None,
        )

    def _increment(
        self,
        batch: list[Any],
        session: Session,
        carried: Offsets,
        decoder: Decoder,
        ctx: ReadContext,
        started: float,
    ) -> _Made:
        # The chain holds the offset after each message handed out, and partition
        # ends seen without messages (EOF offsets).
        offsets = {**carried, **session.chain}
        carried.update(offsets)
        rows, rejected = self._rows(batch, decoder, ctx)
        lags = session.lag()
        info: dict[str, Any] = {
            "records": len(batch),
            "bytes": sum(len(m.value() or b"") for m in batch),
            "rejected": len(rejected),
            "partitions": len({(m.topic(), m.partition()) for m in batch}),
            "read_seconds": round(time.monotonic() - started, 6),
            "lag": sum(lags.values()) if lags else None,
            "lag_by_partition": {f"{t}[{p}]": n for (t, p), n in sorted(lags.items())},
        }
        made = Increment(
            rows,
            _position(offsets),
            info=info,
            rejected=rejected_rows(rejected) if rejected else None,
        )
        return _Made(made, offsets)

    def _rows(
        self, batch: list[Any], decoder: Decoder, ctx: ReadContext
    ) -> tuple[pa.Table, list[dict[str, Any]]]:
        batch, where = interleaved(batch)
        keys, bad_keys = decode_keys([m.key() for m in batch], self.key_format)
        decoded: Decoded = decoder.decode([m.value() for m in batch], ctx.table)
        problems = {i: ("malformed", reason) for i, reason in bad_keys.items()}
        for index, check, reason in decoded.rejected:
            problems.setdefault(index, (check, reason))
        kept = [i for i in decoded.kept if i not in bad_keys]
        rows = decoded.rows
        if len(kept) != len(decoded.kept):
            keep = pa.array([i not in bad_keys for i in decoded.kept])
            rows = rows.filter(keep)
        for name in rows.schema.names:
            if name in METADATA_COLUMNS:
                message = batch[kept[0]] if kept else batch[0]
                raise HeadwaterError(
                    f"table {ctx.table}: topic {message.topic()}: messages have a field named {name!r}, "
                    "which the Kafka source adds itself",
                    "rename the field in the producer, or read the value with format='raw' and parse it downstream",
                )
        take = pa.array(kept, pa.int64())
        stamps = pa.array(where.stamps * 1000, pa.int64(), mask=where.stamps < 0)
        meta = {
            TOPIC: pa.array(where.topics, pa.string()).take(take),
            PARTITION: pa.array(where.partitions, pa.int32()).take(take),
            OFFSET: pa.array(where.offsets, pa.int64()).take(take),
            TIMESTAMP: stamps.take(take).cast(pa.timestamp("us", "UTC")),
            KEY: keys.take(take),
            HEADERS: pa.array([batch[i].headers() for i in kept], _HEADERS_TYPE),
        }
        for name, column in meta.items():
            rows = rows.append_column(name, column)
        rejected = [
            {
                "source": f"{batch[i].topic()}[{batch[i].partition()}]",
                "location": f"offset {batch[i].offset()}",
                "check": check,
                "reason": reason,
                "record": _record_text(batch[i].value()),
                "value": repr(batch[i].key()) if i in bad_keys else None,
            }
            for i, (check, reason) in sorted(problems.items())
        ]
        return rows, rejected

    # -- after the commit ------------------------------------------------------------------
    def acknowledge(self, position: Position, ctx: ReadContext) -> None:
        session = self._sessions.get(ctx.table)
        if session is None or not position:
            return  # nothing read in this process yet: the next read stores them
        session.commit(_offsets(position, ctx.table))


@dataclass
class _Where:
    """Topic, partition, offset and timestamp (ms, -1 if none) of each message."""

    topics: list[str]
    partitions: np.ndarray
    offsets: np.ndarray
    stamps: np.ndarray


def interleaved(batch: list[Any]) -> tuple[list[Any], _Where]:
    """The messages of a micro-batch in one order that depends only on which messages
    it holds: each partition's in offset order, partitions merged by message timestamp
    (the partition's newest so far, as producers' clocks may step back; ties: topic,
    partition). Also where each message comes from, in that order.

    A fetch hands over partitions in no particular order, one chunk at a time. A
    streaming table judges each event against the watermark of the events before
    it, so a micro-batch read again after a crash (`read_until`) must arrive in the
    same order as the first time; merging by timestamp also keeps one partition's
    chunk from running far ahead of the others in event time.
    """
    n = len(batch)
    topics = [str(m.topic()) for m in batch]
    partitions = np.fromiter((m.partition() for m in batch), np.int64, n)
    offsets = np.fromiter((m.offset() for m in batch), np.int64, n)
    stamps = np.fromiter(
        (ms if kind else -1 for kind, ms in (m.timestamp() for m in batch)), np.int64, n
    )
    names = sorted(set(topics))
    if len(names) == 1:
        codes = partitions
    else:
        rank = {name: i for i, name in enumerate(names)}
        width = int(partitions.max()) + 1
        codes = np.fromiter((rank[t] for t in topics), np.int64, n) * width + partitions
    merge = np.empty_like(stamps)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        rows = rows[np.argsort(offsets[rows], kind="stable")]
        merge[rows] = np.maximum.accumulate(stamps[rows])
    order = np.lexsort((offsets, codes, merge))
    where = _Where([topics[i] for i in order], partitions[order], offsets[order], stamps[order])
    return [batch[i] for i in order], where


class _Made:
    def __init__(self, made: Increment, offsets: Offsets) -> None:
        self.made = made
        self.position_offsets = offsets


def _offsets(position: Position | None, table: str) -> Offsets:
    if not position:
        return {}
    try:
        return {
            (str(topic), int(partition)): int(offset)
            for topic, partitions in dict(position).items()
            for partition, offset in dict(partitions).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        raise HeadwaterError(
            f"table {table}: its committed Kafka position is not a map of topic -> partition -> offset",
            "the table was loaded by another source; rebuild it with --full-refresh",
        ) from exc


def _position(offsets: Offsets) -> dict[str, dict[str, int]]:
    position: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        position.setdefault(topic, {})[str(partition)] = offset
    return position


def _record_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value[: MAX_TEXT * 4].decode("utf-8", "replace")


def _schema(columns: dict[str, Any] | pa.Schema | None, where: str) -> pa.Schema | None:
    if columns is None or isinstance(columns, pa.Schema):
        return columns
    fields = []
    for name, kind in columns.items():
        if isinstance(kind, pa.DataType):
            fields.append(pa.field(name, kind))
            continue
        try:
            fields.append(pa.field(name, pa.type_for_alias(str(kind))))
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{where}: column {name!r}: unknown type {kind!r}",
                "use an Arrow type name (string, int64, double, bool, timestamp[ms]) or a pyarrow type",
            ) from exc
    return pa.schema(fields)


# The name pipelines use: `kafka(...)` builds the connector.
kafka = KafkaSource
