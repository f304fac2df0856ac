"""Stream operators one by one, on real Delta tables: joins, idle partitions, re-emission,
running aggregates with a state TTL, micro-batch bounds, metrics and the lateness report."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from headwater import table
from headwater.errors import ConfigError
from headwater.sources.generator import GeneratorSource
from headwater.stream import (
    approx_distinct,
    count,
    dedup,
    interval_join,
    quantile,
    session,
    stream,
    sum_,
    temporal_join,
    tumbling,
)

from . import stream_oracle as oracle
from .conftest import run_cli, write_pipeline
from .lake import Feed, Lake

SECOND = 1_000_000
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def us(value: datetime) -> int:
    return int(value.timestamp() * SECOND)


# -- stream-stream interval join ------------------------------------------------------------


@pytest.mark.parametrize(("seed", "lateness", "lower", "upper"), [(4, 0, 0, 30), (11, 10, -20, 15)])
def test_interval_join_pairs_exactly_the_on_time_events_within_the_interval(
    tmp_path: Path, seed: int, lateness: int, lower: int, upper: int
) -> None:
    rng = random.Random(seed)
    views, clicks = Feed([]), Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: (
            table("bronze.views", source=views),
            table("bronze.clicks", source=clicks),
            table(
                "silver.clicked",
                inputs={"views": "bronze.views", "clicks": "bronze.clicks"},
                stream=stream(
                    event_time="ts",
                    watermark="5s",
                    join=interval_join("clicks", on="ad", lower=f"{lower}s", upper=f"{upper}s"),
                    allowed_lateness=f"{lateness}s",
                ),
            ),
        )
    )
    # A micro-batch reads what each upstream committed since the last one: the views
    # first, then the clicks. That is the arrival order the oracle follows.
    arrivals: list[tuple[str, dict[str, Any]]] = []
    pending: dict[str, list[dict[str, Any]]] = {"views": [], "clicks": []}
    clock = 0.0
    for batch in range(10):
        for side, feed in (("views", views), ("clicks", clicks)):
            if batch in (4, 5) and side == "clicks":
                continue  # micro-batches where one input has nothing
            rows = []
            for i in range(rng.randint(1, 6)):
                clock += rng.randint(0, 6)
                behind = rng.choice([0, 0, 3, 40])  # some beyond the watermark delay
                rows.append(
                    {
                        "id": f"{side[0]}{batch}-{i}",
                        "ad": rng.choice("xy"),
                        "ts": at(clock - behind),
                    }
                )
            feed.push(rows)
            pending[side] += rows
        if batch % 3 != 1:
            lake.run()
            arrivals += [("views", r) for r in pending["views"]]
            arrivals += [("clicks", r) for r in pending["clicks"]]
            pending = {"views": [], "clicks": []}

    events = [
        oracle.Event(i, us(r["ts"]), side, {**r, "side": side})
        for i, (side, r) in enumerate(arrivals)
    ]
    wms = oracle.watermarks(events, 5 * SECOND, None, ("views", "clicks")).watermarks
    on_time = [e for e, wm in zip(events, wms, strict=True) if e.ts >= wm - lateness * SECOND]
    expected = sorted(
        (v.row["id"], c.row["id"])
        for v in on_time
        if v.row["side"] == "views"
        for c in on_time
        if c.row["side"] == "clicks"
        and v.row["ad"] == c.row["ad"]
        and v.ts + lower * SECOND <= c.ts <= v.ts + upper * SECOND
    )
    got = lake.table("silver.clicked")
    assert (
        sorted(zip(got.column("id").to_pylist(), got.column("clicks_id").to_pylist(), strict=True))
        == expected
    )
    assert expected, "the case pairs nothing: it would prove nothing"
    late = lake.table("silver.clicked__late")
    assert sorted(late.column("id").to_pylist()) == sorted(
        e.row["id"] for e, wm in zip(events, wms, strict=True) if e.ts < wm - lateness * SECOND
    )
    assert set(late.column("_reason").to_pylist()) == {"join horizon"}


def test_window_join_over_two_sources_pairs_keys_of_different_names_in_the_same_window(
    tmp_path: Path,
) -> None:
    # Two connectors read directly by one table; the sellers' input starts two pushes
    # late (it holds the watermark back until then), and the working copy of the state
    # is lost once (rebuilt from the committed changelog).
    rng = random.Random(5)
    people, sales = Feed([]), Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.sellers",
            source={"people": people, "sales": sales},
            stream=stream(
                event_time="ts",
                watermark="4s",
                join=interval_join(
                    "sales", on={"id": "seller"}, lower="-10s", upper="10s", same_window="10s"
                ),
            ),
        )
    )
    arrivals: list[tuple[str, dict[str, Any]]] = []
    pending: dict[str, list[list[dict[str, Any]]]] = {"people": [], "sales": []}
    clock = 0.0
    for push in range(12):
        for side, feed in (("people", people), ("sales", sales)):
            if side == "sales" and push < 2:
                continue
            rows = []
            for i in range(rng.randint(1, 6)):
                clock += rng.randint(0, 3)
                behind = rng.choice([0, 0, 2, 9])  # some beyond the watermark delay
                key = (
                    {"id": rng.choice([1, 2])}
                    if side == "people"
                    else {"seller": rng.choice([1, 2])}
                )
                rows.append({"name": f"{side[0]}{push}-{i}", **key, "ts": at(clock - behind)})
            feed.push(rows)
            pending[side].append(rows)
        if push % 4 == 3:
            lake.run()
            # Each micro-batch takes one increment of each input: people's first.
            for i in range(max(len(pending["people"]), len(pending["sales"]))):
                for side in ("people", "sales"):
                    if i < len(pending[side]):
                        arrivals += [(side, r) for r in pending[side][i]]
            pending = {"people": [], "sales": []}
        if push == 7:
            for path in (tmp_path / ".headwater" / "stream").glob("*.duckdb*"):
                path.unlink()

    events = [
        oracle.Event(i, us(r["ts"]), side, {**r, "side": side})
        for i, (side, r) in enumerate(arrivals)
    ]
    wms = oracle.watermarks(events, 4 * SECOND, None, ("people", "sales")).watermarks
    on_time = [e for e, wm in zip(events, wms, strict=True) if e.ts >= wm]
    window = 10 * SECOND
    expected = sorted(
        (p.row["name"], s.row["name"])
        for p in on_time
        if p.row["side"] == "people"
        for s in on_time
        if s.row["side"] == "sales"
        and p.row["id"] == s.row["seller"]
        and p.ts // window == s.ts // window
    )
    got = lake.table("silver.sellers")
    assert "seller" not in got.column_names
    assert (
        sorted(
            zip(got.column("name").to_pylist(), got.column("sales_name").to_pylist(), strict=True)
        )
        == expected
    )
    assert len(expected) > 5, "the case pairs little: it would prove little"
    assert any(wm <= oracle.NEVER for wm in wms[:3])  # held back before the first sale


def test_window_join_and_named_sources_refuse_what_they_cannot_mean() -> None:
    with pytest.raises(ConfigError, match="same_window must be a positive"):
        interval_join("b", on="k", lower="-1s", upper="1s", same_window="0s")
    joined = interval_join("b", on={"id": "seller"}, lower="-1s", upper="1s")
    assert joined.keys == (("id", "seller"),)
    with pytest.raises(ConfigError, match="not a valid parameter name"):
        table("silver.x", source={"not valid": Feed([]), "b": Feed([])})
    with pytest.raises(ConfigError, match="names no connector"):
        table("silver.x", source={})
    with pytest.raises(ConfigError, match=r"a connector from headwater\.sources"):
        table("silver.x", source={"a": "bronze.a"})  # type: ignore[dict-item]


# -- stream-table temporal join ---------------------------------------------------------------


@pytest.mark.parametrize("isin_keys", [10_000, 1])
def test_temporal_join_takes_the_dimension_version_valid_at_event_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isin_keys: int
) -> None:
    # The dimension is read by the events' keys, or (more keys than isin_keys) by their range.
    from headwater.stream.joins import temporal

    monkeypatch.setattr(temporal, "ISIN_KEYS", isin_keys)
    customers, orders = Feed([]), Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: (
            table(
                "silver.customers",
                source=customers,
                strategy="scd2",
                keys=["customer_id"],
                valid_from_column="changed_at",
            ),
            table(
                "silver.orders",
                source=orders,
                stream=stream(
                    event_time="ts",
                    join=temporal_join("silver.customers", on="customer_id", columns=["segment"]),
                ),
            ),
        )
    )
    customers.push(
        [
            {"customer_id": 1, "segment": "bronze", "changed_at": at(0)},
            {"customer_id": 2, "segment": "silver", "changed_at": at(0)},
        ]
    )
    lake.run("silver.customers")
    customers.push([{"customer_id": 1, "segment": "gold", "changed_at": at(100)}])
    lake.run("silver.customers")
    orders.push(
        [
            {"order_id": "a", "customer_id": 1, "ts": at(50)},  # before the upgrade
            {"order_id": "b", "customer_id": 1, "ts": at(150)},  # after it
            {"order_id": "c", "customer_id": 2, "ts": at(10)},
            {"order_id": "d", "customer_id": 3, "ts": at(10)},  # unknown customer: left join
            {"order_id": "e", "customer_id": 1, "ts": at(-10)},  # before the customer existed
        ]
    )
    # The dimension is an upstream of the stream: a run of everything builds it first.
    order = lake.project.order()
    assert order.index("silver.customers") < order.index("silver.orders")
    lake.run("silver.orders")
    got = {r["order_id"]: r["segment"] for r in lake.table("silver.orders").to_pylist()}
    assert got == {"a": "bronze", "b": "gold", "c": "silver", "d": None, "e": None}
    # The dimension version read is recorded with the micro-batch (a replay reads the same).
    history = lake.target("silver.orders").table.history(1)[0]
    assert history["headwater"]["stream"]["dims"] == {
        "silver.customers": lake.version("silver.customers")
    }


# -- idle partitions ---------------------------------------------------------------------------


@pytest.mark.parametrize("idle_timeout", [None, "1m"])
def test_an_idle_partition_stops_holding_the_watermark_back_after_the_timeout(
    tmp_path: Path, idle_timeout: str | None
) -> None:
    source = GeneratorSource(
        600, partitions=3, seed=2, every="1s", idle_partition=1, idle_after=30, batch_size=100
    )
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=source,
            stream=stream(
                event_time="ts",
                watermark="5s",
                idle_timeout=idle_timeout,
                window=tumbling("1m"),
                group_by=["key"],
                aggregates={"n": count(), "total": sum_("amount")},
            ),
        )
    )
    lake.run()
    rows = source.rows(0, 600).to_pylist()
    events = [oracle.Event(i, us(r["ts"]), str(r["partition"]), r) for i, r in enumerate(rows)]
    idle = None if idle_timeout is None else 60 * SECOND
    judged = oracle.watermarks(events, 5 * SECOND, idle)
    pairs, late = oracle.tumbling_windows(
        events, judged.watermarks, list(range(len(events))), 60 * SECOND, 0
    )
    expected = oracle.aggregate_sql(events, pairs, 60 * SECOND, ["key"], judged.final)
    got = lake.table("silver.per_minute") if lake.target("silver.per_minute").exists else None
    closed = 0 if got is None else got.num_rows
    assert closed == len(expected)
    if idle_timeout is None:
        # Partition 1 went quiet at its 30th event: the watermark stays there.
        assert max((r["window_end"] for r in expected), default=0) <= us(at(31))
    else:
        assert closed > 20  # windows close as the other partitions move on
        assert sorted(
            (r["key"], us(r["window_start"]), r["n"], r["total"]) for r in got.to_pylist()
        ) == sorted((r["key"], r["window_start"], r["n"], int(r["total"])) for r in expected)
    assert not late


# -- allowed lateness: re-emission by upsert -------------------------------------------------


def test_allowed_lateness_re_emits_the_window_and_later_events_go_to_late(
    tmp_path: Path,
) -> None:
    feed = Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="0s",
                window=tumbling("1m"),
                aggregates={"n": count(), "total": sum_("amount")},
                allowed_lateness="1m",
            ),
        )
    )
    feed.push([{"id": 1, "ts": at(10), "amount": 1}, {"id": 2, "ts": at(70), "amount": 2}])
    lake.run()  # watermark 70s: [0, 60) closes and is written
    assert lake.rows("silver.per_minute", "window_start", drop=("window_end",)) == [
        {"window_start": at(0), "n": 1, "total": 1}
    ]
    feed.push([{"id": 3, "ts": at(20), "amount": 10}])  # late, within the allowed lateness
    [run] = lake.run()
    assert run.metrics["re_emitted"] == 1 and run.metrics["late"] == 0
    feed.push([{"id": 4, "ts": at(130), "amount": 5}, {"id": 5, "ts": at(30), "amount": 100}])
    [run] = lake.run()  # watermark 130s: [0, 60) is gone for good, id 5 is late
    assert run.metrics["late"] == 1
    assert lake.rows("silver.per_minute", "window_start", drop=("window_end",)) == [
        {"window_start": at(0), "n": 2, "total": 11},  # upserted in place, not appended
        {"window_start": at(60), "n": 1, "total": 2},
    ]
    late = lake.table("silver.per_minute__late").to_pylist()
    assert [(r["id"], r["_reason"], r["_lateness"]) for r in late] == [(5, "window closed", 100.0)]


def live_state(lake: Lake, name: str) -> list[tuple[str, str]]:
    """(operator, key) of the live state: the newest changelog row of each key, if not a delete."""
    newest: dict[tuple[str, str], tuple[int, str | None]] = {}
    for row in lake.table(f"{name}__state").to_pylist():
        key = (row["_operator"], row["_key"])
        if key not in newest or row["_batch"] > newest[key][0]:
            newest[key] = (row["_batch"], row["_row"])
    return sorted(k for k, (_, row) in newest.items() if row is not None)


# -- running aggregates with a state TTL -----------------------------------------------------


def test_running_aggregates_per_key_expire_after_the_state_ttl(tmp_path: Path) -> None:
    feed = Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.totals",
            source=feed,
            stream=stream(
                event_time="ts",
                group_by=["user"],
                aggregates={"n": count(), "total": sum_("amount")},
                state_ttl="10m",
            ),
        )
    )
    feed.push([{"user": "a", "ts": at(0), "amount": 1}, {"user": "b", "ts": at(0), "amount": 2}])
    feed.push([{"user": "a", "ts": at(60), "amount": 3}])
    lake.run()
    assert lake.rows("silver.totals", "user") == [
        {"user": "a", "n": 2, "total": 4},
        {"user": "b", "n": 1, "total": 2},
    ]
    assert len(live_state(lake, "silver.totals")) == 2
    feed.push([{"user": "b", "ts": at(700), "amount": 5}])  # a's state (last 60s) expires
    [run] = lake.run()
    assert run.metrics["state_expired"] == 1
    assert [k for _, k in live_state(lake, "silver.totals")] == ['{"user":"b"}@']
    feed.push([{"user": "a", "ts": at(710), "amount": 7}])  # a starts over
    lake.run()
    assert lake.rows("silver.totals", "user") == [
        {"user": "a", "n": 1, "total": 7},
        {"user": "b", "n": 2, "total": 7},
    ]


# -- micro-batch bounds and metrics ------------------------------------------------------------


def test_max_records_bounds_each_micro_batch_and_metrics_are_reported(tmp_path: Path) -> None:
    source = GeneratorSource(1000, partitions=2, seed=1, every="1s", batch_size=1000)
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=source,
            stream=stream(
                event_time="ts",
                window=tumbling("1m"),
                aggregates={"n": count()},
                max_records=300,
            ),
        )
    )
    [run] = lake.run()
    assert run.commits == 4  # 300 + 300 + 300 + 100
    assert run.metrics["events_in"] == 1000
    for name in ("batch_ms", "processing_rate", "state_rows", "state_bytes", "emitted"):
        assert name in run.metrics
    assert run.metrics["state_rows"] >= 1
    history = lake.target("silver.per_minute").table.history(4)
    batches = [h["headwater"]["stream"]["metrics"] for h in history]
    assert sorted(b["events_in"] for b in batches) == [100.0, 300.0, 300.0, 300.0]
    # The generator reports what it has on offer beyond each micro-batch: consumer lag.
    assert sorted(b["consumer_lag"] for b in batches) == [0.0, 100.0, 400.0, 700.0]
    assert run.metrics["consumer_lag"] == 0


def test_available_now_and_continuous_runs_give_the_same_table(tmp_path: Path) -> None:
    """The same definition drained at once, or micro-batch by micro-batch as events come."""
    options = dict(
        events=900, partitions=3, seed=9, every="1s", disorder="20s", duplicates=0.05, keys=3
    )

    def declare(lake: Lake, max_records: int) -> None:
        lake.declare(
            lambda: table(
                "silver.per_minute",
                source=GeneratorSource(**options, batch_size=max_records),  # type: ignore[arg-type]
                stream=stream(
                    event_time="ts",
                    watermark="10s",
                    window=tumbling("1m"),
                    group_by=["key"],
                    aggregates={"n": count(), "total": sum_("amount")},
                    allowed_lateness="30s",
                    max_records=max_records,
                ),
            )
        )

    drained = Lake(tmp_path / "drained")
    declare(drained, 900)
    drained.run()
    stepped = Lake(tmp_path / "stepped")
    declare(stepped, 70)
    stepped.run()
    assert drained.rows("silver.per_minute", "key", "window_start") == stepped.rows(
        "silver.per_minute", "key", "window_start"
    )
    assert drained.rows("silver.per_minute__late", "event_id", drop=("_batch",)) == (
        stepped.rows("silver.per_minute__late", "event_id", drop=("_batch",))
    )


# -- headwater stream lateness ------------------------------------------------------------------


def test_lateness_report_gives_quantiles_and_recommends_a_watermark(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "stream",
        """
        from headwater import table
        from headwater.sources import generator
        from headwater.stream import count, stream, tumbling

        table("silver.per_minute",
              source=generator(events=2000, partitions=2, every="1s", disorder="8s",
                               late_fraction=0.01, late_by="2m", seed=3),
              stream=stream(event_time="ts", watermark="1s", window=tumbling("1m"),
                            aggregates={"n": count()}))
        """,
    )
    run_cli(project_dir, "run")
    report = json.loads(
        run_cli(project_dir, "stream", "lateness", "silver.per_minute", "--json").stdout
    )
    assert report["events"] == 2000
    assert report["p50"] <= report["p95"] <= report["p99"] <= report["p99.9"] <= report["max"]
    # Disorder is up to 8s for most events; 1% are 2 minutes behind.
    assert 4 <= report["p95"] <= 10
    assert 100 <= report["max"] <= 200
    assert report["recommended_watermark"] >= report["p99.9"]
    assert report["declared_watermark"] == 1
    text = run_cli(project_dir, "stream", "lateness", "silver.per_minute").stdout
    assert "p99.9" in text and "recommended" in text
    missing = run_cli(project_dir, "stream", "lateness", "silver.nope", check=False)
    assert missing.returncode != 0


# -- at-least-once: state checkpoints every few micro-batches, replays absorbed by upserts ------


def test_at_least_once_replays_from_the_last_state_checkpoint_into_the_same_table(
    tmp_path: Path,
) -> None:
    options = dict(events=800, partitions=2, seed=5, every="1s", disorder="15s", keys=3)

    def declare(lake: Lake, guarantee: str) -> None:
        lake.declare(
            lambda: table(
                "silver.per_minute",
                source=GeneratorSource(**options, batch_size=100),  # type: ignore[arg-type]
                stream=stream(
                    event_time="ts",
                    watermark="10s",
                    window=tumbling("1m"),
                    group_by=["key"],
                    aggregates={"n": count(), "total": sum_("amount")},
                    guarantee=guarantee,  # type: ignore[arg-type]
                    checkpoint_every=3 if guarantee == "at-least-once" else 1,
                    max_records=100,
                ),
            )
        )

    reference = Lake(tmp_path / "reference")
    declare(reference, "exactly-once")
    reference.run()

    cheap = Lake(tmp_path / "cheap")
    declare(cheap, "at-least-once")
    [run] = cheap.run()
    assert run.commits == 8
    # The state table holds the checkpoints of micro-batches 3 and 6 only.
    state = cheap.target("silver.per_minute__state").table.history()
    assert sorted(h["headwater"]["batch"] for h in state if "headwater" in h) == [3, 6]
    # Lose the working copy of the state (another machine, a lost disk): the stream goes
    # back to the last state checkpoint and replays from its positions.
    for path in (tmp_path / "cheap" / ".headwater" / "stream").glob("*.duckdb*"):
        path.unlink()
    [again] = cheap.run()
    assert again.commits == 2  # micro-batches 7 and 8 again, upserted over themselves
    assert cheap.rows("silver.per_minute", "key", "window_start") == reference.rows(
        "silver.per_minute", "key", "window_start"
    )


# -- state memory budget ------------------------------------------------------------------------


def test_state_store_works_within_its_memory_budget(tmp_path: Path) -> None:
    """The state store is DuckDB on local disk with the budget as its memory limit and a
    spill directory beside it: a dedup state of 120k ids runs under a 32MB budget."""
    source = GeneratorSource(120_000, partitions=2, every="10ms", keys=50, batch_size=60_000)
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.deduplicated",
            source=source,
            stream=stream(
                event_time="ts",
                dedup=dedup("event_id", within="1d"),
                window=tumbling("1h"),
                group_by=["key"],
                aggregates={"n": count()},
                max_records=60_000,
                state_memory="32MB",
            ),
        )
    )
    [run] = lake.run()
    assert run.commits == 2
    assert run.metrics["state_rows"] >= 120_000  # one row per id, plus the open windows
    assert run.metrics["state_bytes"] > 0
    from headwater.stream.engine import state_path
    from headwater.stream.state import StateStore, scalar

    path = state_path(lake.project, "silver.deduplicated")
    store = StateStore(path, "32MB", 1)
    try:
        assert scalar(store.con, "SELECT current_setting('memory_limit')") in (
            "30.5 MiB",
            "32.0 MB",
        )
        spill = scalar(store.con, "SELECT current_setting('temp_directory')")
        assert Path(spill).parent == path.parent
        assert scalar(store.con, "SELECT count(*) FROM s_dedup") == 120_000
    finally:
        store.close()


def test_continuous_cli_run_gives_the_available_now_table(tmp_path: Path) -> None:
    """`headwater run --continuous --trigger ...` and a plain (available-now) `headwater run`
    of the same definition commit the same rows."""
    code = """
        from headwater import table
        from headwater.sources import generator
        from headwater.stream import count, dedup, stream, sum_, tumbling

        table("silver.per_minute",
              source=generator(events=600, partitions=2, every="1s", disorder="12s",
                               duplicates=0.05, keys=3, seed=8, batch_size=150),
              stream=stream(event_time="ts", watermark="5s", dedup=dedup("event_id", within="5m"),
                            window=tumbling("1m"), group_by=["key"],
                            aggregates={"n": count(), "total": sum_("amount")},
                            max_records=150))
        """
    tables = {}
    for mode in ("once", "continuous"):
        root = tmp_path / mode
        root.mkdir()
        (root / "headwater.toml").write_text('[project]\nname = "s"\n')
        (root / "pipelines").mkdir()
        write_pipeline(root, "stream", code)
        if mode == "once":
            run_cli(root, "run")
        else:
            run_cli(root, "run", "--continuous", "--trigger", "0.1s", "--cycles", "2")
        tables[mode] = (
            pa_rows(root / "warehouse" / "silver" / "per_minute"),
            pa_rows(root / "warehouse" / "silver" / "per_minute__late"),
        )
    assert tables["once"] == tables["continuous"]
    assert tables["once"][0]


def pa_rows(path: Path) -> list[tuple[Any, ...]]:
    from deltalake import DeltaTable

    if not path.exists():
        return []
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k != "_batch")) for r in rows)


# -- sketches and early emission ----------------------------------------------------------------


def test_sketches_merge_across_micro_batches_and_early_emission_upserts(tmp_path: Path) -> None:
    """approx_distinct (HLL) and quantile (KLL) are kept as sketches in the state, merged
    across micro-batches; emit="early" upserts each window every time it changes."""
    source = GeneratorSource(1500, partitions=2, seed=6, every="100ms", duplicates=0.3, keys=2)
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_window",
            source=source,
            stream=stream(
                event_time="ts",
                watermark="10s",  # copies arrive at most 5s after their original: none late
                window=tumbling("2m"),
                group_by=["key"],
                aggregates={
                    "n": count(),
                    "ids": approx_distinct("event_id"),
                    "median": quantile("value", 0.5),
                },
                emit="early",
                max_records=250,
            ),
        )
    )
    [run] = lake.run()
    assert run.commits == 6 and run.metrics["late"] == 0
    assert run.metrics["re_emitted"] > 0  # windows written again as they grew
    rows = source.rows(0, 1500).to_pylist()
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        start = us(r["ts"]) // (120 * SECOND) * 120 * SECOND
        groups.setdefault((r["key"], start), []).append(r)
    got = {
        (r["key"], us(r["window_start"])): r for r in lake.table("silver.per_window").to_pylist()
    }
    assert set(got) == set(groups)  # every window, open ones too: emitted early
    for group, members in groups.items():
        row = got[group]
        assert row["n"] == len(members)
        distinct = len({m["event_id"] for m in members})
        assert abs(row["ids"] - distinct) <= max(2, 0.05 * distinct)
        values = sorted(m["value"] for m in members)
        rank = values.index(row["median"]) / len(values)  # a value of the window, near the middle
        assert 0.45 <= rank <= 0.55 or values.count(row["median"]) > 1


def test_full_refresh_rebuilds_the_table_its_late_events_and_its_state(tmp_path: Path) -> None:
    feed = Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=feed,
            stream=stream(
                event_time="ts",
                dedup=dedup("id", within="1h"),
                window=tumbling("1m"),
                aggregates={"n": count()},
            ),
        )
    )
    feed.push([{"id": 1, "ts": at(10)}, {"id": 2, "ts": at(70)}])
    feed.push([{"id": 3, "ts": at(20)}, {"id": 1, "ts": at(10)}, {"id": 4, "ts": at(130)}])
    lake.run()
    before = lake.rows("silver.per_minute", "window_start")
    assert [r["n"] for r in before] == [1, 1]
    assert lake.table("silver.per_minute__late").column("id").to_pylist() == [3]
    lake.run(full_refresh=True)
    assert lake.rows("silver.per_minute", "window_start") == before
    assert lake.table("silver.per_minute__late").column("id").to_pylist() == [3]
    # A full refresh writes the state afresh: its first micro-batch overwrites the changelog.
    live = live_state(lake, "silver.per_minute")
    assert [operator for operator, _ in live] == ["dedup"] * 4 + ["windows"]
    batches = set(lake.table("silver.per_minute__state").column("_batch").to_pylist())
    assert min(batches) > 2  # nothing left from before the refresh


def test_state_changelog_is_appended_then_compacted_and_restores_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headwater.stream.engine as engine

    monkeypatch.setattr(engine, "COMPACT_SLACK", 0)  # compact as soon as the log doubles
    feed = Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.totals",
            source=feed,
            stream=stream(
                event_time="ts",
                group_by=["user"],
                aggregates={"n": count(), "total": sum_("amount")},
            ),
        )
    )
    for i in range(5):  # the same two keys change in every micro-batch
        feed.push([{"user": u, "ts": at(i), "amount": i} for u in ("a", "b")])
    [run] = lake.run()
    assert run.metrics["state_compacted"] >= 1
    history = lake.target("silver.totals__state").table.history()
    operations = [h["operation"] for h in history if "headwater" in h]
    assert "WRITE" in operations  # appends (and an overwrite: the compaction)
    state = lake.table("silver.totals__state")
    assert state.num_rows < 10  # without compaction: 2 rows per micro-batch
    assert len(live_state(lake, "silver.totals")) == 2
    # Restore from the compacted changelog alone: lose the working copy and go on.
    for path in (tmp_path / ".headwater" / "stream").glob("*.duckdb*"):
        path.unlink()
    feed.push([{"user": "a", "ts": at(9), "amount": 100}])
    lake.run()
    assert lake.rows("silver.totals", "user") == [
        {"user": "a", "n": 6, "total": 110},
        {"user": "b", "n": 5, "total": 10},
    ]


# -- real connectors: a directory of arriving files, then an upstream table's change feed ---------


def test_files_land_in_bronze_and_a_stream_reads_bronzes_change_feed(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "files",
        """
        from headwater import table
        from headwater.sources import files
        from headwater.stream import count, dedup, stream, sum_, tumbling

        table("bronze.clicks", source=files("landing/*.ndjson"))
        table("silver.clicks_per_minute", inputs=["bronze.clicks"],
              stream=stream(event_time="ts", watermark="10s", partition_column="page",
                            dedup=dedup("id", within="10m"), window=tumbling("1m"),
                            group_by=["page"], aggregates={"clicks": count(), "value": sum_("n")},
                            allowed_lateness="1m"))
        """,
    )
    landing = project_dir / "landing"
    landing.mkdir()

    def land(name: str, rows: list[tuple[int, str, float]]) -> None:
        lines = [
            json.dumps({"id": i, "page": p, "ts": at(s).isoformat(), "n": 1}) for i, p, s in rows
        ]
        (landing / name).write_text("\n".join(lines) + "\n")

    land("a.ndjson", [(1, "home", 5), (2, "cart", 20), (3, "home", 65), (4, "cart", 70)])
    run_cli(project_dir, "run")
    land("b.ndjson", [(5, "home", 30), (1, "home", 5), (6, "home", 130), (7, "cart", 140)])
    run_cli(project_dir, "run")  # 5 re-opens home's first minute; 1 is a duplicate
    land("c.ndjson", [(8, "home", 200), (9, "cart", 210), (10, "home", 40)])  # 10: too late
    run_cli(project_dir, "run")
    from deltalake import DeltaTable

    silver = DeltaTable(str(project_dir / "warehouse" / "silver" / "clicks_per_minute"))
    got = sorted(
        (r["page"], int((r["window_start"] - BASE).total_seconds()), r["clicks"])
        for r in silver.to_pyarrow_table().to_pylist()
    )
    assert got == [
        ("cart", 0, 1),
        ("cart", 60, 1),
        ("cart", 120, 1),
        ("home", 0, 2),
        ("home", 60, 1),
        ("home", 120, 1),
    ]
    late = DeltaTable(str(project_dir / "warehouse" / "silver" / "clicks_per_minute__late"))
    assert late.to_pyarrow_table().column("id").to_pylist() == [10]


def test_at_least_once_pass_through_is_an_idempotent_sink_keyed_by_event_id(
    tmp_path: Path,
) -> None:
    source = GeneratorSource(600, partitions=2, seed=3, every="1s", duplicates=0.2, batch_size=100)
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.events",
            source=source,
            stream=stream(
                event_time="ts",
                watermark="1m",
                dedup=dedup("event_id", within="1h"),
                guarantee="at-least-once",
                checkpoint_every=4,
                max_records=100,
            ),
        )
    )
    lake.run()
    for path in (tmp_path / ".headwater" / "stream").glob("*.duckdb*"):
        path.unlink()  # back to the state of micro-batch 4: micro-batches 5 and 6 again
    [again] = lake.run()
    assert again.commits == 2
    ids = lake.table("silver.events").column("event_id").to_pylist()
    expected = set(source.rows(0, 600).column("event_id").to_pylist())
    assert sorted(ids) == sorted(expected)  # each event once, replays merged over themselves


# -- bad input: clear errors, unreadable event times quarantined ---------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"event_time": "when", "window": "1m", "aggregates": True},
            "table silver.t: event time column 'when' is not in the micro-batch",
        ),
        (
            {"event_time": "ts", "window": "1m", "group_by": ["nope"], "aggregates": True},
            "table silver.t: column 'nope' of the stream's group_by/aggregates is not in its events",
        ),
        (
            {"event_time": "n", "window": "1m", "aggregates": True},
            "table silver.t: event time column 'n' holds numbers (int64); say which unit",
        ),
        (
            {"event_time": "ts", "join": "silver.dim"},
            "table silver.t reads silver.dim, which no pipeline declares",
        ),
    ],
)
def test_bad_stream_declarations_fail_naming_table_and_column(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    feed = Feed([])
    feed.push([{"ts": "2024-01-01T00:00:00Z", "n": 5, "k": 1}])
    kwargs: dict[str, Any] = {"event_time": options["event_time"]}
    if "window" in options:
        kwargs["window"] = tumbling(options["window"])
    if options.get("aggregates"):
        kwargs["aggregates"] = {"events": count()}
    if "group_by" in options:
        kwargs["group_by"] = options["group_by"]
    if "join" in options:
        kwargs["join"] = temporal_join(options["join"], on="k")
    lake = Lake(tmp_path)
    lake.declare(lambda: table("silver.t", source=feed, stream=stream(**kwargs)))
    with pytest.raises((AssertionError, ConfigError)) as failed:
        lake.run()
    assert message in str(failed.value)


def test_rows_with_unreadable_event_times_go_to_the_quarantine(tmp_path: Path) -> None:
    feed = Feed([])
    feed.push(
        [
            {"id": 1, "ts": "2024-01-01T00:00:10Z"},
            {"id": 2, "ts": "yesterday"},
            {"id": 3, "ts": None},
            {"id": 4, "ts": "2024-01-01T00:01:10Z"},
        ]
    )
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.t",
            source=feed,
            stream=stream(event_time="ts", window=tumbling("1m"), aggregates={"n": count()}),
        )
    )
    lake.run()
    assert [r["n"] for r in lake.table("silver.t").to_pylist()] == [1]
    quarantine = lake.table("silver.t__quarantine").to_pylist()
    assert sorted(r["reason"] for r in quarantine) == [
        "cannot read 'yesterday' as an event time",
        "event time is NULL",
    ]


def test_a_written_session_extended_by_a_late_event_is_written_again_at_once(
    tmp_path: Path,
) -> None:
    feed = Feed([])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.sessions",
            source=feed,
            stream=stream(
                event_time="ts",
                watermark="10s",
                window=session(gap="30s"),
                group_by=["key"],
                aggregates={"n": count()},
                allowed_lateness="20s",
            ),
        )
    )
    feed.push([{"key": "a", "ts": at(0)}, {"key": "b", "ts": at(40)}])
    lake.run()  # watermark 30s: a's session [0, 30) closes and is written
    assert lake.rows("silver.sessions", "key") == [
        {"key": "a", "window_start": at(0), "window_end": at(30), "n": 1}
    ]
    feed.push([{"key": "a", "ts": at(15)}])  # 15s behind: within the allowed lateness
    [run] = lake.run()
    assert run.metrics["re_emitted"] == 1
    # Not a stale row: the session as it is now, though its new end is past the watermark.
    assert lake.rows("silver.sessions", "key") == [
        {"key": "a", "window_start": at(0), "window_end": at(45), "n": 2}
    ]


def test_a_stream_over_files_reads_ahead_and_writes_each_file_once(tmp_path: Path) -> None:
    """Files read in place are read one micro-batch ahead of the commits; runs that
    stop and resume as files arrive still write every event exactly once."""
    from headwater.sources import files

    landing = tmp_path / "landing"
    landing.mkdir()
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "silver.per_minute",
            source=files(f"{landing}/*.csv", format="csv", chunk_files=1),
            stream=stream(
                event_time="ts",
                window=tumbling("1m"),
                group_by=["key"],
                aggregates={"n": count(), "total": sum_("amount")},
            ),
        )
    )
    expected: dict[tuple[str, int], list[int]] = {}
    part = 0
    for run in range(3):
        for _ in range(4):  # four files, four micro-batches per run
            lines = ["key,ts,amount"]
            for i in range(50):
                second = part * 50 + i
                key = "ab"[i % 2]
                lines.append(f"{key},{at(second).isoformat()},{second}")
                window = second // 60 * 60
                n_total = expected.setdefault((key, window), [0, 0])
                n_total[0] += 1
                n_total[1] += second
            (landing / f"part-{part:03}.csv").write_text("\n".join(lines) + "\n")
            part += 1
        [result] = lake.run()
        assert result.commits == 4, run
    last = (part * 50 - 1) // 60 * 60  # the newest window is still open
    got = {
        (r["key"], int((r["window_start"] - at(0)).total_seconds())): [r["n"], r["total"]]
        for r in lake.table("silver.per_minute").to_pylist()
    }
    assert got == {k: v for k, v in expected.items() if k[1] < last}
