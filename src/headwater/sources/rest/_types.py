"""Declared column types of parsed records: names users write, and their Arrow types."""

from __future__ import annotations

import re

import pyarrow as pa

from ...errors import ConfigError

_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_NAMES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "text": pa.string(),
    "json": pa.string(),  # the value as JSON text (objects and lists kept whole)
    "int": pa.int64(),
    "integer": pa.int64(),
    "bigint": pa.int64(),
    "int64": pa.int64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", "UTC"),
    "date": pa.date32(),
}
TYPE_NAMES = (*_NAMES, "decimal(p,s)")


def column_type(spec: str, where: str) -> pa.DataType:
    """The Arrow type of a declared column type ('int64', 'timestamp', 'decimal(12,2)'...)."""
    text = spec.strip().lower()
    if text in _NAMES:
        return _NAMES[text]
    match = _DECIMAL.match(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if 1 <= precision <= 38 and 0 <= scale <= precision:
            return pa.decimal128(precision, scale)
    raise ConfigError(
        f"{where}: unknown column type {spec!r}",
        f"use one of {', '.join(TYPE_NAMES)}",
    )
