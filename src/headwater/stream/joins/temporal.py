"""Stream-table temporal join: each event takes the dimension row valid at its time.

The dimension (an SCD2 table) has validity columns: a row holds for
valid_from <= event time < valid_to, an open valid_to meaning current. The
dimension is read at one version per micro-batch (recorded in the checkpoint,
so a replay reads the same), and only the rows of keys the micro-batch holds
are read when the join has one key column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ..._sql import q
from ...errors import ConfigError, HeadwaterError
from ..frame import Frame
from ..spec import TemporalJoin

if TYPE_CHECKING:
    from ...project import Project

BOOKKEEPING = ("valid_from", "valid_to", "is_current", "row_hash")
ISIN_KEYS = 10_000  # more distinct join keys in a micro-batch: read the dimension by key range


def current_version(project: Project, spec: TemporalJoin, table: str) -> int:
    version = project.target(spec.table).refresh().version
    if version is None:
        raise HeadwaterError(
            f"table {table}: the temporal join reads {spec.table}, which is not built yet",
            f"run `headwater run {spec.table}` first",
        )
    return version


def join(frame: Frame, events: str, spec: TemporalJoin, project: Project, version: int) -> str:
    con = frame.con
    target = project.target(spec.table)
    snapshot = target.load(version)
    if snapshot is None:
        raise HeadwaterError(
            f"table {frame.table}: version {version} of {spec.table} (temporal join) is gone",
            f"rebuild with `headwater run {frame.table} --full-refresh`",
        )
    dataset = target.dataset(table=snapshot)
    names = dataset.schema.names
    event_columns = [str(r[0]) for r in con.execute(f"DESCRIBE {q(events)}").fetchall()]
    for column in (*spec.on, spec.valid_from, spec.valid_to):
        if column not in names:
            raise ConfigError(
                f"table {frame.table}: temporal join column {column!r} is not in {spec.table} "
                f"(columns: {', '.join(names)})"
            )
    for column in spec.on:
        if column not in event_columns:
            raise ConfigError(
                f"table {frame.table}: temporal join key {column!r} is not in the stream's events"
            )
    skip = {*spec.on, spec.valid_from, spec.valid_to, *BOOKKEEPING}
    columns = (
        list(spec.columns)
        if spec.columns is not None
        else [c for c in names if c not in skip and not c.startswith("_")]
    )
    clash = [c for c in columns if c in event_columns]
    if clash:
        raise ConfigError(
            f"table {frame.table}: temporal join with {spec.table} would add column(s) "
            f"{clash} the events already have",
            "pick the dimension columns with columns=[...] (or rename them in the function)",
        )
    needed = list(dict.fromkeys([*spec.on, spec.valid_from, spec.valid_to, *columns]))
    row_filter = None
    if len(spec.on) == 1:
        keys = (
            con.sql(
                f"SELECT DISTINCT {q(spec.on[0])} AS k FROM {q(events)} WHERE {q(spec.on[0])} IS NOT NULL"
            )
            .to_arrow_table()
            .column("k")
        )
        field_type = dataset.schema.field(spec.on[0]).type
        if len(keys) <= ISIN_KEYS:
            row_filter = pads.field(spec.on[0]).isin(keys.cast(field_type))
        elif len(keys):
            # Testing membership in a large set row by row costs more than the join:
            # read the keys' range (files outside it are skipped by their statistics).
            bounds = pc.min_max(keys)
            row_filter = (pads.field(spec.on[0]) >= bounds["min"].cast(field_type)) & (
                pads.field(spec.on[0]) <= bounds["max"].cast(field_type)
            )
    dimension: pa.Table = dataset.to_table(columns=needed, filter=row_filter)
    con.register("_dimension", dimension)
    try:
        on = " AND ".join(f"e.{q(k)} = d.{q(k)}" for k in spec.on)
        start = f"epoch_us(CAST(d.{q(spec.valid_from)} AS TIMESTAMPTZ))"
        end = f"epoch_us(CAST(d.{q(spec.valid_to)} AS TIMESTAMPTZ))"
        how = "LEFT" if spec.how == "left" else "INNER"
        joined = frame.materialise(
            "temporal",
            "SELECT e.*"
            + "".join(f", d.{q(c)}" for c in columns)
            + f" FROM {q(events)} e {how} JOIN _dimension d ON {on} AND {start} <= e._ts "
            f"AND (d.{q(spec.valid_to)} IS NULL OR e._ts < {end}) "
            f"QUALIFY row_number() OVER (PARTITION BY e._seq ORDER BY d.{q(spec.valid_from)} "
            "DESC NULLS LAST) = 1",
        )
    finally:
        con.unregister("_dimension")
    return joined
