"""Dimensional modeling helpers: surrogate keys, calendar dimensions, inferred members."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from headwater import RunContext, table
from headwater.errors import ConfigError
from headwater.tables.strategies.dimension import dimension
from headwater.transform.dimensional import (
    add_surrogate_key,
    dim_date,
    dim_time,
    generated,
    missing_members,
    register,
    surrogate_key,
    with_inferred_members,
)

from .lake import Feed, Lake


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# -- surrogate keys ---------------------------------------------------------------------


def test_the_key_is_the_documented_md5_of_normalised_parts() -> None:
    # Each part is `<UTF-8 byte length>:<text>`, NULL is `N`, parts are joined with `|`.
    assert surrogate_key(" Ab\t", 42, None) == md5("2:Ab|2:42|N")
    assert surrogate_key("Zoë") == md5("4:Zoë")  # length in bytes, not characters
    assert surrogate_key(datetime(2024, 5, 1, 12, tzinfo=UTC)) == md5(
        "26:2024-05-01T12:00:00.000000"
    )
    assert surrogate_key(date(2024, 5, 1)) == md5("10:2024-05-01")
    assert surrogate_key(True) == md5("4:true")


def test_the_same_business_key_gives_the_same_key_whatever_its_form() -> None:
    assert (
        surrogate_key(42)
        == surrogate_key(" 42 ")
        == surrogate_key(Decimal("42.00"))
        == surrogate_key(42.0)
    )
    assert surrogate_key(Decimal("1.50")) == surrogate_key("1.5")
    # Unicode is NFC-normalised: a decomposed accent equals the composed one.
    assert surrogate_key("Cafe\u0301") == surrogate_key("Café")
    # Non-breaking spaces and line breaks around a value are trimmed.
    assert surrogate_key("\u00a0FR\n") == surrogate_key("FR")
    # One instant in any zone; a timestamp without zone is read as UTC.
    paris = timezone(timedelta(hours=2))
    assert surrogate_key(datetime(2024, 5, 1, 14, tzinfo=paris)) == surrogate_key(
        datetime(2024, 5, 1, 12, tzinfo=UTC)
    )
    assert surrogate_key(datetime(2024, 5, 1, 12)) == surrogate_key(
        datetime(2024, 5, 1, 12, tzinfo=UTC)
    )
    # Case is kept unless asked.
    assert surrogate_key("ab") != surrogate_key("AB")
    assert surrogate_key("ab", case_insensitive=True) == surrogate_key(" AB", case_insensitive=True)


def test_the_key_is_null_safe_and_separators_cannot_collide() -> None:
    assert surrogate_key("a", None) != surrogate_key(None, "a")
    assert surrogate_key("a|b") != surrogate_key("a", "b")
    assert surrogate_key("1:a") != surrogate_key("1", "a")
    assert surrogate_key(None) == md5("N")
    assert surrogate_key("") != surrogate_key(None)


def test_sql_python_and_tables_agree_whatever_the_session_time_zone() -> None:
    con = duckdb.connect()
    try:
        register(con)
        register(con)  # idempotent
        con.execute("SET TimeZone='Asia/Kolkata'")
        row = con.sql(
            "SELECT surrogate_key(7), surrogate_key(' x ', NULL), surrogate_key_ci('ABC', 'Def'), "
            "surrogate_key(TIMESTAMPTZ '2024-05-01 12:00:00+00', DATE '2024-05-01'), "
            "surrogate_key(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)"
        ).fetchall()[0]
    finally:
        con.close()
    assert row == (
        surrogate_key(7),
        surrogate_key("x", None),
        surrogate_key("abc", "def"),
        surrogate_key(datetime(2024, 5, 1, 12, tzinfo=UTC), date(2024, 5, 1)),
        surrogate_key(*range(1, 13)),
    )
    data = pa.table({"code": ["a1", " A1 "], "country": ["FR", "fr"]})
    keyed = add_surrogate_key(data, ["code", "country"], "k", case_insensitive=["country"])
    # Only the country's case is folded.
    assert keyed.column("k").to_pylist() == [
        surrogate_key("a1", "fr"),
        surrogate_key("A1", "fr"),
    ]
    with pytest.raises(ConfigError, match=r"\['nope'\] are not in the data"):
        add_surrogate_key(data, ["nope"])


KEY_CASES: list[tuple[Any, ...]] = [
    (42,),
    ("Café", None),
    (Decimal("9.90"), date(2024, 2, 29)),
    (datetime(2024, 5, 1, 9, tzinfo=timezone(timedelta(hours=-3))),),
    ("x", 1, True),
]
KEYS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.test_dimensional import KEY_CASES
from headwater.transform.dimensional import surrogate_key
print(json.dumps([surrogate_key(*c) for c in KEY_CASES]))
"""


def test_keys_are_stable_across_processes_time_zones_and_locales() -> None:
    # Another process, in another time zone and locale, computes the same keys as this one.
    env = {**os.environ, "TZ": "Pacific/Kiritimati", "LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8"}
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", KEYS_SCRIPT, root], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    here = [surrogate_key(*c) for c in KEY_CASES]
    assert json.loads(done.stdout) == here
    assert here[0] == md5("2:42")
    assert here[3] == surrogate_key(datetime(2024, 5, 1, 12, tzinfo=UTC))


def test_a_model_computes_the_key_the_dimension_stores(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    customers = Feed([pa.table({"customer_id": [1, 2], "name": ["Ann", "Bo"]})], name="c")
    orders = Feed([pa.table({"order_id": [10, 11], "customer_id": ["1", " 2"]})], name="o")

    def build() -> None:
        table(
            "gold.dim_customer",
            source=customers,
            keys=["customer_id"],
            strategy=dimension(surrogate_key="customer_key"),
        )
        table("bronze.orders", source=orders)

        @table("gold.fact_orders", inputs=["bronze.orders"], strategy="merge", keys=["order_id"])
        def fact(ctx: RunContext, orders: duckdb.DuckDBPyRelation) -> str:
            register(ctx)
            return "SELECT order_id, surrogate_key(customer_id) AS customer_key FROM orders"

    lake.declare(build)
    lake.run()
    dim = {r["customer_id"]: r["customer_key"] for r in lake.rows("gold.dim_customer")}
    facts = {r["order_id"]: r["customer_key"] for r in lake.rows("gold.fact_orders")}
    # BIGINT 1 in the dimension, text ' 2' in the facts: the same members.
    assert facts == {10: dim[1], 11: dim[2]}


# -- dim_date / dim_time ----------------------------------------------------------------


DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def test_dim_date_has_one_row_per_day_with_iso_calendar_attributes() -> None:
    days = dim_date("2020-12-28", date(2025, 1, 5))
    rows = days.to_pylist()
    assert len(rows) == (date(2025, 1, 5) - date(2020, 12, 28)).days + 1
    for row in rows:
        d: date = row["date"]
        iso = d.isocalendar()
        assert row["date_key"] == d.year * 10000 + d.month * 100 + d.day
        assert (row["iso_year"], row["iso_week"], row["day_of_week"]) == tuple(iso)
        assert row["iso_year_week"] == f"{iso.year}-W{iso.week:02d}"
        assert row["quarter"] == (d.month - 1) // 3 + 1
        assert row["week_start"] == d - timedelta(days=iso.weekday - 1)
        assert row["is_weekend"] == (iso.weekday >= 6)
        assert row["day_name"] == DAY_NAMES[iso.weekday - 1]
    by_date = {r["date"]: r for r in rows}
    leap = by_date[date(2024, 2, 29)]
    assert (leap["is_leap_year"], leap["days_in_month"], leap["month_end"]) == (
        True,
        29,
        date(2024, 2, 29),
    )
    assert leap["is_month_end"] is True and leap["day_of_year"] == 60
    assert (leap["month_name"], leap["month_short"], leap["day_name"], leap["day_short"]) == (
        "February",
        "Feb",
        "Thursday",
        "Thu",
    )
    assert (leap["quarter_start"], leap["quarter_end"], leap["quarter_name"]) == (
        date(2024, 1, 1),
        date(2024, 3, 31),
        "Q1",
    )
    assert by_date[date(2021, 1, 1)]["iso_year_week"] == "2020-W53"
    assert by_date[date(2024, 12, 30)]["iso_year_week"] == "2025-W01"


def test_dim_date_fiscal_calendar_follows_the_start_month() -> None:
    ends = {
        r["date"]: r
        for r in dim_date("2023-06-30", "2024-07-01", fiscal_year_start_month=7).to_pylist()
    }
    starts = {
        r["date"]: r
        for r in dim_date(
            "2024-06-30", "2024-07-01", fiscal_year_start_month=7, fiscal_year_named_by="start"
        ).to_pylist()
    }
    fiscal = (
        "fiscal_year",
        "fiscal_year_name",
        "fiscal_quarter",
        "fiscal_month",
        "fiscal_year_start",
        "fiscal_day_of_year",
    )
    assert tuple(ends[date(2024, 6, 30)][k] for k in fiscal) == (
        2024,
        "FY2024",
        4,
        12,
        date(2023, 7, 1),
        366,  # July 2023 - June 2024 holds 29 February
    )
    assert tuple(ends[date(2024, 7, 1)][k] for k in fiscal) == (
        2025,
        "FY2025",
        1,
        1,
        date(2024, 7, 1),
        1,
    )
    assert ends[date(2023, 10, 15)]["fiscal_quarter"] == 2
    assert (starts[date(2024, 6, 30)]["fiscal_year"], starts[date(2024, 7, 1)]["fiscal_year"]) == (
        2023,
        2024,
    )
    calendar = dim_date("2024-01-01", "2024-12-31").to_pylist()
    assert all(r["fiscal_year"] == r["year"] and r["fiscal_month"] == r["month"] for r in calendar)


def test_dim_date_flags_weekends_and_holidays() -> None:
    holidays = pa.table(
        {
            "date": [date(2024, 5, 1), date(2024, 5, 1), date(2024, 5, 9)],
            "name": ["Labour Day", "May Day", "Ascension"],
        }
    )
    days = {
        r["date"]: r
        for r in dim_date(
            "2024-05-01", "2024-05-11", weekend_days=(5, 6), holidays=holidays
        ).to_pylist()
    }
    assert days[date(2024, 5, 1)]["holiday_name"] == "Labour Day, May Day"
    assert [d.day for d, r in sorted(days.items()) if r["is_holiday"]] == [1, 9]
    assert [d.day for d, r in sorted(days.items()) if r["is_weekend"]] == [3, 4, 10, 11]  # Fri, Sat
    assert [d.day for d, r in sorted(days.items()) if r["is_business_day"]] == [2, 5, 6, 7, 8]
    mapped = dim_date("2024-12-24", "2024-12-26", holidays={date(2024, 12, 25): "Christmas"})
    assert mapped.column("holiday_name").to_pylist() == [None, "Christmas", None]
    listed = dim_date("2024-12-24", "2024-12-26", holidays=["2024-12-26"])
    assert listed.column("is_holiday").to_pylist() == [False, False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "2024-02-01", "end": "2024-01-01"}, "is after end"),
        ({"start": "2024-13-01", "end": "2024-01-01"}, "is not a date"),
        ({"start": "2024-01-01", "end": "2024-01-02", "fiscal_year_start_month": 13}, "1..12"),
        ({"start": "2024-01-01", "end": "2024-01-02", "weekend_days": (0,)}, "ISO day numbers"),
        (
            {"start": "2024-01-01", "end": "2024-01-02", "holidays": pa.table({"day": [1]})},
            "no column 'date'",
        ),
    ],
)
def test_dim_date_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dim_date(**kwargs)


def test_dim_time_at_minute_and_second_grain() -> None:
    minutes = dim_time()
    assert minutes.num_rows == 1440
    assert minutes.column("time_key").to_pylist() == sorted(
        set(minutes.column("time_key").to_pylist())
    )
    by_key = {r["time_key"]: r for r in minutes.to_pylist()}
    assert by_key[1305] == {
        "time_key": 1305,
        "time_of_day": "13:05",
        "hour": 13,
        "minute": 5,
        "minute_of_day": 785,
        "hour_12": 1,
        "am_pm": "PM",
        "day_part": "afternoon",
    }
    assert (by_key[0]["hour_12"], by_key[0]["am_pm"], by_key[0]["day_part"]) == (12, "AM", "night")
    assert by_key[2359]["day_part"] == "evening" and by_key[600]["day_part"] == "morning"
    seconds = dim_time("second")
    assert seconds.num_rows == 86400
    last = seconds.slice(86399).to_pylist()[0]
    assert (last["time_key"], last["time_of_day"], last["second_of_day"]) == (
        235959,
        "23:59:59",
        86399,
    )
    with pytest.raises(ConfigError, match="grain"):
        dim_time("hour")  # type: ignore[arg-type]


def test_a_generated_calendar_table_is_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    end = {"date": date(2024, 1, 31)}
    lake.declare(
        lambda: table(
            "gold.dim_date",
            source=generated(lambda: dim_date("2024-01-01", end["date"]), "dim_date"),
            strategy="merge",
            keys=["date_key"],
        )
    )
    lake.run()
    assert len(lake.rows("gold.dim_date")) == 31
    version, files = lake.version("gold.dim_date"), lake.files("gold.dim_date")
    assert lake.run()[0].status == "up-to-date"
    assert lake.version("gold.dim_date") == version
    end["date"] = date(2024, 2, 29)  # a longer range: only the new days are written
    lake.run()
    rows = lake.rows("gold.dim_date", "date")
    assert len(rows) == 60 and rows[-1]["date_key"] == 20240229
    assert files <= lake.files("gold.dim_date")


# -- inferred members ---------------------------------------------------------------------


def test_facts_never_reference_a_missing_member_and_placeholders_are_filled_in(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path)
    customers = Feed([], name="customers")
    orders = Feed([], name="orders")

    def build() -> None:
        table("bronze.customers", source=customers)
        table("bronze.orders", source=orders)

        @table(
            "gold.dim_customer",
            inputs=["bronze.customers", "bronze.orders"],
            keys=["customer_id"],
            strategy=dimension(scd={"name": 1, "city": 2}, surrogate_key="customer_key"),
        )
        def dim_customer(
            ctx: RunContext, customers: duckdb.DuckDBPyRelation, orders: duckdb.DuckDBPyRelation
        ) -> duckdb.DuckDBPyRelation:
            return with_inferred_members(
                ctx, customers, orders, keys=["customer_id"], unknown="unknown"
            )

        @table("gold.fact_orders", inputs=["bronze.orders"], strategy="merge", keys=["order_id"])
        def fact_orders(ctx: RunContext, orders: duckdb.DuckDBPyRelation) -> str:
            # A returned SQL string finds surrogate_key ready: no register(ctx) needed.
            return "SELECT order_id, surrogate_key(customer_id) AS customer_key, amount FROM orders"

    lake.declare(build)
    schema = pa.schema([("customer_id", pa.int64()), ("name", pa.string()), ("city", pa.string())])

    def dim() -> dict[int, dict[str, Any]]:
        return {r["customer_id"]: r for r in lake.rows("gold.dim_customer") if r["is_current"]}

    def orphans() -> set[str]:
        members = {r["customer_key"] for r in lake.rows("gold.dim_customer")}
        return {r["customer_key"] for r in lake.rows("gold.fact_orders")} - members

    customers.push(
        pa.Table.from_pylist([{"customer_id": 1, "name": "Ann", "city": "Paris"}], schema=schema)
    )
    orders.push(
        [
            {"order_id": 10, "customer_id": 1, "amount": 5},
            {"order_id": 11, "customer_id": 2, "amount": 7},
        ]
    )
    lake.run()
    assert orphans() == set()
    placeholder = dim()[2]
    assert (placeholder["name"], placeholder["city"], placeholder["is_inferred"]) == (
        "unknown",
        "unknown",
        True,
    )
    assert dim()[1]["is_inferred"] is False

    # The real customer 2 arrives: the placeholder is filled in, keeping its key.
    customers.push(
        pa.Table.from_pylist([{"customer_id": 2, "name": "Bo", "city": "Oslo"}], schema=schema)
    )
    lake.run()
    filled = dim()[2]
    assert (filled["name"], filled["city"], filled["is_inferred"]) == ("Bo", "Oslo", False)
    assert filled["customer_key"] == placeholder["customer_key"] == surrogate_key(2)
    assert filled["valid_from"] == placeholder["valid_from"]
    assert len(lake.rows("gold.dim_customer")) == 2  # filled in place, no new version

    # Orders of known customers add no placeholder; a new one does.
    orders.push(
        [
            {"order_id": 12, "customer_id": 2, "amount": 1},
            {"order_id": 13, "customer_id": 3, "amount": 2},
        ]
    )
    lake.run()
    assert orphans() == set()
    assert sorted(dim()) == [1, 2, 3] and dim()[3]["is_inferred"] is True
    assert dim()[2]["name"] == "Bo"


def test_missing_members_and_placeholder_defaults() -> None:
    con = duckdb.connect()
    try:
        members = con.sql("SELECT * FROM (VALUES (1, 'a', 3.5)) v(id, label, score)")
        refs = pa.table({"cust": [1, 2, 2, None, 4], "_change_type": ["insert"] * 4 + ["delete"]})
        missing = missing_members(con, refs, members, {"id": "cust"})
        assert missing.fetchall() == [(2,)]  # NULL keys and deletes reference nothing
        rows = with_inferred_members(
            con, members, refs, {"id": "cust"}, defaults={"score": 0}, unknown="?"
        ).fetchall()
        assert sorted(rows) == [(1, "a", 3.5, False), (2, "?", 0.0, True)]
        with pytest.raises(ConfigError, match="no column 'customer_id'"):
            missing_members(con, refs, members, {"id": "customer_id"})
        with pytest.raises(ConfigError, match=r"defaults name columns .*\['nope'\]"):
            with_inferred_members(con, members, refs, {"id": "cust"}, defaults={"nope": 1})
    finally:
        con.close()
