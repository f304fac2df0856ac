"""MySQL/MariaDB column types as Arrow, the same from a snapshot and from the binlog.

A table's rows reach Headwater two ways: selected during the initial snapshot
(types from information_schema, values from PyMySQL) and decoded from the binary
log (types from the table map event, values from mysql-replication). Both paths
map to one Arrow type per MySQL type, so a row reads the same whichever way it
came:

    integers            exact width (unsigned: the next wider signed type;
                        BIGINT UNSIGNED: decimal(20,0))
    DECIMAL(p,s)        decimal128(p,s) (text beyond Delta's 38 digits)
    FLOAT / DOUBLE      float32 / float64
    BIT(n)              int64
    DATE                date32
    DATETIME            timestamp[us] (no zone, as stored)
    TIMESTAMP           timestamp[us, UTC]
    TIME                duration[us] (MySQL TIME is a signed interval)
    YEAR                int16
    text, ENUM, SET     string (SET as 'a,b' in definition order)
    JSON                string (the JSON text)
    binary, BLOB        binary

Zero dates ('0000-00-00') have no Arrow value and read as NULL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa
from pymysqlreplication.constants import FIELD_TYPE  # type: ignore[import-untyped, unused-ignore]
from pymysqlreplication.row_event import RowsEvent  # type: ignore[import-untyped, unused-ignore]

Convert = Callable[[Any], Any]

# Components of a change's sequence number (decimal(38,0)); see sequence_of.
_ORDINAL = 10**12  # changes within one transaction
_POSITION = 10**10  # byte offsets within one binlog file (< 2**32)
MAX_ORDINAL = _ORDINAL - 1


def file_number(name: str) -> int:
    """The numeric suffix of a binlog file name ('mysql-bin.000042' -> 42)."""
    suffix = name.rsplit(".", 1)[-1]
    if not suffix.isdigit():
        raise ValueError(f"binlog file name {name!r} has no numeric suffix")
    return int(suffix)


def position_sequence(file: str, pos: int, ordinal: int) -> int:
    """file number, offset of the transaction, change within it: in log order."""
    return (file_number(file) * _POSITION + pos) * _ORDINAL + ordinal


def gtid_sequence(seq_no: int, ordinal: int) -> int:
    """GTID sequence number of the transaction, change within it: in commit order."""
    return seq_no * _ORDINAL + ordinal


# -- types from information_schema (the snapshot) --------------------------------

_INTEGERS = {
    "tinyint": (pa.int8(), pa.int16()),
    "smallint": (pa.int16(), pa.int32()),
    "mediumint": (pa.int32(), pa.int32()),
    "int": (pa.int32(), pa.int64()),
    "integer": (pa.int32(), pa.int64()),
    "bigint": (pa.int64(), pa.decimal128(20, 0)),
}
_TEXT = {
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "enum",
    "set",
    "json",
    "inet4",
    "inet6",
    "uuid",
}
_BINARY = {
    "binary",
    "varbinary",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
}


def schema_type(
    data_type: str, column_type: str, precision: int | None, scale: int | None
) -> pa.DataType:
    """The Arrow type of a column described by information_schema.COLUMNS."""
    name = data_type.lower()
    unsigned = "unsigned" in column_type.lower()
    if name in _INTEGERS:
        return _INTEGERS[name][1 if unsigned else 0]
    if name in ("decimal", "numeric"):
        return _decimal(int(precision or 10), int(scale or 0))
    if name == "float":
        return pa.float32()
    if name in ("double", "real", "double precision"):
        return pa.float64()
    if name == "bit":
        return pa.int64()
    if name == "date":
        return pa.date32()
    if name == "datetime":
        return pa.timestamp("us")
    if name == "timestamp":
        return pa.timestamp("us", "UTC")
    if name == "time":
        return pa.duration("us")
    if name == "year":
        return pa.int16()
    if name in _BINARY:
        return pa.binary()
    if name in _TEXT:
        return pa.string()
    return pa.string()


def set_members(column_type: str) -> list[str]:
    """The members of an ENUM/SET from its COLUMN_TYPE ("set('a','b')")."""
    body = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return [
        m.replace("''", "'").replace("\\\\", "\\") for m in re.findall(r"'((?:[^']|'')*)'", body)
    ]


# -- types from the binlog's table map --------------------------------------------

_BINLOG_INTEGERS = {
    FIELD_TYPE.TINY: (pa.int8(), pa.int16()),
    FIELD_TYPE.SHORT: (pa.int16(), pa.int32()),
    FIELD_TYPE.INT24: (pa.int32(), pa.int32()),
    FIELD_TYPE.LONG: (pa.int32(), pa.int64()),
    FIELD_TYPE.LONGLONG: (pa.int64(), pa.decimal128(20, 0)),
}
_STRINGISH = {FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.BLOB}


def binlog_type(column: Any) -> pa.DataType:
    """The Arrow type of a column described by a binlog table map (mysql-replication Column)."""
    code = column.type
    if code in _BINLOG_INTEGERS:
        return _BINLOG_INTEGERS[code][1 if column.unsigned else 0]
    if code in (FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL):
        return _decimal(int(getattr(column, "precision", 10)), int(getattr(column, "decimals", 0)))
    if code == FIELD_TYPE.FLOAT:
        return pa.float32()
    if code == FIELD_TYPE.DOUBLE:
        return pa.float64()
    if code == FIELD_TYPE.BIT:
        return pa.int64()
    if code in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return pa.date32()
    if code in (FIELD_TYPE.DATETIME, FIELD_TYPE.DATETIME2):
        return pa.timestamp("us")
    if code in (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2):
        return pa.timestamp("us", "UTC")
    if code in (FIELD_TYPE.TIME, FIELD_TYPE.TIME2):
        return pa.duration("us")
    if code == FIELD_TYPE.YEAR:
        return pa.int16()
    if code in (FIELD_TYPE.ENUM, FIELD_TYPE.SET, FIELD_TYPE.JSON):
        return pa.string()
    if code == FIELD_TYPE.GEOMETRY:
        return pa.binary()
    if code in _STRINGISH:
        return pa.binary() if _is_binary(column) else pa.string()
    return pa.string()


def _is_binary(column: Any) -> bool:
    charset = (getattr(column, "character_set_name", None) or "").lower()
    collation = (getattr(column, "collation_name", None) or "").lower()
    return charset == "binary" or collation == "binary"


def _decimal(precision: int, scale: int) -> pa.DataType:
    if precision > 38:
        return pa.string()  # beyond Delta's decimal precision: kept exactly as text
    return pa.decimal128(max(precision, 1), scale)


# -- values ---------------------------------------------------------------------------


def converter(dtype: pa.DataType, members: list[str] | None = None) -> Convert | None:
    """A function normalising a value of either path to `dtype` (None: as it is)."""
    if pa.types.is_timestamp(dtype):
        return _timestamp_utc if dtype.tz else _naive_timestamp
    if pa.types.is_date32(dtype):
        return _date
    if pa.types.is_string(dtype):
        return _text_with_members(members) if members else _text
    if pa.types.is_binary(dtype):
        return _binary
    if pa.types.is_integer(dtype):
        return _integer
    if pa.types.is_decimal(dtype):
        return _decimal_value
    return None


def _timestamp_utc(value: Any) -> Any:
    if not isinstance(value, dt.datetime):
        return None  # zero or invalid timestamps
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _naive_timestamp(value: Any) -> Any:
    return value if isinstance(value, dt.datetime) else None


def _date(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else None


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, dict | list | int | float | bool):
        # MySQL's binary JSON, decoded by mysql-replication; written as MySQL prints JSON.
        return json.dumps(_json_ready(value), ensure_ascii=False)
    return str(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {_text(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _text_with_members(members: list[str]) -> Convert:
    order = {m: i for i, m in enumerate(members)}

    def convert(value: Any) -> Any:
        if isinstance(value, set | frozenset):
            return ",".join(sorted((str(v) for v in value), key=lambda m: order.get(m, len(order))))
        return _text(value)

    return convert


def _binary(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):  # BIT(n) from PyMySQL
        return int.from_bytes(value, "big")
    if isinstance(value, str):  # BIT(n) from mysql-replication: '10101'
        return int(value, 2) if value and set(value) <= {"0", "1"} else int(value)
    return value


def _decimal_value(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)  # BIGINT UNSIGNED
    return value


# -- the binlog's TIME2 values -----------------------------------------------------------

_TIME_INT_OFFSET = 0x800000
_TIME_OFFSET = 0x800000000000


def _read_time2(self: Any, column: Any) -> dt.timedelta:
    """TIME2 as MySQL decodes it (my_time_packed_from_binary).

    mysql-replication 1.0 ignores the borrow between the integer and the
    fractional part of negative values, so '-12:34:56.78' would read as
    '-12:34:56.22'; this replaces its decoder with MySQL's own arithmetic.
    """
    fsp = int(getattr(column, "fsp", 0) or 0)
    read = self.packet.read
    if fsp in (1, 2):
        intpart = int.from_bytes(read(3), "big") - _TIME_INT_OFFSET
        frac = read(1)[0]
        if intpart < 0 and frac:
            intpart += 1
            frac -= 0x100
        packed = (intpart << 24) + frac * 10000
    elif fsp in (3, 4):
        intpart = int.from_bytes(read(3), "big") - _TIME_INT_OFFSET
        frac = int.from_bytes(read(2), "big")
        if intpart < 0 and frac:
            intpart += 1
            frac -= 0x10000
        packed = (intpart << 24) + frac * 100
    elif fsp in (5, 6):
        packed = int.from_bytes(read(6), "big") - _TIME_OFFSET
    else:
        packed = (int.from_bytes(read(3), "big") - _TIME_INT_OFFSET) << 24
    negative = packed < 0
    packed = abs(packed)
    hms, micros = packed >> 24, packed % (1 << 24)
    value = dt.timedelta(
        hours=(hms >> 12) % (1 << 10),
        minutes=(hms >> 6) % (1 << 6),
        seconds=hms % (1 << 6),
        microseconds=micros,
    )
    return -value if negative else value


setattr(RowsEvent, "_RowsEvent__read_time2", _read_time2)  # noqa: B010 - a name-mangled method
