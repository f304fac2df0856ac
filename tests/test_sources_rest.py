"""The REST source against a real HTTP server on 127.0.0.1, into real Delta tables.

Pages land raw in a bronze table (`rest(...)`, append) and are parsed downstream
(`parser(...)`, merge on the record key). The server paginates, inserts records
while a load pages through them, answers 429 with Retry-After, fails with 5xx
and drops connections; each load must end complete and duplicate-free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from headwater import Project, Runner, table
from headwater.config import ProjectConfig
from headwater.engine.position import read_committed_state
from headwater.errors import ConfigError, HeadwaterError
from headwater.sources.rest import (
    RAW_SCHEMA,
    Incremental,
    Resource,
    Retry,
    api_key,
    basic,
    bearer,
    cursor,
    link_header,
    load_resources,
    next_url,
    oauth2_client_credentials,
    offset,
    page_number,
    parent,
    parse_resources,
    parser,
    records,
    rest,
)
from headwater.sources.rest.client import RateLimiter, backoff_delay, retry_after_seconds

from .lake import Lake
from .rest_server import Api, cut, dropped, serve, server_error, too_many, too_many_until

FAST = Retry(attempts=6, backoff=0.001, max_backoff=0.01)


class ApiLake(Lake):
    """Tables declared in a test, with named connections (secrets from the environment)."""

    def __init__(self, root: Path, connections: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(root)
        self.config = ProjectConfig(connections=connections or {})

    @property
    def project(self) -> Project:
        return Project.of_specs(self.root, self.specs, self.config)


@pytest.fixture
def api() -> Api:
    return Api(items=7)


@pytest.fixture
def url(api: Api) -> Iterator[str]:
    with serve(api) as base:
        yield base


def items(url: str, **overrides: Any) -> Resource:
    options: dict[str, Any] = {
        "endpoint": "/items",
        "base_url": url,
        "paginator": cursor("meta.next_cursor"),
        "records": "data",
        "retry": FAST,
        "columns": {"updated_at": "timestamp"},
    }
    options.update(overrides)
    return Resource("items", **options)


def declare(
    lake: Lake,
    resource: Resource,
    raw: str = "bronze.items_raw",
    parsed: str = "bronze.items",
    **options: Any,
) -> None:
    options = {
        "strategy": "merge",
        "keys": ["id"],
        "version_column": "updated_at",
        "order_by": "updated_at",
        **options,
    }

    def build() -> None:
        table(raw, source=rest(resource), strategy="append")
        table(parsed, inputs=[raw], **options)(parser(resource))

    lake.declare(build)


def touch_all(api: Api) -> None:
    """Every record changes (a newer updated_at), as an API does when its data changes."""
    for key in list(api.items):
        api.update(key)


def parsed_ids(lake: Lake, name: str = "bronze.items") -> list[int]:
    return [r["id"] for r in lake.rows(name, "id")]


def landed_ids(lake: Lake, name: str = "bronze.items_raw", path: str | None = "data") -> list[int]:
    """Ids of every record in every landed page (a record landed twice shows twice)."""
    ids = []
    for body in lake.table(name).column("body").to_pylist():
        value = json.loads(body)
        for step in (path or "").split(".") if path else []:
            value = value[step]
        ids += [r["id"] for r in value]
    return sorted(ids)


# -- the load under fire --------------------------------------------------------------
def test_cursor_load_through_429_5xx_drops_and_inserts_is_complete_and_duplicate_free(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url, pages_per_commit=2))
    # Between pages the API gains records, and misbehaves in every way it can.
    # (A record inserted after the last page is served belongs to the next load.)
    plan = {
        1: [too_many("0"), server_error(500), dropped()],
        2: [cut(), too_many_until(datetime.now(UTC) - timedelta(seconds=5)), server_error(503)],
    }

    def between(page: int) -> None:
        if page in plan:
            api.insert()
            api.fail(*plan[page])

    api.between_pages = between
    raw_run, parsed_run = lake.run()
    assert raw_run.status == parsed_run.status == "committed"
    assert raw_run.commits >= 2, "pages are committed in batches, not all at once"
    assert not api.faults, "every fault was met and retried"
    assert len(api.requests_to("/items")) == api.pages_served + 6, "each fault cost one retry"
    expected = sorted(api.items)
    assert len(expected) > 7, "records were inserted while the load paged"
    assert landed_ids(lake) == expected, "every record landed exactly once"
    assert parsed_ids(lake) == expected
    raw = lake.table("bronze.items_raw")
    assert raw.schema.equals(RAW_SCHEMA)
    assert len(set(raw.column("page_id").to_pylist())) == raw.num_rows
    assert set(raw.column("status").to_pylist()) == {200}
    assert all(
        json.loads(h)["content-type"] == "application/json"
        for h in raw.column("headers").to_pylist()
    )
    row = lake.rows("bronze.items", "id")[0]
    assert row["customer__tier"] == "gold" and row["tags"] == '["t1"]'
    assert row["updated_at"] == datetime(2024, 3, 1, 0, 1, tzinfo=UTC)


# -- paginators --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "paginator", "path"),
    [
        ("/items", cursor("meta.next_cursor", param="cursor"), "data"),
        ("/items/next", next_url("next"), "results"),
        ("/items/link", link_header(), None),
        ("/items/offset", offset(limit=3, total_path="total"), "items"),
        ("/items/offset", offset(limit=4), "items"),
        (
            "/items/pages",
            page_number(page_size=2, size_param="per_page", total_pages_path="total_pages"),
            "items",
        ),
        ("/items/pages", page_number(), "items"),
    ],
    ids=[
        "cursor",
        "next_url",
        "link_header",
        "offset_total",
        "offset_empty_page",
        "pages_total",
        "pages_empty_page",
    ],
)
def test_each_paginator_reads_every_page(
    tmp_path: Path, api: Api, url: str, endpoint: str, paginator: Any, path: str | None
) -> None:
    lake = ApiLake(tmp_path)
    declare(
        lake, items(url, endpoint=endpoint, paginator=paginator, records=path, pages_per_commit=2)
    )
    lake.run()
    assert parsed_ids(lake) == list(range(1, 8))
    assert landed_ids(lake, path=path) == list(range(1, 8))
    served = [s for s in api.log if s.path == endpoint]
    assert len(served) >= 3, "the load took several pages"


# -- authentication ------------------------------------------------------------------------
AUTH_CASES: dict[str, tuple[Any, tuple[Any, ...], dict[str, str], dict[str, str]]] = {
    # name: (auth, server credentials, connection settings, environment)
    "bearer": (
        bearer(),
        ("bearer", "tok-3f9a1c"),
        {"token_env": "API_TOKEN"},
        {"API_TOKEN": "tok-3f9a1c"},
    ),
    "basic": (
        basic(),
        ("basic", "ana", "pw-81b2"),
        {"username": "ana", "password_env": "API_PASSWORD"},
        {"API_PASSWORD": "pw-81b2"},
    ),
    "api_key_header": (
        api_key("X-API-Key"),
        ("api_key_header", "X-API-Key", "key-55e0"),
        {"api_key_env": "API_KEY"},
        {"API_KEY": "key-55e0"},
    ),
    "api_key_query": (
        api_key("key", location="query"),
        ("api_key_query", "key", "key-77d1"),
        {"api_key_env": "API_KEY"},
        {"API_KEY": "key-77d1"},
    ),
    "oauth2_basic": (
        oauth2_client_credentials("/oauth/token", scopes=["read"]),
        ("oauth2", "client-1", "cs-9e4b", 2),
        {"client_id": "client-1", "client_secret_env": "API_SECRET"},
        {"API_SECRET": "cs-9e4b"},
    ),
    "oauth2_body": (
        oauth2_client_credentials("/oauth/token", client_auth="body"),
        ("oauth2", "client-1", "cs-9e4b", 2),
        {"client_id": "client-1", "client_secret_env": "API_SECRET"},
        {"API_SECRET": "cs-9e4b"},
    ),
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
def test_each_auth_kind_is_checked_by_the_server_and_never_stored(
    tmp_path: Path, api: Api, url: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, server_auth, settings, env = AUTH_CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api.auth = server_auth
    # next_url: the server echoes a query key into its links, which must not be stored.
    resource = items(
        url,
        auth=auth,
        connection="api",
        endpoint="/items/next",
        paginator=next_url("next"),
        records="results",
    )
    lake = ApiLake(tmp_path, {"api": {"base_url": url, **settings}})
    declare(lake, resource)
    lake.run()
    assert parsed_ids(lake) == list(range(1, 8))
    statuses = {s.status for s in api.requests_to("/items/next")}
    assert statuses == ({200, 401} if case.startswith("oauth2") else {200})
    secret = next(iter(env.values()))
    raw = lake.table("bronze.items_raw")
    assert not any(secret in text for text in raw.column("url").to_pylist())
    committed = read_committed_state(lake.target("bronze.items_raw"), "headwater/bronze.items_raw")
    assert secret not in json.dumps(committed.positions)
    if case.startswith("oauth2"):
        # Each token is good for two requests: the third page's 401 renews it.
        assert api.token_requests == 2
    # Wrong credentials: a clear failure naming the resource, without any secret.
    api.auth = (
        (*server_auth[:-1], "something-else")
        if not case.startswith("oauth2")
        else ("oauth2", "client-1", "other", 2)
    )
    api.update(1, name="again")
    failed = lake.run("bronze.items_raw", check=False)[0]
    assert failed.status == "failed"
    text = f"{failed.error} {failed.hint}"
    assert "resource items" in text and "127.0.0.1" in text and "\n" not in text
    assert secret not in text
    assert "401" in text


def test_oauth2_token_is_renewed_before_it_expires(
    tmp_path: Path, api: Api, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_SECRET", "cs-9e4b")
    api.auth = ("oauth2", "client-1", "cs-9e4b", 100)
    api.token_lifetime = 0  # expired as soon as issued: a new token for every request
    lake = ApiLake(
        tmp_path,
        {"api": {"base_url": url, "client_id": "client-1", "client_secret_env": "API_SECRET"}},
    )
    declare(lake, items(url, connection="api", auth=oauth2_client_credentials("/oauth/token")))
    lake.run()
    assert parsed_ids(lake) == list(range(1, 8))
    pages = len(api.requests_to("/items"))
    assert api.token_requests == pages
    assert all(s.status == 200 for s in api.requests_to("/items"))


def test_a_missing_secret_names_the_setting_not_a_value(tmp_path: Path, url: str) -> None:
    lake = ApiLake(tmp_path, {"api": {"base_url": url}})
    declare(lake, items(url, connection="api", auth=bearer()))
    (failed,) = lake.run("bronze.items_raw", check=False)
    assert failed.status == "failed"
    assert "'token'" in failed.error and "bearer" in failed.error
    assert "token_env" in (failed.hint or "")


# -- dependent resources -----------------------------------------------------------------------
def test_dependent_resource_requests_details_of_new_and_changed_parents(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    # change_feed=True: the parent's merge records exact changes, so only they are requested.
    declare(lake, items(url), change_feed=True)
    details = Resource(
        "item_details",
        endpoint="/items/{item_id}/details",
        base_url=url,
        parent=parent("bronze.items", item_id="id"),
        retry=FAST,
        pages_per_commit=3,
    )
    declare(
        lake,
        details,
        raw="bronze.item_details_raw",
        parsed="bronze.item_details",
        keys=["item_id"],
        version_column=None,
        order_by=None,
    )
    api.fail(server_error(502), dropped())
    results = lake.run()
    assert [r.table for r in results].index("bronze.item_details_raw") > [
        r.table for r in results
    ].index("bronze.items")
    rows = lake.rows("bronze.item_details", "item_id")
    assert [r["item_id"] for r in rows] == list(range(1, 8))
    assert rows[2]["sku"] == "sku-3" and rows[2]["qty"] == 3
    assert lake.table("bronze.item_details_raw").num_rows == 7

    mark = len(api.log)
    api.update(2, name="renamed")
    api.update(5, name="renamed too")
    new = api.insert()
    lake.run()
    asked = sorted(int(s.path.split("/")[2]) for s in api.log[mark:] if s.path.endswith("/details"))
    assert asked == [2, 5, new]
    rows = lake.rows("bronze.item_details", "item_id")
    assert [r["item_id"] for r in rows] == [*range(1, 8), new]
    assert rows[1]["name"] == "renamed"

    # Nothing changed upstream: no request, no commit.
    mark = len(api.log)
    results = {r.table: r.status for r in lake.run("bronze.item_details_raw")}
    assert results["bronze.item_details_raw"] == "up-to-date"
    assert not [s for s in api.log[mark:] if s.path.endswith("/details")]


def test_dependent_resource_404_fails_clearly_or_is_skipped_when_declared(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url))
    lake.run()
    api.items.pop(4)  # gone from the API after the parent table read it
    for skip in ((), (404,)):
        details = Resource(
            "item_details",
            endpoint="/items/{item_id}/details",
            base_url=url,
            parent=parent("bronze.items", item_id="id"),
            retry=FAST,
            skip_status=skip,
        )
        other = ApiLake(tmp_path)
        other.specs = list(lake.specs)
        declare(
            other,
            details,
            raw="bronze.item_details_raw",
            parsed="bronze.item_details",
            keys=["item_id"],
            version_column=None,
            order_by=None,
        )
        results = {r.table: r for r in other.run(check=False)}
        run = results["bronze.item_details_raw"]
        if not skip:
            assert run.status == "failed"
            assert "resource item_details" in run.error and "/items/4/details" in run.error
            assert "404" in run.error and "skip_status" in (run.hint or "")
        else:
            assert run.status == "committed"
            assert [r["item_id"] for r in other.rows("bronze.item_details", "item_id")] == [
                1,
                2,
                3,
                5,
                6,
                7,
            ]


def test_a_batch_of_only_skipped_details_commits_its_position_and_changes_nothing(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url), change_feed=True)
    details = Resource(
        "item_details",
        endpoint="/items/{item_id}/details",
        base_url=url,
        parent=parent("bronze.items", item_id="id"),
        retry=FAST,
        skip_status=(404,),
    )
    declare(
        lake,
        details,
        raw="bronze.item_details_raw",
        parsed="bronze.item_details",
        keys=["item_id"],
        version_column=None,
        order_by=None,
    )
    lake.run()
    before = lake.rows("bronze.item_details", "item_id")
    raw_version = lake.version("bronze.item_details_raw")
    api.update(4, name="four")
    api.missing_details.add(4)
    results = {r.table: r for r in lake.run()}
    assert results["bronze.item_details_raw"].status == "committed"
    assert lake.version("bronze.item_details_raw") == raw_version + 1
    assert lake.table("bronze.item_details_raw").num_rows == 7, "nothing landed for the 404"
    assert results["bronze.item_details"].status == "up-to-date"
    assert lake.rows("bronze.item_details", "item_id") == before
    # The parent change was consumed: the next run asks for nothing.
    mark = len(api.log)
    lake.run()
    assert not [s for s in api.log[mark:] if s.path.endswith("/details")]


def test_an_api_without_records_creates_no_empty_table(tmp_path: Path, url: str, api: Api) -> None:
    api.items.clear()
    lake = ApiLake(tmp_path)
    declare(lake, items(url))
    (run,) = lake.run("bronze.items_raw")
    assert run.status == "up-to-date"
    assert not lake.project.target("bronze.items_raw").exists
    api.insert()
    lake.run()
    assert parsed_ids(lake) == [1]


# -- incremental parameter ------------------------------------------------------------------
def test_incremental_parameter_is_the_committed_maximum_across_runs(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url, incremental=Incremental("updated_since", field="updated_at")))
    lake.run()
    first = api.requests_to("/items")
    assert all("updated_since" not in s.query for s in first)
    latest = max(api.items[k]["updated_at"] for k in api.items)

    mark = len(api.log)
    api.update(2, name="two")
    api.update(5, name="five")
    new = api.insert()
    lake.run()
    second = api.log[mark:]
    assert second[0].query.get("updated_since") == latest
    assert all(s.query.get("updated_since") == latest for s in second if "cursor" not in s.query)
    # Only what changed was read: the latest record again (inclusive), 2, 5 and the new one.
    assert landed_ids(lake) == sorted([*range(1, 8), 7, 2, 5, new])
    rows = {r["id"]: r for r in lake.rows("bronze.items", "id")}
    assert sorted(rows) == [*range(1, 8), new]
    assert rows[2]["name"] == "two" and rows[5]["name"] == "five"

    mark = len(api.log)
    newest = max(api.items[k]["updated_at"] for k in api.items)
    lake.run()
    assert api.log[mark].query.get("updated_since") == newest
    assert sorted(r["id"] for r in lake.rows("bronze.items", "id")) == [*range(1, 8), new]


def test_incremental_initial_value_limits_the_first_load(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    since = api.items[5]["updated_at"]
    declare(lake, items(url, incremental=Incremental("updated_since", "updated_at", initial=since)))
    lake.run()
    assert api.requests_to("/items")[0].query["updated_since"] == since
    assert parsed_ids(lake) == [5, 6, 7]


# -- YAML ---------------------------------------------------------------------------------------
YAML = """
connection: api
defaults:
  auth: {type: bearer}
  paginator: {type: cursor, cursor_path: meta.next_cursor, param: cursor}
  retry: {attempts: 4, backoff: 0.001, max_backoff: 0.01}
  rate_limit: 500
resources:
  - name: items
    endpoint: /items
    records: data
    incremental: {param: updated_since, field: updated_at}
    columns: {updated_at: timestamp}
    pages_per_commit: 2
  - name: item_details
    endpoint: /items/{item_id}/details
    parent: {table: bronze.items, params: {item_id: id}}
    paginator: single
"""

YAML_PIPELINE = """
from headwater import table
from headwater.sources.rest import load_resources, parser, rest

api = load_resources("api.yaml")
table("bronze.items_raw", source=rest(api["items"]), strategy="append")
table("bronze.items", inputs=["bronze.items_raw"], strategy="merge", keys=["id"],
      version_column="updated_at", order_by="updated_at")(parser(api["items"]))
table("bronze.item_details_raw", source=rest(api["item_details"]), strategy="append")
table("bronze.item_details", inputs=["bronze.item_details_raw"], strategy="merge",
      keys=["item_id"])(parser(api["item_details"]))
"""


def make_yaml_project(root: Path, url: str) -> None:
    (root / "headwater.toml").write_text(
        f'[project]\nname = "api"\n\n[connections.api]\nbase_url = "{url}"\ntoken_env = "API_TOKEN"\n'
    )
    (root / "pipelines").mkdir()
    (root / "pipelines" / "api.yaml").write_text(YAML)
    (root / "pipelines" / "api.py").write_text(YAML_PIPELINE)


def test_resources_declared_in_yaml(
    tmp_path: Path, api: Api, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "yaml-token-1")
    api.auth = ("bearer", "yaml-token-1")
    make_yaml_project(tmp_path, url)
    project = Project.load(tmp_path)
    results = Runner(project).run()
    assert {r.table: r.status for r in results} == dict.fromkeys(
        ["bronze.items_raw", "bronze.items", "bronze.item_details_raw", "bronze.item_details"],
        "committed",
    )
    lake = ApiLake(tmp_path)
    assert parsed_ids(lake) == list(range(1, 8))
    assert [r["item_id"] for r in lake.rows("bronze.item_details", "item_id")] == list(range(1, 8))
    api.update(3, name="three")
    mark = len(api.log)
    Runner(Project.load(tmp_path)).run()
    assert api.log[mark].query.get("updated_since") is not None
    assert lake.rows("bronze.items", "id")[2]["name"] == "three"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {"resources": [{"name": "a", "endpoint": "/a", "paginater": "single"}]},
            "unknown key(s) paginater",
        ),
        (
            {"resources": [{"name": "a", "endpoint": "/a", "paginator": {"type": "cursors"}}]},
            "type must be one of",
        ),
        (
            {
                "resources": [
                    {"name": "a", "endpoint": "/a", "paginator": {"type": "offset", "size": 3}}
                ]
            },
            "unknown key(s) size",
        ),
        (
            {
                "resources": [
                    {
                        "name": "a",
                        "endpoint": "/a",
                        "auth": {"type": "api_key", "location": "cookie"},
                    }
                ]
            },
            "location must be",
        ),
        ({"resources": [{"name": "a"}]}, "needs a name and an endpoint"),
        (
            {"resources": [{"name": "a", "endpoint": "/a/{id}"}]},
            "placeholders ['id'] but no parent",
        ),
        (
            {"resources": [{"name": "a", "endpoint": "/a", "columns": {"x": "varchar"}}]},
            "unknown column type 'varchar'",
        ),
        (
            {"resources": [{"name": "a", "endpoint": "/a"}, {"name": "a", "endpoint": "/b"}]},
            "two resources are named",
        ),
        ({"resource": []}, "unknown key(s) resource"),
    ],
)
def test_yaml_mistakes_are_one_line_errors_naming_the_key(
    document: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_resources(document, "api.yaml")
    assert expected in str(caught.value) and "api.yaml" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("resources:\n  - name: a\n    endpoint: [/a\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d"):
        load_resources(path)


# -- schema drift ----------------------------------------------------------------------------------
def test_new_field_fails_a_frozen_table_naming_it_and_raw_history_reparses_under_evolve(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url), schema="freeze")
    lake.run()
    api.extra = {"email": "someone@example.com"}
    touch_all(api)
    raw_run, parsed_run = lake.run(check=False)
    assert raw_run.status == "committed", "the raw pages land whatever the parser thinks"
    assert parsed_run.status == "failed"
    assert "'email'" in parsed_run.error and "bronze.items" in parsed_run.error
    assert "email" not in lake.table("bronze.items").schema.names

    # The same table declared with schema evolution picks the field up from the landed pages.
    evolving = ApiLake(tmp_path)
    declare(evolving, items(url), schema="evolve")
    evolving.run("bronze.items")
    rows = evolving.rows("bronze.items", "id")
    assert {r["email"] for r in rows} == {"someone@example.com"}


def test_type_changes_widen_under_evolve_and_fail_under_freeze(
    tmp_path: Path, api: Api, url: str
) -> None:
    frozen = ApiLake(tmp_path / "frozen")
    declare(frozen, items(url), schema="freeze")
    evolving = ApiLake(tmp_path / "evolving")
    declare(evolving, items(url), schema="evolve")
    frozen.run()
    evolving.run()
    assert frozen.table("bronze.items").schema.field("amount").type == pa.int64()

    api.amount = lambda i: i * 10 + 0.5  # integers become fractions
    touch_all(api)
    failed = frozen.run(check=False)[1]
    assert failed.status == "failed" and "'amount'" in failed.error and "widening" in failed.error
    evolving.run()
    assert evolving.table("bronze.items").schema.field("amount").type == pa.float64()
    assert {r["id"]: r["amount"] for r in evolving.rows("bronze.items", "id")}[3] == 30.5

    # Whole numbers again: JSON has one number type, the column stays double, no error.
    api.amount = lambda i: i * 10
    touch_all(api)
    evolving.run()
    assert evolving.table("bronze.items").schema.field("amount").type == pa.float64()
    assert {r["id"]: r["amount"] for r in evolving.rows("bronze.items", "id")}[3] == 30.0

    # Numbers turning into text are an error in every policy, naming the column.
    api.amount = lambda i: f"{i} EUR"
    touch_all(api)
    failed = evolving.run(check=False)[1]
    assert failed.status == "failed" and "'amount'" in failed.error


def test_a_field_that_goes_missing_is_null_and_an_all_null_field_waits_for_values(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url), schema="freeze")
    api.extra = {"note": "first", "later": None}
    lake.run()
    assert "note" in lake.table("bronze.items").schema.names
    assert "later" not in lake.table("bronze.items").schema.names, "no value, no guessed type"
    api.extra = {}
    new = api.insert()
    lake.run()
    rows = {r["id"]: r for r in lake.rows("bronze.items", "id")}
    assert rows[new]["note"] is None and rows[1]["note"] == "first"


# -- retries, budget and clear failures --------------------------------------------------------------
def test_retry_budget_ends_in_one_clear_line_naming_resource_and_url(
    tmp_path: Path, api: Api, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "tok-never-shown")
    api.auth = ("bearer", "tok-never-shown")
    lake = ApiLake(tmp_path, {"api": {"base_url": url, "token_env": "API_TOKEN"}})
    declare(
        lake,
        items(
            url,
            connection="api",
            auth=bearer(),
            retry=Retry(attempts=10, budget=3, backoff=0.001, max_backoff=0.01),
        ),
    )
    api.fail(*[server_error(503)] * 20)
    (run,) = lake.run("bronze.items_raw", check=False)
    assert run.status == "failed"
    assert run.error.startswith("resource items: GET http://127.0.0.1:")
    assert "/items" in run.error and "503" in run.error and "retry budget (3 retries)" in run.error
    assert "\n" not in run.error and "tok-never-shown" not in f"{run.error}{run.hint}"
    assert len(api.requests_to("/items")) == 4  # the first try and three retries
    assert not ApiLake(tmp_path).target("bronze.items_raw").exists


def test_attempts_per_request_and_a_too_long_retry_after_fail_clearly(
    tmp_path: Path, api: Api, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url, retry=Retry(attempts=3, backoff=0.001, max_backoff=0.01)))
    api.fail(*[server_error(500)] * 3)
    (run,) = lake.run("bronze.items_raw", check=False)
    assert "failed after 3 attempt(s): 500" in run.error and "resource items" in run.error

    api.faults.clear()
    api.fail(too_many("3600"))
    lake2 = ApiLake(tmp_path / "other")
    declare(lake2, items(url, retry=Retry(max_retry_after=60, backoff=0.001)))
    (run,) = lake2.run("bronze.items_raw", check=False)
    assert "Retry-After of 3600 s" in run.error and "max_retry_after" in run.error


def test_a_failure_mid_load_keeps_the_committed_pages_and_the_next_run_resumes(
    tmp_path: Path, api: Api, url: str
) -> None:
    api.page_size = 2
    lake = ApiLake(tmp_path)
    declare(lake, items(url, pages_per_commit=1, retry=Retry(attempts=2, backoff=0.001)))
    api.between_pages = lambda page: (
        api.fail(server_error(500), server_error(500)) if page == 2 else None
    )
    raw_run, _ = lake.run(check=False)
    assert raw_run.status == "failed" and raw_run.commits == 2
    mark = len(api.log)
    api.between_pages = None
    lake.run()
    assert "cursor" in api.log[mark].query, "the next run continued after the last committed page"
    assert landed_ids(lake) == list(range(1, 8))
    assert parsed_ids(lake) == list(range(1, 8))


def test_responses_that_are_not_json_or_lack_the_records_path_fail_naming_the_url(
    tmp_path: Path, url: str
) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, items(url, endpoint="/html"))
    (run,) = lake.run("bronze.items_raw", check=False)
    assert "/html" in run.error and "not JSON (text/html)" in run.error
    lake = ApiLake(tmp_path / "b")
    declare(lake, items(url, records="payload.rows"))
    (run,) = lake.run("bronze.items_raw", check=False)
    assert (
        "records path 'payload.rows'" in run.error
        and "data, meta" in run.error
        and "/items" in run.error
    )


def test_declaration_mistakes_are_caught_when_declared() -> None:
    with pytest.raises(ConfigError, match="placeholders"):
        Resource("x", endpoint="/orders/{order_id}")
    with pytest.raises(ConfigError, match="not parameters of the parent"):
        Resource("x", endpoint="/orders/{order_id}", parent=parent("bronze.orders", id="id"))
    with pytest.raises(ConfigError, match="incremental through its parent"):
        Resource(
            "x",
            endpoint="/o/{id}",
            parent=parent("bronze.o", id="id"),
            incremental=Incremental("since", "at"),
        )
    with pytest.raises(ConfigError, match="unknown column type"):
        Resource("x", endpoint="/o", columns={"a": "number"})
    with pytest.raises(ConfigError, match="rate_limit"):
        Resource("x", endpoint="/o", rate_limit=0)


def test_a_resource_without_base_url_fails_clearly(tmp_path: Path) -> None:
    lake = ApiLake(tmp_path)
    declare(lake, Resource("items", endpoint="/items", records="data"))
    (run,) = lake.run("bronze.items_raw", check=False)
    assert "no base_url" in run.error and "connection" in (run.hint or "")


# -- crash and resume -------------------------------------------------------------------------------
CRASH_PIPELINE = """
from headwater import table
from headwater.sources.rest import Incremental, Resource, Retry, bearer, cursor, parser, rest

items = Resource(
    "items", endpoint="/items", connection="api", auth=bearer(),
    paginator=cursor("meta.next_cursor"), records="data",
    incremental=Incremental("updated_since", "updated_at"),
    columns={"updated_at": "timestamp"}, pages_per_commit=1,
    retry=Retry(backoff=0.001, max_backoff=0.01),
)
table("bronze.items_raw", source=rest(items), strategy="append")
table("bronze.items", inputs=["bronze.items_raw"], strategy="merge", keys=["id"],
      version_column="updated_at", order_by="updated_at")(parser(items))
"""

DRIVER = """
import json, sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
print(json.dumps([[r.table, r.status, r.error] for r in results]))
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def run_driver(root: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "API_TOKEN": "crash-token"}
    if failpoint:
        env["HEADWATER_FAILPOINTS"] = failpoint
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("point", ["after_read@3", "after_stage@2", "after_commit@3"])
def test_sigkill_mid_load_then_resume_is_complete_and_duplicate_free(
    tmp_path: Path, api: Api, url: str, point: str
) -> None:
    api.auth = ("bearer", "crash-token")
    for _ in range(13):
        api.insert()  # 20 items, 7 pages of 3
    (tmp_path / "headwater.toml").write_text(
        f'[project]\nname = "crash"\n\n[connections.api]\nbase_url = "{url}"\ntoken_env = "API_TOKEN"\n'
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "api.py").write_text(textwrap.dedent(CRASH_PIPELINE))
    api.between_pages = lambda page: api.insert() if page in (2, 4) else None
    api.fail(too_many("0"))

    crashed = run_driver(tmp_path, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    lake = ApiLake(tmp_path)
    committed = (
        lake.table("bronze.items_raw").num_rows
        if lake.project.target("bronze.items_raw").exists
        else 0
    )
    mark = len(api.log)
    resumed = run_driver(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert committed > 0, "pages were committed before the kill"
    assert "cursor" in api.log[mark].query, "resumed at the committed page, not from the start"

    expected = sorted(api.items)
    assert len(expected) == 22
    assert landed_ids(lake) == expected, "no record lost or landed twice"
    raw = lake.table("bronze.items_raw")
    assert len(set(raw.column("page_id").to_pylist())) == raw.num_rows
    assert parsed_ids(lake) == expected

    # A further change after the resume is picked up incrementally.
    api.between_pages = None
    api.update(7, name="seven")
    again = run_driver(tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r["id"]: r["name"] for r in lake.rows("bronze.items", "id")}[7] == "seven"
    assert parsed_ids(lake) == expected


def test_records_inside_a_function_of_your_own(tmp_path: Path, url: str) -> None:
    resource = items(url)
    lake = ApiLake(tmp_path)

    def build() -> None:
        table("bronze.items_raw", source=rest(resource), strategy="append")

        @table("silver.items", inputs=["bronze.items_raw"], strategy="merge", keys=["id"])
        def items_clean(ctx: Any, items_raw: Any) -> Any:
            ctx.con.register("parsed", records(items_raw, resource, ctx=ctx, meta=["fetched_at"]))
            return ctx.sql(
                "SELECT id, upper(name) AS name, _fetched_at FROM parsed WHERE id % 2 = 1"
            )

    lake.declare(build)
    lake.run()
    rows = lake.rows("silver.items", "id")
    assert [(r["id"], r["name"]) for r in rows] == [(i, f"ITEM {i}") for i in (1, 3, 5, 7)]
    assert all(r["_fetched_at"].tzinfo is not None for r in rows)


# -- parsing helpers ----------------------------------------------------------------------------------
def pages(*bodies: Any, parents: list[dict[str, Any] | None] | None = None) -> pa.Table:
    rows = []
    for number, body in enumerate(bodies):
        rows.append(
            {
                "resource": "r",
                "load_id": "L",
                "page_id": f"L-{number}",
                "page": number,
                "parent": json.dumps(parents[number]) if parents and parents[number] else None,
                "method": "GET",
                "url": f"http://api/r?page={number}",
                "status": 200,
                "headers": "{}",
                "body": json.dumps(body),
                "fetched_at": datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=number),
            }
        )
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def test_records_convert_declared_types_and_flatten_objects() -> None:
    raw = pages(
        {
            "data": [
                {
                    "id": "1",
                    "at": "2024-03-01T10:00:00+02:00",
                    "price": "12.50",
                    "day": "2024-03-01",
                    "ok": "true",
                    "deep": {"a": {"b": 1}},
                    "raw": {"x": [1]},
                }
            ]
        },
        {
            "data": [
                {
                    "id": 2,
                    "at": 1709287200,
                    "price": 3,
                    "day": "2024-03-02T05:00:00Z",
                    "ok": False,
                    "deep": {"a": {"b": 2}},
                }
            ]
        },
    )
    out = records(
        raw,
        path="data",
        columns={
            "id": "int64",
            "at": "timestamp",
            "price": "decimal(10,2)",
            "day": "date",
            "ok": "bool",
            "raw": "json",
        },
        meta=["page_id", "record_index"],
    )
    assert out.schema.field("at").type == pa.timestamp("us", "UTC")
    assert out.to_pylist() == [
        {
            "id": 1,
            "at": datetime(2024, 3, 1, 8, tzinfo=UTC),
            "price": Decimal("12.50"),
            "day": date(2024, 3, 1),
            "ok": True,
            "raw": '{"x": [1]}',
            "deep__a__b": 1,
            "_page_id": "L-0",
            "_record_index": 0,
        },
        {
            "id": 2,
            "at": datetime(2024, 3, 1, 10, tzinfo=UTC),
            "price": Decimal("3.00"),
            "day": date(2024, 3, 2),
            "ok": False,
            "raw": None,
            "deep__a__b": 2,
            "_page_id": "L-1",
            "_record_index": 0,
        },
    ]


def test_records_reject_values_that_do_not_fit_naming_field_and_page() -> None:
    with pytest.raises(
        HeadwaterError, match=r"page L-1 \(http://api/r\?page=1\) record 0: field 'at'"
    ):
        records(
            pages({"data": [{"at": "2024-01-01"}]}, {"data": [{"at": "yesterday"}]}),
            path="data",
            columns={"at": "timestamp"},
        )
    with pytest.raises(
        HeadwaterError, match=r"field 'n' holds values of several kinds: int .* text"
    ) as caught:
        records(pages([{"n": 1}], [{"n": "one"}]))
    assert "columns={'n': 'string'}" in (caught.value.hint or "")


def test_records_add_parent_parameters_and_keep_lists_as_json() -> None:
    raw = pages(
        [{"sku": "a", "tags": ["x", "y"]}],
        [{"sku": "b", "order_id": 99}],
        parents=[{"order_id": 1}, {"order_id": 2}],
    )
    out = records(raw)
    assert out.to_pylist() == [
        {"sku": "a", "tags": '["x", "y"]', "order_id": 1},
        {"sku": "b", "tags": None, "order_id": 99},
    ]
    assert records(raw, nested="json", parent_columns=False).column_names == [
        "sku",
        "tags",
        "order_id",
    ]


# -- retry timing rules (pure functions, a virtual clock) ----------------------------------------------
def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds("Fri, 01 Mar 2024 12:01:30 GMT", now) == 90
    assert retry_after_seconds("Fri, 01 Mar 2024 11:00:00 GMT", now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = Retry(backoff=0.5, max_backoff=3.0)
    assert [backoff_delay(policy, n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        3.0,
        3.0,
    ]
    assert backoff_delay(policy, 4, lambda: 0.0) == 0.0
    assert backoff_delay(policy, 3, lambda: 0.25) == 0.5


def test_rate_limiter_spaces_request_starts() -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.25]
    clock[0] += 10  # idle for a while: no waiting
    limiter.wait()
    assert slept == [0.25, 0.25]
