"""Streaming tables: event time, watermarks, windows, dedup, joins and state.

    from headwater import table
    from headwater.orchestrate.triggers import continuous
    from headwater.stream import stream, tumbling, count, sum_, approx_distinct, dedup

    table("silver.revenue_per_minute", source=kafka(...), trigger=continuous("5s"),
          stream=stream(event_time="ts", watermark="30s",
                        dedup=dedup("order_id", within="1h"),
                        window=tumbling("1m"), group_by=["shop"],
                        aggregates={"orders": count(), "revenue": sum_("amount"),
                                    "buyers": approx_distinct("customer_id")},
                        allowed_lateness="5m"))

A micro-batch is what the source delivers after the committed position (at most
`max_records` rows); its output, the new positions, the watermark and the
version of the state are committed together. docs/streaming.md has the rules.
"""

from .spec import (
    Aggregate,
    Dedup,
    EventTime,
    IntervalJoin,
    Session,
    Sliding,
    Stream,
    TemporalJoin,
    Tumbling,
    Window,
    approx_distinct,
    avg,
    count,
    dedup,
    event_time,
    first,
    interval_join,
    last,
    max_,
    min_,
    quantile,
    session,
    sliding,
    stream,
    sum_,
    temporal_join,
    tumbling,
)

# Increment.info key (or Source class attribute) naming the column that holds a
# row's source partition (a Kafka partition, a file, a CDC table): watermarks are
# tracked per partition.
PARTITION_COLUMN = "partition_column"
# Increment.info key: how many records the source is behind its end (consumer lag).
LAG = "lag"

__all__ = [
    "LAG",
    "PARTITION_COLUMN",
    "Aggregate",
    "Dedup",
    "EventTime",
    "IntervalJoin",
    "Session",
    "Sliding",
    "Stream",
    "TemporalJoin",
    "Tumbling",
    "Window",
    "approx_distinct",
    "avg",
    "count",
    "dedup",
    "event_time",
    "first",
    "interval_join",
    "last",
    "max_",
    "min_",
    "quantile",
    "session",
    "sliding",
    "stream",
    "sum_",
    "temporal_join",
    "tumbling",
]
