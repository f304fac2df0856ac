"""Arrow types as Delta Lake stores them.

Delta has fewer types than Arrow: timestamps are microseconds (UTC or without
zone), there are no unsigned integers, time-of-day or durations, strings and
binaries are not 'large'. Every increment is conformed to these types before it
is written, so files written by Headwater read back with the table's schema.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaError

# Characters Delta cannot store in a column name without column mapping.
_BAD_NAME_CHARS = set(" ,;{}()\n\t=")

# Allowed widenings (Delta type widening): narrower -> wider.
_INT_ORDER = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]


def to_delta_type(dtype: pa.DataType) -> pa.DataType:
    """The Arrow type Delta stores for values of `dtype`."""
    if pa.types.is_timestamp(dtype):
        return pa.timestamp("us", "UTC" if dtype.tz else None)
    if pa.types.is_dictionary(dtype):
        return to_delta_type(dtype.value_type)
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype) or pa.types.is_null(dtype):
        return pa.string()
    if (
        pa.types.is_large_binary(dtype)
        or pa.types.is_binary_view(dtype)
        or pa.types.is_fixed_size_binary(dtype)
    ):
        return pa.binary()
    if pa.types.is_unsigned_integer(dtype):
        return {8: pa.int16(), 16: pa.int32(), 32: pa.int64(), 64: pa.int64()}[dtype.bit_width]
    if pa.types.is_float16(dtype):
        return pa.float32()
    if pa.types.is_date64(dtype):
        return pa.date32()
    if pa.types.is_time(dtype):
        return pa.string()  # Delta has no time-of-day type; ISO text sorts correctly
    if pa.types.is_duration(dtype):
        return pa.int64()  # microseconds
    if pa.types.is_decimal256(dtype):
        if dtype.precision > 38:
            raise SchemaError(
                f"decimal({dtype.precision},{dtype.scale}) exceeds Delta's precision 38"
            )
        return pa.decimal128(dtype.precision, dtype.scale)
    if (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
        or pa.types.is_list_view(dtype)
        or pa.types.is_large_list_view(dtype)
    ):
        return pa.list_(pa.field("element", to_delta_type(dtype.value_type), True))
    if pa.types.is_map(dtype):
        return pa.map_(to_delta_type(dtype.key_type), to_delta_type(dtype.item_type))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, to_delta_type(f.type), True) for f in dtype])
    return dtype


def to_delta_schema(schema: pa.Schema, table: str = "") -> pa.Schema:
    """Conform a schema to Delta types; all columns nullable (contracts enforce required)."""
    fields = []
    seen: dict[str, str] = {}
    for field in schema:
        check_column_name(field.name, table)
        lowered = field.name.lower()
        if lowered in seen:
            raise SchemaError(
                f"{table or 'table'}: columns {seen[lowered]!r} and {field.name!r} differ only in case",
                "Delta column names are case-insensitive; rename one of them in the transform",
            )
        seen[lowered] = field.name
        fields.append(pa.field(field.name, to_delta_type(field.type), True))
    return pa.schema(fields)


def check_column_name(name: str, table: str = "") -> None:
    bad = sorted(_BAD_NAME_CHARS & set(name))
    if bad or not name:
        raise SchemaError(
            f"{table or 'table'}: column name {name!r} contains characters Delta cannot store ({''.join(bad)!r})",
            "rename the column in the transform (e.g. with an alias)",
        )


def conform_array(
    array: pa.Array | pa.ChunkedArray, target: pa.DataType, column: str, table: str
) -> Any:
    """Cast one column to the Delta type `target`, with an error naming the column."""
    source = array.type
    if source == target:
        return array
    try:
        if pa.types.is_dictionary(source):
            array = pc.cast(array, source.value_type)
            source = array.type
        if pa.types.is_duration(source) and pa.types.is_integer(target):
            return pc.cast(pc.cast(array, pa.duration("us"), safe=False), target)
        if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
            # Sub-microsecond digits cannot be stored; truncation is Delta's behaviour.
            return pc.cast(array, target, safe=False)
        return pc.cast(array, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"{table or 'table'}: column {column!r} of type {source} cannot be stored as {target}: {_first_line(exc)}",
            "cast the column in the transform, or change the table's schema with --full-refresh",
        ) from exc


def conform_batch(
    batch: pa.RecordBatch | pa.Table, schema: pa.Schema, table: str = ""
) -> pa.RecordBatch | pa.Table:
    """Reorder and cast `batch` to exactly `schema`; columns it lacks become nulls."""
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
        else:
            columns.append(conform_array(batch.column(index), field.type, field.name, table))
    if isinstance(batch, pa.Table):
        return pa.Table.from_arrays(columns, schema=schema)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def widening(old: pa.DataType, new: pa.DataType) -> pa.DataType | None:
    """If `new` values need `old` widened, the widened type; None if no widening applies."""
    if old == new:
        return None
    if old in _INT_ORDER and new in _INT_ORDER:
        return new if _INT_ORDER.index(new) > _INT_ORDER.index(old) else None
    if old == pa.float32() and new == pa.float64():
        return new
    if old in _INT_ORDER and new == pa.float64():
        return new
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        int_digits = max(old.precision - old.scale, new.precision - new.scale)
        scale = max(old.scale, new.scale)
        if (
            scale >= old.scale
            and int_digits + scale <= 38
            and (int_digits + scale, scale) != (old.precision, old.scale)
        ):
            return pa.decimal128(int_digits + scale, scale)
        return None
    if old == pa.date32() and pa.types.is_timestamp(new) and new.tz is None:
        return new
    return None


def fits_without_widening(old: pa.DataType, new: pa.DataType) -> bool:
    """True when values of type `new` can be cast into a column of type `old` without loss."""
    if old == new:
        return True
    if old in _INT_ORDER and new in _INT_ORDER:
        return _INT_ORDER.index(new) <= _INT_ORDER.index(old)
    if old == pa.float64() and (new == pa.float32() or new in _INT_ORDER[:3]):
        return True
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return bool(
            new.scale <= old.scale and new.precision - new.scale <= old.precision - old.scale
        )
    if pa.types.is_timestamp(old) and pa.types.is_date32(new):
        return old.tz is None
    if pa.types.is_string(old) and pa.types.is_string(new):
        return True
    # Nested values are checked field by field by the cast itself.
    both_structs = bool(pa.types.is_struct(old) and pa.types.is_struct(new))
    return both_structs or bool(pa.types.is_list(old) and pa.types.is_list(new))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
