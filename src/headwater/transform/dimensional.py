"""Dimensional modeling helpers: surrogate keys, calendar dimensions, inferred members.

    from headwater.transform.dimensional import (
        add_surrogate_key, dim_date, dim_time, generated, register, surrogate_key,
        with_inferred_members,
    )

- **Surrogate keys** are a deterministic md5 of normalised business keys, the
  same in SQL (`surrogate_key(a, b)` once `register(ctx)` ran on the model's
  connection), in Python (`surrogate_key(42, "FR")`, `add_surrogate_key(table,
  [...])`) and in the `dimension` write strategy: one SQL expression
  (`key_expression`) defines them all. See docs/modeling.md for the exact
  normalisation.
- **dim_date / dim_time** build calendar tables as Arrow; `generated(...)` makes
  any such builder a table source that is read again only when its output changes.
- **Inferred members**: `with_inferred_members` adds a placeholder row (control
  column `_inferred`) for every natural key a fact references that the
  dimension's own rows do not bring; the `dimension` strategy inserts it only if
  the key is absent and fills it in, keeping its surrogate key, when the real
  row arrives.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import duckdb
import pyarrow as pa

from .._sql import cols, q
from ..errors import ConfigError
from ..sources.base import Increment, Position, ReadContext, Source

if TYPE_CHECKING:
    from ..engine.context import RunContext

# The control column marking placeholder rows of inferred members.
INFERRED = "_inferred"
# Overloads of the SQL functions: surrogate_key(p1) ... surrogate_key(p1, ..., p12).
MAX_KEY_PARTS = 12
# Whitespace trimmed from both ends of text parts: space, \t, \n, \v, \f, \r, NBSP.
_WHITESPACE_SQL = " || ".join(f"chr({c})" for c in (32, 9, 10, 11, 12, 13, 160))
_TS_FORMAT = "'%Y-%m-%dT%H:%M:%S.%f'"
_CHANGE_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


# -- surrogate keys ------------------------------------------------------------------


def part_text(expr: str, fold_case: bool = False) -> str:
    """SQL: the canonical text of one key part (NULL stays NULL).

    Dispatches on the value's type at bind time, so the same business value
    gives the same text whatever its type (INTEGER 42, BIGINT 42, DECIMAL 42.00
    and ' 42 ' all become '42') and whatever the session's time zone.
    """
    kind = f"typeof({expr})"
    text = f"trim(nfc_normalize(CAST({expr} AS VARCHAR)), {_WHITESPACE_SQL})"
    if fold_case:
        text = f"lower({text})"
    plain = f"CAST({expr} AS VARCHAR)"
    # Decimals and floats: trailing fractional zeros dropped (1.50 -> 1.5, 42.0 -> 42).
    number = (
        f"CASE WHEN contains({plain}, '.') AND NOT contains(lower({plain}), 'e') "
        f"THEN rtrim(rtrim({plain}, '0'), '.') ELSE {plain} END"
    )
    # Through text, so every branch binds for any type; TIMESTAMPTZ text carries its offset.
    aware = f"strftime(timezone('UTC', TRY_CAST({plain} AS TIMESTAMPTZ)), {_TS_FORMAT})"
    naive = f"strftime(TRY_CAST({plain} AS TIMESTAMP), {_TS_FORMAT})"
    return (
        f"CASE WHEN {expr} IS NULL THEN NULL "
        f"WHEN {kind} = 'VARCHAR' THEN {text} "
        f"WHEN {kind} = 'TIMESTAMP WITH TIME ZONE' THEN {aware} "
        f"WHEN {kind} IN ('TIMESTAMP', 'TIMESTAMP_S', 'TIMESTAMP_MS', 'TIMESTAMP_NS') THEN {naive} "
        f"WHEN {kind} LIKE 'DECIMAL%' OR {kind} IN ('FLOAT', 'DOUBLE') THEN "
        f"CASE WHEN ({number}) = '-0' THEN '0' ELSE {number} END "
        f"ELSE {plain} END"
    )


def key_expression(parts: Sequence[str], fold_case: bool | Collection[int] = False) -> str:
    """SQL: the surrogate key (32 hex digits) of the given SQL expressions.

    Each part is encoded as `<UTF-8 byte length>:<canonical text>` (NULL as `N`),
    parts are joined with `|`, and the result is md5-hashed: ('a', NULL) and
    (NULL, 'a') differ, and no separator inside a value can cause a collision.
    `fold_case` lower-cases text parts: all of them, or those at the given positions.
    """
    if not parts:
        raise ConfigError("a surrogate key needs at least one column")
    encoded = [
        encoded_part(expr, fold_case if isinstance(fold_case, bool) else index in fold_case)
        for index, expr in enumerate(parts)
    ]
    return "md5(" + " || '|' || ".join(encoded) + ")"


def encoded_part(expr: str, fold_case: bool = False) -> str:
    """SQL: one part as it enters the hash: `<UTF-8 byte length>:<text>`, or `N` for NULL."""
    text = part_text(expr, fold_case)
    return (
        f"(CASE WHEN ({expr}) IS NULL THEN 'N' "
        f"ELSE CAST(strlen({text}) AS VARCHAR) || ':' || {text} END)"
    )


def key_columns_expression(
    columns: Sequence[str], alias: str = "", fold_case: bool | Collection[str] = False
) -> str:
    """SQL: the surrogate key of columns (quoted), optionally of a relation alias."""
    prefix = f"{alias}." if alias else ""
    fold: bool | set[int] = (
        fold_case
        if isinstance(fold_case, bool)
        else {i for i, c in enumerate(columns) if c in set(fold_case)}
    )
    return key_expression([prefix + q(c) for c in columns], fold)


def _connection(target: RunContext | duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    return target if isinstance(target, duckdb.DuckDBPyConnection) else target.con


def register(target: RunContext | duckdb.DuckDBPyConnection) -> None:
    """Define the SQL functions `surrogate_key(...)` and `surrogate_key_ci(...)`
    (1 to 12 arguments; `_ci` lower-cases text) on a run's DuckDB connection.

    Idempotent; call it once per connection (e.g. first thing in a model).
    """
    con = _connection(target)
    # One macro encodes a part (the costly definition); the overloads only join parts.
    text, folded = encoded_part("x", False), encoded_part("x", True)
    con.execute(
        f"CREATE OR REPLACE MACRO __hw_key_part(x, fold) AS "
        f"CASE WHEN fold THEN {folded} ELSE {text} END"
    )
    for name, fold in (("surrogate_key", "FALSE"), ("surrogate_key_ci", "TRUE")):
        overloads = []
        for n in range(1, MAX_KEY_PARTS + 1):
            params = [f"p{i}" for i in range(1, n + 1)]
            joined = " || '|' || ".join(f"__hw_key_part({p}, {fold})" for p in params)
            overloads.append(f"({', '.join(params)}) AS md5({joined})")
        con.execute(f"CREATE OR REPLACE MACRO {name}{', '.join(overloads)}")


_local: duckdb.DuckDBPyConnection | None = None
_local_lock = threading.Lock()


def _local_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of one in-process connection (opening a connection costs ~0.1 s)."""
    global _local
    with _local_lock:
        if _local is None:
            _local = duckdb.connect()
        return _local.cursor()


def surrogate_key(*values: Any, case_insensitive: bool = False) -> str:
    """The surrogate key of one tuple of business-key values, e.g. surrogate_key(42, 'FR').

    Values are typed as Arrow infers them from Python (int -> BIGINT, str ->
    VARCHAR, aware datetime -> TIMESTAMPTZ, Decimal -> DECIMAL, None -> NULL):
    the key equals the one SQL computes for the same values.
    """
    if not values:
        raise ConfigError("surrogate_key() needs at least one value")
    row = pa.table({f"p{i}": pa.array([v]) for i, v in enumerate(values)})
    con = _local_cursor()
    try:
        con.register("key_row", row)
        expr = key_columns_expression(row.schema.names, fold_case=case_insensitive)
        result = con.execute(f"SELECT {expr} FROM key_row").fetchall()
    finally:
        con.close()
    return str(result[0][0])


def add_surrogate_key(
    data: pa.Table | duckdb.DuckDBPyRelation,
    columns: Sequence[str],
    name: str = "surrogate_key",
    *,
    case_insensitive: bool | Collection[str] = False,
) -> pa.Table:
    """`data` with a surrogate key column `name` computed from `columns`.

    `case_insensitive` lower-cases the text of all columns (True) or of the named ones.
    """
    table = data.to_arrow_table() if isinstance(data, duckdb.DuckDBPyRelation) else data
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise ConfigError(
            f"surrogate key column(s) {missing} are not in the data",
            f"columns are: {', '.join(table.schema.names)}",
        )
    if name in table.schema.names:
        raise ConfigError(
            f"the data already has a column {name!r}", "choose another name for the key"
        )
    con = _local_cursor()
    try:
        con.register("key_data", table)
        keys = con.sql(
            f"SELECT {key_columns_expression(columns, 'd', case_insensitive)} FROM key_data d"
        ).to_arrow_table()
    finally:
        con.close()
    # A projection keeps the input's order in DuckDB; the key is attached to the original rows.
    return table.append_column(name, keys.column(0))


# -- calendar dimensions -----------------------------------------------------------

Holidays: TypeAlias = (
    Mapping[date, str | None] | Iterable[date | str] | pa.Table | duckdb.DuckDBPyRelation
)


def _as_date(value: date | str, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"dim_date: {what} {value!r} is not a date", "give a date or 'YYYY-MM-DD'"
        ) from None


def _holiday_table(holidays: Holidays | None) -> pa.Table:
    schema = pa.schema([("date", pa.date32()), ("name", pa.string())])
    if holidays is None:
        return schema.empty_table()
    if isinstance(holidays, duckdb.DuckDBPyRelation):
        holidays = holidays.to_arrow_table()
    if isinstance(holidays, pa.Table):
        if "date" not in holidays.schema.names:
            raise ConfigError(
                "dim_date: the holidays table has no column 'date'",
                "select the holiday's day AS date (and optionally its name AS name)",
            )
        names = (
            holidays.column("name").cast(pa.string())
            if "name" in holidays.schema.names
            else pa.nulls(holidays.num_rows, pa.string())
        )
        try:
            days = holidays.column("date").cast(pa.date32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ConfigError(
                f"dim_date: the holidays column 'date' is {holidays.schema.field('date').type}, not a date",
                "cast it to DATE",
            ) from None
        return pa.table([days, names], schema=schema)
    if isinstance(holidays, Mapping):
        pairs = [(_as_date(d, "holiday"), n) for d, n in holidays.items()]
    else:
        pairs = [(_as_date(d, "holiday"), None) for d in cast(Iterable[date | str], holidays)]
    return pa.Table.from_pylist([{"date": d, "name": n} for d, n in pairs], schema=schema)


def dim_date(
    start: date | str,
    end: date | str,
    *,
    fiscal_year_start_month: int = 1,
    fiscal_year_named_by: Literal["end", "start"] = "end",
    weekend_days: Sequence[int] = (6, 7),
    holidays: Holidays | None = None,
) -> pa.Table:
    """A date dimension: one row per day from `start` to `end` (both included).

    Calendar attributes follow ISO 8601 (weeks start on Monday, day_of_week 1 =
    Monday, ISO week-numbering year); names are English. The fiscal year starts
    on the first day of `fiscal_year_start_month` and is named after the calendar
    year it ends in (`fiscal_year_named_by="end"`, e.g. July 2023 - June 2024 is
    FY2024) or starts in ("start"). `weekend_days` are ISO day numbers (6, 7 =
    Saturday, Sunday). `holidays`: a mapping date -> name, dates, or a table or
    relation with columns `date` and optionally `name` (several names on one day
    are joined with ', ').
    """
    first, last = _as_date(start, "start"), _as_date(end, "end")
    if first > last:
        raise ConfigError(f"dim_date: start {first} is after end {last}")
    if not 1 <= fiscal_year_start_month <= 12:
        raise ConfigError(
            f"dim_date: fiscal_year_start_month must be 1..12, not {fiscal_year_start_month}"
        )
    if fiscal_year_named_by not in ("end", "start"):
        raise ConfigError("dim_date: fiscal_year_named_by must be 'end' or 'start'")
    weekend = sorted(set(weekend_days))
    if any(not isinstance(d, int) or not 1 <= d <= 7 for d in weekend):
        raise ConfigError(
            f"dim_date: weekend_days must be ISO day numbers 1..7 (Monday = 1), not {list(weekend_days)}"
        )
    fm = fiscal_year_start_month
    # The fiscal year ending in the calendar year after its start, unless it starts in January.
    name_shift = 1 if fiscal_year_named_by == "end" and fm > 1 else 0
    con = duckdb.connect()
    try:
        con.register("holiday_rows", _holiday_table(holidays))
        return con.sql(
            """
            WITH days AS (
                SELECT CAST(range AS DATE) AS d
                FROM range(CAST($1 AS DATE), CAST($2 AS DATE) + INTERVAL 1 DAY, INTERVAL 1 DAY)
            ), holiday AS (
                SELECT date AS d, string_agg(DISTINCT name, ', ' ORDER BY name) AS name
                FROM holiday_rows WHERE date IS NOT NULL GROUP BY date
            ), base AS (
                SELECT d,
                       CASE WHEN month(d) >= $3 THEN year(d) ELSE year(d) - 1 END AS fy_start_year,
                       ((month(d) - $3 + 12) % 12) + 1 AS fiscal_month
                FROM days
            )
            SELECT
                CAST(year(d) * 10000 + month(d) * 100 + day(d) AS INTEGER) AS date_key,
                d AS date,
                CAST(year(d) AS INTEGER) AS year,
                CAST(quarter(d) AS INTEGER) AS quarter,
                'Q' || quarter(d) AS quarter_name,
                CAST(month(d) AS INTEGER) AS month,
                monthname(d) AS month_name,
                left(monthname(d), 3) AS month_short,
                strftime(d, '%Y-%m') AS year_month,
                CAST(day(d) AS INTEGER) AS day_of_month,
                CAST(dayofyear(d) AS INTEGER) AS day_of_year,
                CAST(isodow(d) AS INTEGER) AS day_of_week,
                dayname(d) AS day_name,
                left(dayname(d), 3) AS day_short,
                CAST(isoyear(d) AS INTEGER) AS iso_year,
                CAST(weekofyear(d) AS INTEGER) AS iso_week,
                isoyear(d) || '-W' || lpad(CAST(weekofyear(d) AS VARCHAR), 2, '0') AS iso_year_week,
                CAST(d - CAST(isodow(d) - 1 AS INTEGER) AS DATE) AS week_start,
                CAST(d + CAST(7 - isodow(d) AS INTEGER) AS DATE) AS week_end,
                CAST(date_trunc('month', d) AS DATE) AS month_start,
                CAST(last_day(d) AS DATE) AS month_end,
                CAST(day(last_day(d)) AS INTEGER) AS days_in_month,
                CAST(date_trunc('quarter', d) AS DATE) AS quarter_start,
                CAST(date_trunc('quarter', d) + INTERVAL 3 MONTH - INTERVAL 1 DAY AS DATE) AS quarter_end,
                d = last_day(d) AS is_month_end,
                ((year(d) % 4 = 0 AND year(d) % 100 <> 0) OR year(d) % 400 = 0) AS is_leap_year,
                CAST(fy_start_year + $4 AS INTEGER) AS fiscal_year,
                'FY' || (fy_start_year + $4) AS fiscal_year_name,
                CAST((fiscal_month - 1) // 3 + 1 AS INTEGER) AS fiscal_quarter,
                CAST(fiscal_month AS INTEGER) AS fiscal_month,
                make_date(fy_start_year, $3, 1) AS fiscal_year_start,
                CAST(datediff('day', make_date(fy_start_year, $3, 1), d) + 1 AS INTEGER) AS fiscal_day_of_year,
                list_contains($5, isodow(d)) AS is_weekend,
                h.d IS NOT NULL AS is_holiday,
                h.name AS holiday_name,
                NOT list_contains($5, isodow(d)) AND h.d IS NULL AS is_business_day
            FROM base LEFT JOIN holiday h USING (d)
            ORDER BY d
            """,
            params=[first, last, fm, name_shift, weekend],
        ).to_arrow_table()
    finally:
        con.close()


def dim_time(grain: Literal["minute", "second"] = "minute") -> pa.Table:
    """A time-of-day dimension: one row per minute (1,440) or second (86,400).

    `time_key` is HHMM (minute grain) or HHMMSS (second grain) as an integer;
    `time_of_day` is ISO text ('13:05' or '13:05:09': Delta has no time-of-day
    type, and ISO text sorts in time order). Day parts: night 00-05, morning
    06-11, afternoon 12-17, evening 18-23.
    """
    if grain not in ("minute", "second"):
        raise ConfigError(f"dim_time: grain must be 'minute' or 'second', not {grain!r}")
    step = 60 if grain == "minute" else 1
    seconds = grain == "second"
    key = "h * 10000 + m * 100 + s" if seconds else "h * 100 + m"
    text = "printf('%02d:%02d:%02d', h, m, s)" if seconds else "printf('%02d:%02d', h, m)"
    extra = "CAST(s AS INTEGER) AS second, CAST(t AS INTEGER) AS second_of_day," if seconds else ""
    con = duckdb.connect()
    try:
        return con.sql(
            f"""
            WITH ticks AS (
                SELECT range AS t, range // 3600 AS h, (range % 3600) // 60 AS m, range % 60 AS s
                FROM range(0, 86400, {step})
            )
            SELECT
                CAST({key} AS INTEGER) AS time_key,
                {text} AS time_of_day,
                CAST(h AS INTEGER) AS hour,
                CAST(m AS INTEGER) AS minute,
                {extra}
                CAST(h * 60 + m AS INTEGER) AS minute_of_day,
                CAST(CASE WHEN h % 12 = 0 THEN 12 ELSE h % 12 END AS INTEGER) AS hour_12,
                CASE WHEN h < 12 THEN 'AM' ELSE 'PM' END AS am_pm,
                CASE WHEN h < 6 THEN 'night' WHEN h < 12 THEN 'morning'
                     WHEN h < 18 THEN 'afternoon' ELSE 'evening' END AS day_part
            FROM ticks ORDER BY t
            """
        ).to_arrow_table()
    finally:
        con.close()


class GeneratedSource(Source):
    """A source whose rows a function builds (a calendar, a static lookup).

    Position: a fingerprint of the rows. The table is written once, and again
    only when the function's output changes (a longer date range, another
    fiscal offset); with strategy="merge" that updates just what changed.
    """

    kind = "generated"

    def __init__(self, build: Callable[[], pa.Table], name: str = "generated") -> None:
        self.build = build
        self.name = name

    def describe(self) -> str:
        return f"generated {self.name}"

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        rows = self.build()
        if isinstance(rows, duckdb.DuckDBPyRelation):
            rows = rows.to_arrow_table()
        fingerprint = _fingerprint(rows)
        if isinstance(position, dict) and position.get("fingerprint") == fingerprint:
            return
        yield Increment(rows, {"fingerprint": fingerprint})


def generated(build: Callable[[], pa.Table], name: str = "generated") -> GeneratedSource:
    """A table source from a function returning rows, e.g. generated(lambda: dim_date(...))."""
    return GeneratedSource(build, name)


def _fingerprint(rows: pa.Table) -> str:
    """sha256 of the rows' Arrow IPC form (schema and values, one chunk)."""
    sink = pa.BufferOutputStream()
    table = rows.combine_chunks()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


# -- inferred members (late-arriving dimension rows) ---------------------------------

_names = itertools.count()


def _relation(
    con: duckdb.DuckDBPyConnection, data: duckdb.DuckDBPyRelation | pa.Table, what: str
) -> str:
    """A view name for `data` on `con` (Arrow tables are registered, relations viewed)."""
    name = f"__hw_{what}_{next(_names)}"
    if isinstance(data, pa.Table):
        con.register(name, data)
    else:
        data.create_view(name, replace=True)
    return name


def _key_pairs(keys: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = list(keys.items()) if isinstance(keys, Mapping) else [(k, k) for k in keys]
    if not pairs:
        raise ConfigError("inferred members need at least one key column")
    return pairs


def missing_members(
    ctx: RunContext | duckdb.DuckDBPyConnection,
    references: duckdb.DuckDBPyRelation | pa.Table,
    members: duckdb.DuckDBPyRelation | pa.Table,
    keys: Sequence[str] | Mapping[str, str],
) -> duckdb.DuckDBPyRelation:
    """Distinct non-NULL natural keys of `references` that `members` lacks.

    `keys` names the key columns (the same in both), or maps a member column to
    the referencing column: {"customer_id": "buyer_id"}. Deletes and pre-images
    of a change feed reference nothing. Columns are named as in `members`.
    """
    con = _connection(ctx)
    pairs = _key_pairs(keys)
    refs, mems = _relation(con, references, "refs"), _relation(con, members, "members")
    ref_columns = con.table(refs).columns
    mem_rel = con.table(mems)
    mem_types = dict(zip(mem_rel.columns, mem_rel.types, strict=True))
    for member_col, ref_col in pairs:
        if ref_col not in ref_columns:
            raise ConfigError(
                f"inferred members: the referencing data has no column {ref_col!r}",
                f"its columns are: {', '.join(ref_columns)}",
            )
        if member_col not in mem_types:
            raise ConfigError(
                f"inferred members: the dimension rows have no key column {member_col!r}",
                f"their columns are: {', '.join(mem_types)}",
            )
    live = (
        f"coalesce(r.{q('_change_type')} NOT IN ('delete', 'update_preimage'), TRUE)"
        if "_change_type" in ref_columns
        else "TRUE"
    )
    selected = ", ".join(f"CAST(r.{q(ref)} AS {mem_types[mem]}) AS {q(mem)}" for mem, ref in pairs)
    present = " AND ".join(f"r.{q(ref)} IS NOT NULL" for _, ref in pairs)
    match = " AND ".join(f"m.{q(mem)} = CAST(r.{q(ref)} AS {mem_types[mem]})" for mem, ref in pairs)
    return con.sql(
        f"SELECT DISTINCT {selected} FROM {refs} r WHERE {live} AND {present} "
        f"AND NOT EXISTS (SELECT 1 FROM {mems} m WHERE {match})"
    )


def with_inferred_members(
    ctx: RunContext | duckdb.DuckDBPyConnection,
    members: duckdb.DuckDBPyRelation | pa.Table,
    references: duckdb.DuckDBPyRelation | pa.Table,
    keys: Sequence[str] | Mapping[str, str],
    *,
    defaults: Mapping[str, Any] | None = None,
    unknown: str | None = None,
) -> duckdb.DuckDBPyRelation:
    """The dimension's rows plus a placeholder for each key `references` needs.

    Placeholders carry the key, `defaults` for named attributes, `unknown` for
    the other text attributes (when given) and NULL elsewhere, and the control
    column `_inferred` = TRUE (FALSE on the real rows). Write the result with the
    `dimension` strategy: a placeholder is inserted only when its key is absent
    (is_inferred = TRUE), never overwrites a real row, and is filled in place,
    keeping its surrogate key, when the real row arrives.
    """
    con = _connection(ctx)
    pairs = _key_pairs(keys)
    mems = _relation(con, members, "members")
    mem_rel = con.table(mems)
    if INFERRED in mem_rel.columns:
        raise ConfigError(
            f"inferred members: the dimension rows already have a column {INFERRED!r}",
            "rename it; Headwater uses it to mark placeholder rows",
        )
    unknown_defaults = set(defaults or {}) - set(mem_rel.columns)
    if unknown_defaults:
        raise ConfigError(
            f"inferred members: defaults name columns the dimension rows lack: {sorted(unknown_defaults)}",
            f"their columns are: {', '.join(mem_rel.columns)}",
        )
    missing = missing_members(con, references, mem_rel, keys)
    key_columns = [m for m, _ in pairs]
    missing_name = _relation(con, missing, "missing")
    values: list[Any] = []
    filled = []
    for column, dtype in zip(mem_rel.columns, mem_rel.types, strict=True):
        if column in key_columns or column in _CHANGE_COLUMNS:
            continue
        if defaults and column in defaults:
            filled.append(f"CAST(? AS {dtype}) AS {q(column)}")
            values.append(defaults[column])
        elif unknown is not None and str(dtype) == "VARCHAR":
            filled.append(f"CAST(? AS VARCHAR) AS {q(column)}")
            values.append(unknown)
        else:
            filled.append(f"CAST(NULL AS {dtype}) AS {q(column)}")
    placeholder_columns = ", ".join([cols(key_columns, "x"), *filled, f"TRUE AS {q(INFERRED)}"])
    return con.sql(
        f"SELECT *, FALSE AS {q(INFERRED)} FROM {mems} "
        f"UNION ALL BY NAME SELECT {placeholder_columns} FROM {missing_name} x",
        params=values or None,
    )
