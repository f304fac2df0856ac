"""Delta file statistics (`add.stats`) from a Parquet file's footer.

Readers skip files by these statistics, so they must never claim less than the
file holds: values that cannot be represented safely are left out (always safe).
The format follows what delta-rs writes: timestamps in milliseconds (the max is
rounded up, so it stays an upper bound for any reader), strings cut to a
32-character prefix (the max then continues with the greatest code point).
"""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

STRING_PREFIX = 32
MAX_INDEXED_COLUMNS = 32
_EPOCH = datetime(1970, 1, 1)
_DEC_MARK = "\x00dec:"
_MAX_CHAR = "\U0010ffff"


def _leaves(schema: pa.Schema) -> list[tuple[tuple[str, ...], pa.DataType]]:
    out: list[tuple[tuple[str, ...], pa.DataType]] = []

    def walk(prefix: tuple[str, ...], dtype: pa.DataType) -> None:
        if pa.types.is_struct(dtype):
            for child in dtype:
                walk((*prefix, child.name), child.type)
        else:
            out.append((prefix, dtype))

    for field in schema:
        walk((field.name,), field.type)
    return out


def _json_value(value: Any, dtype: pa.DataType, is_max: bool) -> Any:
    """A statistics value in Delta's JSON form, or None when it must be left out."""
    if value is None:
        return None
    if pa.types.is_timestamp(dtype):
        micros = int(value) if not isinstance(value, datetime) else _micros(value)
        if is_max and micros % 1000:
            micros += 1000 - micros % 1000  # round up: a bound must never be below the data
        moment = _EPOCH + timedelta(microseconds=micros)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
        return text + "Z" if dtype.tz else text.replace("T", " ")
    if pa.types.is_date32(dtype):
        return (
            value if isinstance(value, date) else date(1970, 1, 1) + timedelta(days=int(value))
        ).isoformat()
    if pa.types.is_decimal(dtype):
        return _DEC_MARK + format(Decimal(value), "f")
    if pa.types.is_string(dtype):
        text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        if len(text) <= STRING_PREFIX:
            return text
        if not is_max:
            return text[:STRING_PREFIX]
        # The prefix followed by the greatest code point is above every string
        # with that prefix, unless the data itself continues with that code point.
        if text[STRING_PREFIX] < _MAX_CHAR:
            return text[:STRING_PREFIX] + _MAX_CHAR
        return text
    if pa.types.is_floating(dtype):
        if math.isinf(value):  # JSON has no infinity: the widest finite bound
            return -sys.float_info.max if value < 0 else sys.float_info.max
        return None if math.isnan(value) else float(value)
    if pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
        return value
    return None  # binary and other types carry no usable min/max


def _micros(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def delta_stats(
    metadata: pq.FileMetaData, schema: pa.Schema, indexed_columns: int = MAX_INDEXED_COLUMNS
) -> str:
    """`add.stats` JSON for a file with this footer, written with this Arrow schema.

    Every indexed column gets both bounds where its values have any: delta-rs
    reads a missing bound as NULL and would then skip the file for any filter on
    that column. NaN is not bounded (Parquet statistics skip it), as in delta-rs.
    """
    leaves = _leaves(schema)[:indexed_columns]
    dotted = {".".join(path): (path, dtype) for path, dtype in leaves}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, Any] = {}
    agg: dict[str, list[Any]] = {}
    for rg_index in range(metadata.num_row_groups):
        rg = metadata.row_group(rg_index)
        for col_index in range(rg.num_columns):
            column = rg.column(col_index)
            name = column.path_in_schema
            if name not in dotted:
                continue  # nested list/map leaves and columns beyond the indexed ones
            stats = column.statistics
            entry = agg.setdefault(name, [None, None, 0, True])
            if stats is None:
                entry[3] = False
                continue
            if stats.has_null_count:
                entry[2] += stats.null_count
            else:
                entry[3] = False
            dtype = dotted[name][1]
            if stats.has_min_max:
                lo, hi = _raw(stats, dtype, "min"), _raw(stats, dtype, "max")
                entry[0] = lo if entry[0] is None else min(entry[0], lo)
                entry[1] = hi if entry[1] is None else max(entry[1], hi)
            elif stats.has_null_count and stats.null_count < rg.num_rows:
                entry[3] = False  # values present but no bounds: cannot claim any
    for name, (lo, hi, null_count, complete) in agg.items():
        path, dtype = dotted[name]
        if complete:
            _set(nulls, path, null_count)
        if complete and lo is not None:
            lo_json, hi_json = _json_value(lo, dtype, False), _json_value(hi, dtype, True)
            # Readers compare against both bounds; a lone bound becomes `x <= NULL`.
            if lo_json is not None and hi_json is not None:
                _set(mins, path, lo_json)
                _set(maxs, path, hi_json)
    text = json.dumps(
        {"numRecords": metadata.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )
    # Decimals are written as exact JSON numbers, not floats.
    return _unquote_decimals(text)


def _raw(stats: Any, dtype: pa.DataType, which: str) -> Any:
    if pa.types.is_timestamp(dtype):
        raw = stats.min_raw if which == "min" else stats.max_raw
        # The file is written in microseconds (see writer), so raw is micros.
        return int(raw)
    return stats.min if which == "min" else stats.max


def _unquote_decimals(text: str) -> str:
    marker = json.dumps(_DEC_MARK)[1:-1]
    out = []
    pos = 0
    while True:
        start = text.find('"' + marker, pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        end = text.index('"', start + 1)
        out.append(text[pos:start])
        out.append(text[start + 1 + len(marker) : end])
        pos = end + 1
