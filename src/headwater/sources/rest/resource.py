"""A REST resource: what to request, how to page through it, and what is new.

orders = Resource(
    "orders",
    endpoint="/orders",
    connection="shop_api",                  # base_url and secrets live there
    auth=bearer(),
    paginator=cursor("meta.next_cursor", param="cursor"),
    records="data",                         # where the records are in the body
    incremental=Incremental("updated_since", field="updated_at"),
    columns={"updated_at": "timestamp", "amount": "decimal(12,2)"},
)
lines = Resource(
    "order_lines",
    endpoint="/orders/{order_id}/lines",    # one request (and its pages) per parent
    connection="shop_api",
    parent=parent("bronze.orders", order_id="id"),
)
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from ...errors import ConfigError
from ._types import column_type
from .auth import Auth
from .paginate import Paginator, Single

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
# Response headers kept with each raw page (never cookies or credentials).
KEEP_HEADERS = (
    "content-type",
    "date",
    "etag",
    "last-modified",
    "link",
    "x-request-id",
    "x-total-count",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


@dataclass(frozen=True)
class Retry:
    """How failed requests are retried (429, 408, 5xx but 501, and connection errors).

    Delays are exponential with full jitter, `uniform(0, min(max_backoff,
    backoff * 2**n))`, unless the server sends Retry-After (seconds or an HTTP
    date), which is honoured. `budget` caps the retries of one run of the
    source, so a struggling API is not hammered for hours.
    """

    attempts: int = 5  # tries per request, the first included
    backoff: float = 0.5  # seconds
    max_backoff: float = 30.0
    max_retry_after: float = 600.0  # a longer Retry-After fails the run instead of waiting
    budget: int = 100

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.budget < 0:
            raise ConfigError("retry: attempts must be at least 1 and budget at least 0")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ConfigError(
                "retry: backoff, max_backoff and max_retry_after must not be negative"
            )


@dataclass(frozen=True)
class Incremental:
    """Ask only for what changed: `param` = the latest `field` value of the records loaded.

    The value is the maximum of `field` over the records of a completed load,
    committed in the same Delta commit as the pages; `initial` is sent on the
    first load (None: the parameter is left out and everything is read).
    """

    param: str
    field: str
    initial: Any = None

    def __post_init__(self) -> None:
        # The value travels in the committed position (JSON) and in the query string.
        if isinstance(self.initial, date):
            object.__setattr__(self, "initial", self.initial.isoformat())
        if self.initial is not None and (
            isinstance(self.initial, bool) or not isinstance(self.initial, str | int | float)
        ):
            raise ConfigError(
                f"incremental {self.param}: initial must be text, a number or a date, not {type(self.initial).__name__}"
            )
        if not self.param or not self.field:
            raise ConfigError("incremental: give the request parameter and the record field")


@dataclass(frozen=True)
class Parent:
    """A dependent resource requests once per row of the parent table's changes.

    `params` maps each request parameter to a column of the parent table; a
    parameter named in the endpoint (`/orders/{order_id}`) goes into the path,
    any other into the query string.
    """

    table: str
    params: Mapping[str, str]


def parent(table: str, **params: str) -> Parent:
    """`parent("bronze.orders", order_id="id")`: request once per order, with its id."""
    return Parent(table, dict(params))


@dataclass(frozen=True)
class Resource:
    """A declared REST resource (see the module docstring and docs/sources-rest.md)."""

    name: str
    endpoint: str
    base_url: str | None = None  # else the connection's `base_url`
    connection: str | None = None
    method: Literal["GET", "POST"] = "GET"
    params: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # JSON body of a POST
    records: str | None = None  # dotted path of the records in the body; None: the body
    paginator: Paginator = field(default_factory=Single)
    auth: Auth | None = None
    incremental: Incremental | None = None
    parent: Parent | None = None
    columns: Mapping[str, str] = field(default_factory=dict)  # declared types of fields
    rate_limit: float | None = None  # requests per second
    retry: Retry = field(default_factory=Retry)
    timeout: float = 30.0
    pages_per_commit: int = 10
    keep_headers: tuple[str, ...] = KEEP_HEADERS
    skip_status: tuple[int, ...] = ()  # e.g. (404,): a parent whose details are gone

    def __post_init__(self) -> None:
        where = f"resource {self.name!r}"
        if not _NAME.match(self.name):
            raise ConfigError(
                f"{where}: a resource name is letters, digits, '_' and '-' (e.g. 'orders')"
            )
        if not self.endpoint:
            raise ConfigError(f"{where}: endpoint is empty", "e.g. endpoint='/orders'")
        if self.method not in ("GET", "POST"):
            raise ConfigError(f"{where}: method must be GET or POST, not {self.method!r}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ConfigError(f"{where}: rate_limit is requests per second and must be positive")
        if self.pages_per_commit < 1:
            raise ConfigError(f"{where}: pages_per_commit must be at least 1")
        if self.timeout <= 0:
            raise ConfigError(f"{where}: timeout must be positive")
        if not isinstance(self.paginator, Paginator):
            raise ConfigError(f"{where}: paginator must come from headwater.sources.rest.paginate")
        if self.auth is not None and not isinstance(self.auth, Auth):
            raise ConfigError(f"{where}: auth must come from headwater.sources.rest.auth")
        for column, spec in self.columns.items():
            column_type(spec, f"{where}: column {column!r}")
        placeholders = {
            name
            for _, name, _, _ in string.Formatter().parse(self.endpoint)
            if name is not None and name != ""
        }
        if self.parent is None:
            if placeholders:
                raise ConfigError(
                    f"{where}: endpoint {self.endpoint!r} has placeholders {sorted(placeholders)} but no parent",
                    "declare parent=parent('layer.table', name='column') to fill them",
                )
            return
        if not _TABLE.match(self.parent.table):
            raise ConfigError(f"{where}: parent table {self.parent.table!r} must be 'layer.table'")
        if not self.parent.params:
            raise ConfigError(
                f"{where}: parent {self.parent.table} names no parameter",
                "e.g. parent('bronze.orders', order_id='id')",
            )
        missing = sorted(placeholders - set(self.parent.params))
        if missing:
            raise ConfigError(
                f"{where}: endpoint placeholders {missing} are not parameters of the parent",
                f"add them: parent({self.parent.table!r}, {missing[0]}='column')",
            )
        if self.incremental is not None:
            raise ConfigError(
                f"{where}: a dependent resource is incremental through its parent's changes",
                "remove incremental= (only the parent rows that changed are requested)",
            )

    def path_params(self) -> set[str]:
        return {
            name
            for _, name, _, _ in string.Formatter().parse(self.endpoint)
            if name is not None and name != ""
        }
