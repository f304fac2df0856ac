"""Column types in contracts: ODCS logical types, Delta physical types, and widening.

Physical types are Delta's names (`long`, `decimal(12,2)`, `timestamp`...), the
types the table really stores; common SQL spellings (`bigint`, `varchar(20)`,
`int64`) are read as the Delta type they mean. As in Delta, `timestamp` carries a
time zone (stored in UTC) and `timestamp_ntz` does not.
"""

from __future__ import annotations

import re

import pyarrow as pa

INTEGERS = ("byte", "short", "integer", "long")
_ALIASES = {
    "tinyint": "byte",
    "int8": "byte",
    "byte": "byte",
    "smallint": "short",
    "int16": "short",
    "short": "short",
    "int": "integer",
    "integer": "integer",
    "int32": "integer",
    "bigint": "long",
    "int64": "long",
    "long": "long",
    "float": "float",
    "real": "float",
    "float32": "float",
    "double": "double",
    "float64": "double",
    "double precision": "double",
    "string": "string",
    "text": "string",
    "varchar": "string",
    "char": "string",
    "utf8": "string",
    "large_string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
    "timestamp with time zone": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
    "datetime": "timestamp_ntz",
    "timestamp without time zone": "timestamp_ntz",
    "binary": "binary",
    "blob": "binary",
    "bytes": "binary",
}
_DECIMAL = re.compile(r"^(?:decimal|numeric)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")
_SIZED_TEXT = re.compile(r"^(?:varchar|char|character varying|character|string)\s*\(\s*\d+\s*\)$")


def physical_type(dtype: pa.DataType) -> str:
    """Delta's name for a column's Arrow type, as Headwater stores it."""
    if pa.types.is_int8(dtype):
        return "byte"
    if pa.types.is_int16(dtype) or pa.types.is_uint8(dtype):
        return "short"
    if pa.types.is_int32(dtype) or pa.types.is_uint16(dtype):
        return "integer"
    if pa.types.is_integer(dtype) or pa.types.is_duration(dtype):
        return "long"
    if pa.types.is_float32(dtype) or pa.types.is_float16(dtype):
        return "float"
    if pa.types.is_float64(dtype):
        return "double"
    if pa.types.is_decimal(dtype):
        return f"decimal({dtype.precision},{dtype.scale})"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_timestamp(dtype):
        return "timestamp" if dtype.tz else "timestamp_ntz"
    if (
        pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_fixed_size_binary(dtype)
    ):
        return "binary"
    if pa.types.is_struct(dtype):
        return "struct"
    if pa.types.is_map(dtype):
        return "map"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return "array"
    if pa.types.is_dictionary(dtype):
        return physical_type(dtype.value_type)
    return "string"  # text, and times of day (stored as ISO text)


def logical_type(dtype: pa.DataType) -> str:
    """The ODCS logical type of an Arrow type."""
    physical = physical_type(dtype)
    if physical in INTEGERS:
        return "integer"
    if physical in ("float", "double") or physical.startswith("decimal"):
        return "number"
    if physical in ("timestamp", "timestamp_ntz"):
        return "timestamp"
    if physical == "struct" or physical == "map":
        return "object"
    if physical == "binary":
        return "string"
    return {"boolean": "boolean", "date": "date", "array": "array"}.get(physical, "string")


def normal_physical(text: str) -> str | None:
    """A contract's physicalType as a Delta type name; None when it names no known type."""
    lowered = " ".join(text.strip().lower().split())
    match = _DECIMAL.match(lowered)
    if match:
        return f"decimal({match.group(1)},{match.group(2) or 0})"
    if _SIZED_TEXT.match(lowered):
        return "string"
    return _ALIASES.get(lowered)


def logical_matches(logical: str, dtype: pa.DataType) -> bool:
    """Whether a column of `dtype` holds values of the contract's logical type."""
    actual = logical_type(dtype)
    if logical == actual:
        return True
    if logical == "number" and actual == "integer":
        return True  # integers are numbers
    # Times of day are stored as ISO text.
    return logical == "time" and actual == "string"


def decimal_parts(physical: str) -> tuple[int, int] | None:
    match = _DECIMAL.match(physical)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def widens(old: str, new: str) -> bool:
    """Whether every value of Delta type `old` fits type `new` (the same type included)."""
    if old == new:
        return True
    if old in INTEGERS and new in INTEGERS:
        return INTEGERS.index(new) > INTEGERS.index(old)
    if old in INTEGERS and new == "double":
        return True
    if old == "float" and new == "double":
        return True
    if old in ("byte", "short", "integer") and new == "float":
        return False  # float loses integer precision beyond 2^24
    old_dec, new_dec = decimal_parts(old), decimal_parts(new)
    if old_dec and new_dec:
        return new_dec[1] >= old_dec[1] and new_dec[0] - new_dec[1] >= old_dec[0] - old_dec[1]
    if old in INTEGERS and new_dec:
        digits = {"byte": 3, "short": 5, "integer": 10, "long": 19}[old]
        return new_dec[0] - new_dec[1] >= digits
    return old == "date" and new in ("timestamp", "timestamp_ntz")


LOGICAL_WIDENINGS = {("integer", "number"), ("date", "timestamp")}


def logical_widens(old: str, new: str) -> bool:
    return old == new or (old, new) in LOGICAL_WIDENINGS
