"""`headwater contract init TABLE`: a first contract, written from the table as it is.

Types come from the table's schema, `required` from the data (no NULLs seen),
the primary key from the table's declared keys, and a volume-change warning
(beyond ±20% of the last 7 runs' average). What the data merely happens to
show today (value ranges, the few values of a low-cardinality text column, a
freshness limit) is written as commented-out suggestions: they
hold for the data seen so far, and only a person can say whether they must hold
for all future data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from .._sql import q
from ..errors import HeadwaterError
from .checks.base import fetch_arrow, scan
from .evaluate import connect
from .odcs import parse
from .types import logical_type, physical_type

if TYPE_CHECKING:
    from ..project import Project

# Text columns with at most this many distinct values get an accepted-values suggestion.
LOW_CARDINALITY = 12
# Strategies after which the declared keys identify one row of the table.
UNIQUE_KEY_STRATEGIES = frozenset({"merge", "scd1", "insert-if-absent", "cdc-apply"})
API_VERSION = "v3.1.0"


@dataclass
class ColumnProfile:
    name: str
    dtype: pa.DataType
    nulls: int = 0
    minimum: Any = None
    maximum: Any = None
    values: list[Any] | None = None  # the distinct values of a low-cardinality text column


@dataclass
class TableProfile:
    table: str
    version: int
    rows: int
    columns: list[ColumnProfile] = field(default_factory=list)
    partition_by: tuple[str, ...] = ()


def _orderable(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_decimal(dtype)
        or pa.types.is_date(dtype)
        or pa.types.is_timestamp(dtype)
    )


def _text(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_string(dtype) or pa.types.is_large_string(dtype))


def profile(project: Project, table: str) -> TableProfile:
    """Null counts, ranges and low-cardinality values of every column, in two scans."""
    target = project.target(table)
    if not target.refresh().exists:
        built = project.existing_tables()
        raise HeadwaterError(
            f"table {table} does not exist",
            f"tables in the warehouse: {', '.join(built)}"
            if built
            else "build it first with `headwater run`",
        )
    dataset = target.dataset()
    schema = dataset.schema
    version = target.version
    assert version is not None
    con = connect(project)
    try:
        scan(con, "t", dataset)
        parts = ["count(*)"]
        for f in schema:
            parts.append(f"count(*) - count({q(f.name)})")
            if _orderable(f.type):
                parts += [f"min({q(f.name)})", f"max({q(f.name)})"]
            elif _text(f.type):
                parts.append(f"approx_count_distinct({q(f.name)})")
        # Through Arrow: DuckDB's Python conversion of zoned timestamps needs pytz.
        (rows, *stats) = (
            fetch_arrow(con, f"SELECT {', '.join(parts)} FROM t").to_pylist()[0].values()
        )
        columns: list[ColumnProfile] = []
        at = 0
        for f in schema:
            column = ColumnProfile(f.name, f.type, nulls=int(stats[at]))
            at += 1
            if _orderable(f.type):
                column.minimum, column.maximum = stats[at], stats[at + 1]
                at += 2
            elif _text(f.type):
                distinct = int(stats[at] or 0)
                at += 1
                # approx_count_distinct may undercount slightly: ask for one more to be sure.
                present = rows - column.nulls
                # Only values that repeat (each seen twice on average) look like an enum.
                if 0 < distinct <= LOW_CARDINALITY and present >= 2 * distinct:
                    found = fetch_arrow(
                        con,
                        f"SELECT DISTINCT {q(f.name)} AS v FROM t WHERE {q(f.name)} IS NOT NULL "
                        f"ORDER BY 1 LIMIT {LOW_CARDINALITY + 1}",
                    ).column("v")
                    if len(found) <= LOW_CARDINALITY:
                        column.values = found.to_pylist()
            columns.append(column)
    finally:
        con.close()
    return TableProfile(table, version, int(rows), columns, target.partition_by)


# -- writing the contract ---------------------------------------------------------------


def _scalar(value: Any) -> str:
    """A value as YAML text (flow style, one line)."""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, datetime | date):
        value = value.isoformat()
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()
    )


def _primary_key(project: Project, table: str) -> tuple[list[str], str | None]:
    """The declared keys that identify a row, and a note when the keys do not."""
    spec = project.tables.get(table)
    if spec is None or not spec.options.keys:
        return [], None
    keys = list(spec.options.keys)
    if spec.strategy in UNIQUE_KEY_STRATEGIES:
        return keys, None
    if spec.strategy == "scd2":
        return [*keys, spec.options.valid_from], None  # one row per key and version
    return [], f"keys {', '.join(keys)} repeat in a {spec.strategy} table: no primary key"


def render(project: Project, table: str) -> str:
    """The contract text for `table` (valid ODCS; suggestions commented out)."""
    found = profile(project, table)
    name = table.split(".", 1)[1]
    keys, key_note = _primary_key(project, table)
    spec = project.tables.get(table)
    purpose = spec.description if spec is not None and spec.description else None
    lines = [
        f"# Data contract of {table} (Open Data Contract Standard v3, see docs/contracts.md).",
        f"# Written by `headwater contract init` from version {found.version} of the table "
        f"({found.rows:,} rows).",
        "# Commented-out lines are suggestions from the data seen so far: uncomment what",
        "# must hold for all future data.",
        f"apiVersion: {API_VERSION}",
        "kind: DataContract",
        f"id: {_scalar(table)}",
        f"name: {_scalar(name)}",
        "version: 0.1.0",
        "status: draft",
    ]
    if purpose:
        lines += ["description:", f"  purpose: {_scalar(purpose)}"]
    lines += [
        "# team:",
        "#   name: the team that owns this table",
        "#   members:",
        "#     - username: someone@example.com",
        "#       role: owner",
        "schema:",
        f"  - name: {_scalar(name)}",
        f"    physicalName: {_scalar(table)}",
        "    physicalType: table",
    ]
    if key_note:
        lines.append(f"    # {key_note}")
    lines.append("    properties:")
    timestamps: list[str] = []
    for column in found.columns:
        lines += _property(column, found, keys)
        if pa.types.is_timestamp(column.dtype) and column.maximum is not None:
            timestamps.append(column.name)
    lines += [
        "    quality:",
        "      - metric: rowCount",
        "        mustBeGreaterThan: 0",
        "      # Warn when a run brings over 20% more or fewer rows than the last 7 runs on average:",
        "      - type: custom",
        "        engine: headwater",
        "        severity: warning",
        "        implementation:",
        "          volumeChange: {window: 7, maxChangePercent: 20}",
    ]
    if timestamps:
        newest = next((c for c in timestamps if "updat" in c.lower()), timestamps[0])
        lines += [
            "# slaProperties:",
            "#   - property: freshness",
            "#     value: 1",
            "#     unit: d",
            f"#     element: {name}.{newest}",
        ]
    text = "\n".join(lines) + "\n"
    parse(text, f"the contract written for {table}")  # what we write must load
    return text


def _property(column: ColumnProfile, found: TableProfile, keys: list[str]) -> list[str]:
    out = [
        f"      - name: {_scalar(column.name)}",
        f"        logicalType: {logical_type(column.dtype)}",
        f"        physicalType: {_scalar(physical_type(column.dtype))}",
    ]
    if column.name in keys:
        out += [
            "        primaryKey: true",
            f"        primaryKeyPosition: {keys.index(column.name) + 1}",
        ]
    if column.name in found.partition_by:
        out += [
            "        partitioned: true",
            f"        partitionKeyPosition: {found.partition_by.index(column.name) + 1}",
        ]
    if found.rows and column.nulls == 0 and column.name not in keys:
        out.append("        required: true")
    elif column.nulls:
        out.append(f"        # {column.nulls:,} of {found.rows:,} rows are NULL")
    if column.minimum is not None and column.maximum is not None:
        out += [
            "        # logicalTypeOptions:",
            f"        #   minimum: {_scalar(column.minimum)}",
            f"        #   maximum: {_scalar(column.maximum)}",
        ]
    if column.values:
        out += [
            "        # quality:",
            "        #   - metric: invalidValues",
            f"        #     arguments: {{validValues: {_scalar(column.values)}}}",
            "        #     mustBe: 0",
        ]
    return out
