"""Nexmark events (Person, Auction, Bid), generated deterministically and vectorised.

The event stream follows the Nexmark benchmark's generator (as in Apache Beam
and the Flink Nexmark suite): out of every 50 events, 1 is a new person, 3 are
new auctions and 46 are bids; event n happens at base time + n x the
inter-event delay (10,000 events/s: 100 us); ids count up from 1000. Bids go to
a hot auction (every 100th auction id) half of the time and otherwise to one
of the 100 most recent auctions; bidders and sellers are a hot person 3 times
out of 4 and otherwise one of the 1000 most recent people. Prices follow
Nexmark's 10^(6u) x 100 distribution. `extra` pads records to Nexmark's
average sizes (person 200 bytes, auction 500, bid 100).

The streams are written as headerless CSV files, `part-NNNNN.csv` in
`person/`, `auction/` and `bid/`, each file holding the events of one slice of
the event sequence in event-time order; every contestant reads those files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

PROPORTION = 50  # 1 person + 3 auctions + 46 bids
FIRST_ID = 1000
BASE_TIME_US = 1_436_918_400_000_000  # 2015-07-15 00:00:00 UTC, as in Nexmark
INTER_EVENT_US = 100  # 10,000 events/s of event time
HOT_RATIO = 100
IN_FLIGHT_AUCTIONS = 100
ACTIVE_PEOPLE = 1000
CATEGORIES = 5
FIRST_CATEGORY = 10
CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]
STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
CITIES = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
]
FIRST_NAMES = [
    "Peter",
    "Paul",
    "Luke",
    "John",
    "Saul",
    "Vicky",
    "Kate",
    "Julie",
    "Sarah",
    "Deiter",
    "Walter",
]
LAST_NAMES = [
    "Shultz",
    "Abrams",
    "Spencer",
    "White",
    "Bartels",
    "Walton",
    "Smith",
    "Jones",
    "Noris",
]

SCHEMAS = {
    "person": pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("emailAddress", pa.string()),
            ("creditCard", pa.string()),
            ("city", pa.string()),
            ("state", pa.string()),
            ("dateTime", pa.timestamp("ms")),
            ("extra", pa.string()),
        ]
    ),
    "auction": pa.schema(
        [
            ("id", pa.int64()),
            ("itemName", pa.string()),
            ("description", pa.string()),
            ("initialBid", pa.int64()),
            ("reserve", pa.int64()),
            ("dateTime", pa.timestamp("ms")),
            ("expires", pa.timestamp("ms")),
            ("seller", pa.int64()),
            ("category", pa.int64()),
            ("extra", pa.string()),
        ]
    ),
    "bid": pa.schema(
        [
            ("auction", pa.int64()),
            ("bidder", pa.int64()),
            ("price", pa.int64()),
            ("channel", pa.string()),
            ("url", pa.string()),
            ("dateTime", pa.timestamp("ms")),
            ("extra", pa.string()),
        ]
    ),
}


@dataclass(frozen=True)
class Counts:
    events: int
    person: int
    auction: int
    bid: int


def _pool(rng: np.random.Generator, length: int, variants: int = 64) -> pa.Array:
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    return pa.array(
        [
            bytes(rng.choice(letters, size=max(1, length + int(d)))).decode()
            for d in rng.integers(-length // 4, length // 4 + 1, variants)
        ],
        pa.string(),
    )


@lru_cache(maxsize=4)
def _pools(seed: int) -> dict[str, pa.Array]:
    """The padding and name strings records pick from (drawn once per seed: cheap slices)."""
    rng = np.random.default_rng([seed, 1 << 40])  # apart from every slice's stream
    return {
        "person_extra": _pool(rng, 110),
        "item": _pool(rng, 20),
        "description": _pool(rng, 100),
        "auction_extra": _pool(rng, 330),
        "bid_extra": _pool(rng, 12),
        "url": pa.array(
            [f"https://www.nexmark.com/item.htm?query=1&channel_id={i}" for i in range(64)]
        ),
    }


def _pick(pool: pa.Array, index: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pool).cast(pa.string())


def _prices(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(np.power(10.0, rng.random(n) * 6.0) * 100.0).astype(np.int64)


def _recent(
    rng: np.random.Generator, last: np.ndarray, window: int, hot_chance: float
) -> np.ndarray:
    """An id among the `window` latest (or the current hot one, with `hot_chance`)."""
    hot = (last // HOT_RATIO) * HOT_RATIO
    back = rng.integers(0, window, last.shape[0])
    recent = np.maximum(last - back, 0)
    return np.where(rng.random(last.shape[0]) < hot_chance, hot, recent) + FIRST_ID


def generate_slice(first: int, count: int, seed: int) -> dict[str, pa.Table]:
    """The events first .. first+count-1, split into the three streams."""
    rng = np.random.default_rng([seed, first])
    pools = _pools(seed)
    n = np.arange(first, first + count, dtype=np.int64)
    block, offset = n // PROPORTION, n % PROPORTION
    time_us = BASE_TIME_US + n * INTER_EVENT_US
    time_ms = pa.array(time_us // 1000, pa.int64()).cast(pa.timestamp("ms"))
    is_person, is_auction = offset < 1, (offset >= 1) & (offset < 4)
    is_bid = offset >= 4
    # Base-0 ids of the newest person and auction at each event.
    last_person = block
    last_auction = block * 3 + np.minimum(np.maximum(offset - 1, 0), 2)
    last_auction = np.where(offset == 0, np.maximum(block * 3 - 1, 0), last_auction)

    tables: dict[str, pa.Table] = {}
    p = np.nonzero(is_person)[0]
    pid = block[p] + FIRST_ID
    first_i, last_i = (
        rng.integers(0, len(FIRST_NAMES), p.size),
        rng.integers(0, len(LAST_NAMES), p.size),
    )
    names = pa.array(
        [f"{FIRST_NAMES[a]} {LAST_NAMES[b]}" for a, b in zip(first_i, last_i, strict=True)],
        pa.string(),
    )
    tables["person"] = pa.table(
        {
            "id": pa.array(pid),
            "name": names,
            "emailAddress": pa.array(
                [f"{x}@{y}.com" for x, y in zip(first_i, pid % 97, strict=True)], pa.string()
            ),
            "creditCard": pa.array(
                [
                    f"{a:04d} {b:04d} {c:04d} {d:04d}"
                    for a, b, c, d in rng.integers(0, 10000, (p.size, 4))
                ],
                pa.string(),
            ),
            "city": _pick(pa.array(CITIES), rng.integers(0, len(CITIES), p.size)),
            "state": _pick(pa.array(STATES), rng.integers(0, len(STATES), p.size)),
            "dateTime": time_ms.take(pa.array(p)),
            "extra": _pick(pools["person_extra"], rng.integers(0, 64, p.size)),
        },
        schema=SCHEMAS["person"],
    )
    a = np.nonzero(is_auction)[0]
    aid = block[a] * 3 + (offset[a] - 1) + FIRST_ID
    initial = _prices(rng, a.size)
    length_ms = rng.integers(1, 20_000, a.size)  # auctions run for up to 20 s of event time
    tables["auction"] = pa.table(
        {
            "id": pa.array(aid),
            "itemName": _pick(pools["item"], rng.integers(0, 64, a.size)),
            "description": _pick(pools["description"], rng.integers(0, 64, a.size)),
            "initialBid": pa.array(initial),
            "reserve": pa.array(initial + _prices(rng, a.size)),
            "dateTime": time_ms.take(pa.array(a)),
            "expires": pa.array(time_us[a] // 1000 + length_ms, pa.int64()).cast(
                pa.timestamp("ms")
            ),
            "seller": pa.array(_recent(rng, last_person[a], ACTIVE_PEOPLE, 0.75)),
            "category": pa.array(FIRST_CATEGORY + rng.integers(0, CATEGORIES, a.size)),
            "extra": _pick(pools["auction_extra"], rng.integers(0, 64, a.size)),
        },
        schema=SCHEMAS["auction"],
    )
    b = np.nonzero(is_bid)[0]
    channel = rng.integers(0, len(CHANNELS), b.size)
    tables["bid"] = pa.table(
        {
            "auction": pa.array(_recent(rng, last_auction[b], IN_FLIGHT_AUCTIONS, 0.5)),
            "bidder": pa.array(_recent(rng, last_person[b], ACTIVE_PEOPLE, 0.75)),
            "price": pa.array(_prices(rng, b.size)),
            "channel": _pick(pa.array(CHANNELS), channel),
            "url": _pick(pools["url"], rng.integers(0, 64, b.size)),
            "dateTime": time_ms.take(pa.array(b)),
            "extra": _pick(pools["bid_extra"], rng.integers(0, 64, b.size)),
        },
        schema=SCHEMAS["bid"],
    )
    return tables


def write(root: Path, events: int, files: int, seed: int = 42) -> Counts:
    """Write `events` events as `files` slices of CSV per stream under `root`."""
    totals = {"person": 0, "auction": 0, "bid": 0}
    per_file = -(-events // files)
    for kind in totals:
        (root / kind).mkdir(parents=True, exist_ok=True)
    options = pacsv.WriteOptions(include_header=False)
    for index, first in enumerate(range(0, events, per_file)):
        tables = generate_slice(first, min(per_file, events - first), seed)
        for kind, table in tables.items():
            pacsv.write_csv(table, root / kind / f"part-{index:05d}.csv", options)
            totals[kind] += table.num_rows
    return Counts(events, **totals)
