"""The `dimension` write strategy on real Delta tables: SCD type per attribute,
surrogate keys, inferred members, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater import table
from headwater.errors import ConfigError
from headwater.tables.strategies._keyed import KeyedStrategy
from headwater.tables.strategies.dimension import dimension
from headwater.transform.dimensional import surrogate_key

from .lake import Feed, Lake, content


def ts(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


@pytest.fixture(params=["duckdb", "arrow"])
def lake(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """Both ways of rewriting a touched file: DuckDB and streaming through Arrow."""
    if request.param == "arrow":
        monkeypatch.setattr(KeyedStrategy, "_duckdb_can_rewrite", lambda self, ctx, logged: False)
    return Lake(tmp_path)


CUSTOMER = pa.schema(
    [
        ("id", pa.int64()),
        ("birth", pa.string()),
        ("name", pa.string()),
        ("segment", pa.string()),
        ("city", pa.string()),
        ("country", pa.string()),
    ]
)
ALL_TYPES = {"birth": 0, "name": 1, "segment": 2, "city": 3, "country": 6}


def customers(*rows: dict[str, Any], schema: pa.Schema = CUSTOMER) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def customer(
    id: int, birth: str | None, name: str, segment: str, city: str, country: str
) -> dict[str, Any]:
    return {
        "id": id,
        "birth": birth,
        "name": name,
        "segment": segment,
        "city": city,
        "country": country,
    }


def land(lake: Lake, strategy: str, name: str = "gold.dim_customer", **options: Any) -> Feed:
    feed = Feed([], name="feed")
    options.setdefault("keys", ["id"])
    lake.declare(lambda: table(name, source=feed, strategy=strategy, **options))
    return feed


def versions(lake: Lake, name: str = "gold.dim_customer") -> list[dict[str, Any]]:
    return lake.rows(name, "id", "valid_from", drop=("row_hash",))


def test_scd_types_0_1_2_3_6_on_one_dimension(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES, surrogate_key="customer_key"))
    feed.push(customers(customer(1, None, "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    # birth is unknown until now (filled once); every other attribute changes.
    feed.push(customers(customer(1, "1990", "Anne", "B", "Lyon", "DE")))
    lake.run(run_ts=ts(2))
    # birth is type 0 (kept); only the type 3 and 6 attributes change again.
    feed.push(customers(customer(1, "1991", "Anne", "B", "Nice", "IT")))
    lake.run(run_ts=ts(3))

    key = surrogate_key(1)
    common = {"id": 1, "birth": "1990", "name": "Anne", "customer_key": key, "is_inferred": False}
    assert versions(lake) == [
        {
            **common,
            "segment": "A",  # type 2 and 6 attributes keep each version's value
            "country": "FR",
            "city": "Nice",  # type 3: the latest value on every version ...
            "previous_city": "Lyon",  # ... with the one it replaced
            "current_country": "IT",  # type 6: the latest value on every version
            "valid_from": ts(1),
            "valid_to": ts(2),
            "is_current": False,
        },
        {
            **common,
            "segment": "B",
            "country": "DE",
            "city": "Nice",
            "previous_city": "Lyon",
            "current_country": "IT",
            "valid_from": ts(2),
            "valid_to": ts(3),
            "is_current": False,
        },
        {
            **common,
            "segment": "B",
            "country": "IT",
            "city": "Nice",
            "previous_city": "Lyon",
            "current_country": "IT",
            "valid_from": ts(3),
            "valid_to": None,
            "is_current": True,
        },
    ]


def test_a_change_of_only_type_1_or_3_attributes_makes_no_new_version(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES))
    feed.push(customers(customer(1, "1990", "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    feed.push(customers(customer(1, "1990", "Anne", "A", "Lyon", "FR")))
    result = lake.run(run_ts=ts(2))[0]
    rows = versions(lake)
    assert len(rows) == 1
    assert (rows[0]["name"], rows[0]["city"], rows[0]["previous_city"]) == ("Anne", "Lyon", "Paris")
    assert rows[0]["valid_from"] == ts(1) and rows[0]["is_current"] is True
    assert result.metrics["versions_added"] == 0


def test_replaying_an_increment_leaves_the_dimension_identical(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES, version_key="version_key"))
    feed.push(
        customers(
            customer(1, "1990", "Ann", "A", "Paris", "FR"),
            customer(2, "1985", "Bo", "A", "Oslo", "NO"),
        )
    )
    lake.run(run_ts=ts(1))
    last = customers(
        customer(1, "1999", "Anne", "B", "Lyon", "DE"),  # the type 0 change is kept out
        customer(2, "1985", "Bo", "A", "Bergen", "NO"),
        customer(3, None, "Cy", "C", "Rome", "IT"),
    )
    feed.push(last)
    lake.run(run_ts=ts(2))
    before, files = lake.table("gold.dim_customer"), lake.files("gold.dim_customer")
    feed.push(last)  # the same increment again, in a later run
    result = lake.run(run_ts=ts(3))[0]
    assert content(lake.table("gold.dim_customer")) == content(before)
    assert lake.files("gold.dim_customer") == files  # nothing changed: no file rewritten
    assert result.metrics["inserted"] == 0 and result.metrics["files_rewritten"] == 0


def test_type_0_change_can_be_an_error_that_publishes_nothing(lake: Lake) -> None:
    feed = land(lake, dimension(scd={"birth": 0}, on_type0_change="error"))
    feed.push(customers(customer(7, "1990", "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    before = lake.version("gold.dim_customer")
    feed.push(customers(customer(7, "1991", "Ann", "A", "Paris", "FR")))
    result = lake.run(run_ts=ts(2), check=False)[0]
    assert result.status == "failed"
    assert result.error is not None
    assert "gold.dim_customer" in result.error and "'birth'" in result.error
    assert "'1990' -> '1991'" in result.error and "id=7" in result.error
    assert lake.version("gold.dim_customer") == before


def test_plain_dimension_takes_tracked_columns_as_type_2_and_the_rest_as_type_1(
    lake: Lake,
) -> None:
    feed = land(lake, "dimension", tracked_columns=["segment"])
    feed.push(customers(customer(1, "1990", "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    feed.push(customers(customer(1, "1990", "Ann", "B", "Lyon", "FR")))
    lake.run(run_ts=ts(2))
    rows = versions(lake)
    assert [(r["segment"], r["city"], r["is_current"]) for r in rows] == [
        ("A", "Lyon", False),
        ("B", "Lyon", True),
    ]
    assert rows[0]["surrogate_key"] == rows[1]["surrogate_key"] == surrogate_key(1)


def test_several_changes_in_one_run_update_the_version_that_run_opened(lake: Lake) -> None:
    feed = land(lake, dimension(scd={"segment": 2}))
    feed.push(customers(customer(1, "1990", "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    # Two increments read by one run (same run timestamp): no zero-length version.
    feed.push(customers(customer(1, "1990", "Ann", "B", "Paris", "FR")))
    feed.push(customers(customer(1, "1990", "Ann", "C", "Paris", "FR")))
    lake.run(run_ts=ts(2))
    rows = versions(lake)
    assert [(r["segment"], r["valid_from"], r["valid_to"]) for r in rows] == [
        ("A", ts(1), ts(2)),
        ("C", ts(2), None),
    ]


def test_a_delete_closes_the_current_version_and_a_return_opens_a_new_one(lake: Lake) -> None:
    feed = land(lake, dimension(scd={"segment": 2, "city": 3}))
    schema = CUSTOMER.append(pa.field("_change_type", pa.string()))
    feed.push(customers(customer(1, "1990", "Ann", "A", "Paris", "FR")))
    lake.run(run_ts=ts(1))
    gone = {**customer(1, "1990", "Ann", "A", "Oslo", "FR"), "_change_type": "delete"}
    feed.push(customers(gone, schema=schema))
    lake.run(run_ts=ts(2))
    feed.push(customers(gone, schema=schema))  # deleting again changes nothing
    lake.run(run_ts=ts(3))
    assert [(r["city"], r["valid_to"], r["is_current"]) for r in versions(lake)] == [
        ("Paris", ts(2), False)  # the delete's row image changes no attribute
    ]
    feed.push(customers(customer(1, "1990", "Ann", "A", "Rome", "FR")))
    lake.run(run_ts=ts(4))
    rows = versions(lake)
    assert [(r["city"], r["previous_city"], r["valid_from"], r["is_current"]) for r in rows] == [
        ("Rome", "Paris", ts(1), False),
        ("Rome", "Paris", ts(4), True),
    ]


def test_a_version_column_ignores_rows_older_than_the_stored_one(lake: Lake) -> None:
    schema = CUSTOMER.append(pa.field("ver", pa.int64()))
    feed = land(lake, dimension(scd={"segment": 2}), version_column="ver")
    feed.push(
        customers({**customer(1, "1990", "Ann", "A", "Paris", "FR"), "ver": 5}, schema=schema)
    )
    lake.run(run_ts=ts(1))
    feed.push(customers({**customer(1, "1990", "Old", "Z", "Oslo", "FR"), "ver": 4}, schema=schema))
    result = lake.run(run_ts=ts(2))[0]
    assert result.metrics["skipped_older"] == 1
    assert [(r["name"], r["segment"], r["ver"]) for r in versions(lake)] == [("Ann", "A", 5)]


def test_composite_keys_get_one_surrogate_key_per_member(lake: Lake) -> None:
    schema = pa.schema([("tenant", pa.string()), ("code", pa.int32()), ("label", pa.string())])
    feed = land(lake, dimension(scd={"label": 2}), keys=["tenant", "code"], partition_by=["tenant"])
    rows = [
        {"tenant": "acme", "code": 1, "label": "x"},
        {"tenant": "acme", "code": 2, "label": "y"},
    ]
    feed.push(pa.Table.from_pylist(rows, schema=schema))
    lake.run(run_ts=ts(1))
    feed.push(pa.Table.from_pylist([{"tenant": "acme", "code": 2, "label": "z"}], schema=schema))
    lake.run(run_ts=ts(2))
    found = lake.rows("gold.dim_customer", "code", "valid_from")
    assert [(r["code"], r["label"], r["is_current"]) for r in found] == [
        (1, "x", True),
        (2, "y", False),
        (2, "z", True),
    ]
    assert found[1]["surrogate_key"] == found[2]["surrogate_key"] == surrogate_key("acme", 2)
    assert found[0]["surrogate_key"] == surrogate_key("acme", 1)


def test_a_downstream_table_sees_every_change_of_the_dimension(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES))
    lake.declare(
        lambda: table(
            "gold.dim_mirror",
            inputs=["gold.dim_customer"],
            strategy="merge",
            keys=["id", "valid_from"],
        )
    )
    feed.push(
        customers(
            customer(1, "1990", "Ann", "A", "Paris", "FR"),
            customer(2, "1985", "Bo", "A", "Oslo", "NO"),
        )
    )
    lake.run(run_ts=ts(1))
    feed.push(customers(customer(1, "1990", "Anne", "B", "Lyon", "DE")))
    lake.run(run_ts=ts(2))
    feed.push(customers(customer(1, "1990", "Anne", "B", "Nice", "DE")))
    lake.run(run_ts=ts(3))
    # Pre-images are ignored, post-images and inserts replayed: the mirror is the dimension.
    assert content(lake.table("gold.dim_mirror")) == content(lake.table("gold.dim_customer"))


# -- inferred members -----------------------------------------------------------------

PLACEHOLDER = CUSTOMER.append(pa.field("_inferred", pa.bool_()))


def placeholder(id: int, text: str | None = None) -> dict[str, Any]:
    return {
        "id": id,
        "birth": text,
        "name": text,
        "segment": text,
        "city": text,
        "country": text,
        "_inferred": True,
    }


def test_an_inferred_member_is_filled_in_place_when_the_real_row_arrives(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES, version_key="version_key"))
    feed.push(customers(placeholder(9, "unknown"), schema=PLACEHOLDER))
    first = lake.run(run_ts=ts(1))[0]
    [inferred] = versions(lake)
    assert inferred["is_inferred"] is True and inferred["name"] == "unknown"
    assert first.metrics["inferred_inserted"] == 1
    # A placeholder for a key that exists changes nothing.
    files = lake.files("gold.dim_customer")
    feed.push(customers(placeholder(9, "other"), schema=PLACEHOLDER))
    lake.run(run_ts=ts(2))
    assert versions(lake) == [inferred] and lake.files("gold.dim_customer") == files

    real = {**customer(9, "1990", "Ivy", "A", "Oslo", "NO"), "_inferred": False}
    feed.push(customers(real, schema=PLACEHOLDER))
    result = lake.run(run_ts=ts(3))[0]
    [filled] = versions(lake)
    assert filled == {
        **customer(9, "1990", "Ivy", "A", "Oslo", "NO"),  # type 0 and 2 attributes too
        "surrogate_key": inferred["surrogate_key"],  # the keys facts already use stay
        "version_key": inferred["version_key"],
        "previous_city": None,  # a placeholder's text is no previous value
        "current_country": "NO",
        "valid_from": ts(1),
        "valid_to": None,
        "is_current": True,
        "is_inferred": False,
    }
    assert result.metrics["inferred_filled"] == 1 and result.metrics["versions_added"] == 0
    # From now on it is an ordinary member: a type 2 change makes a version.
    feed.push(customers({**real, "segment": "B"}, schema=PLACEHOLDER))
    lake.run(run_ts=ts(4))
    assert [(r["segment"], r["is_current"]) for r in versions(lake)] == [("A", False), ("B", True)]


def test_a_real_row_wins_over_a_placeholder_in_the_same_increment(lake: Lake) -> None:
    feed = land(lake, dimension(scd=ALL_TYPES))
    real = {**customer(4, "1990", "Dee", "A", "Oslo", "NO"), "_inferred": False}
    feed.push(
        customers(
            placeholder(4, "unknown"), real, placeholder(5), placeholder(5), schema=PLACEHOLDER
        )
    )
    lake.run(run_ts=ts(1))
    rows = versions(lake)
    assert [(r["id"], r["name"], r["is_inferred"]) for r in rows] == [
        (4, "Dee", False),
        (5, None, True),
    ]


# -- declarations ---------------------------------------------------------------------


def test_bad_declarations_are_one_line_errors(lake: Lake) -> None:
    with pytest.raises(ConfigError, match="SCD type"):
        dimension(scd={"city": 4})
    with pytest.raises(ConfigError, match="default SCD type"):
        dimension(default=3)
    with pytest.raises(ConfigError, match=r"key column\(s\) \['id'\] cannot have an SCD type"):
        land(lake, dimension(scd={"id": 2}))
    with pytest.raises(ConfigError, match="collide"):
        land(lake, dimension(scd={"city": 3, "previous_city": 1}), name="gold.other")
    with pytest.raises(ConfigError, match=r"partitioned by key columns only, not \['city'\]"):
        land(lake, "dimension", name="gold.third", partition_by=["city"])


def test_an_attribute_missing_from_the_data_names_the_table(lake: Lake) -> None:
    feed = land(lake, dimension(scd={"region": 3}))
    feed.push(customers(customer(1, "1990", "Ann", "A", "Paris", "FR")))
    result = lake.run(check=False)[0]
    assert result.status == "failed"
    assert result.error == (
        "table gold.dim_customer: dimension attribute 'region' (SCD type 3) is not in the data"
    )


def test_the_same_options_make_the_same_strategy() -> None:
    first = dimension(scd={"city": 3, "segment": 2}, surrogate_key="k")
    assert first.config == dimension(scd={"segment": 2, "city": 3}, surrogate_key="k").config
    assert first.name == dimension().name == "dimension"
