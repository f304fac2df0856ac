"""Paginators: how a resource asks for the page after the one it has.

Each paginator keeps its progress in a small JSON *state* (a cursor, the next
URL, an offset, a page number). The state of the next page is committed with
the pages before it, so a load that dies half-way resumes at the next page:

    cursor("meta.next_cursor", param="cursor")   # opaque cursor in the body
    next_url("next")                              # the next page's URL in the body
    link_header()                                 # RFC 8288 `Link: <...>; rel="next"`
    offset(limit=100)                             # ?offset=0&limit=100, then 100, 200...
    page_number(page_size=50, size_param="per_page")  # ?page=1, 2, 3...

Cursor, next-URL and Link pagination resume exactly where they stopped.
Offset and page-number pagination resume at the same offset, which shifts when
the API inserts or deletes rows meanwhile: a record can then be read twice or
skipped until the next load (use a merge on the record's key, and prefer an
incremental parameter or a cursor where the API offers one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from ...errors import ConfigError
from ._values import get_path

State = dict[str, Any]


class Paginator(ABC):
    kind: ClassVar[str]

    def first(self) -> State:
        """The state of the first page."""
        return {}

    @abstractmethod
    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The URL and query parameters that ask for the page of `state`."""

    @abstractmethod
    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        """The state of the page after this one (`count` records, fetched from `url`); None at the end."""

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Single(Paginator):
    """One request, no pages."""

    kind: ClassVar[str] = "single"

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return url, params

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        return None


@dataclass(frozen=True)
class Cursor(Paginator):
    """An opaque cursor from the body (or a header), sent back as a query parameter."""

    cursor_path: str = "next_cursor"
    param: str = "cursor"
    cursor_header: str | None = None
    has_more_path: str | None = None  # a boolean in the body; false ends the load
    kind: ClassVar[str] = "cursor"

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "cursor" in state:
            return url, {**params, self.param: state["cursor"]}
        return url, params

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        if self.has_more_path is not None and get_path(body, self.has_more_path) is False:
            return None
        value = (
            response.headers.get(self.cursor_header)
            if self.cursor_header
            else get_path(body, self.cursor_path)
        )
        if value is None or value == "":
            return None
        return {"cursor": value}


@dataclass(frozen=True)
class NextUrl(Paginator):
    """The next page's URL (absolute or relative) at `path` in the body."""

    path: str = "next"
    kind: ClassVar[str] = "next_url"

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # The next URL carries every parameter of the query it continues.
        return (state["url"], {}) if "url" in state else (url, params)

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        value = get_path(body, self.path)
        if not value:
            return None
        return {"url": str(url.join(str(value)))}


@dataclass(frozen=True)
class LinkHeader(Paginator):
    """The `Link` response header's URL with relation `rel` (GitHub-style)."""

    rel: str = "next"
    kind: ClassVar[str] = "link_header"

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return (state["url"], {}) if "url" in state else (url, params)

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        link = response.links.get(self.rel)
        if not link or not link.get("url"):
            return None
        return {"url": str(url.join(link["url"]))}


@dataclass(frozen=True)
class Offset(Paginator):
    """`offset` and `limit` query parameters; ends at an empty page or at `total_path`."""

    limit: int = 100
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_path: str | None = None
    start: int = 0
    kind: ClassVar[str] = "offset"

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConfigError(f"offset paginator: limit must be at least 1, not {self.limit}")

    def first(self) -> State:
        return {"offset": self.start}

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return url, {**params, self.offset_param: state["offset"], self.limit_param: self.limit}

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        # The end is an empty page (or the total), not a short one: some APIs cap the
        # limit below what was asked, and stopping at a short page would lose records.
        if count == 0:
            return None
        offset = int(state["offset"]) + count
        total = get_path(body, self.total_path) if self.total_path else None
        if isinstance(total, int) and offset >= total:
            return None
        return {"offset": offset}


@dataclass(frozen=True)
class PageNumber(Paginator):
    """A page number query parameter; ends at an empty page or at `total_pages_path`."""

    page_param: str = "page"
    start: int = 1
    page_size: int | None = None
    size_param: str | None = None
    total_pages_path: str | None = None
    kind: ClassVar[str] = "page_number"

    def __post_init__(self) -> None:
        if (self.page_size is None) != (self.size_param is None):
            raise ConfigError(
                "page_number paginator: give both page_size and size_param, or neither"
            )

    def first(self) -> State:
        return {"page": self.start}

    def apply(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        extra: dict[str, Any] = {self.page_param: state["page"]}
        if self.size_param is not None:
            extra[self.size_param] = self.page_size
        return url, {**params, **extra}

    def next(
        self, state: State, response: httpx.Response, body: Any, count: int, url: httpx.URL
    ) -> State | None:
        if count == 0:
            return None
        page = int(state["page"])
        total = get_path(body, self.total_pages_path) if self.total_pages_path else None
        # Pages are numbered from `start`: the last one is start + total - 1.
        if isinstance(total, int) and page - self.start + 1 >= total:
            return None
        return {"page": page + 1}


# The names pipelines use.
def single() -> Single:
    """No pagination: one request."""
    return Single()


def cursor(
    cursor_path: str = "next_cursor",
    *,
    param: str = "cursor",
    cursor_header: str | None = None,
    has_more_path: str | None = None,
) -> Cursor:
    """An opaque cursor at `cursor_path` in the body, sent back as query parameter `param`."""
    return Cursor(cursor_path, param, cursor_header, has_more_path)


def next_url(path: str = "next") -> NextUrl:
    """The URL of the next page at `path` in the body."""
    return NextUrl(path)


def link_header(rel: str = "next") -> LinkHeader:
    """The URL of the next page in the `Link` header."""
    return LinkHeader(rel)


def offset(
    limit: int = 100,
    *,
    offset_param: str = "offset",
    limit_param: str = "limit",
    total_path: str | None = None,
    start: int = 0,
) -> Offset:
    """`offset`/`limit` query parameters."""
    return Offset(limit, offset_param, limit_param, total_path, start)


def page_number(
    *,
    page_param: str = "page",
    start: int = 1,
    page_size: int | None = None,
    size_param: str | None = None,
    total_pages_path: str | None = None,
) -> PageNumber:
    """A page number query parameter (`?page=1`, 2, 3...)."""
    return PageNumber(page_param, start, page_size, size_param, total_pages_path)


PAGINATORS: dict[str, type[Paginator]] = {
    p.kind: p for p in (Single, Cursor, NextUrl, LinkHeader, Offset, PageNumber)
}
