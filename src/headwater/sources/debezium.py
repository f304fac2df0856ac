"""Debezium change events: land what an existing Debezium deployment captures.

    table("bronze.customers", source=debezium("landing/customers/*.json"),
          strategy="cdc-apply", keys=["id"], sequence_by="_seq")

Each event is Debezium's JSON envelope, with or without the schema/payload
wrapper of Kafka Connect's JsonConverter:

    {"op": "u", "before": {...}, "after": {...},
     "source": {"connector": "postgresql", "lsn": 24023128, "ts_ms": ...}, "ts_ms": ...}

and becomes one row: the row image (`after`; `before` for deletes) plus

    _op    c, u, d or r (snapshot read), as cdc-apply understands them
    _seq   decimal(38,0) in log order, from the source block: PostgreSQL's
           `lsn`; MySQL/MariaDB's binlog `file`, `pos` and `row` (the same
           numbering as cdc_mysql)
    _commit_ts  the source's commit time (`source.ts_ms`)
    _change_type  insert / update_postimage / delete, for merge/scd1/scd2 (a
           control column, never stored; change_type=False leaves it out)

Tombstones (a null value after a delete, for Kafka log compaction) are
skipped. With the schema wrapper, column types follow the Connect schema
(Debezium's logical types: decimals, dates, times, timestamps, JSON...);
without it, JSON values are taken as they are. Events that cannot be applied
(not JSON, no operation, no row image, no sequence, truncate) go to the table's
quarantine with the file, line and reason; the others load.

Redelivered or out-of-order events are harmless with cdc-apply: a change at or
before the sequence a row already holds is ignored.

`EnvelopeDecoder` holds everything but the files, so a Kafka source can feed
it message values (`add(value, source="topic[3]", location="offset 42")`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa

from ..errors import ConfigError, HeadwaterError
from ._binlog_stream import meta_fields
from ._binlog_types import position_sequence
from ._change_rows import CHANGE_TYPE, CHANGE_TYPES, COMMIT_TS, OP, SEQUENCE
from ._files_formats import Piece
from .base import ReadContext
from .files import FilesSource

Format = Literal["auto", "ndjson", "json"]
_OPS = {"c", "u", "d", "r"}
_RESERVED = {OP, SEQUENCE, COMMIT_TS, CHANGE_TYPE}
Convert = Callable[[Any], Any]


class EnvelopeError(ValueError):
    """An event that is not an applicable Debezium change (the reason is the message)."""


@dataclass
class Change:
    """One row change from an envelope."""

    op: str
    row: dict[str, Any]
    sequence: int
    ts: dt.datetime | None
    # Column -> Connect field schema, when the event carried its schema.
    fields: dict[str, Mapping[str, Any]] = field(default_factory=dict)


def parse_event(value: Any) -> Change | None:
    """An event (JSON text, bytes or a decoded object) as a Change; None for a tombstone.

    Raises EnvelopeError with the reason when the event cannot be applied.
    """
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EnvelopeError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    if value is None:
        return None  # tombstone
    if not isinstance(value, dict):
        raise EnvelopeError(f"an event must be a JSON object, not {type(value).__name__}")
    schema: Mapping[str, Any] | None = None
    if "payload" in value and ("schema" in value or "op" not in value):
        schema = value.get("schema") if isinstance(value.get("schema"), dict) else None
        value = value["payload"]
        if value is None:
            return None  # tombstone with the schema wrapper
        if not isinstance(value, dict):
            raise EnvelopeError("the payload is not a JSON object")
    op = value.get("op")
    if op is None:
        raise EnvelopeError("no 'op' field: not a Debezium change event")
    if op not in _OPS:
        kind = {"t": "truncate", "m": "message"}.get(str(op), "unknown")
        raise EnvelopeError(f"operation {op!r} ({kind}) cannot be applied by key")
    image = "before" if op == "d" else "after"
    row = value.get(image)
    if not isinstance(row, dict):
        raise EnvelopeError(f"operation {op!r} without a {image!r} row image")
    for name in row:
        if name in _RESERVED:
            raise EnvelopeError(f"the row has a column named {name!r}, which Headwater adds")
    source = value.get("source")
    if not isinstance(source, dict):
        raise EnvelopeError("no 'source' block: the change cannot be ordered")
    ts_ms = source.get("ts_ms", value.get("ts_ms"))
    ts = None
    if isinstance(ts_ms, int | float) and not isinstance(ts_ms, bool):
        ts = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    fields = _row_fields(schema, image)
    return Change(str(op), dict(row), sequence_of(source), ts, fields)


def sequence_of(source: Mapping[str, Any]) -> int:
    """The change's position in its log, from Debezium's source block."""
    try:
        if source.get("lsn") is not None:  # PostgreSQL (and other LSN-based connectors)
            return _integer(source["lsn"], "lsn")
        if source.get("file") and source.get("pos") is not None:  # MySQL / MariaDB binlog
            return position_sequence(
                str(source["file"]),
                _integer(source["pos"], "pos"),
                _integer(source.get("row") or 0, "row"),
            )
    except ValueError as exc:
        raise EnvelopeError(f"the source block's position is not usable: {exc}") from exc
    connector = source.get("connector") or "unknown"
    raise EnvelopeError(
        f"the source block ({connector}) has neither 'lsn' (PostgreSQL) nor 'file'/'pos' (MySQL): "
        "the change cannot be ordered"
    )


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} is {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        raise ValueError(f"{name} is {value!r}")
    if number < 0:
        raise ValueError(f"{name} is negative")
    return number


def _row_fields(schema: Mapping[str, Any] | None, image: str) -> dict[str, Mapping[str, Any]]:
    if not schema:
        return {}
    for part in schema.get("fields") or []:
        if isinstance(part, dict) and part.get("field") == image:
            return {
                str(f["field"]): f
                for f in part.get("fields") or []
                if isinstance(f, dict) and "field" in f
            }
    return {}


# -- types from Kafka Connect schemas -------------------------------------------------


def _days(value: Any) -> Any:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(value))


def _time_of_day(scale: int) -> Convert:
    def convert(value: Any) -> Any:
        micros = int(value) * 1_000_000 // scale
        return (dt.datetime.min + dt.timedelta(microseconds=micros)).time()

    return convert


def _epoch(scale: int) -> Convert:
    def convert(value: Any) -> Any:
        micros = int(value) * 1_000_000 // scale
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)

    return convert


def _zoned(value: Any) -> Any:
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _decimal(scale: int) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(str(value))
        # Connect's Decimal: the unscaled value, big-endian two's complement, in base64.
        unscaled = int.from_bytes(base64.b64decode(str(value), validate=True), "big", signed=True)
        return Decimal(unscaled).scaleb(-scale)

    return convert


def _variable_decimal(value: Any) -> Any:
    if isinstance(value, dict):
        unscaled = int.from_bytes(base64.b64decode(str(value.get("value", ""))), "big", signed=True)
        return str(Decimal(unscaled).scaleb(-int(value.get("scale", 0))))
    return str(value)


def _base64(value: Any) -> Any:
    return base64.b64decode(str(value)) if isinstance(value, str) else value


def _json_text(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_PRIMITIVES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
}
_LOGICAL: dict[str, tuple[pa.DataType, Convert | None]] = {
    "io.debezium.time.Date": (pa.date32(), _days),
    "org.apache.kafka.connect.data.Date": (pa.date32(), _days),
    "io.debezium.time.Time": (pa.time64("us"), _time_of_day(1000)),
    "org.apache.kafka.connect.data.Time": (pa.time64("us"), _time_of_day(1000)),
    "io.debezium.time.MicroTime": (pa.time64("us"), _time_of_day(1_000_000)),
    "io.debezium.time.NanoTime": (pa.time64("us"), _time_of_day(1_000_000_000)),
    "io.debezium.time.Timestamp": (pa.timestamp("us"), _epoch(1000)),
    "org.apache.kafka.connect.data.Timestamp": (pa.timestamp("us"), _epoch(1000)),
    "io.debezium.time.MicroTimestamp": (pa.timestamp("us"), _epoch(1_000_000)),
    "io.debezium.time.NanoTimestamp": (pa.timestamp("us"), _epoch(1_000_000_000)),
    "io.debezium.time.ZonedTimestamp": (pa.timestamp("us", "UTC"), _zoned),
    "io.debezium.time.MicroDuration": (
        pa.duration("us"),
        lambda v: dt.timedelta(microseconds=int(v)),
    ),
    "io.debezium.data.VariableScaleDecimal": (pa.string(), _variable_decimal),
    "io.debezium.data.Json": (pa.string(), _json_text),
    "io.debezium.data.Bits": (pa.binary(), _base64),
}


def field_type(schema: Mapping[str, Any]) -> tuple[pa.DataType, Convert | None]:
    """Arrow type and value converter of a Kafka Connect field schema."""
    name = str(schema.get("name") or "")
    kind = str(schema.get("type") or "")
    if name == "org.apache.kafka.connect.data.Decimal":
        parameters = schema.get("parameters") or {}
        scale = int(parameters.get("scale", 0))
        precision = int(parameters.get("connect.decimal.precision", 38))
        if precision > 38 or scale > precision:
            return pa.string(), lambda v: str(_decimal(scale)(v))
        return pa.decimal128(precision, scale), _decimal(scale)
    if name in _LOGICAL:
        return _LOGICAL[name]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind], None
    if kind == "bytes":
        return pa.binary(), _base64
    return pa.string(), _json_text  # structs, arrays, maps: their JSON text


# -- decoding many events ------------------------------------------------------------


class EnvelopeDecoder:
    """Collects events into one Arrow table of rows plus the rejected events.

    Shared by every transport of Debezium events (files here, Kafka later):
    feed it values with where they came from, then `take()` a batch.
    """

    def __init__(self, *, change_type: bool = True) -> None:
        self.change_type = change_type
        self.changes: list[Change] = []
        self.rejected: list[dict[str, Any]] = []
        self.tombstones = 0

    def __len__(self) -> int:
        return len(self.changes)

    def add(self, value: Any, *, source: str, location: str, record: str | None = None) -> None:
        try:
            change = parse_event(value)
        except EnvelopeError as exc:
            if record is None:
                record = value if isinstance(value, str) else _record_text(value)
            check = "malformed" if str(exc).startswith("not JSON") else "debezium"
            self.rejected.append(
                {
                    "source": source,
                    "location": location,
                    "check": check,
                    "reason": str(exc),
                    "record": record,
                }
            )
            return
        if change is None:
            self.tombstones += 1
        else:
            self.changes.append(change)

    def take(self, table: str = "") -> tuple[pa.Table, list[dict[str, Any]]]:
        """The changes so far as rows (in arrival order) and the rejected events; resets.

        The rejected events are dicts for `headwater.engine.quarantine.rejected_rows`.
        """
        changes, rejected = self.changes, self.rejected
        self.changes, self.rejected, self.tombstones = [], [], 0
        names: dict[str, None] = {}
        schemas: dict[str, Mapping[str, Any]] = {}
        for change in changes:
            for name in change.row:
                names.setdefault(name)
            for name, schema in change.fields.items():
                schemas.setdefault(name, schema)
        arrays: list[pa.Array] = []
        fields: list[pa.Field] = []
        for name in names:
            values = [c.row.get(name) for c in changes]
            array = _column(values, schemas.get(name), name, table)
            arrays.append(array)
            fields.append(pa.field(name, array.type))
        meta = meta_fields(self.change_type)
        meta_values: list[list[Any]] = [
            [c.op for c in changes],
            [Decimal(c.sequence) for c in changes],
            [c.ts for c in changes],
        ]
        if self.change_type:
            meta_values.append([CHANGE_TYPES[c.op] for c in changes])
        for f, values in zip(meta, meta_values, strict=True):
            arrays.append(pa.array(values, f.type))
            fields.append(f)
        rows = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        return rows, rejected


def _column(values: list[Any], schema: Mapping[str, Any] | None, name: str, table: str) -> pa.Array:
    try:
        if schema is not None:
            dtype, convert = field_type(schema)
            if convert is not None:
                values = [None if v is None else convert(v) for v in values]
            return pa.array(values, dtype)
        plain = [_json_text(v) if isinstance(v, dict | list) else v for v in values]
        return pa.array(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError, ArithmeticError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadwaterError(
            f"table {table}: Debezium column {name!r} has values of mixed or unexpected types ({text})",
            "keep the Connect schema in the events (value.converter.schemas.enable=true)",
        ) from exc


def _record_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# -- files of events ---------------------------------------------------------------------


class DebeziumFilesSource(FilesSource):
    """Files of Debezium events: one per line (NDJSON), or one per file (an object or an array).

    Everything about finding, tracking and archiving the files is the files
    source's (local or object-store globs, archive_to, chunk_files, ...); this
    only decodes their events.
    """

    kind = "debezium"

    def __init__(
        self,
        pattern: str,
        *,
        format: Format = "auto",
        change_type: bool = True,
        **files_options: Any,
    ) -> None:
        if format not in ("auto", "ndjson", "json"):
            raise ConfigError(
                f"debezium source {pattern}: format must be 'auto', 'ndjson' or 'json', not {format!r}"
            )
        super().__init__(pattern, format=None if format == "auto" else format, **files_options)
        self.change_type = change_type

    def describe(self) -> str:
        return f"debezium {self.pattern}"

    def _pieces(self, loc: Any, task: Any, ctx: ReadContext) -> Iterator[Piece]:
        """The file's events as pieces of rows; `at` is the last line (or item) they hold."""
        key = str(task.found.key)
        try:
            with loc.fs.open_input_stream(task.found.path, compression="detect") as stream:
                text = bytes(stream.read()).decode("utf-8", "replace").removeprefix("\ufeff")
        except OSError as exc:
            raise HeadwaterError(
                f"table {ctx.table}: cannot read {key}: {exc}",
                "check the file's permissions; it is read again on the next run",
            ) from exc
        unit, done = next(iter((task.at or {"line": 0}).items()))
        decoder = EnvelopeDecoder(change_type=self.change_type)
        limit = max(1, min(ctx.chunk_rows, self.options.batch_rows))
        last = done
        for unit, number, value, record in _events(text, task.fmt):
            if number <= done:
                continue  # committed in an earlier increment
            decoder.add(value, source=key, location=f"{unit} {number}", record=record)
            last = number
            if len(decoder) + len(decoder.rejected) >= limit:
                yield self._piece(decoder, unit, last, ctx.table)
        yield self._piece(decoder, unit, last, ctx.table)

    def _piece(self, decoder: EnvelopeDecoder, unit: str, last: int, table: str) -> Piece:
        empty = len(decoder) == 0
        rows, rejected = decoder.take(table)
        return Piece(None if empty else rows, rejected, {unit: last})


def _events(text: str, fmt: str | None) -> Iterator[tuple[str, int, Any, str | None]]:
    """(unit, number, event, record text) of each event in a file's text."""
    if fmt != "ndjson":
        stripped = text.strip()
        try:
            whole = json.loads(stripped) if stripped else None
        except json.JSONDecodeError:
            whole = _LINES  # a .json file holding one event per line
        if whole is not _LINES:
            if isinstance(whole, list):
                for number, item in enumerate(whole, 1):
                    yield "item", number, item, None
            elif whole is not None:
                yield "item", 1, whole, stripped
            return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield "line", number, line, line


_LINES = object()

# The name pipelines use: `debezium(...)` builds the connector.
debezium = DebeziumFilesSource
