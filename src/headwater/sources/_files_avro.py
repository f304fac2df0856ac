"""Avro files: the writer's schema mapped to Arrow, records decoded by fastavro in blocks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

Convert = Callable[[Any], Any] | None

_PRIMITIVE: dict[str, pa.DataType] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}


class AvroTypeError(ValueError):
    """A writer schema Headwater cannot map to Arrow columns."""


class _Mapper:
    """Arrow types for Avro types, plus the value conversions fastavro's output needs."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self.active: set[str] = set()

    def map(self, schema: Any, namespace: str = "") -> tuple[pa.DataType, Convert]:
        if isinstance(schema, str):
            if schema in _PRIMITIVE:
                return _PRIMITIVE[schema], None
            name = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            found = self.named.get(name, self.named.get(schema))
            if found is None:
                raise AvroTypeError(f"unknown Avro type {schema!r}")
            if name in self.active or schema in self.active:
                raise AvroTypeError(f"recursive Avro type {schema!r} cannot be a table column")
            return self.map(found, namespace)
        if isinstance(schema, list):
            return self._union(schema, namespace)
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if logical is not None:
            mapped = _logical(schema, kind, logical)
            if mapped is not None:
                return mapped
        if kind in ("record", "error", "enum", "fixed"):
            return self._named(schema, kind, namespace)
        if kind == "array":
            item, each = self.map(schema["items"], namespace)
            return pa.list_(item), None if each is None else _over_list(each)
        if kind == "map":
            value, each = self.map(schema["values"], namespace)
            return pa.map_(pa.string(), value), None if each is None else _over_map(each)
        return self.map(kind, namespace)

    def _named(
        self, schema: dict[str, Any], kind: str, namespace: str
    ) -> tuple[pa.DataType, Convert]:
        name = str(schema["name"])
        space = str(schema.get("namespace", namespace) or "")
        full = name if "." in name or not space else f"{space}.{name}"
        self.named[full] = self.named[name] = schema
        if kind == "enum":
            return pa.string(), None
        if kind == "fixed":
            return pa.binary(), None
        self.active.update((full, name))
        try:
            fields, converts = [], {}
            inner = full.rpartition(".")[0]
            for spec in schema["fields"]:
                arrow, convert = self.map(spec["type"], inner)
                fields.append(pa.field(spec["name"], arrow))
                if convert is not None:
                    converts[spec["name"]] = convert
        finally:
            self.active.difference_update((full, name))
        if not converts:
            return pa.struct(fields), None

        def record(value: Any) -> Any:
            if value is None:
                return None
            out = dict(value)
            for key, convert in converts.items():
                out[key] = convert(out.get(key))
            return out

        return pa.struct(fields), record

    def _union(self, branches: list[Any], namespace: str) -> tuple[pa.DataType, Convert]:
        others = [b for b in branches if b != "null"]
        if len(others) == 1:
            return self.map(others[0], namespace)
        if not others:
            return pa.null(), None
        if all(b in ("int", "long") for b in others):
            return pa.int64(), None
        if all(b in ("int", "long", "float", "double") for b in others):
            return pa.float64(), None
        # A union of unrelated types has no column type: keep each value as JSON text.
        for branch in others:
            self.map(branch, namespace)  # registers the named types it defines
        return pa.string(), lambda v: None if v is None else json.dumps(v, default=str)


def _over_list(each: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else [each(x) for x in v]


def _over_map(each: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else {k: each(x) for k, x in v.items()}


def _logical(schema: dict[str, Any], kind: Any, logical: str) -> tuple[pa.DataType, Convert] | None:
    if logical == "timestamp-millis" and kind == "long":
        return pa.timestamp("ms", "UTC"), None
    if logical == "timestamp-micros" and kind == "long":
        return pa.timestamp("us", "UTC"), None
    if logical == "local-timestamp-millis" and kind == "long":
        return pa.timestamp("ms"), None
    if logical == "local-timestamp-micros" and kind == "long":
        return pa.timestamp("us"), None
    if logical == "date" and kind == "int":
        return pa.date32(), None
    if logical == "time-millis" and kind == "int":
        return pa.time32("ms"), None
    if logical == "time-micros" and kind == "long":
        return pa.time64("us"), None
    if logical == "uuid" and kind in ("string", "fixed"):
        return pa.string(), lambda v: None if v is None else str(v)
    if logical == "decimal" and kind in ("bytes", "fixed"):
        precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
        decimal = pa.decimal128 if precision <= 38 else pa.decimal256
        return decimal(precision, scale), None
    return None  # unknown logical types read as their underlying type


def arrow_schema(
    writer_schema: Any,
) -> tuple[pa.Schema, Callable[[list[Any]], list[Any]] | None, bool]:
    """(Arrow schema, conversion of a list of records, whether records are wrapped as {"value": x})."""
    arrow, convert = _Mapper().map(writer_schema)
    if pa.types.is_struct(arrow):
        schema = pa.schema(list(arrow))
        wrapped = False
    else:
        schema = pa.schema([pa.field("value", arrow)])
        wrapped = True
    if convert is None:
        return schema, None, wrapped
    if wrapped:
        return schema, lambda rows: [{"value": convert(r["value"])} for r in rows], wrapped
    return schema, lambda rows: [convert(r) for r in rows], wrapped


def avro_batches(stream: Any, start: int, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    """Tables of up to `batch_rows` records after the first `start`, with the record count after each."""
    import fastavro

    blocks = fastavro.block_reader(stream)
    schema, convert, wrapped = arrow_schema(blocks.writer_schema)
    row = 0
    rows: list[Any] = []
    for block in blocks:
        count = block.num_records
        if row + count <= start:
            row += count  # whole blocks before the start are skipped undecoded
            continue
        for record in block:
            row += 1
            if row <= start:
                continue
            rows.append({"value": record} if wrapped else record)
            if len(rows) >= batch_rows:
                yield _table(rows, schema, convert), row
                rows = []
    if rows or (start == 0 and row == 0):
        yield _table(rows, schema, convert), row


def _table(
    rows: list[Any], schema: pa.Schema, convert: Callable[[list[Any]], list[Any]] | None
) -> pa.Table:
    return pa.Table.from_pylist(convert(rows) if convert else rows, schema=schema)
