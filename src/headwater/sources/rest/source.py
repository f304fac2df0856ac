"""The REST source: lands each response page, raw, as one row of a bronze table.

    table("bronze.orders_raw", source=rest(orders), strategy="append")

Rows: the body as received, the URL (credentials removed), the status, a few
response headers, when it was fetched, and ids of the resource, the load and
the page. Parsing happens downstream (`records`), so a changed parser can
re-derive every record from the bronze history.

Position (committed with the pages it describes):

    {"incremental": <latest field value of completed loads>,
     "load": None | {"id", "since", "state", "page", "max"}}

`load` is the load under way: the incremental value it asked from (`since`),
the paginator state of its next page, the next page number and the largest
`field` value seen so far. Every `pages_per_commit` pages are one commit, so a
load killed half-way resumes at its next page, with the same `since`. A
dependent resource's position is the parent table's version whose changes it
has requested, and, during a load, the index of the next parent row:

    {"version": <parent version done>,
     "load": None | {"id", "from", "to", "next", "state", "page"}}
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError, HeadwaterError
from ...tables.change_feed import read_changes
from ...tables.strategies.base import CHANGE_TYPE
from ..base import Increment, Position, ReadContext, Source
from ._values import canonical, extract_records, get_path, later, redact, short
from .client import HttpClient
from .paginate import State
from .resource import Resource

RAW_SCHEMA = pa.schema(
    [
        pa.field("resource", pa.string()),
        pa.field("load_id", pa.string()),  # one pass through the pages
        pa.field("page_id", pa.string()),  # unique: load, parent row, page number
        pa.field("page", pa.int64()),  # page number within the load (or the parent row)
        pa.field("parent", pa.string()),  # JSON of the parent's parameters (dependents)
        pa.field("method", pa.string()),
        pa.field("url", pa.string()),  # as requested, credentials removed
        pa.field("status", pa.int32()),
        pa.field("headers", pa.string()),  # JSON of the kept response headers
        pa.field("body", pa.string()),
        pa.field("fetched_at", pa.timestamp("us", "UTC")),
    ]
)
_LIVE = ("insert", "update_postimage")


@dataclass
class _Page:
    row: dict[str, Any]
    records: list[Any]
    next_state: State | None


class RestSource(Source):
    """Pages of one REST resource, landed raw (see the module docstring)."""

    kind = "rest"

    def __init__(self, resource: Resource) -> None:
        if not isinstance(resource, Resource):
            raise ConfigError(
                "rest(...) takes a Resource (headwater.sources.rest.Resource or load_resources(...))"
            )
        self.resource = resource

    def describe(self) -> str:
        r = self.resource
        origin = r.base_url or (f"connection {r.connection}" if r.connection else "")
        return f"rest {r.name}: {r.method} {origin}{r.endpoint}".strip()

    def upstream_tables(self) -> list[str]:
        return [self.resource.parent.table] if self.resource.parent else []

    def changes_read(self) -> list[str]:
        # A dependent resource fetches details for the parent rows that changed.
        return self.upstream_tables()

    # -- reading ------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        resource = self.resource
        settings = ctx.connection(resource.connection) if resource.connection else {}
        base_url = resource.base_url or settings.get("base_url")
        if not base_url and not resource.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"table {ctx.table}: resource {resource.name} has no base_url",
                "set base_url= on the resource, or base_url in its connection",
            )
        # While the table does not exist, a commit without pages would only create it
        # empty (and a first load that found nothing is simply repeated next run).
        created = ctx.resolve is None or ctx.resolve(ctx.table).exists
        with HttpClient(resource, settings, str(base_url or "")) as http:
            if resource.parent is None:
                increments = self._read_pages(http, position or {}, ctx)
            else:
                increments = self._read_dependent(http, position or {}, ctx)
            for increment in increments:
                if created or increment.data.num_rows:
                    created = True
                    yield increment

    def _read_pages(
        self, http: HttpClient, position: dict[str, Any], ctx: ReadContext
    ) -> Iterator[Increment]:
        resource = self.resource
        incremental = resource.incremental
        committed = position.get("incremental")
        load = position.get("load")
        if load is None:
            since = committed if committed is not None else (incremental and incremental.initial)
            load = {
                "id": uuid.uuid4().hex[:16],
                "since": since,
                "state": resource.paginator.first(),
                "page": 0,
                "max": None,
            }
        load = dict(load)
        params = dict(resource.params)
        if incremental is not None and load["since"] is not None:
            params[incremental.param] = load["since"]
        batch = _Batch(resource, ctx)
        state: State = load["state"]
        while True:
            page = self._fetch(
                http, resource.endpoint, params, state, load["id"], load["page"], None
            )
            load["max"] = self._latest(load["max"], page, http)
            load["page"] += 1
            batch.add(page)
            if page.next_state is None:
                break
            state = load["state"] = page.next_state
            if batch.full():
                yield batch.flush({"incremental": committed, "load": dict(load)}, http)
        done = later(committed, load["max"]) if incremental is not None else None
        yield batch.flush({"incremental": done, "load": None}, http)

    def _read_dependent(
        self, http: HttpClient, position: dict[str, Any], ctx: ReadContext
    ) -> Iterator[Increment]:
        resource = self.resource
        assert resource.parent is not None
        if ctx.resolve is None:
            raise HeadwaterError(f"table {ctx.table}: dependent resources need a project")
        target = ctx.resolve(resource.parent.table)
        snapshot = target.load()
        if snapshot is None:
            raise HeadwaterError(
                f"table {ctx.table} requests {resource.name} for each row of {resource.parent.table}, which does not exist yet",
                f"build {resource.parent.table} first (`headwater run` builds tables in dependency order)",
            )
        done = position.get("version")
        load = position.get("load")
        if load is None:
            latest = snapshot.version()
            if done is not None and done >= latest:
                return
            load = {
                "id": uuid.uuid4().hex[:16],
                "from": done,
                "to": latest,
                "next": 0,
                "state": None,
                "page": 0,
            }
        load = dict(load)
        rows = self._parent_rows(target, load["from"], load["to"], ctx)
        path_params = resource.path_params()
        batch = _Batch(resource, ctx)
        for index in range(int(load["next"]), len(rows)):
            values = rows[index]
            endpoint = resource.endpoint.format(
                **{k: _quote(v) for k, v in values.items() if k in path_params}
            )
            params = {
                **resource.params,
                **{k: v for k, v in values.items() if k not in path_params},
            }
            state: State = (
                load["state"] if load["state"] is not None else resource.paginator.first()
            )
            while True:
                page = self._fetch(
                    http, endpoint, params, state, load["id"], load["page"], values, index
                )
                batch.add(page)
                if page.next_state is None:
                    load.update(next=index + 1, state=None, page=0)
                    break
                state = page.next_state
                load.update(state=state, page=load["page"] + 1)
                if batch.full():
                    yield batch.flush({"version": done, "load": dict(load)}, http)
            if batch.full():
                yield batch.flush({"version": done, "load": dict(load)}, http)
        yield batch.flush({"version": load["to"], "load": None}, http)

    # -- one page -------------------------------------------------------------------
    def _fetch(
        self,
        http: HttpClient,
        endpoint: str,
        params: dict[str, Any],
        state: State,
        load_id: str,
        page_number: int,
        parent_values: dict[str, Any] | None,
        parent_index: int | None = None,
    ) -> _Page:
        resource = self.resource
        url, query = resource.paginator.apply(state, endpoint, params)
        response = http.request(url, query)
        fetched_at = datetime.now(UTC)
        shown_url = http.strip(response.request.url)
        where = f"resource {resource.name}: {response.request.method} {http.show(shown_url)}"
        if response.status_code in resource.skip_status:
            return _Page({}, [], None)
        try:
            body = response.json() if response.content else None
        except ValueError:
            content_type = response.headers.get("content-type", "no content type")
            raise HeadwaterError(
                f"{where}: the response is not JSON ({content_type}): "
                f"{redact(short(response.text, 120), http.credentials.secrets)}",
                "check the endpoint; only JSON APIs are supported",
            ) from None
        records = extract_records(body, resource.records, where)
        next_state = resource.paginator.next(state, response, body, len(records), shown_url)
        if next_state is not None and "url" in next_state:
            next_state = {**next_state, "url": str(http.strip(next_state["url"]))}
        if next_state is not None and next_state == state:
            raise HeadwaterError(
                f"{where}: the {resource.paginator.describe()} paginator did not advance (the next page is this page)",
                "check the paginator's settings (cursor_path, path, total_path)",
            )
        page_key = (
            f"{load_id}-{page_number}"
            if parent_index is None
            else f"{load_id}-{parent_index}-{page_number}"
        )
        kept = {
            name: response.headers[name]
            for name in resource.keep_headers
            if name in response.headers
        }
        row = {
            "resource": resource.name,
            "load_id": load_id,
            "page_id": page_key,
            "page": page_number,
            "parent": None if parent_values is None else canonical(parent_values),
            "method": response.request.method,
            "url": str(shown_url),
            "status": response.status_code,
            "headers": json.dumps(kept, sort_keys=True),
            "body": response.text,
            "fetched_at": fetched_at,
        }
        return _Page(row, records, next_state)

    def _latest(self, current: Any, page: _Page, http: HttpClient) -> Any:
        incremental = self.resource.incremental
        if incremental is None:
            return None
        for record in page.records:
            value = get_path(record, incremental.field)
            if value is None:
                continue
            try:
                current = later(current, value)
            except TypeError as exc:
                raise HeadwaterError(
                    f"resource {self.resource.name}: incremental field {incremental.field!r} "
                    f"holds {value!r} after {current!r} ({exc})",
                    "the incremental field must hold numbers or ISO timestamps",
                ) from None
        return current

    # -- the parent's rows ------------------------------------------------------------
    def _parent_rows(
        self, target: Any, after: int | None, upto: int, ctx: ReadContext
    ) -> list[dict[str, Any]]:
        """The distinct parameter sets of the parent rows that are new or changed, in a stable order."""
        parent = self.resource.parent
        assert parent is not None
        columns = list(dict.fromkeys(parent.params.values()))
        if after is None:
            snapshot = target.load(upto)
            schema = pa.schema(snapshot.schema())
            self._check_columns(schema, columns)
            table = target.dataset(table=snapshot).to_table(columns=columns)
        else:
            reader, _ = read_changes(target, after, upto)
            self._check_columns(reader.schema, columns)
            changes = reader.read_all()
            live = pc.is_in(changes.column(CHANGE_TYPE), pa.array(_LIVE))
            table = changes.filter(live).select(columns)
        seen: dict[str, dict[str, Any]] = {}
        for row in table.to_pylist():
            values = {name: _plain(row[column]) for name, column in parent.params.items()}
            if any(v is None for v in values.values()):
                continue  # nothing to request for a parent without the value
            seen.setdefault(canonical(values), values)
        return [seen[key] for key in sorted(seen)]

    def _check_columns(self, schema: pa.Schema, columns: list[str]) -> None:
        parent = self.resource.parent
        assert parent is not None
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise HeadwaterError(
                f"resource {self.resource.name}: parent table {parent.table} has no column(s) {missing}",
                f"its columns: {', '.join(schema.names)}",
            )


class _Batch:
    """Pages collected for the next increment."""

    def __init__(self, resource: Resource, ctx: ReadContext) -> None:
        self.resource = resource
        self.max_rows = ctx.chunk_rows
        self.rows: list[dict[str, Any]] = []
        self.pages = 0
        self.records = 0

    def add(self, page: _Page) -> None:
        self.pages += 1
        # A page without records is not landed: nothing could be parsed from it, and an
        # up-to-date incremental load would otherwise commit an empty page every run.
        if page.records:
            self.rows.append(page.row)
            self.records += len(page.records)

    def full(self) -> bool:
        return self.pages >= self.resource.pages_per_commit or self.records >= self.max_rows

    def flush(self, position: dict[str, Any], http: HttpClient) -> Increment:
        data = pa.Table.from_pylist(self.rows, schema=RAW_SCHEMA)
        info = {
            "pages": self.pages,
            "records": self.records,
            "requests": http.requests,
            "retries": http.retries,
        }
        self.rows, self.pages, self.records = [], 0, 0
        return Increment(data, position, info=info)


def _plain(value: Any) -> Any:
    """A parent value as JSON (timestamps and decimals as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _quote(value: Any) -> str:
    """A parameter value as one URL path segment."""
    return quote(str(value), safe="")


# The name pipelines use: `rest(resource)` builds the connector.
rest = RestSource
