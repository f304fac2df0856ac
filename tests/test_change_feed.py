"""Downstream tables read only what changed upstream since the version they last processed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from headwater import changes, snapshot, table
from headwater.sources import delta

from .lake import Feed, Lake


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


def test_a_downstream_merge_reads_only_changed_rows_including_deletes(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="merge", keys=["id"]))
    lake.declare(lambda: table("silver.t", inputs=["bronze.t"], strategy="merge", keys=["id"]))
    feed.push([{"id": i, "v": 0} for i in range(1000)])
    lake.run()
    feed.push(
        [
            {"id": 1, "v": 1, "_change_type": None},
            {"id": 2, "v": 1, "_change_type": None},
            {"id": 3, "v": 1, "_change_type": None},
            {"id": 4, "v": 0, "_change_type": "delete"},
        ]
    )
    _, silver = lake.run()
    assert silver.metrics["rows_in"] == 4  # 3 updates + 1 delete, not 1000 rows
    assert silver.metrics["updated"] == 3 and silver.metrics["deleted"] == 1
    assert lake.rows("silver.t", "id") == lake.rows("bronze.t", "id")
    assert len(lake.rows("silver.t")) == 999


def test_an_append_only_table_of_another_engine_is_read_from_its_added_files(
    lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "external" / "events"
    write_deltalake(str(path), pa.table({"id": list(range(10))}))  # no change data feed
    lake.declare(lambda: table("bronze.events", source=delta(str(path)), strategy="append"))
    lake.run()
    write_deltalake(str(path), pa.table({"id": [10, 11]}), mode="append")
    DeltaTable(str(path)).optimize.compact()  # rewrites files without changing data
    write_deltalake(str(path), pa.table({"id": [12]}), mode="append")
    (run,) = lake.run()
    assert run.metrics["rows_in"] == 3
    assert [r["id"] for r in lake.rows("bronze.events", "id")] == list(range(13))


def test_the_change_data_feed_of_another_engine_is_used_where_it_exists(
    lake: Lake, tmp_path: Path
) -> None:
    path = str(tmp_path / "external" / "accounts")
    write_deltalake(
        path,
        pa.table({"id": list(range(100)), "balance": [0] * 100}),
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    lake.declare(
        lambda: table("silver.accounts", source=delta(path), strategy="merge", keys=["id"])
    )
    lake.run()
    updates = pa.table({"id": [5, 6], "balance": [50, 60]})
    (
        DeltaTable(path)
        .merge(updates, "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all()
        .execute()
    )
    DeltaTable(path).delete("id = 7")
    (run,) = lake.run()
    assert run.metrics["rows_in"] == 3  # two post-images and one delete from the cdc files
    expected = DeltaTable(path).to_pyarrow_table().sort_by("id").to_pylist()
    assert lake.rows("silver.accounts", "id") == expected


def test_a_rewrite_without_change_feed_reads_as_delete_and_insert(
    lake: Lake, tmp_path: Path
) -> None:
    path = str(tmp_path / "external" / "dim")
    write_deltalake(path, pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}))
    lake.declare(lambda: table("silver.dim", source=delta(path), strategy="merge", keys=["id"]))
    lake.run()
    DeltaTable(path).delete("id = 2")  # removes the file and adds a rewritten one
    DeltaTable(path).update({"name": "'C'"}, predicate="id = 3")
    lake.run()
    assert lake.rows("silver.dim", "id") == [{"id": 1, "name": "a"}, {"id": 3, "name": "C"}]


def test_changes_expired_from_the_log_ask_for_a_full_refresh(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="append"))
    lake.declare(lambda: table("silver.t", inputs=["bronze.t"], strategy="append"))
    feed.push([{"id": 1}])
    lake.run()
    feed.push([{"id": 2}], [{"id": 3}])
    lake.run("bronze.t")
    bronze = lake.target("bronze.t")
    bronze.table.create_checkpoint()
    (Path(bronze.uri) / "_delta_log" / f"{1:020d}.json").unlink()  # as log retention would
    (run,) = lake.run("silver.t", check=False)
    assert run.status == "failed" and "no longer in the log" in (run.error or "")
    assert "--full-refresh" in (run.hint or "")
    lake.run("silver.t", full_refresh=True)
    assert [r["id"] for r in lake.rows("silver.t", "id")] == [1, 2, 3]


def test_a_gold_table_recomputes_only_the_groups_whose_rows_changed(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("silver.orders", source=feed, strategy="merge", keys=["order_id"]))

    def build() -> None:
        @table(
            "gold.revenue",
            inputs={"changed": changes("silver.orders"), "orders": snapshot("silver.orders")},
            strategy="merge",
            keys=["customer"],
        )
        def revenue(ctx):  # type: ignore[no-untyped-def]
            # Old and new group of a changed row: a moved order updates both customers.
            return ctx.sql(
                """
                SELECT c.customer, coalesce(sum(o.amount), 0) AS revenue, count(o.order_id) AS orders
                FROM (SELECT DISTINCT customer FROM changed) c
                LEFT JOIN orders o USING (customer)
                GROUP BY c.customer
                """
            )

    lake.declare(build)
    feed.push([{"order_id": i, "customer": f"c{i % 10}", "amount": 10} for i in range(100)])
    lake.run()
    feed.push([{"order_id": 0, "customer": "c1", "amount": 10}])  # order 0 moves from c0 to c1
    _, gold = lake.run()
    assert gold.metrics["rows_in"] == 2  # only c0 and c1 recomputed
    rows = {
        r["customer"]: (r["revenue"], r["orders"]) for r in lake.rows("gold.revenue", "customer")
    }
    assert rows["c0"] == (90, 9) and rows["c1"] == (110, 11) and rows["c2"] == (100, 10)


def test_a_snapshot_input_reruns_only_when_the_upstream_has_a_new_version(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("silver.items", source=feed, strategy="append"))

    def build() -> None:
        @table("gold.count", inputs=[snapshot("silver.items")], strategy="overwrite")
        def count(items):  # type: ignore[no-untyped-def]
            return items.aggregate("count(*) AS n")

    lake.declare(build)
    feed.push([{"x": 1}, {"x": 2}])
    lake.run()
    assert lake.rows("gold.count") == [{"n": 2}]
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]
    feed.push([{"x": 3}])
    lake.run()
    assert lake.rows("gold.count") == [{"n": 3}]


def test_a_table_downstream_of_a_source_with_nothing_yet_waits(lake: Lake) -> None:
    feed = Feed([], name="feed")
    lake.declare(lambda: table("bronze.t", source=feed, strategy="append"))
    lake.declare(lambda: table("silver.t", inputs=["bronze.t"], strategy="append"))
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]
    assert not lake.project.target("silver.t").exists
    feed.push([{"x": 1}])
    assert [r.status for r in lake.run()] == ["committed", "committed"]
    assert lake.rows("silver.t") == [{"x": 1}]
