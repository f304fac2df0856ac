"""The Nexmark queries, as Flink SQL and as DuckDB batch SQL (standard library only).

q0  pass-through               bid -> auction, bidder, price, dateTime, extra
q1  currency conversion        price * 0.908
q2  selection                  bids of auctions whose id is a multiple of 123
q5  hot items                  auctions with the most bids per 10 s window sliding by 2 s
q7  highest bid                the highest bid of every 10 s tumbling window
q8  monitor new users          people who opened an auction in the 10 s window they joined in
q11 user sessions              bids per bidder per session (gap 10 s)

The Flink text is the Nexmark suite's (window TVFs of Flink SQL); the DuckDB
text computes the same result over all events at once.
"""

from __future__ import annotations

QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8", "q11")
# Which streams each query reads.
READS = {
    "q0": ("bid",),
    "q1": ("bid",),
    "q2": ("bid",),
    "q5": ("bid",),
    "q7": ("bid",),
    "q8": ("person", "auction"),
    "q11": ("bid",),
}

COLUMNS = {
    "person": [
        ("id", "BIGINT"),
        ("name", "VARCHAR"),
        ("emailAddress", "VARCHAR"),
        ("creditCard", "VARCHAR"),
        ("city", "VARCHAR"),
        ("state", "VARCHAR"),
        ("dateTime", "TIMESTAMP"),
        ("extra", "VARCHAR"),
    ],
    "auction": [
        ("id", "BIGINT"),
        ("itemName", "VARCHAR"),
        ("description", "VARCHAR"),
        ("initialBid", "BIGINT"),
        ("reserve", "BIGINT"),
        ("dateTime", "TIMESTAMP"),
        ("expires", "TIMESTAMP"),
        ("seller", "BIGINT"),
        ("category", "BIGINT"),
        ("extra", "VARCHAR"),
    ],
    "bid": [
        ("auction", "BIGINT"),
        ("bidder", "BIGINT"),
        ("price", "BIGINT"),
        ("channel", "VARCHAR"),
        ("url", "VARCHAR"),
        ("dateTime", "TIMESTAMP"),
        ("extra", "VARCHAR"),
    ],
}

# -- DuckDB: one batch query over all events -------------------------------------------

DUCKDB = {
    "q0": "SELECT auction, bidder, price, dateTime, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q5": """
        WITH w AS (
            SELECT auction, time_bucket(INTERVAL 2 SECOND, dateTime) - to_seconds(2 * k) AS starttime
            FROM bid, range(5) t(k)),
        c AS (SELECT auction, starttime, count(*) AS num FROM w GROUP BY ALL),
        m AS (SELECT starttime, max(num) AS maxn FROM c GROUP BY starttime)
        SELECT c.auction, c.num, c.starttime FROM c JOIN m USING (starttime) WHERE c.num >= m.maxn""",
    "q7": """
        WITH w AS (SELECT time_bucket(INTERVAL 10 SECOND, dateTime) AS ws, max(price) AS maxprice
                   FROM bid GROUP BY 1)
        SELECT b.auction, b.price, b.bidder, b.dateTime, b.extra
        FROM bid b JOIN w ON b.price = w.maxprice
         AND time_bucket(INTERVAL 10 SECOND, b.dateTime) = w.ws""",
    "q8": """
        SELECT DISTINCT p.id, p.name, p.ws AS starttime
        FROM (SELECT DISTINCT id, name, time_bucket(INTERVAL 10 SECOND, dateTime) AS ws FROM person) p
        JOIN (SELECT DISTINCT seller, time_bucket(INTERVAL 10 SECOND, dateTime) AS ws FROM auction) a
          ON p.id = a.seller AND p.ws = a.ws""",
    "q11": """
        WITH o AS (
            SELECT bidder, dateTime,
                   CASE WHEN dateTime - lag(dateTime) OVER (PARTITION BY bidder ORDER BY dateTime)
                             < INTERVAL 10 SECOND THEN 0 ELSE 1 END AS starts
            FROM bid),
        s AS (SELECT bidder, dateTime,
                     sum(starts) OVER (PARTITION BY bidder ORDER BY dateTime ROWS UNBOUNDED PRECEDING) AS sid
              FROM o)
        SELECT bidder, count(*) AS bid_count, min(dateTime) AS starttime,
               max(dateTime) + INTERVAL 10 SECOND AS endtime
        FROM s GROUP BY bidder, sid""",
}

# -- Flink SQL --------------------------------------------------------------------------

_FLINK_TYPES = {"BIGINT": "BIGINT", "VARCHAR": "STRING", "TIMESTAMP": "TIMESTAMP(3)"}


def flink_source(stream: str, path: str) -> str:
    columns = ",\n  ".join(f"`{n}` {_FLINK_TYPES[t]}" for n, t in COLUMNS[stream])
    return f"""CREATE TABLE {stream} (
  {columns},
  WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'csv')"""


FLINK_SINKS = {
    "q0": "auction BIGINT, bidder BIGINT, price BIGINT, dateTime TIMESTAMP(3), extra STRING",
    "q1": "auction BIGINT, bidder BIGINT, price DECIMAL(23,3), dateTime TIMESTAMP(3), extra STRING",
    "q2": "auction BIGINT, price BIGINT",
    "q5": "auction BIGINT, num BIGINT, starttime TIMESTAMP(3)",
    "q7": "auction BIGINT, price BIGINT, bidder BIGINT, dateTime TIMESTAMP(3), extra STRING",
    "q8": "id BIGINT, name STRING, starttime TIMESTAMP(3)",
    "q11": "bidder BIGINT, bid_count BIGINT, starttime TIMESTAMP(3), endtime TIMESTAMP(3)",
}

FLINK = {
    "q0": "SELECT auction, bidder, price, dateTime, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    "q5": """
SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime
FROM (
  SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
  FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
  GROUP BY auction, window_start, window_end
) AS AuctionBids
JOIN (
  SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
  FROM (
    SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY auction, window_start, window_end
  ) AS CountBids
  GROUP BY CountBids.starttime, CountBids.endtime
) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime
 AND AuctionBids.endtime = MaxBids.endtime
 AND AuctionBids.num >= MaxBids.maxn""",
    # The Nexmark suite's q7 joins every bid with the window maxima in a regular join,
    # which keeps every bid in state for ever; an interval join on the windows' rowtime
    # gives the same rows (bids whose price is the maximum of their window) and holds a
    # bid only until its window has closed. (A window join here loses rows: the maxima
    # reach it at the watermark that closes their window.)
    "q7": """
SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra
FROM (SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))) B
JOIN (
  SELECT MAX(price) AS maxprice, window_start, window_time
  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end, window_time
) B1
ON B.price = B1.maxprice AND B.window_start = B1.window_start
 AND B.dateTime BETWEEN B1.window_time - INTERVAL '10' SECOND AND B1.window_time""",
    "q8": """
SELECT P.id, P.name, P.starttime
FROM (
  SELECT id, name, window_start AS starttime, window_end AS endtime
  FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
  GROUP BY id, name, window_start, window_end
) P
JOIN (
  SELECT seller, window_start AS starttime, window_end AS endtime
  FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
  GROUP BY seller, window_start, window_end
) A
ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    "q11": """
SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end""",
}

# `dateTime` is a reserved word in Flink SQL 2.x: quote it wherever it appears.
FLINK = {name: text.replace("dateTime", "`dateTime`") for name, text in FLINK.items()}


# -- result checks ----------------------------------------------------------------------
# Each contestant's result, in the floor's column names, is reduced to these canonical
# columns (times as epoch milliseconds) and compared with the floor's. `{wm}` is the
# final watermark (newest event time - the watermark delay, in ms): windows ending after it are still
# open in a stream that has not seen the end of its input, so only closed windows count.
CHECK = {
    "q0": ("auction, bidder, price, epoch_ms(dateTime) AS t, extra", "TRUE"),
    "q1": (
        "auction, bidder, CAST(price AS DECIMAL(38,3)) AS price, epoch_ms(dateTime) AS t, extra",
        "TRUE",
    ),
    "q2": ("auction, price", "TRUE"),
    "q5": ("auction, num, epoch_ms(starttime) AS s", "epoch_ms(starttime) + 10000 <= {wm}"),
    "q7": (
        "auction, price, bidder, epoch_ms(dateTime) AS t, extra",
        "epoch_ms(time_bucket(INTERVAL 10 SECOND, dateTime)) + 10000 <= {wm}",
    ),
    "q8": ("id, name, epoch_ms(starttime) AS s", "epoch_ms(starttime) + 10000 <= {wm}"),
    "q11": (
        "bidder, bid_count, epoch_ms(starttime) AS s, epoch_ms(endtime) AS e",
        "epoch_ms(endtime) <= {wm}",
    ),
}
# Headwater's window columns, renamed to the floor's.
HEADWATER_RESULT = {
    "q0": "auction, bidder, price, dateTime, extra",
    "q1": "auction, bidder, price, dateTime, extra",
    "q2": "auction, price",
    "q5": "auction, num, window_start AS starttime",
    "q7": "auction, price, bidder, dateTime, extra",
    "q8": "id, name, window_start AS starttime",
    "q11": "bidder, bid_count, window_start AS starttime, window_end AS endtime",
}
