"""Parsing landed pages into typed records: `records(...)` and the ready transform `parser(...)`.

    table("bronze.orders_raw", source=rest(orders), strategy="append")
    table("bronze.orders", inputs=["bronze.orders_raw"], strategy="merge",
          keys=["id"], version_column="updated_at", schema="freeze")(parser(orders))

or inside a function of your own:

    @table("bronze.orders", inputs=["bronze.orders_raw"], strategy="merge", keys=["id"])
    def orders_parsed(ctx, orders_raw):
        return records(orders_raw, orders, ctx=ctx)

Each landed page's body is read at the resource's records path; nested objects
become columns `parent__child`, lists are kept as JSON text. Column types are
the declared ones (`columns={"updated_at": "timestamp"}`), else inferred from
the JSON values: booleans, int64, double (JSON numbers with a fraction), text.
A field whose values are all null in a batch is left out (the table keeps or
adds its column when values arrive). With `ctx`, a JSON number column follows
the table's existing numeric type (JSON has one number type: 12 and 12.5 must
not flip a double column back to integers).

So the schema is stable and typed, and drift shows where the table's schema
policy decides: a new field is a new column (evolve adds it, freeze fails
naming it, discard-columns drops it), a number turning into text is an error
naming the column, and integers turning into fractions widen the column
(evolve) or fail (freeze).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from ...errors import ConfigError, HeadwaterError
from ...tables.strategies.base import CHANGE_TYPE, COMMIT_VERSION
from ._types import column_type
from ._values import extract_records, short
from .resource import Resource

if TYPE_CHECKING:
    from ...engine.context import RunContext

Nested = Literal["flatten", "json"]
META = ("resource", "url", "status", "fetched_at", "load_id", "page_id", "page", "record_index")
_LIVE = ("insert", "update_postimage")
_BAD_NAME = re.compile(r"[ ,;{}()\n\t=.]")
_INT64 = (-(2**63), 2**63 - 1)
_META_TYPES = {
    "resource": pa.string(),
    "url": pa.string(),
    "status": pa.int32(),
    "fetched_at": pa.timestamp("us", "UTC"),
    "load_id": pa.string(),
    "page_id": pa.string(),
    "page": pa.int64(),
    "record_index": pa.int64(),
}


def records(
    raw: duckdb.DuckDBPyRelation | pa.Table | pa.RecordBatchReader,
    resource: Resource | None = None,
    *,
    path: str | None = None,
    columns: Mapping[str, str] | None = None,
    nested: Nested = "flatten",
    meta: Sequence[str] = (),
    parent_columns: bool = True,
    ctx: RunContext | None = None,
) -> pa.Table:
    """The records in landed pages (the rows of a REST source's table, or its changes).

    resource: takes the records path, declared column types and name from it
      (only its pages are parsed when the table holds several resources).
    path: records path (overrides the resource's).
    columns: declared types (over the resource's): string, int64, double, bool,
      timestamp, date, decimal(p,s), json (the value as JSON text, not flattened).
    nested: "flatten" objects into `a__b` columns, or keep them as "json" text.
    meta: page facts to add as `_<name>` columns: resource, url, status,
      fetched_at, load_id, page_id, page, record_index.
    parent_columns: add a dependent resource's parent parameters (e.g. order_id)
      to records that lack them.
    ctx: the run context, so numbers follow the table's existing column types.
    """
    name = resource.name if resource is not None else "rest"
    records_path = path if path is not None else (resource.records if resource else None)
    declared_specs = {**(resource.columns if resource else {}), **(columns or {})}
    declared = {
        column: column_type(spec, f"records of {name}: column {column!r}")
        for column, spec in declared_specs.items()
    }
    json_columns = {c for c, spec in declared_specs.items() if spec.strip().lower() == "json"}
    unknown = [m for m in meta if m not in META]
    if unknown:
        raise ConfigError(
            f"records of {name}: unknown meta {unknown}", f"choose from {', '.join(META)}"
        )
    if nested not in ("flatten", "json"):
        raise ConfigError(f"records of {name}: nested must be 'flatten' or 'json'")

    pages = _pages(raw, resource.name if resource else None)
    rows: list[dict[str, Any]] = []
    origins: list[str] = []
    for page in pages:
        where = f"resource {page['resource']} page {page['page_id']} ({page['url']})"
        try:
            body = json.loads(page["body"]) if page["body"] else None
        except ValueError:
            raise HeadwaterError(
                f"{where}: the landed body is not JSON", "this page cannot be parsed"
            ) from None
        parent = json.loads(page["parent"]) if page.get("parent") and parent_columns else {}
        for index, item in enumerate(extract_records(body, records_path, where)):
            row: dict[str, Any] = {}
            if isinstance(item, dict):
                _flatten(item, "", row, json_columns, nested, where)
            else:
                row["value"] = item  # a list of scalars: one column
            for key, value in parent.items():
                row.setdefault(_name(key), value)
            for m in meta:
                row[f"_{m}"] = index if m == "record_index" else page[m]
            rows.append(row)
            origins.append(f"{where} record {index}")

    existing = _existing_types(ctx)
    names = list(dict.fromkeys([*declared, *(k for row in rows for k in row)]))
    arrays: dict[str, pa.Array] = {}
    for column in names:
        values = [row.get(column) for row in rows]
        if column.startswith("_") and column[1:] in _META_TYPES and column[1:] in meta:
            arrays[column] = pa.array(values, _META_TYPES[column[1:]])
            continue
        array = _typed(
            column, values, declared.get(column), existing.get(column.lower()), origins, name
        )
        if array is not None:
            arrays[column] = array
    if not rows:
        return _empty(declared, ctx)
    return pa.table(arrays)


def parser(
    resource: Resource | None = None,
    *,
    path: str | None = None,
    columns: Mapping[str, str] | None = None,
    nested: Nested = "flatten",
    meta: Sequence[str] = (),
    parent_columns: bool = True,
) -> Callable[[RunContext, duckdb.DuckDBPyRelation], pa.Table]:
    """A ready transform for a table whose one input is a REST source's table.

    table("bronze.orders", inputs=["bronze.orders_raw"], ...)(parser(orders))
    """
    # Declared types are checked now, at declaration, rather than at the first run.
    for column, spec in (columns or {}).items():
        column_type(spec, f"parser: column {column!r}")

    def parse(ctx: RunContext, raw: duckdb.DuckDBPyRelation) -> pa.Table:
        return records(
            raw,
            resource,
            path=path,
            columns=columns,
            nested=nested,
            meta=meta,
            parent_columns=parent_columns,
            ctx=ctx,
        )

    parse.__name__ = f"parse_{resource.name}" if resource is not None else "parse_records"
    return parse


# -- pages ------------------------------------------------------------------------------
def _pages(
    raw: duckdb.DuckDBPyRelation | pa.Table | pa.RecordBatchReader, resource: str | None
) -> list[dict[str, Any]]:
    if isinstance(raw, duckdb.DuckDBPyRelation):
        table = raw.to_arrow_table()
    elif isinstance(raw, pa.RecordBatchReader):
        table = raw.read_all()
    elif isinstance(raw, pa.Table):
        table = raw
    else:
        raise HeadwaterError(
            f"records(): expected the landed pages (a DuckDB relation or Arrow table), got {type(raw).__name__}"
        )
    missing = [c for c in ("body", "resource", "page_id", "url") if c not in table.schema.names]
    if missing:
        raise HeadwaterError(
            f"records(): the input has no column(s) {missing}; is it the table of a rest(...) source?",
            "give records() the pages landed by rest(...), e.g. inputs=['bronze.orders_raw']",
        )
    rows: list[dict[str, Any]] = table.to_pylist()
    if CHANGE_TYPE in table.schema.names:
        rows = [r for r in rows if r[CHANGE_TYPE] in _LIVE]
    if resource is not None:
        rows = [r for r in rows if r["resource"] == resource]
    # Pages in the order they were fetched (within a commit, and commit by commit).
    rows.sort(
        key=lambda r: (
            r.get(COMMIT_VERSION) or 0,
            r.get("fetched_at") or datetime.min.replace(tzinfo=UTC),
            r.get("page") or 0,
        )
    )
    return rows


def _name(key: str) -> str:
    # Characters Delta cannot store in a column name (and '.', which reads as a path).
    return _BAD_NAME.sub("_", key) if key else "_"


def _flatten(
    value: dict[str, Any],
    prefix: str,
    out: dict[str, Any],
    json_columns: set[str],
    nested: Nested,
    where: str,
) -> None:
    for key, item in value.items():
        column = prefix + _name(str(key))
        if isinstance(item, dict) and nested == "flatten" and column not in json_columns:
            _flatten(item, column + "__", out, json_columns, nested, where)
            continue
        if column in out:
            raise HeadwaterError(
                f"{where}: two fields become column {column!r}",
                "rename one with a function of your own, or parse with nested='json'",
            )
        out[column] = item


def _empty(declared: Mapping[str, pa.DataType], ctx: RunContext | None) -> pa.Table:
    """No records: no rows, with the table's own columns when it exists (a keyed strategy
    needs its key columns even to do nothing), else the declared ones."""
    if ctx is not None and ctx.project is not None:
        schema = ctx.project.target(ctx.table).schema
        if schema is not None:
            return schema.empty_table()
    return pa.schema([pa.field(c, t) for c, t in declared.items()]).empty_table()


def _existing_types(ctx: RunContext | None) -> dict[str, pa.DataType]:
    if ctx is None or ctx.project is None:
        return {}
    schema = ctx.project.target(ctx.table).schema
    return {} if schema is None else {f.name.lower(): f.type for f in schema}


# -- typing -------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "text"
    return "json"  # lists (and objects kept whole)


def _typed(
    column: str,
    values: list[Any],
    declared: pa.DataType | None,
    existing: pa.DataType | None,
    origins: list[str],
    resource: str,
) -> pa.Array | None:
    if declared is not None:
        return _convert(column, values, declared, origins)
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        return None  # no value yet: no type to give it
    if (
        kinds == {"int"}
        and existing is not None
        and (pa.types.is_floating(existing) or pa.types.is_decimal(existing))
    ):
        return _convert(column, values, existing, origins)
    if kinds <= {"int", "float"} and existing is not None and pa.types.is_decimal(existing):
        return _convert(column, values, existing, origins)
    if kinds == {"bool"}:
        return pa.array(values, pa.bool_())
    if kinds == {"int"}:
        for index, value in enumerate(values):
            if value is not None and not _INT64[0] <= value <= _INT64[1]:
                raise HeadwaterError(
                    f"{origins[index]}: field {column!r} holds {value}, beyond 64-bit integers",
                    f"declare its type: columns={{{column!r}: 'decimal(38,0)'}} or 'string'",
                )
        return pa.array(values, pa.int64())
    if kinds <= {"int", "float"}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds == {"text"}:
        return pa.array(values, pa.string())
    if kinds == {"json"}:
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value is not None:
            first.setdefault(_kind(value), index)
    described = " and ".join(f"{k} ({origins[i]})" for k, i in sorted(first.items()))
    raise HeadwaterError(
        f"records of {resource}: field {column!r} holds values of several kinds: {described}",
        f"declare its type, e.g. columns={{{column!r}: 'string'}}",
    )


def _convert(column: str, values: list[Any], dtype: pa.DataType, origins: list[str]) -> pa.Array:
    convert = _converter(dtype)
    out: list[Any] = []
    for index, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(convert(value))
        except (ValueError, TypeError, InvalidOperation, OverflowError):
            raise HeadwaterError(
                f"{origins[index]}: field {column!r} value {short(json.dumps(value, default=str), 80)} "
                f"is not a {dtype}",
                "fix the declared type in columns=..., or parse the field in a function of your own",
            ) from None
    try:
        return pa.array(out, dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # Decimals whose digits do not fit the declared scale or precision.
        raise HeadwaterError(
            f"records: field {column!r} does not fit {dtype}: {short(str(exc), 120)}",
            "widen the declared decimal(p,s)",
        ) from None


def _converter(dtype: pa.DataType) -> Callable[[Any], Any]:
    if pa.types.is_string(dtype):
        return _to_text
    if pa.types.is_int64(dtype):
        return _to_int
    if pa.types.is_floating(dtype):
        return _to_float
    if pa.types.is_boolean(dtype):
        return _to_bool
    if pa.types.is_timestamp(dtype):
        return _to_timestamp
    if pa.types.is_date32(dtype):
        return _to_date
    if pa.types.is_decimal(dtype):
        return _to_decimal
    raise TypeError(f"no converter for {dtype}")


def _to_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("fraction")
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ValueError("not an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError("not a number")
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("not a boolean")


def _to_timestamp(value: Any) -> datetime:
    if isinstance(value, bool):
        raise TypeError("boolean")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)  # epoch seconds
    if not isinstance(value, str):
        raise TypeError("not a timestamp")
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _to_date(value: Any) -> date:
    if not isinstance(value, str):
        raise TypeError("not a date")
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError("not a number")
    return Decimal(str(value))
