"""One micro-batch as the operators see it.

Events are DuckDB relations with the row's columns plus `_ts` (event time, µs),
`_seq` (arrival order across the whole stream) and `_wm` (the watermark right
after the row's arrival). Operators read and write their state through the
state store's connection, inside the micro-batch's transaction, and report late
rows and metrics here.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from .._sql import q
from .spec import Stream
from .state import StateStore

INTERNAL = ("_ts", "_seq", "_wm")


@dataclass
class Frame:
    table: str
    stream: Stream
    store: StateStore
    batch: int
    watermark: int  # the watermark after the micro-batch (µs)
    late: list[pa.Table] = field(default_factory=list)
    metrics: Counter[str] = field(default_factory=Counter)
    # Output rows that delete earlier ones (a session merged into another).
    retractions: list[pa.Table] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        return self.store.con

    @property
    def lateness(self) -> int:
        return _micros(self.stream.allowed_lateness)

    def temp(self, prefix: str) -> str:
        """A fresh name for a temporary table of this micro-batch."""
        return f"_{prefix}_{next(self._names)}"

    def materialise(self, prefix: str, query: str) -> str:
        name = self.temp(prefix)
        self.con.execute(f"CREATE TEMP TABLE {q(name)} AS {query}")
        return name

    def drop_temps(self) -> None:
        rows = self.con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
        for (name,) in rows:
            self.con.execute(f"DROP TABLE IF EXISTS temp.{q(str(name))}")

    def record_late(self, relation: str, condition: str, reason: str, source: str) -> int:
        """Rows of `relation` matching `condition` go to `__late` with `reason`."""
        late = self.con.sql(
            f"SELECT * EXCLUDE ({', '.join(INTERNAL)}), "
            "? AS _input, ? AS _reason, "
            "make_timestamp(_ts)::TIMESTAMPTZ AS _event_time, "
            "make_timestamp(_wm)::TIMESTAMPTZ AS _watermark, "
            "(_wm - _ts) / 1e6 AS _lateness, "
            "?::BIGINT AS _batch "
            f"FROM {q(relation)} WHERE {condition} ORDER BY _seq",
            params=[source, reason, self.batch],
        ).to_arrow_table()
        if late.num_rows:
            self.late.append(late)
            self.metrics["late"] += late.num_rows
        return int(late.num_rows)


def _micros(delta: object) -> int:
    from datetime import timedelta

    assert isinstance(delta, timedelta)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


micros = _micros
