"""The Nexmark queries as Headwater streaming tables (exactly-once, one commit per micro-batch).

A micro-batch reads `files_per_batch` CSV files of a stream (default 10: 1,000,000
events, 100 s of event time, 0.3-0.8 s of processing, where Flink checkpoints
every second); each is one Delta commit with the state checkpoint.

Every table here is a streaming table (`stream=...`): each micro-batch commits
its rows, the source positions, the watermark and the operator state's version
in one Delta commit. Queries the stream operators express in one table are one
table; the others are a short pipeline of streaming tables, run in dependency
order, and the last table of the list holds the query's result:

    q0, q1, q2  one stateless table over the bid files (projection / filter)
    q5   bid -> sliding-window counts per auction, then (`then=`, a step after the
         window) the counts that are their window's maximum: a window's rows are
         all emitted in one micro-batch
    q7   bid -> max price per tumbling window; bid -> temporal join with those
         windows on the price, valid in [window_start, window_end): the bids
         whose price is their window's maximum
    q8   person, auction -> window join (person id = auction seller, same 10 s
         window) -> tumbling-window count per person: people with an auction in
         their window (one table over both streams)
    q11  bid -> session windows per bidder (gap 10 s)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from queries import COLUMNS

WATERMARK = "4s"
FILES_PER_BATCH = 10
_ARROW = {"BIGINT": "int64", "VARCHAR": "string", "TIMESTAMP": "timestamp[ms]"}


def bids_source(
    root: Path,
    stream: str = "bid",
    files_per_batch: int = FILES_PER_BATCH,
    select: list[str] | None = None,
) -> Any:
    from headwater.sources import files

    return files(
        f"{root / stream}/*.csv",
        format="csv",
        header=False,
        columns={n: _ARROW[t] for n, t in COLUMNS[stream]},
        chunk_files=files_per_batch,  # files per micro-batch (and per Delta commit)
        lookback=None,
        select=select,  # the columns the query reads (the others are not converted)
    )


def declare(
    root: Path, query: str, source: Any = None, files_per_batch: int = FILES_PER_BATCH
) -> list[str]:
    """Declare the tables of `query` (inside `collecting()`); their names, result last.

    `source(stream)` builds the input of a stream (default: its CSV files, read
    `files_per_batch` files per micro-batch)."""
    from headwater import table
    from headwater.stream import (
        count,
        interval_join,
        max_,
        session,
        sliding,
        stream,
        temporal_join,
        tumbling,
    )

    def src(name: str, select: list[str] | None = None) -> Any:
        if source is not None:
            return source(name)
        return bids_source(root, name, files_per_batch, select)

    # A micro-batch is bounded by rows too: room for all the files' events.
    max_records = 100_000 * files_per_batch

    def passthrough(**kw: Any) -> Any:
        return stream(event_time="dateTime", watermark=WATERMARK, max_records=max_records, **kw)

    if query == "q0":
        table("nexmark.q0", source=src("bid"), stream=passthrough())(
            lambda bid: bid.project("auction, bidder, price, dateTime, extra")
        )
        return ["nexmark.q0"]
    if query == "q1":
        table("nexmark.q1", source=src("bid"), stream=passthrough())(
            lambda bid: bid.project("auction, bidder, 0.908 * price AS price, dateTime, extra")
        )
        return ["nexmark.q1"]
    if query == "q2":
        table("nexmark.q2", source=src("bid"), stream=passthrough())(
            lambda bid: bid.filter("auction % 123 = 0").project("auction, price, dateTime")
        )
        return ["nexmark.q2"]
    if query == "q5":
        # The counts of each window closed on time are emitted in one micro-batch, so
        # the step after the window keeps each window's maximum in the same table.
        table(
            "nexmark.q5",
            source=src("bid"),
            stream=stream(
                event_time="dateTime",
                watermark=WATERMARK,
                max_records=max_records,
                window=sliding("10s", every="2s"),
                group_by=["auction"],
                aggregates={"num": count()},
                then=lambda counts: counts.query(
                    "c",
                    "SELECT auction, num, window_start, window_end FROM c "
                    "QUALIFY num >= max(num) OVER (PARTITION BY window_start)",
                ),
            ),
        )(lambda bid: bid.project("auction, dateTime"))
        return ["nexmark.q5"]
    if query == "q7":
        table(
            "nexmark.q7_max",
            source=src("bid", ["price", "dateTime"]),
            stream=stream(
                event_time="dateTime",
                watermark=WATERMARK,
                max_records=max_records,
                window=tumbling("10s"),
                aggregates={"price": max_("price")},
            ),
        )
        table(
            "nexmark.q7",
            source=src("bid", ["auction", "price", "bidder", "dateTime", "extra"]),
            stream=passthrough(
                join=temporal_join(
                    "nexmark.q7_max",
                    on="price",
                    valid_from="window_start",
                    valid_to="window_end",
                    columns=[],
                    how="inner",
                )
            ),
        )
        return ["nexmark.q7_max", "nexmark.q7"]
    if query == "q8":
        # One table over both streams: a window join of each person with the auctions
        # they sold in the same 10 s window, then a count per person and window.
        table(
            "nexmark.q8",
            source={
                "person": src("person", ["id", "name", "dateTime"]),
                "auction": src("auction", ["seller", "dateTime"]),
            },
            stream=stream(
                event_time="dateTime",
                watermark=WATERMARK,
                max_records=max_records,
                join=interval_join(
                    "auction",
                    on={"id": "seller"},
                    lower="-10s",
                    upper="10s",
                    same_window="10s",
                ),
                window=tumbling("10s"),
                group_by=["id", "name"],
                aggregates={"auctions": count()},
            ),
        )
        return ["nexmark.q8"]
    if query == "q11":
        table(
            "nexmark.q11",
            source=src("bid"),
            stream=stream(
                event_time="dateTime",
                watermark=WATERMARK,
                max_records=max_records,
                window=session(gap="10s"),
                group_by=["bidder"],
                aggregates={"bid_count": count()},
            ),
        )(lambda bid: bid.project("bidder, dateTime"))
        return ["nexmark.q11"]
    raise SystemExit(f"unknown query {query}")
