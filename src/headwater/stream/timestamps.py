"""Reading a row's event time: microseconds since the Unix epoch (UTC), as int64.

Timestamps (any unit; naive ones are UTC), dates, ISO-8601 text, text in a
strptime format and epoch numbers are accepted. A missing column or a type that
cannot be a time is an error for the whole table; a NULL or unreadable value
sends its row to the quarantine with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.quarantine import rejected_rows
from ..errors import ConfigError
from .spec import EventTime

_UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}


def read_event_time(
    data: pa.Table, spec: EventTime, table: str, source: str
) -> tuple[np.ndarray, pa.Table, pa.Table | None]:
    """(event times in µs of the readable rows, those rows, rejected rows or None)."""
    column = spec.column
    if column not in data.schema.names:
        raise ConfigError(
            f"table {table}: event time column {column!r} is not in the micro-batch of "
            f"{source} (columns: {', '.join(data.schema.names) or 'none'})",
            "name an existing column in event_time=..., or derive it in the table's function",
        )
    values = data.column(column)
    micros = _to_micros(values, spec, table)
    valid = pc.is_valid(micros)
    if pc.all(valid).as_py() is not False:
        return _int64(micros), data, None
    bad = data.filter(pc.invert(valid))
    good = data.filter(valid)
    return _int64(micros.filter(valid)), good, _rejected(bad, spec, source)


def _int64(micros: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = micros.combine_chunks() if isinstance(micros, pa.ChunkedArray) else micros
    return np.asarray(array.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _to_micros(values: pa.ChunkedArray, spec: EventTime, table: str) -> pa.ChunkedArray:
    kind = values.type
    where = f"table {table}: event time column {spec.column!r}"
    if pa.types.is_timestamp(kind):
        return pc.cast(pc.cast(values, pa.timestamp("us", kind.tz)), pa.int64())
    if pa.types.is_date(kind):
        return pc.multiply(
            pc.cast(pc.cast(values, pa.date32()), pa.int64()), pa.scalar(86_400_000_000)
        )
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        if spec.unit is None:
            raise ConfigError(
                f"{where} holds numbers ({kind}); say which unit they count since the epoch",
                f"event_time({spec.column!r}, unit='ms') (or 's', 'us', 'ns')",
            )
        factor = _UNIT_MICROS[spec.unit]
        scaled = pc.multiply(pc.cast(values, pa.float64()), pa.scalar(float(factor)))
        return pc.cast(pc.floor(scaled), pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_text(values, spec)
    raise ConfigError(
        f"{where} has type {kind}, which is not a time",
        "use a timestamp, date, ISO-8601 text or epoch-number column",
    )


def _parse_text(values: pa.ChunkedArray, spec: EventTime) -> pa.ChunkedArray:
    """Text to µs; NULL where a value cannot be read (those rows are quarantined)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("v", pa.table({"v": values}))
        if spec.format is not None:
            expression = "epoch_us(try_strptime(v, $fmt)::TIMESTAMP)"
            result = con.sql(f"SELECT {expression} AS us FROM v", params={"fmt": spec.format})
        else:
            result = con.sql("SELECT epoch_us(TRY_CAST(v AS TIMESTAMPTZ)) AS us FROM v")
        return result.to_arrow_table().column("us")
    finally:
        con.close()


def _rejected(bad: pa.Table, spec: EventTime, source: str) -> pa.Table:
    rows: list[dict[str, Any]] = []
    values = bad.column(spec.column).to_pylist()
    for record, value in zip(bad.to_pylist(), values, strict=True):
        reason = (
            "event time is NULL"
            if value is None
            else f"cannot read {str(value)[:80]!r} as an event time"
            + (f" in format {spec.format!r}" if spec.format else "")
        )
        rows.append(
            {
                "source": source,
                "check": f"event_time({spec.column})",
                "reason": reason,
                "value": None if value is None else str(value),
                "record": json.dumps(record, default=str),
            }
        )
    return rejected_rows(rows)
