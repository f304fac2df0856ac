"""The `accumulate` write strategy (accumulating-snapshot facts) on real Delta tables."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater import table
from headwater.errors import ConfigError
from headwater.tables.strategies._keyed import KeyedStrategy
from headwater.tables.strategies.accumulate import accumulate

from .lake import Feed, Lake, content

TS = pa.timestamp("us", "UTC")
EVENT = pa.schema(
    [
        ("order_id", pa.int64()),
        ("seq", pa.int64()),
        ("status", pa.string()),
        ("carrier", pa.string()),
        ("ordered_at", TS),
        ("paid_at", TS),
        ("shipped_at", TS),
        ("delivered_at", TS),
    ]
)
MILESTONES = ["ordered_at", "paid_at", "shipped_at", "delivered_at"]


def ts(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


@pytest.fixture(params=["duckdb", "arrow"])
def lake(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """Both ways of rewriting a touched file: DuckDB and streaming through Arrow."""
    if request.param == "arrow":
        monkeypatch.setattr(KeyedStrategy, "_duckdb_can_rewrite", lambda self, ctx, logged: False)
    return Lake(tmp_path)


def event(order_id: int, seq: int, status: str, **values: Any) -> dict[str, Any]:
    return {"order_id": order_id, "seq": seq, "status": status, **values}


def events(*rows: dict[str, Any], schema: pa.Schema = EVENT) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


PLACED = event(1, 1, "placed", ordered_at=ts(1))
PAID = event(1, 2, "paid", paid_at=ts(2))
SHIPPED = event(1, 3, "shipped", shipped_at=ts(3), carrier="DHL")
DELIVERED = event(1, 4, "delivered", delivered_at=ts(5))
COMPLETE = {
    "order_id": 1,
    "seq": 4,
    "status": "delivered",
    "carrier": "DHL",
    "ordered_at": ts(1),
    "paid_at": ts(2),
    "shipped_at": ts(3),
    "delivered_at": ts(5),
}


def land(lake: Lake, name: str, strategy: str, **options: Any) -> Feed:
    feed = Feed([], name="feed")
    options.setdefault("keys", ["order_id"])
    lake.declare(lambda: table(name, source=feed, strategy=strategy, **options))
    return feed


def test_milestones_fill_in_as_events_arrive_and_are_never_erased(lake: Lake) -> None:
    feed = land(lake, "gold.orders", accumulate(MILESTONES), version_column="seq")
    for e in (PLACED, PAID, SHIPPED, DELIVERED):
        feed.push(events(e))
        lake.run()
    assert lake.rows("gold.orders") == [COMPLETE]
    # A late correction event that knows none of the milestones erases none.
    feed.push(events(event(1, 5, "closed")))
    lake.run()
    assert lake.rows("gold.orders") == [{**COMPLETE, "seq": 5, "status": "closed"}]


def test_out_of_order_events_end_with_the_same_row(lake: Lake) -> None:
    feed = land(lake, "gold.orders", accumulate(MILESTONES), version_column="seq")
    for batch in ([DELIVERED], [PAID, SHIPPED], [PLACED]):  # newest first
        feed.push(events(*batch))
        lake.run()
    # The older events fill the milestones but not the newer status or carrier.
    assert lake.rows("gold.orders") == [COMPLETE]


def test_several_events_of_one_key_in_one_increment_are_folded(lake: Lake) -> None:
    feed = land(lake, "gold.orders", accumulate(MILESTONES), version_column="seq")
    feed.push(events(SHIPPED, PLACED, DELIVERED, PAID, event(2, 1, "placed", ordered_at=ts(4))))
    result = lake.run()[0]
    assert result.metrics["inserted"] == 2
    assert lake.rows("gold.orders", "order_id") == [
        COMPLETE,
        {**event(2, 1, "placed", ordered_at=ts(4)), "carrier": None, "paid_at": None}
        | {"shipped_at": None, "delivered_at": None},
    ]


def test_replaying_an_increment_leaves_the_table_identical(lake: Lake) -> None:
    feed = land(lake, "gold.orders", accumulate(MILESTONES), version_column="seq")
    feed.push(events(PLACED, event(2, 1, "placed", ordered_at=ts(2))))
    lake.run()
    last = events(PAID, SHIPPED, event(3, 1, "placed", ordered_at=ts(3)))
    feed.push(last)
    lake.run()
    before, files = lake.table("gold.orders"), lake.files("gold.orders")
    feed.push(last)
    result = lake.run()[0]
    assert content(lake.table("gold.orders")) == content(before)
    assert lake.files("gold.orders") == files
    assert result.metrics["inserted"] == 0 and result.metrics["files_rewritten"] == 0


def test_a_milestone_keeps_its_first_or_last_value_when_events_disagree(lake: Lake) -> None:
    first = land(lake, "gold.first", accumulate(["paid_at"]), version_column="seq")
    last = land(lake, "gold.last", accumulate(["paid_at"], keep="last"), version_column="seq")
    for feed in (first, last):
        feed.push(events(event(1, 2, "paid", paid_at=ts(4))))
        feed.push(events(event(1, 1, "paid", paid_at=ts(2)), event(1, 3, "paid", paid_at=ts(6))))
    lake.run()
    assert lake.rows("gold.first")[0]["paid_at"] == ts(2)
    assert lake.rows("gold.last")[0]["paid_at"] == ts(6)


def test_without_a_version_the_latest_arrival_sets_other_columns(lake: Lake) -> None:
    feed = land(lake, "gold.orders", "accumulate")  # milestones: every timestamp column
    feed.push(events(PLACED, SHIPPED))  # in one increment: arrival order
    lake.run()
    feed.push(events(PAID))  # a later increment is newer, whatever its seq says
    lake.run()
    [row] = lake.rows("gold.orders")
    assert (row["status"], row["seq"], row["carrier"]) == ("paid", 2, "DHL")
    assert (row["ordered_at"], row["paid_at"], row["shipped_at"]) == (ts(1), ts(2), ts(3))


def test_tracked_columns_name_the_milestones_of_plain_accumulate(lake: Lake) -> None:
    feed = land(lake, "gold.orders", "accumulate", tracked_columns=["paid_at"])
    feed.push(events(event(1, 1, "paid", paid_at=ts(4), shipped_at=ts(4))))
    feed.push(events(event(1, 2, "paid", paid_at=ts(2), shipped_at=ts(2))))
    lake.run()
    [row] = lake.rows("gold.orders")
    # paid_at is a milestone (earliest wins); shipped_at is an ordinary column (latest wins).
    assert (row["paid_at"], row["shipped_at"]) == (ts(2), ts(2))
    feed.push(events(event(1, 3, "paid", paid_at=ts(3), shipped_at=ts(3))))
    lake.run()
    [row] = lake.rows("gold.orders")
    assert (row["paid_at"], row["shipped_at"]) == (ts(2), ts(3))


def test_a_delete_removes_the_row_and_later_events_start_it_afresh(lake: Lake) -> None:
    schema = EVENT.append(pa.field("_change_type", pa.string()))
    feed = land(lake, "gold.orders", accumulate(MILESTONES))
    feed.push(events(PLACED, PAID, event(2, 1, "placed", ordered_at=ts(1)), schema=schema))
    lake.run()
    feed.push(
        events(
            {**PAID, "_change_type": "delete"},
            {**event(2, 1, "placed"), "_change_type": "delete"},
            event(2, 2, "placed", ordered_at=ts(7)),  # after the delete: a new start
            schema=schema,
        )
    )
    lake.run()
    rows = lake.rows("gold.orders", "order_id")
    assert [(r["order_id"], r["ordered_at"], r["paid_at"]) for r in rows] == [(2, ts(7), None)]


def test_events_from_an_upstream_change_feed_fold_in_commit_order(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.order_events", source=feed))
    lake.declare(
        lambda: table(
            "gold.orders",
            inputs=["bronze.order_events"],
            strategy=accumulate(MILESTONES),
            keys=["order_id"],
        )
    )
    feed.push(events(PLACED))
    lake.run()  # the first run reads the upstream snapshot
    feed.push(events(SHIPPED))
    lake.run("bronze.order_events")
    feed.push(events(PAID))
    lake.run("bronze.order_events")
    lake.run("gold.orders")  # reads two upstream commits at once
    [row] = lake.rows("gold.orders")
    # The milestones are all there; other columns come from the last commit.
    assert (row["ordered_at"], row["paid_at"], row["shipped_at"]) == (ts(1), ts(2), ts(3))
    assert (row["status"], row["carrier"]) == ("paid", "DHL")


def test_bad_declarations_are_one_line_errors(lake: Lake) -> None:
    with pytest.raises(ConfigError, match="keep must be"):
        accumulate(MILESTONES, keep="middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\['order_id'\] cannot be a milestone"):
        land(lake, "gold.orders", accumulate(["order_id"]))
    feed = land(lake, "gold.other", accumulate(["cancelled_at"]))
    feed.push(events(PLACED))
    result = lake.run(check=False)[0]
    assert result.status == "failed"
    assert result.error == (
        "table gold.other: milestone column(s) ['cancelled_at'] are not in the data"
    )
