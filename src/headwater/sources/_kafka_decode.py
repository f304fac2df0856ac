"""Kafka message values and keys as Arrow columns, one decoder per format.

A decoder turns a micro-batch of message values into rows and says which
messages it kept; a message it cannot decode is rejected with the reason (the
source sends it to the table's quarantine with topic, partition and offset).
JSON is parsed by pyarrow in one pass over the whole batch; only when that
fails are the messages looked at one by one to find the bad ones.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.json as pajson

from ..errors import ConfigError, HeadwaterError, TransientError

Format = Literal["json", "avro", "string", "raw", "debezium"]
FORMATS: tuple[str, ...] = ("json", "avro", "string", "raw", "debezium")
KeyFormat = Literal["string", "binary"]
# A value column for formats without fields of their own (raw, string).
VALUE = "_value"
# Confluent's wire format: magic byte 0, a 4-byte schema id, then the Avro datum.
_WIRE_MAGIC = 0


@dataclass
class Decoded:
    """Rows of one micro-batch: `rows` lines up with `kept` (indexes of the messages)."""

    rows: pa.Table
    kept: list[int]
    # (message index, check, reason) of the messages that could not be decoded.
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


class Decoder:
    """Decodes message values; subclasses per format."""

    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        raise NotImplementedError


class RawDecoder(Decoder):
    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        rows = pa.table({VALUE: pa.array(values, pa.binary())})
        return Decoded(rows, list(range(len(values))))


class StringDecoder(Decoder):
    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        texts: list[str | None] = []
        kept: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        for index, value in enumerate(values):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                rejected.append((index, "malformed", f"the value is not UTF-8 text ({exc.reason})"))
                continue
            kept.append(index)
        return Decoded(pa.table({VALUE: pa.array(texts, pa.string())}), kept, rejected)


class JsonDecoder(Decoder):
    """One JSON object per message; a null value (tombstone) is a row of nulls."""

    def __init__(self, schema: pa.Schema | None) -> None:
        self.schema = schema

    def _parse(self, values: Sequence[bytes]) -> pa.Table:
        # A raw line break in JSON is whitespace (inside strings it must be escaped),
        # so it can be blanked to keep one message per line.
        parts = [v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values]
        longest = max((len(p) for p in parts), default=0)
        buffer = b"\n".join(parts)
        options = pajson.ReadOptions(block_size=max(1 << 22, 2 * longest + 2))
        parse = pajson.ParseOptions(
            explicit_schema=self.schema,
            unexpected_field_behavior="infer",
        )
        parsed = pajson.read_json(io.BytesIO(buffer), read_options=options, parse_options=parse)
        if parsed.num_rows != len(values):
            raise pa.ArrowInvalid(f"{parsed.num_rows} rows from {len(values)} messages")
        return parsed

    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        filled = [b"{}" if v is None else v for v in values]
        if not filled:
            return Decoded(self._empty(), [])
        try:
            return Decoded(self._parse(filled), list(range(len(filled))))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        # Find the messages at fault one by one, then parse the others together.
        kept: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        for index, value in enumerate(filled):
            reason = _json_object_problem(value)
            if reason is not None:
                rejected.append((index, "malformed", reason))
            elif self.schema is not None:
                try:
                    self._parse([value])
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    rejected.append((index, "type", _first_line(exc)))
                    continue
                kept.append(index)
            else:
                kept.append(index)
        if not kept:
            return Decoded(self._empty(), [], rejected)
        try:
            rows = self._parse([filled[i] for i in kept])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise HeadwaterError(
                f"table {table}: the JSON messages of one micro-batch disagree on a field's type ({_first_line(exc)})",
                "declare the value's columns on the source, e.g. kafka(..., columns={'amount': 'double'}); "
                "messages that do not fit them then go to quarantine",
            ) from exc
        return Decoded(rows, kept, rejected)

    def _empty(self) -> pa.Table:
        return pa.table({}) if self.schema is None else self.schema.empty_table()


def _json_object_problem(value: bytes) -> str | None:
    try:
        parsed = json.loads(value)
    except UnicodeDecodeError:
        return "the value is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(parsed, dict):
        return f"a value must be a JSON object, not {type(parsed).__name__}"
    return None


class AvroDecoder(Decoder):
    """Avro datums: schemaless with a given schema, or Confluent's wire format with a registry."""

    def __init__(self, schema: Any, registry: SchemaRegistry | None) -> None:
        import fastavro

        self.registry = registry
        self.reader_schema = None if schema is None else fastavro.parse_schema(schema)
        self._raw_schema = schema
        self._arrow: dict[
            int | None, tuple[pa.Schema, Callable[[list[Any]], list[Any]] | None, bool]
        ] = {}

    def _layout(self, key: int | None, schema: Any) -> tuple[pa.Schema, Any, bool]:
        from ._files_avro import arrow_schema

        if key not in self._arrow:
            self._arrow[key] = arrow_schema(schema)
        return self._arrow[key]

    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        import fastavro

        # Records grouped by the writer schema's id (None: the given schema), so each
        # group becomes columns of its own layout; the groups are then unified.
        groups: dict[int | None, tuple[list[Any], list[int]]] = {}
        rejected: list[tuple[int, str, str]] = []
        for index, value in enumerate(values):
            if value is None:
                continue  # a tombstone has no record
            payload, writer, schema_id = value, self.reader_schema, None
            if self.registry is not None:
                if len(value) < 5 or value[0] != _WIRE_MAGIC:
                    rejected.append(
                        (index, "malformed", "not in the schema registry's wire format")
                    )
                    continue
                (schema_id,) = struct.unpack(">I", value[1:5])
                writer = self.registry.schema(schema_id, table)
                payload = value[5:]
            assert writer is not None  # a schema, or a registry (checked when the source is made)
            try:
                record = fastavro.schemaless_reader(
                    io.BytesIO(payload), writer, self.reader_schema or writer
                )
            except Exception as exc:  # fastavro raises many types for a bad datum
                rejected.append(
                    (index, "malformed", f"not an Avro datum of the schema: {exc!s:.200}")
                )
                continue
            key = None if self.reader_schema is not None else schema_id
            records, kept = groups.setdefault(key, ([], []))
            records.append(record)
            kept.append(index)
        tables: list[pa.Table] = []
        order: list[int] = []
        for key, (records, kept) in groups.items():
            layout = self._raw_schema if key is None else self.registry.raw(key)  # type: ignore[union-attr]
            arrow, convert, wrapped = self._layout(key, layout)
            rows = [{"value": r} for r in records] if wrapped else records
            try:
                tables.append(
                    pa.Table.from_pylist(convert(rows) if convert else rows, schema=arrow)
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as exc:
                raise HeadwaterError(
                    f"table {table}: Avro records do not fit their schema's columns ({_first_line(exc)})",
                    "give the reader schema with kafka(..., avro_schema=...) so every record is read into it",
                ) from exc
            order += kept
        if not tables:
            return Decoded(pa.table({}), [], rejected)
        rows_table = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
        return Decoded(rows_table, order, rejected)


class SchemaRegistry:
    """Writer schemas by id from a Confluent-compatible schema registry (cached)."""

    def __init__(self, url: str, auth: tuple[str, str] | None, name: str) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.name = name
        self._parsed: dict[int, Any] = {}
        self._raw: dict[int, Any] = {}

    def raw(self, schema_id: int) -> Any:
        return self._raw[schema_id]

    def schema(self, schema_id: int, table: str) -> Any:
        if schema_id in self._parsed:
            return self._parsed[schema_id]
        import fastavro
        import httpx

        try:
            response = httpx.get(f"{self.url}/schemas/ids/{schema_id}", auth=self.auth, timeout=30)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"table {table}: schema registry of connection {self.name!r} unreachable ({type(exc).__name__})",
                "check schema_registry_url; the micro-batch is read again on the next run",
            ) from exc
        if response.status_code != 200:
            raise HeadwaterError(
                f"table {table}: schema registry of connection {self.name!r} answered {response.status_code} for schema id {schema_id}",
                "check schema_registry_url and its credentials",
            )
        raw = json.loads(response.json()["schema"])
        self._raw[schema_id] = raw
        self._parsed[schema_id] = fastavro.parse_schema(raw)
        return self._parsed[schema_id]


class DebeziumDecoder(Decoder):
    """Debezium change events (JSON envelopes); tombstones are not rows."""

    def __init__(self, change_type: bool) -> None:
        self.change_type = change_type

    def decode(self, values: Sequence[bytes | None], table: str) -> Decoded:
        from .debezium import EnvelopeDecoder

        decoder = EnvelopeDecoder(change_type=self.change_type)
        kept: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        for index, value in enumerate(values):
            changes, refused = len(decoder), len(decoder.rejected)
            decoder.add(value, source="", location=str(index), record="")
            if len(decoder) > changes:
                kept.append(index)
            elif len(decoder.rejected) > refused:
                problem = decoder.rejected[-1]
                rejected.append((index, str(problem["check"]), str(problem["reason"])))
        rows, _ = decoder.take(table)
        return Decoded(rows, kept, rejected)


def decoder_for(
    fmt: str,
    *,
    columns: pa.Schema | None,
    avro_schema: Any,
    registry: SchemaRegistry | None,
    change_type: bool,
) -> Decoder:
    if fmt == "json":
        return JsonDecoder(columns)
    if fmt == "raw":
        return RawDecoder()
    if fmt == "string":
        return StringDecoder()
    if fmt == "avro":
        return AvroDecoder(avro_schema, registry)
    if fmt == "debezium":
        return DebeziumDecoder(change_type)
    raise ConfigError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def load_avro_schema(schema: Any, where: str) -> Any:
    """An Avro schema given as a dict, JSON text or the path of an .avsc file."""
    if schema is None or isinstance(schema, dict | list):
        return schema
    text = str(schema)
    if not text.lstrip().startswith(("{", "[", '"')):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read avro_schema file {text}: {exc.strerror}"
            ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: avro_schema is not JSON ({exc.msg})") from exc


def decode_keys(
    keys: Sequence[bytes | None], key_format: KeyFormat
) -> tuple[pa.Array, dict[int, str]]:
    """The `_key` column, and the messages whose key could not be read (index -> reason)."""
    if key_format == "binary":
        return pa.array(keys, pa.binary()), {}
    texts: list[str | None] = []
    bad: dict[int, str] = {}
    for index, key in enumerate(keys):
        if key is None:
            texts.append(None)
            continue
        try:
            texts.append(key.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)
            bad[index] = "the key is not UTF-8 text (read keys as bytes with key_format='binary')"
    return pa.array(texts, pa.string()), bad


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
