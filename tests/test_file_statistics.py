"""File statistics written by Headwater never make a reader skip a matching row.

delta-rs turns `add.stats` into guarantees of each file (`x >= min and x <= max`);
a bound that is too tight silently drops rows from filtered reads. Values at
the edges of what the statistics can express are checked against an unfiltered
read.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from headwater import table

from .lake import Feed, Lake

EDGE_ROWS = [
    {
        "id": 1,
        "at": datetime(2024, 1, 1, 0, 0, 0, 999, tzinfo=UTC),  # sub-millisecond max
        "local": datetime(2024, 1, 1, 0, 0, 0, 1),
        "name": "z" * 40,  # longer than the 32-character statistics prefix
        "amount": Decimal("99999999999999999999.99"),  # beyond float precision
        "day": date(1969, 12, 31),  # before the epoch
        "score": float("nan"),
    },
    {
        "id": 2,
        "at": datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "local": datetime(1960, 1, 1, 0, 0, 0, 500),
        "name": "a" * 33,
        "amount": Decimal("-99999999999999999999.99"),
        "day": date(2024, 2, 29),
        "score": 1.5,
    },
]
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("at", pa.timestamp("us", "UTC")),
        ("local", pa.timestamp("us")),
        ("name", pa.string()),
        ("amount", pa.decimal128(22, 2)),
        ("day", pa.date32()),
        ("score", pa.float64()),
    ]
)


@pytest.fixture
def edge_table(tmp_path: Path) -> DeltaTable:
    lake = Lake(tmp_path)
    feed = Feed([pa.Table.from_pylist(EDGE_ROWS, schema=SCHEMA)], name="edges")
    lake.declare(lambda: table("bronze.edges", source=feed, strategy="append"))
    lake.run()
    return lake.target("bronze.edges").table


@pytest.mark.parametrize("reader", ["delta-rs", "headwater"])
@pytest.mark.parametrize("column", ["at", "local", "name", "amount", "day", "score"])
def test_equality_on_the_exact_extreme_values_finds_the_rows(
    edge_table: DeltaTable, tmp_path: Path, column: str, reader: str
) -> None:
    # delta-rs builds file guarantees from the statistics; Headwater reads by footers.
    dataset = (
        edge_table.to_pyarrow_dataset() if reader == "delta-rs" else _headwater_dataset(tmp_path)
    )
    for row in EDGE_ROWS:
        value = row[column]
        if isinstance(value, float) and value != value:
            continue  # NaN equals nothing
        found = dataset.to_table(
            filter=ds.field(column) == pa.scalar(value, SCHEMA.field(column).type)
        )
        assert found.column("id").to_pylist() == [row["id"]], f"{column} = {value!r} was skipped"


def _headwater_dataset(root: Path) -> ds.Dataset:
    return Lake(root).target("bronze.edges").dataset()


def test_statistics_are_in_delta_format(edge_table: DeltaTable) -> None:
    log = Path(edge_table.table_uri.replace("file://", "")) / "_delta_log" / f"{0:020d}.json"
    add = next(json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line)
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 2
    assert stats["minValues"]["id"] == 1 and stats["maxValues"]["id"] == 2
    assert (
        stats["maxValues"]["at"] == "2024-01-01T00:00:00.001Z"
    )  # rounded up, never below the data
    assert stats["minValues"]["at"] == "2023-12-31T23:59:59.999Z"
    assert (
        stats["maxValues"]["name"] == "z" * 32 + "\U0010ffff"
    )  # above every string with that prefix
    assert stats["minValues"]["name"] == "a" * 32
    assert stats["minValues"]["day"] == "1969-12-31"
    assert stats["maxValues"]["score"] == 1.5  # NaN is not a bound
    assert '"amount":-99999999999999999999.99' in add["stats"]  # exact decimal, not a float
