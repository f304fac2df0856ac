"""Every write strategy, on real Delta tables: what it does, and that it is idempotent."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater import table
from headwater.errors import ConfigError
from headwater.tables.strategies._keyed import KeyedStrategy

from .lake import Feed, Lake, content


def ts(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


@pytest.fixture(params=["duckdb", "arrow"])
def lake(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """Every test runs with both ways of rewriting a touched file: DuckDB (local
    tables) and streaming through Arrow (object stores, files of older schemas)."""
    if request.param == "arrow":
        monkeypatch.setattr(KeyedStrategy, "_duckdb_can_rewrite", lambda self, ctx, logged: False)
    return Lake(tmp_path)


def land(lake: Lake, name: str, strategy: str, **options: Any) -> Feed:
    feed = Feed([], name="feed")
    lake.declare(lambda: table(name, source=feed, strategy=strategy, **options))
    return feed


# -- idempotency: every strategy ----------------------------------------------------

IDEMPOTENT_CASES: dict[str, tuple[dict[str, Any], list[list[dict[str, Any]]]]] = {
    "insert-if-absent": (
        {"keys": ["event_id"]},
        [
            [{"event_id": 1, "v": "a"}, {"event_id": 2, "v": "b"}],
            [{"event_id": 2, "v": "b"}, {"event_id": 3, "v": "c"}],
        ],
    ),
    "overwrite": ({}, [[{"id": 1, "v": "a"}], [{"id": 1, "v": "b"}, {"id": 2, "v": "c"}]]),
    "replace-partition": (
        {"partition_by": ["day"]},
        [
            [{"day": date(2024, 1, 1), "v": 1}, {"day": date(2024, 1, 2), "v": 2}],
            [{"day": date(2024, 1, 2), "v": 20}, {"day": date(2024, 1, 2), "v": 21}],
        ],
    ),
    "merge": (
        {"keys": ["id"], "version_column": "ver"},
        [
            [{"id": 1, "v": "a", "ver": 1}, {"id": 2, "v": "b", "ver": 1}],
            [{"id": 1, "v": "a2", "ver": 2}, {"id": 3, "v": "c", "ver": 1}],
        ],
    ),
    "delete-insert": (
        {"keys": ["order_id"]},
        [
            [
                {"order_id": 1, "line": 1, "qty": 1},
                {"order_id": 1, "line": 2, "qty": 2},
                {"order_id": 2, "line": 1, "qty": 5},
            ],
            [{"order_id": 1, "line": 1, "qty": 7}],
        ],
    ),
    "scd1": (
        {"keys": ["id"]},
        [[{"id": 1, "city": "Paris"}, {"id": 2, "city": "Oslo"}], [{"id": 1, "city": "Lyon"}]],
    ),
    "scd2": (
        {"keys": ["id"]},
        [
            [{"id": 1, "city": "Paris"}, {"id": 2, "city": "Oslo"}],
            [{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Oslo"}],
        ],
    ),
    "cdc-apply": (
        {"keys": ["id"], "sequence_by": "lsn"},
        [
            [{"id": 1, "v": "a", "lsn": 1, "_op": "c"}, {"id": 2, "v": "b", "lsn": 2, "_op": "c"}],
            [{"id": 1, "v": "a2", "lsn": 3, "_op": "u"}, {"id": 2, "v": "b", "lsn": 4, "_op": "d"}],
        ],
    ),
}


@pytest.mark.parametrize("strategy", sorted(IDEMPOTENT_CASES))
def test_applying_the_same_increment_twice_leaves_the_table_identical(
    lake: Lake, strategy: str
) -> None:
    options, batches = IDEMPOTENT_CASES[strategy]
    feed = land(lake, "bronze.t", strategy, **options)
    for batch in batches:
        feed.push(batch)
        lake.run()
    before = lake.table("bronze.t")
    files_before = lake.files("bronze.t")
    feed.push(batches[-1])  # the last increment again, as a new batch
    lake.run()
    after = lake.table("bronze.t")
    assert content(after) == content(before)
    if strategy in ("insert-if-absent", "merge", "scd1", "scd2", "cdc-apply"):
        # Keyed strategies see that nothing changes and rewrite no file.
        assert lake.files("bronze.t") == files_before


def test_append_adds_every_row_and_stores_no_change_columns(lake: Lake) -> None:
    feed = land(lake, "bronze.events", "append")
    feed.push(
        [{"id": 1, "_change_type": "insert"}, {"id": 2, "_change_type": "update_preimage"}],
        [{"id": 3}],
    )
    lake.run()
    assert lake.rows("bronze.events") == [{"id": 1}, {"id": 3}]


def test_insert_if_absent_keeps_the_first_arrival_of_an_event(lake: Lake) -> None:
    feed = land(lake, "bronze.events", "insert-if-absent", keys=["event_id"])
    feed.push([{"event_id": "e1", "n": 1}, {"event_id": "e1", "n": 2}, {"event_id": "e2", "n": 3}])
    lake.run()
    feed.push([{"event_id": "e2", "n": 99}, {"event_id": "e3", "n": 4}])
    lake.run()
    assert lake.rows("bronze.events", "event_id") == [
        {"event_id": "e1", "n": 1},
        {"event_id": "e2", "n": 3},
        {"event_id": "e3", "n": 4},
    ]


def test_overwrite_replaces_the_whole_table_in_one_commit(lake: Lake) -> None:
    feed = land(lake, "gold.snap", "overwrite")
    feed.push([{"k": 1}, {"k": 2}])
    lake.run()
    version = lake.version("gold.snap")
    feed.push([{"k": 3}])
    lake.run()
    assert lake.rows("gold.snap") == [{"k": 3}]
    assert lake.version("gold.snap") == version + 1


def test_replace_partition_rewrites_only_the_partitions_it_receives(lake: Lake) -> None:
    feed = land(lake, "gold.daily", "replace-partition", partition_by=["day"])
    feed.push([{"day": date(2024, 1, 1), "total": 10}, {"day": date(2024, 1, 2), "total": 20}])
    lake.run()
    feed.push([{"day": date(2024, 1, 2), "total": 25}, {"day": date(2024, 1, 3), "total": 30}])
    lake.run()
    assert lake.rows("gold.daily", "day") == [
        {"day": date(2024, 1, 1), "total": 10},
        {"day": date(2024, 1, 2), "total": 25},
        {"day": date(2024, 1, 3), "total": 30},
    ]


def test_replace_partition_needs_partitions(lake: Lake) -> None:
    with pytest.raises(ConfigError, match="needs partition_by"):
        land(lake, "gold.daily", "replace-partition")


def test_merge_upserts_and_never_moves_a_row_backwards(lake: Lake) -> None:
    feed = land(lake, "silver.c", "merge", keys=["id"], version_column="updated_at")
    feed.push(
        [{"id": 1, "name": "a", "updated_at": ts(2)}, {"id": 2, "name": "b", "updated_at": ts(2)}]
    )
    lake.run()
    # id 1: newer wins; id 2: an older version arrives late and is ignored; id 3 is new.
    feed.push(
        [
            {"id": 1, "name": "a-new", "updated_at": ts(3)},
            {"id": 2, "name": "b-old", "updated_at": ts(1)},
            {"id": 3, "name": "c", "updated_at": ts(1)},
        ]
    )
    (run,) = lake.run()
    assert lake.rows("silver.c", "id", drop=("updated_at",)) == [
        {"id": 1, "name": "a-new"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert (
        run.metrics["updated"] == 1
        and run.metrics["inserted"] == 1
        and run.metrics["skipped_older"] == 1
    )


def test_merge_collapses_duplicate_keys_by_the_declared_order(lake: Lake) -> None:
    feed = land(lake, "silver.c", "merge", keys=["id"], order_by="seq")
    feed.push(
        [
            {"id": 1, "v": "late", "seq": 3},
            {"id": 1, "v": "early", "seq": 1},
            {"id": 1, "v": "mid", "seq": 2},
        ]
    )
    lake.run()
    assert lake.rows("silver.c") == [{"id": 1, "v": "late", "seq": 3}]


def test_merge_rejects_duplicate_keys_without_an_order(lake: Lake) -> None:
    feed = land(lake, "silver.c", "merge", keys=["id"])
    feed.push([{"id": 7, "v": "x"}, {"id": 7, "v": "y"}, {"id": 8, "v": "z"}])
    (run,) = lake.run(check=False)
    assert run.status == "failed"
    assert "silver.c" in run.error and "id=7" in run.error and "2 rows" in run.error
    assert "order_by" in (run.hint or "")
    assert not lake.project.target("silver.c").exists  # nothing was published


def test_merge_rejects_null_keys_naming_the_column(lake: Lake) -> None:
    feed = land(lake, "silver.c", "merge", keys=["id"])
    feed.push([{"id": None, "v": "x"}, {"id": 1, "v": "y"}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "NULL in key column 'id'" in (run.error or "")


def test_merge_with_composite_keys_and_partitions(lake: Lake) -> None:
    feed = land(lake, "silver.stock", "merge", keys=["store", "sku"], partition_by=["store"])
    feed.push(
        [
            {"store": "a", "sku": 1, "qty": 1},
            {"store": "a", "sku": 2, "qty": 2},
            {"store": "b", "sku": 1, "qty": 3},
        ]
    )
    lake.run()
    files_b = {f for f in lake.files("silver.stock") if f.startswith("store=b")}
    feed.push([{"store": "a", "sku": 1, "qty": 10}, {"store": "a", "sku": 3, "qty": 30}])
    lake.run()
    assert lake.rows("silver.stock", "store", "sku") == [
        {"store": "a", "sku": 1, "qty": 10},
        {"store": "a", "sku": 2, "qty": 2},
        {"store": "a", "sku": 3, "qty": 30},
        {"store": "b", "sku": 1, "qty": 3},
    ]
    assert files_b <= lake.files("silver.stock")  # the untouched partition was not rewritten


def test_merge_applies_deletes_from_a_change_feed_hard_or_soft(lake: Lake) -> None:
    hard = land(lake, "silver.hard", "merge", keys=["id"])
    soft = land(lake, "silver.soft", "merge", keys=["id"], deletes="soft")
    for feed in (hard, soft):
        feed.push([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
        feed.push([{"id": 1, "v": "a", "_change_type": "delete"}])
    lake.run()
    assert lake.rows("silver.hard") == [{"id": 2, "v": "b"}]
    soft_rows = lake.rows("silver.soft", "id")
    assert [r["id"] for r in soft_rows] == [1, 2]
    assert soft_rows[0]["_deleted_at"] is not None and soft_rows[1]["_deleted_at"] is None
    # A later upsert of the key revives the soft-deleted row.
    soft.push([{"id": 1, "v": "again"}])
    lake.run("silver.soft")
    assert lake.rows("silver.soft", "id")[0] == {"id": 1, "v": "again", "_deleted_at": None}


def test_merge_only_rewrites_files_holding_changed_keys(lake: Lake) -> None:
    feed = land(lake, "silver.big", "merge", keys=["id"])
    for start in range(0, 500, 100):  # five commits -> five files with disjoint key ranges
        feed.push([{"id": i, "v": 0} for i in range(start, start + 100)])
    lake.run()
    before = lake.files("silver.big")
    feed.push([{"id": 250, "v": 1}, {"id": 1000, "v": 1}])
    (run,) = lake.run()
    after = lake.files("silver.big")
    assert len(before - after) == 1  # one file replaced; the other four untouched
    assert run.metrics["files_rewritten"] == 1 and run.metrics["rows_copied"] == 99


def test_delete_insert_replaces_all_rows_of_each_key(lake: Lake) -> None:
    feed = land(lake, "silver.lines", "delete-insert", keys=["order_id"])
    feed.push([{"order_id": 1, "line": 1}, {"order_id": 1, "line": 2}, {"order_id": 2, "line": 1}])
    lake.run()
    feed.push([{"order_id": 1, "line": 9}])
    lake.run()
    assert lake.rows("silver.lines", "order_id", "line") == [
        {"order_id": 1, "line": 9},
        {"order_id": 2, "line": 1},
    ]


def test_scd1_overwrites_and_stamps_only_real_changes(lake: Lake) -> None:
    feed = land(lake, "silver.dim", "scd1", keys=["id"])
    feed.push([{"id": 1, "city": "Paris"}, {"id": 2, "city": "Oslo"}])
    lake.run()
    first = {r["id"]: r for r in lake.rows("silver.dim", "id")}
    feed.push([{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Oslo"}])
    lake.run()
    second = {r["id"]: r for r in lake.rows("silver.dim", "id")}
    assert second[1]["city"] == "Lyon" and second[1]["_updated_at"] > first[1]["_updated_at"]
    assert second[1]["_loaded_at"] == first[1]["_loaded_at"]
    assert second[2] == first[2]  # unchanged: not even re-stamped


def test_scd2_keeps_versions_with_the_run_timestamp(lake: Lake) -> None:
    feed = land(lake, "silver.cust", "scd2", keys=["id"], tracked_columns=["city"])
    feed.push([{"id": 1, "city": "Paris", "name": "Ann"}, {"id": 2, "city": "Oslo", "name": "Bo"}])
    lake.run(run_ts=ts(1))
    feed.push([{"id": 1, "city": "Lyon", "name": "Ann"}, {"id": 2, "city": "Oslo", "name": "Bob"}])
    lake.run(run_ts=ts(5))
    rows = lake.rows("silver.cust", "id", "valid_from", drop=("row_hash",))
    assert rows == [
        {
            "id": 1,
            "city": "Paris",
            "name": "Ann",
            "valid_from": ts(1),
            "valid_to": ts(5),
            "is_current": False,
        },
        {
            "id": 1,
            "city": "Lyon",
            "name": "Ann",
            "valid_from": ts(5),
            "valid_to": None,
            "is_current": True,
        },
        # A change in an untracked column makes no new version.
        {
            "id": 2,
            "city": "Oslo",
            "name": "Bo",
            "valid_from": ts(1),
            "valid_to": None,
            "is_current": True,
        },
    ]


def test_scd2_hash_is_null_safe(lake: Lake) -> None:
    feed = land(lake, "silver.cust", "scd2", keys=["id"], tracked_columns=["a", "b"])
    feed.push([{"id": 1, "a": "x", "b": None}])
    lake.run(run_ts=ts(1))
    feed.push([{"id": 1, "a": None, "b": "x"}])  # same text, other column: a change
    lake.run(run_ts=ts(2))
    feed.push([{"id": 1, "a": None, "b": "x"}])  # identical again: no change
    lake.run(run_ts=ts(3))
    versions = lake.rows("silver.cust", "valid_from")
    assert [(v["a"], v["b"], v["is_current"]) for v in versions] == [
        ("x", None, False),
        (None, "x", True),
    ]


def test_scd2_delete_closes_the_current_version_without_successor(lake: Lake) -> None:
    feed = land(lake, "silver.cust", "scd2", keys=["id"])
    feed.push([{"id": 1, "city": "Paris"}, {"id": 2, "city": "Oslo"}])
    lake.run(run_ts=ts(1))
    feed.push([{"id": 1, "city": "Paris", "_change_type": "delete"}])
    lake.run(run_ts=ts(2))
    rows = lake.rows("silver.cust", "id")
    assert [(r["id"], r["is_current"], r["valid_to"]) for r in rows] == [
        (1, False, ts(2)),
        (2, True, None),
    ]


def test_scd2_with_event_time_keeps_each_version_in_order(lake: Lake) -> None:
    feed = land(lake, "silver.cust", "scd2", keys=["id"], valid_from_column="changed_at")
    feed.push(
        [
            {"id": 1, "city": "Lyon", "changed_at": ts(3)},
            {"id": 1, "city": "Paris", "changed_at": ts(1)},
            {"id": 1, "city": "Paris", "changed_at": ts(2)},  # no change: no version
            {"id": 1, "city": "Nice", "changed_at": ts(4)},
        ]
    )
    lake.run()
    # Replaying an older change later changes nothing.
    feed.push([{"id": 1, "city": "Rome", "changed_at": ts(2)}])
    lake.run()
    rows = lake.rows("silver.cust", "valid_from")
    assert [(r["city"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("Paris", ts(1), ts(3), False),
        ("Lyon", ts(3), ts(4), False),
        ("Nice", ts(4), None, True),
    ]


def test_cdc_apply_follows_log_order_and_ignores_stale_changes(lake: Lake) -> None:
    feed = land(lake, "silver.acct", "cdc-apply", keys=["id"], sequence_by="lsn")
    feed.push(
        [
            {"id": 1, "bal": 10, "lsn": 5, "_op": "u"},
            {"id": 1, "bal": 0, "lsn": 1, "_op": "c"},
            {"id": 2, "bal": 7, "lsn": 2, "_op": "r"},
            {"id": 3, "bal": 1, "lsn": 3, "_op": "c"},
            {"id": 3, "bal": 1, "lsn": 4, "_op": "d"},
        ]
    )
    lake.run()
    assert lake.rows("silver.acct", "id", drop=("lsn",)) == [
        {"id": 1, "bal": 10},
        {"id": 2, "bal": 7},
    ]
    # A redelivered older update is ignored; a newer delete applies.
    feed.push(
        [
            {"id": 1, "bal": 3, "lsn": 4, "_op": "update"},
            {"id": 2, "bal": 7, "lsn": 9, "_op": "delete"},
        ]
    )
    lake.run()
    assert lake.rows("silver.acct", "id", drop=("lsn",)) == [{"id": 1, "bal": 10}]


def test_cdc_apply_soft_deletes_keep_the_sequence_as_a_guard(lake: Lake) -> None:
    feed = land(lake, "silver.acct", "cdc-apply", keys=["id"], sequence_by="lsn", deletes="soft")
    feed.push([{"id": 1, "bal": 1, "lsn": 1, "_op": "c"}])
    feed.push([{"id": 1, "bal": 1, "lsn": 5, "_op": "d"}])
    feed.push([{"id": 1, "bal": 2, "lsn": 3, "_op": "u"}])  # older than the delete
    lake.run()
    (row,) = lake.rows("silver.acct")
    assert row["lsn"] == 5 and row["_deleted_at"] is not None and row["bal"] == 1


def test_cdc_apply_soft_keeps_a_tombstone_for_a_key_created_and_deleted_in_one_increment(
    lake: Lake,
) -> None:
    feed = land(lake, "silver.acct", "cdc-apply", keys=["id"], sequence_by="lsn", deletes="soft")
    feed.push(
        [{"id": 1, "bal": 1, "lsn": 1, "_op": "c"}, {"id": 1, "bal": 1, "lsn": 2, "_op": "d"}]
    )
    feed.push([{"id": 1, "bal": 1, "lsn": 1, "_op": "c"}])  # redelivered: must not resurrect
    lake.run()
    (row,) = lake.rows("silver.acct")
    assert row["lsn"] == 2 and row["_deleted_at"] is not None


def test_cdc_apply_rejects_unknown_operations(lake: Lake) -> None:
    feed = land(lake, "silver.acct", "cdc-apply", keys=["id"], sequence_by="lsn")
    feed.push([{"id": 1, "lsn": 1, "_op": "upsert"}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "'upsert'" in (run.error or "") and "_op" in (run.error or "")


def test_cdc_apply_needs_a_sequence(lake: Lake) -> None:
    with pytest.raises(ConfigError, match="sequence_by"):
        land(lake, "silver.acct", "cdc-apply", keys=["id"])


def test_types_survive_the_round_trip(lake: Lake) -> None:
    feed = land(lake, "bronze.types", "merge", keys=["id"])
    row = {
        "id": 1,
        "amount": Decimal("12345678.90"),
        "at": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
        "day": date(2024, 5, 1),
        "flag": True,
        "blob": b"\x00\x01",
        "tags": ["a", "b"],
        "info": {"x": 1, "y": "z"},
        "ratio": 0.5,
        "note": None,
    }
    data = pa.Table.from_pylist(
        [row],
        schema=pa.schema(
            [
                ("id", pa.int32()),
                ("amount", pa.decimal128(12, 2)),
                ("at", pa.timestamp("ns", "UTC")),
                ("day", pa.date32()),
                ("flag", pa.bool_()),
                ("blob", pa.large_binary()),
                ("tags", pa.list_(pa.large_string())),
                ("info", pa.struct([("x", pa.int64()), ("y", pa.string())])),
                ("ratio", pa.float32()),
                ("note", pa.null()),
            ]
        ),
    )
    feed.push(data)
    lake.run()
    feed.push(data)  # unchanged row of every type: no-op
    lake.run()
    (stored,) = lake.rows("bronze.types", "id")
    assert stored == {**row, "id": 1}
    assert lake.table("bronze.types").schema.field("at").type == pa.timestamp("us", "UTC")


def test_an_update_that_moves_a_row_to_another_partition_moves_it(lake: Lake) -> None:
    feed = land(lake, "silver.orders", "merge", keys=["id"], partition_by=["status"])
    feed.push([{"id": 1, "status": "new"}, {"id": 2, "status": "new"}])
    lake.run()
    feed.push([{"id": 1, "status": "shipped"}])
    lake.run()
    assert lake.rows("silver.orders", "id") == [
        {"id": 1, "status": "shipped"},
        {"id": 2, "status": "new"},
    ]
    # Read back by partition: the row lives in its new partition, not the old one.
    shipped = (
        lake.target("silver.orders")
        .dataset()
        .to_table(filter=pa.compute.field("status") == "shipped")
    )
    assert shipped.column("id").to_pylist() == [1]
    # A file whose every row moved away leaves no empty file behind.
    feed.push([{"id": 2, "status": "shipped"}])
    lake.run()
    new_files = [p for p in lake.files("silver.orders") if p.startswith("status=new")]
    assert new_files == []
