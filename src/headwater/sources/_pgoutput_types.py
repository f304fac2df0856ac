"""PostgreSQL column types as Arrow types, and text values as Arrow arrays.

The snapshot and the change stream both deliver values as PostgreSQL's text
output (the session runs with TimeZone=UTC, DateStyle=ISO, bytea_output=hex,
extra_float_digits=3), so one conversion serves both and a row never changes
type between the initial copy and the changes that follow. Conversion is
column-wise in Arrow, not value by value in Python, except for bytea.

Types without an exact Arrow counterpart (intervals, times of day, network
addresses, arrays, enums, json, numeric without a declared precision) are
kept as their text, which loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError

BOOL, BYTEA, INT8, INT2, INT4, OID = 16, 17, 20, 21, 23, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
DATE, TIMESTAMP, TIMESTAMPTZ = 1082, 1114, 1184

_FIXED: dict[int, pa.DataType] = {
    BOOL: pa.bool_(),
    BYTEA: pa.binary(),
    INT2: pa.int16(),
    INT4: pa.int32(),
    INT8: pa.int64(),
    OID: pa.int64(),
    FLOAT4: pa.float32(),
    FLOAT8: pa.float64(),
    DATE: pa.date32(),
    TIMESTAMP: pa.timestamp("us"),
    TIMESTAMPTZ: pa.timestamp("us", "UTC"),
}
# 'infinity' has no Arrow value: it becomes the last (first) representable instant.
_INFINITY = {
    DATE: ("9999-12-31", "0001-01-01"),
    TIMESTAMP: ("9999-12-31 23:59:59.999999", "0001-01-01 00:00:00"),
    TIMESTAMPTZ: ("9999-12-31 23:59:59.999999+00", "0001-01-01 00:00:00+00"),
}


def numeric_type(typmod: int) -> pa.DataType:
    """numeric(p, s) as decimal128(p, s); unconstrained or wider than 38 digits as text."""
    if typmod < 4:
        return pa.string()
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # an 11-bit signed scale (PostgreSQL 15)
    if 1 <= precision <= 38 and 0 <= scale <= precision:
        return pa.decimal128(precision, scale)
    return pa.string()


def arrow_type(type_oid: int, typmod: int) -> pa.DataType:
    """The Arrow type of a column of base type `type_oid` (resolve domains first)."""
    if type_oid == NUMERIC:
        return numeric_type(typmod)
    return _FIXED.get(type_oid, pa.string())


def is_builtin(type_oid: int) -> bool:
    """Built-in types need no catalog look-up (user types may be domains over them)."""
    return type_oid < 10000


def to_arrow(
    values: Sequence[str | None] | pa.Array, type_oid: int, typmod: int, table: str, column: str
) -> pa.Array:
    """Text values of one column (a list, or an Arrow string array) as an Arrow array of
    the column's type."""
    dtype = arrow_type(type_oid, typmod)
    if isinstance(values, pa.Array):
        if pa.types.is_string(dtype):
            return values
        if type_oid == BOOL:
            return pc.equal(values, "t")
        if type_oid in _INFINITY:
            high, low = _INFINITY[type_oid]
            infinite = pc.equal(values, "infinity")
            if pc.any(infinite).as_py() or pc.any(pc.equal(values, "-infinity")).as_py():
                values = pc.if_else(
                    infinite,
                    high,
                    pc.if_else(pc.equal(values, "-infinity"), low, values),
                )
        if type_oid != BYTEA:
            try:
                return values.cast(dtype)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise _bad(table, column, str(dtype), values.to_pylist(), None) from exc
        values = values.to_pylist()
    if pa.types.is_string(dtype):
        return pa.array(values, pa.string())
    if type_oid == BYTEA:
        try:
            return pa.array(
                [None if v is None else bytes.fromhex(v[2:]) for v in values], pa.binary()
            )
        except ValueError as exc:
            raise _bad(table, column, "bytea", values, "\\x") from exc
    if type_oid == BOOL:
        return pa.array([None if v is None else v in ("t", "true") for v in values], pa.bool_())
    if type_oid in _INFINITY:
        high, low = _INFINITY[type_oid]
        values = [high if v == "infinity" else low if v == "-infinity" else v for v in values]
    text = pa.array(values, pa.string())
    try:
        return text.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _bad(table, column, str(dtype), values, None) from exc


def _bad(
    table: str, column: str, kind: str, values: Sequence[str | None], prefix: str | None
) -> DataError:
    example = next(
        (v for v in values if v is not None and (prefix is None or not v.startswith(prefix))),
        None,
    )
    shown = f" such as {example[:40]!r}" if example is not None else ""
    return DataError(
        f"PostgreSQL table {table}: column {column!r} has values{shown} that do not fit {kind}",
        "values like NaN, BC dates or years past 9999 have no Arrow equivalent; "
        "store them in a text column",
    )


def text_of(value: Any) -> str | None:
    """A value read back from a Delta table as PostgreSQL's text output (for TOAST fills)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)
