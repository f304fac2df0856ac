"""Schema policy per table: evolve, freeze, discard-columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from headwater import table

from .lake import Feed, Lake


def landed(
    tmp_path: Path, policy: str, strategy: str = "append", **options: object
) -> tuple[Lake, Feed]:
    lake = Lake(tmp_path)
    feed = Feed([], name="feed")
    lake.declare(
        lambda: table("bronze.t", source=feed, strategy=strategy, schema=policy, **options)
    )
    return lake, feed


def test_evolve_adds_new_columns_as_nullable(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "evolve")
    feed.push([{"id": 1}])
    lake.run()
    feed.push([{"id": 2, "email": "x@y"}])
    (run,) = lake.run()
    assert lake.rows("bronze.t", "id") == [{"id": 1, "email": None}, {"id": 2, "email": "x@y"}]
    assert run.metrics["columns_added"] == 1


def test_evolve_widens_a_column_and_keeps_the_values(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "evolve", strategy="merge", keys=["id"])
    feed.push(pa.table({"id": [1, 2], "n": pa.array([1, 2], pa.int32())}))
    lake.run()
    feed.push(pa.table({"id": [3], "n": pa.array([2**40], pa.int64())}))
    lake.run()
    assert lake.table("bronze.t").schema.field("n").type == pa.int64()
    assert [r["n"] for r in lake.rows("bronze.t", "id")] == [1, 2, 2**40]
    # The position survived the rewrite: nothing is read twice.
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_narrower_values_fit_without_changing_the_table(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "freeze")
    feed.push(pa.table({"n": pa.array([1], pa.int64()), "f": pa.array([1.5], pa.float64())}))
    lake.run()
    feed.push(pa.table({"n": pa.array([2], pa.int16()), "f": pa.array([2.5], pa.float32())}))
    lake.run()
    schema = lake.table("bronze.t").schema
    assert schema.field("n").type == pa.int64() and schema.field("f").type == pa.float64()


def test_freeze_rejects_a_new_column_naming_it(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "freeze")
    feed.push([{"id": 1}])
    lake.run()
    version = lake.version("bronze.t")
    feed.push([{"id": 2, "surprise": True}])
    (run,) = lake.run(check=False)
    assert run.status == "failed"
    assert "bronze.t" in (run.error or "") and "'surprise'" in (run.error or "")
    assert lake.version("bronze.t") == version


def test_freeze_rejects_a_widening(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "freeze")
    feed.push(pa.table({"n": pa.array([1], pa.int32())}))
    lake.run()
    feed.push(pa.table({"n": pa.array([1], pa.int64())}))
    (run,) = lake.run(check=False)
    assert run.status == "failed" and "'n'" in (run.error or "") and "widening" in (run.error or "")


def test_discard_columns_drops_what_the_table_does_not_have(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "discard-columns")
    feed.push([{"id": 1}])
    lake.run()
    feed.push([{"id": 2, "extra": "dropped"}])
    lake.run()
    assert lake.rows("bronze.t", "id") == [{"id": 1}, {"id": 2}]


def test_an_incompatible_type_is_an_error_naming_the_column(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "evolve")
    feed.push([{"amount": 1}])
    lake.run()
    feed.push([{"amount": "one"}])
    (run,) = lake.run(check=False)
    assert (
        run.status == "failed" and "'amount'" in (run.error or "") and "int64" in (run.error or "")
    )


def test_missing_columns_are_written_as_null_and_case_follows_the_table(tmp_path: Path) -> None:
    lake, feed = landed(tmp_path, "freeze")
    feed.push([{"Id": 1, "name": "a"}])
    lake.run()
    feed.push([{"ID": 2}])
    lake.run()
    assert lake.rows("bronze.t", "Id") == [{"Id": 1, "name": "a"}, {"Id": 2, "name": None}]


@pytest.mark.parametrize("name", ["order id", "a,b", "x=y"])
def test_column_names_delta_cannot_store_are_rejected(tmp_path: Path, name: str) -> None:
    lake, feed = landed(tmp_path, "evolve")
    feed.push([{name: 1}])
    (run,) = lake.run(check=False)
    assert run.status == "failed" and repr(name) in (run.error or "") and run.hint
