"""The declaration of a streaming table: event time, watermark and the operators.

    table("silver.clicks_per_minute", source=..., trigger=continuous("5s"),
          stream=stream(event_time="ts", watermark="30s",
                        dedup=dedup("event_id", within="1h"),
                        window=tumbling("1m"), group_by=["page"],
                        aggregates={"clicks": count(), "users": approx_distinct("user_id")},
                        allowed_lateness="5m"))

Everything here is a plain, immutable value: it says what the stream computes,
never how. The engine (`headwater.stream.engine`) runs it per micro-batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from .._units import parse_duration, parse_size
from ..errors import ConfigError

if TYPE_CHECKING:
    import duckdb

    from ..declare import TableSpec

Duration = str | int | float | timedelta
# A step after the operators: the rows a micro-batch emits (a DuckDB relation)
# -> the rows to write (a relation, or SQL over the relations in scope).
Then = Callable[["duckdb.DuckDBPyRelation"], "duckdb.DuckDBPyRelation | str"]
Emit = Literal["on-close", "early"]
Guarantee = Literal["exactly-once", "at-least-once"]
TimeUnit = Literal["s", "ms", "us", "ns"]
AggregateFunction = Literal[
    "count", "sum", "min", "max", "avg", "first", "last", "approx_distinct", "quantile"
]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _duration(value: Duration, what: str, *, signed: bool = False) -> timedelta:
    """A duration; `signed` allows a leading '-' (join bounds)."""
    if signed and isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration(value.strip()[1:], what)
    parsed = parse_duration(value, what)
    if parsed < timedelta(0) and not signed:
        raise ConfigError(f"{what} must not be negative")
    return parsed


# -- event time -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventTime:
    """Where a row's event time comes from.

    The column may hold timestamps, dates, ISO-8601 text (or text in `format`, a
    strptime pattern), or numbers counting `unit`s since the Unix epoch.
    """

    column: str
    unit: TimeUnit | None = None
    format: str | None = None


def event_time(
    column: str, *, unit: TimeUnit | None = None, format: str | None = None
) -> EventTime:
    """The event-time column: `event_time("ts")`, `event_time("ts_ms", unit="ms")`."""
    if unit is not None and unit not in ("s", "ms", "us", "ns"):
        raise ConfigError(f"event_time({column!r}): unit must be 's', 'ms', 'us' or 'ns'")
    return EventTime(column, unit, format)


# -- windows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tumbling:
    """Fixed windows of `size` that do not overlap: [k*size + offset, (k+1)*size + offset)."""

    size: timedelta
    offset: timedelta = timedelta(0)
    kind: Literal["tumbling"] = "tumbling"


@dataclass(frozen=True)
class Sliding:
    """Windows of `size` starting every `every`; an event is in size/every windows."""

    size: timedelta
    every: timedelta
    kind: Literal["sliding"] = "sliding"


@dataclass(frozen=True)
class Session:
    """Activity sessions per key: a gap of `gap` without events ends one.

    With `max_length`, sessions are also cut at multiples of it (aligned like a
    tumbling window of that size), so none is longer.
    """

    gap: timedelta
    max_length: timedelta | None = None
    kind: Literal["session"] = "session"


Window = Tumbling | Sliding | Session


def tumbling(size: Duration, offset: Duration = "0s") -> Tumbling:
    window = Tumbling(_duration(size, "tumbling: size"), _duration(offset, "tumbling: offset"))
    if window.size <= timedelta(0):
        raise ConfigError("tumbling: size must be positive", "e.g. tumbling('1m')")
    return window


def sliding(size: Duration, every: Duration) -> Sliding:
    window = Sliding(_duration(size, "sliding: size"), _duration(every, "sliding: every"))
    if window.every <= timedelta(0) or window.size < window.every:
        raise ConfigError(
            "sliding: every must be positive and no longer than size",
            "e.g. sliding('10m', every='1m')",
        )
    return window


def session(gap: Duration, max_length: Duration | None = None) -> Session:
    window = Session(
        _duration(gap, "session: gap"),
        None if max_length is None else _duration(max_length, "session: max_length"),
    )
    if window.gap <= timedelta(0) or (
        window.max_length is not None and window.max_length <= timedelta(0)
    ):
        raise ConfigError("session: gap and max_length must be positive", "e.g. session('30m')")
    return window


# -- aggregates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One aggregate of a window: `function` over `column` (count(): every row)."""

    function: AggregateFunction
    column: str | None = None
    fraction: float | None = None  # quantile: the rank, e.g. 0.99
    # Sketch size: HLL lg_k for approx_distinct, KLL k for quantile.
    accuracy: int | None = None


def count(column: str | None = None) -> Aggregate:
    """Rows (count()), or non-NULL values of `column`."""
    return Aggregate("count", column)


def sum_(column: str) -> Aggregate:
    return Aggregate("sum", column)


def min_(column: str) -> Aggregate:
    return Aggregate("min", column)


def max_(column: str) -> Aggregate:
    return Aggregate("max", column)


def avg(column: str) -> Aggregate:
    return Aggregate("avg", column)


def first(column: str) -> Aggregate:
    """The value of the row with the earliest event time (ties: the first to arrive)."""
    return Aggregate("first", column)


def last(column: str) -> Aggregate:
    """The value of the row with the latest event time (ties: the last to arrive)."""
    return Aggregate("last", column)


def approx_distinct(column: str, lg_k: int = 12) -> Aggregate:
    """Distinct values, estimated by an HLL sketch (relative error about 1.6% at lg_k=12)."""
    if not 4 <= lg_k <= 21:
        raise ConfigError("approx_distinct: lg_k must be between 4 and 21")
    return Aggregate("approx_distinct", column, accuracy=lg_k)


def quantile(column: str, fraction: float, k: int = 200) -> Aggregate:
    """The `fraction` quantile (0.5 = median), estimated by a KLL sketch (rank error ~1.3% at k=200)."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"quantile({column!r}, {fraction}): the fraction must be in [0, 1]")
    if not 8 <= k <= 65535:
        raise ConfigError("quantile: k must be between 8 and 65535")
    return Aggregate("quantile", column, fraction, k)


# -- dedup and joins ------------------------------------------------------------------------


@dataclass(frozen=True)
class Dedup:
    """Drop an event whose id was seen within `within` of event time before the watermark."""

    column: str
    within: timedelta


def dedup(column: str, within: Duration) -> Dedup:
    """Events with the same `column` are one event while the first is younger than
    the watermark minus `within`."""
    horizon = _duration(within, "dedup: within")
    if horizon <= timedelta(0):
        raise ConfigError("dedup: within must be positive", "e.g. dedup('event_id', within='1h')")
    return Dedup(column, horizon)


@dataclass(frozen=True)
class TemporalJoin:
    """Each event takes the dimension row whose validity holds its event time."""

    table: str
    on: tuple[str, ...]
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    columns: tuple[str, ...] | None = None
    how: Literal["left", "inner"] = "left"
    kind: Literal["temporal"] = "temporal"


def temporal_join(
    table: str,
    on: str | Sequence[str],
    *,
    valid_from: str = "valid_from",
    valid_to: str = "valid_to",
    columns: Sequence[str] | None = None,
    how: Literal["left", "inner"] = "left",
) -> TemporalJoin:
    """Join the version of `table`'s row valid at the event's time
    (valid_from <= event time < valid_to, an open valid_to being current): an SCD2 table."""
    keys = (on,) if isinstance(on, str) else tuple(on)
    if not keys:
        raise ConfigError(f"temporal_join({table!r}): on= names no column")
    if how not in ("left", "inner"):
        raise ConfigError(f"temporal_join({table!r}): how must be 'left' or 'inner'")
    return TemporalJoin(
        table, keys, valid_from, valid_to, None if columns is None else tuple(columns), how
    )


@dataclass(frozen=True)
class IntervalJoin:
    """Pairs of events of this stream and input `other` whose keys are equal (this
    stream's `on` columns to the other's `other_on`) and
    this.time + lower <= other.time <= this.time + upper (and, with `same_window`,
    both in the same tumbling window of that size)."""

    other: str
    on: tuple[str, ...]
    lower: timedelta
    upper: timedelta
    prefix: str
    kind: Literal["interval"] = "interval"
    other_on: tuple[str, ...] = ()
    same_window: timedelta | None = None

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """(this stream's column, the other input's column) per key."""
        return tuple(zip(self.on, self.other_on or self.on, strict=True))


def interval_join(
    other: str,
    on: str | Sequence[str] | Mapping[str, str],
    *,
    lower: Duration,
    upper: Duration,
    prefix: str | None = None,
    same_window: Duration | None = None,
) -> IntervalJoin:
    """Join input `other` (another input of the table) within an interval of event
    time: `lower="-10m", upper="5m"`. Its columns get the prefix `<other>_`.

    on: key columns named alike on both inputs, or `{"id": "seller"}` (this
    stream's column: the other input's column) when the names differ.
    same_window: also pair only events in the same tumbling window of this size
    (a window join: `lower="-10s", upper="10s", same_window="10s"`)."""
    if isinstance(on, Mapping):
        keys, other_keys = tuple(on), tuple(on.values())
    else:
        keys = (on,) if isinstance(on, str) else tuple(on)
        other_keys = keys
    low = _duration(lower, "interval_join: lower", signed=True)
    high = _duration(upper, "interval_join: upper", signed=True)
    if low > high:
        raise ConfigError("interval_join: lower must not be after upper")
    if not keys:
        raise ConfigError(f"interval_join({other!r}): on= names no column")
    window = None if same_window is None else _duration(same_window, "interval_join: same_window")
    if window is not None and window <= timedelta(0):
        raise ConfigError("interval_join: same_window must be a positive duration")
    return IntervalJoin(
        other,
        keys,
        low,
        high,
        prefix if prefix is not None else f"{other}_",
        other_on=other_keys,
        same_window=window,
    )


Join = TemporalJoin | IntervalJoin


# -- the stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """What a streaming table computes from each micro-batch. Build it with `stream(...)`."""

    event_time: EventTime
    watermark: timedelta = timedelta(0)
    idle_timeout: timedelta | None = None
    partition_column: str | None = None
    dedup: Dedup | None = None
    joins: tuple[Join, ...] = ()
    window: Window | None = None
    group_by: tuple[str, ...] = ()
    aggregates: tuple[tuple[str, Aggregate], ...] = ()
    emit: Emit = "on-close"
    allowed_lateness: timedelta = timedelta(0)
    state_ttl: timedelta | None = None
    guarantee: Guarantee = "exactly-once"
    checkpoint_every: int = 1
    max_records: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    state_memory: str | None = None
    interval_join: IntervalJoin | None = field(default=None, compare=False)
    then: Then | None = field(default=None, compare=False)

    @property
    def aggregating(self) -> bool:
        return bool(self.aggregates)

    @property
    def keys(self) -> tuple[str, ...]:
        """The output's key columns (for upserts)."""
        if not self.aggregating:
            return (self.dedup.column,) if self.dedup is not None else ()
        if self.window is None:
            return self.group_by
        return (*self.group_by, "window_start")

    @property
    def upserts(self) -> bool:
        """Whether emitted rows replace earlier ones (merge) instead of being appended."""
        if not self.aggregating:
            return self.guarantee == "at-least-once"
        return (
            self.window is None
            or self.emit == "early"
            or self.allowed_lateness > timedelta(0)
            or self.guarantee == "at-least-once"
        )

    def upstream_tables(self) -> list[str]:
        return sorted({j.table for j in self.joins if isinstance(j, TemporalJoin)})

    def bind(self, spec: TableSpec) -> None:
        """Check the stream against its table and set the write strategy it implies."""
        from ..tables.strategies import get_strategy

        where = f"{spec.defined_at}: table {spec.name}"
        if spec.strategy not in ("append", "merge") or (
            spec.strategy == "merge" and not spec.options.keys
        ):
            raise ConfigError(
                f"{where}: a streaming table's writes follow from its emission; strategy "
                f"{spec.strategy!r} cannot be used",
                "leave strategy= out (windows are appended on close, or upserted)",
            )
        if len(spec.inputs) > 1 and self.interval_join is None:
            raise ConfigError(
                f"{where}: a stream reads one input unless an interval_join names the other",
                "read one source, or join two inputs with interval_join(...)",
            )
        if self.interval_join is not None:
            aliases = list(spec.inputs)
            if len(aliases) != 2 or self.interval_join.other not in aliases[1:]:
                raise ConfigError(
                    f"{where}: interval_join({self.interval_join.other!r}) needs exactly two "
                    f"inputs, the second named {self.interval_join.other!r} (inputs: {aliases})",
                    "inputs={'impressions': 'bronze.impressions', 'clicks': 'bronze.clicks'}",
                )
        if self.then is not None and self.upserts:
            raise ConfigError(
                f"{where}: then= needs a stream that appends its rows: an upserted row "
                "(early emission, allowed lateness, at-least-once) replaces one the step "
                "may have dropped or changed",
                "emit on close without allowed_lateness, or post-process in a table of its own",
            )
        keys = self.keys
        if self.upserts and not keys:
            raise ConfigError(
                f"{where}: at-least-once delivery needs an idempotent sink keyed by event id",
                "declare dedup('event_id', within=...) so rows are merged by their id",
            )
        strategy = "merge" if self.upserts else "append"
        spec.strategy = strategy
        if strategy == "merge":
            spec.options = spec.options.with_(keys=keys)
        spec.writer = get_strategy(strategy)
        spec.writer.check(spec.name, spec.options)


def stream(
    *,
    event_time: str | EventTime,
    watermark: Duration = "0s",
    idle_timeout: Duration | None = None,
    partition_column: str | None = None,
    dedup: Dedup | None = None,
    join: Join | Sequence[Join] = (),
    window: Window | None = None,
    group_by: str | Sequence[str] = (),
    aggregates: Mapping[str, Aggregate] | None = None,
    emit: Emit = "on-close",
    allowed_lateness: Duration = "0s",
    state_ttl: Duration | None = None,
    guarantee: Guarantee = "exactly-once",
    checkpoint_every: int = 1,
    max_records: int = 100_000,
    max_bytes: str | int = "64MB",
    state_memory: str | None = None,
    then: Then | None = None,
) -> Stream:
    """Declare what a streaming table computes; pass it as `table(..., stream=...)`.

    event_time: the event-time column (or `event_time(...)` for epoch numbers, formats).
    watermark: the bounded out-of-orderness B: the watermark is the newest event
        time seen (per source partition, the minimum over partitions) minus B.
    idle_timeout: a partition without events while the stream's event time moves
        on by this much stops holding the watermark back.
    partition_column: the column naming a row's source partition (default: the
        source's own, e.g. a Kafka partition; else the whole input is one partition).
    dedup / join: operators applied before the window, in this order.
    window / group_by / aggregates: windowed aggregation; without a window, a running
        aggregate per key (its state expires `state_ttl` after the key's last event).
    emit: "on-close" emits a window once the watermark passes its end; "early"
        upserts every window a micro-batch changes.
    allowed_lateness: events up to this far behind the watermark still update
        (re-emit) their window; later ones go to `<table>__late`.
    guarantee: "exactly-once" (default) or "at-least-once" (state checkpointed every
        `checkpoint_every` micro-batches; replays are absorbed by an upsert sink).
    max_records / max_bytes: the bound of one micro-batch.
    state_memory: memory the state store may use before spilling to disk (default:
        the project's [defaults] memory_limit).
    then: a step after the operators: a function of the rows one micro-batch emits
        (a DuckDB relation) returning the rows to write (a relation, or SQL over
        `emitted`), e.g.
        the rows at each window's maximum:
        `then=lambda c: c.query("c", "SELECT * FROM c QUALIFY n = max(n) OVER "
        "(PARTITION BY window_start)")`. Every row of a window closed on time is
        emitted in one micro-batch, so a step per window sees the whole window;
        only for streams that append (no early emission, allowed lateness or
        at-least-once upserts).
    """
    if isinstance(event_time, str):
        event_time = EventTime(event_time)
    if not isinstance(event_time, EventTime):
        raise ConfigError("stream: event_time must be a column name or event_time(...)")
    joins = (join,) if isinstance(join, TemporalJoin | IntervalJoin) else tuple(join)
    interval_joins = [j for j in joins if isinstance(j, IntervalJoin)]
    if len(interval_joins) > 1:
        raise ConfigError("stream: at most one interval_join (a stream joins one other input)")
    groups = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    named = tuple((aggregates or {}).items())
    for name, aggregate in named:
        if not _IDENTIFIER.match(name) or name in ("window_start", "window_end"):
            raise ConfigError(f"stream: aggregate name {name!r} is not a valid column name")
        if not isinstance(aggregate, Aggregate):
            raise ConfigError(
                f"stream: aggregate {name!r} must be count(), sum_(...), ... from headwater.stream"
            )
        if name in groups:
            raise ConfigError(f"stream: aggregate {name!r} has the name of a group_by column")
    if window is not None and not named:
        raise ConfigError(
            "stream: a window needs aggregates", "aggregates={'events': count(), ...}"
        )
    if named and window is None and not groups:
        raise ConfigError(
            "stream: aggregates without a window need group_by (a running aggregate per key)"
        )
    if emit not in ("on-close", "early"):
        raise ConfigError("stream: emit must be 'on-close' or 'early'")
    if guarantee not in ("exactly-once", "at-least-once"):
        raise ConfigError("stream: guarantee must be 'exactly-once' or 'at-least-once'")
    if checkpoint_every < 1 or (guarantee == "exactly-once" and checkpoint_every != 1):
        raise ConfigError(
            "stream: checkpoint_every > 1 is for guarantee='at-least-once'",
            "exactly-once checkpoints the state with every micro-batch",
        )
    if max_records < 1:
        raise ConfigError("stream: max_records must be at least 1")
    if state_ttl is not None and (window is not None or not named):
        raise ConfigError(
            "stream: state_ttl applies to running aggregates per key (no window)",
            "windows expire with the watermark; dedup state with its `within`",
        )
    if state_memory is not None:
        parse_size(state_memory, "stream: state_memory")
    if then is not None and not callable(then):
        raise ConfigError("stream: then must be a function of the emitted rows (a relation)")
    return Stream(
        event_time=event_time,
        watermark=_duration(watermark, "stream: watermark"),
        idle_timeout=None if idle_timeout is None else _duration(idle_timeout, "idle_timeout"),
        partition_column=partition_column,
        dedup=dedup,
        joins=joins,
        window=window,
        group_by=groups,
        aggregates=named,
        emit=emit,
        allowed_lateness=_duration(allowed_lateness, "stream: allowed_lateness"),
        state_ttl=None if state_ttl is None else _duration(state_ttl, "stream: state_ttl"),
        guarantee=guarantee,
        checkpoint_every=checkpoint_every,
        max_records=max_records,
        max_bytes=parse_size(max_bytes, "stream: max_bytes"),
        state_memory=state_memory,
        interval_join=interval_joins[0] if interval_joins else None,
        then=then,
    )
