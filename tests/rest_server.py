"""A real HTTP API on 127.0.0.1 for the REST source's tests (threaded http.server).

It serves a list of items through every kind of pagination, checks credentials,
and misbehaves on request: `api.fail(...)` makes the next requests answer 429
with Retry-After, 5xx, or drop the connection; `api.between_pages` runs after a
listing page is served (to insert records while a load pages through them).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_TIME = datetime(2024, 3, 1, tzinfo=UTC)


@dataclass
class Fault:
    """How one request misbehaves: an HTTP status (with headers), or a dropped connection."""

    status: int | None = None  # None: drop the connection
    headers: dict[str, str] = field(default_factory=dict)
    cut_body: bool = False  # send headers and part of the body, then close


def too_many(retry_after: str = "0") -> Fault:
    return Fault(429, {"Retry-After": retry_after})


def too_many_until(when: datetime) -> Fault:
    return Fault(429, {"Retry-After": format_datetime(when, usegmt=True)})


def server_error(status: int = 500) -> Fault:
    return Fault(status)


def dropped() -> Fault:
    return Fault(None)


def cut() -> Fault:
    return Fault(200, cut_body=True)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    status: int


class Api:
    """The state behind the server: items, credentials, faults and a request log."""

    def __init__(self, items: int = 0, page_size: int = 3) -> None:
        self.lock = threading.RLock()
        self.items: dict[int, dict[str, Any]] = {}
        self.page_size = page_size
        self.ticks = 0
        self.extra: dict[str, Any] = {}  # fields added to every item (schema drift)
        self.amount: Callable[[int], Any] = lambda i: i * 10
        self.auth: tuple[Any, ...] | None = None
        self.tokens: dict[str, int] = {}  # oauth2 token -> uses left
        self.token_requests = 0
        self.token_lifetime: int | None = 3600
        self.faults: list[Fault] = []
        self.between_pages: Callable[[int], None] | None = None
        self.pages_served = 0
        self.missing_details: set[int] = set()  # details answering 404
        self.log: list[Seen] = []
        for _ in range(items):
            self.insert()

    # -- data ---------------------------------------------------------------------
    def _stamp(self) -> str:
        self.ticks += 1
        return (BASE_TIME + timedelta(minutes=self.ticks)).isoformat().replace("+00:00", "Z")

    def insert(self) -> int:
        with self.lock:
            key = max(self.items, default=0) + 1
            self.items[key] = {"id": key, "name": f"item {key}", "updated_at": self._stamp()}
            return key

    def update(self, key: int, **values: Any) -> None:
        with self.lock:
            self.items[key].update(values, updated_at=self._stamp())

    def record(self, key: int) -> dict[str, Any]:
        item = self.items[key]
        return {
            **item,
            "amount": self.amount(key),
            "customer": {"id": key % 4, "tier": "gold" if key % 2 else "silver"},
            "tags": [f"t{key % 3}"],
            **self.extra,
        }

    def listing(self, query: dict[str, str]) -> list[dict[str, Any]]:
        with self.lock:
            since = query.get("updated_since")
            keys = sorted(self.items)
            if since is not None:
                # Inclusive, as most APIs: the latest record comes again (a merge absorbs it).
                keys = [k for k in keys if self.items[k]["updated_at"] >= since]
            return [self.record(k) for k in keys]

    def fail(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.log if s.path == path]

    # -- credentials ----------------------------------------------------------------
    def authorised(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> bool:
        if self.auth is None:
            return True
        kind = self.auth[0]
        header = handler.headers.get("Authorization", "")
        if kind == "bearer":
            return header == f"Bearer {self.auth[1]}"
        if kind == "basic":
            expected = base64.b64encode(f"{self.auth[1]}:{self.auth[2]}".encode()).decode()
            return header == f"Basic {expected}"
        if kind == "api_key_header":
            return handler.headers.get(self.auth[1]) == self.auth[2]
        if kind == "api_key_query":
            return query.get(self.auth[1]) == self.auth[2]
        if kind == "oauth2":
            token = header.removeprefix("Bearer ")
            with self.lock:
                left = self.tokens.get(token, 0)
                if left <= 0:
                    return False
                self.tokens[token] = left - 1
                return True
        raise AssertionError(kind)

    def issue_token(self, handler: BaseHTTPRequestHandler, form: dict[str, str]) -> tuple[int, Any]:
        assert self.auth is not None and self.auth[0] == "oauth2"
        _, client_id, client_secret, uses = self.auth
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            pair = base64.b64decode(header[6:]).decode()
            given_id, _, given_secret = pair.partition(":")
        else:
            given_id, given_secret = form.get("client_id", ""), form.get("client_secret", "")
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if (given_id, given_secret) != (client_id, client_secret):
            return 401, {"error": "invalid_client"}
        with self.lock:
            self.token_requests += 1
            token = secrets.token_hex(8)
            self.tokens[token] = uses
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.token_lifetime is not None:
            body["expires_in"] = self.token_lifetime
        return 200, body


def _cursor(key: int) -> str:
    return base64.urlsafe_b64encode(f"after:{key}".encode()).decode()


def _after(cursor: str | None) -> int:
    if not cursor:
        return 0
    return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs: drops hit pooled connections
    api: Api

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        api = self.api
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length).decode() if length else ""
        path = parts.path
        if path == "/oauth/token":
            form = {k: v[-1] for k, v in parse_qs(payload).items()}
            status, body = api.issue_token(self, form)
            self._log(method, path, query, status)
            self._send(status, body)
            return
        with api.lock:
            fault = api.faults.pop(0) if api.faults else None
        if fault is not None:
            self._log(method, path, query, fault.status or 0)
            if fault.status is None:
                self.close_connection = True  # no response at all
                return
            if fault.cut_body:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"data": [')
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(fault.status, {"error": "try again"}, fault.headers)
            return
        if not api.authorised(self, query):
            self._log(method, path, query, 401)
            self._send(401, {"error": "unauthorized"})
            return
        status, body, headers = self._route(path, query)
        self._log(method, path, query, status)
        self._send(status, body, headers)
        if status == 200 and path.startswith("/items") and not path.endswith("/details"):
            api.pages_served += 1
            if api.between_pages is not None:
                api.between_pages(api.pages_served)

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        api = self.api
        size = int(query.get("limit") or query.get("per_page") or api.page_size)
        items = api.listing(query)
        host = f"http://{self.headers['Host']}"
        if path == "/items":  # cursor in the body, keyset by id
            after = _after(query.get("cursor"))
            page = [i for i in items if i["id"] > after][:size]
            more = bool(page) and any(i["id"] > page[-1]["id"] for i in items)
            return (
                200,
                {"data": page, "meta": {"next_cursor": _cursor(page[-1]["id"]) if more else None}},
                {},
            )
        if path == "/items/next":  # next page URL in the body, relative
            after = int(query.get("after", 0))
            page = [i for i in items if i["id"] > after][:size]
            more = bool(page) and any(i["id"] > page[-1]["id"] for i in items)
            next_url = f"/items/next?after={page[-1]['id']}&limit={size}" if more else None
            if next_url and "key" in query:
                next_url += f"&key={query['key']}"  # servers echo query keys into their links
            return 200, {"results": page, "next": next_url}, {}
        if path == "/items/link":  # RFC 8288 Link header, a bare list as the body
            after = int(query.get("after", 0))
            page = [i for i in items if i["id"] > after][:size]
            headers = {"X-Total-Count": str(len(items))}
            if page and any(i["id"] > page[-1]["id"] for i in items):
                headers["Link"] = (
                    f'<{host}/items/link?after={page[-1]["id"]}&limit={size}>; rel="next"'
                )
            return 200, page, headers
        if path == "/items/offset":
            start = int(query.get("offset", 0))
            return 200, {"items": items[start : start + size], "total": len(items)}, {}
        if path == "/items/pages":
            number = int(query.get("page", 1))
            pages = max(1, -(-len(items) // size))
            return (
                200,
                {"items": items[(number - 1) * size : number * size], "total_pages": pages},
                {},
            )
        if path.startswith("/items/") and path.endswith("/details"):
            key = int(path.split("/")[2])
            if key not in api.items or key in api.missing_details:
                return 404, {"error": "no such item"}, {}
            item = api.items[key]
            return 200, {"sku": f"sku-{key}", "name": item["name"], "qty": key % 5}, {}
        if path == "/html":
            return 200, "<html>maintenance</html>", {"Content-Type": "text/html"}
        return 404, {"error": f"no route {path}"}, {}

    def _log(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        with self.api.lock:
            self.api.log.append(Seen(method, path, query, status))

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(body, str) and headers.get("Content-Type", "").startswith("text/"):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve(api: Api) -> Iterator[str]:
    """Serve `api` on a free port of 127.0.0.1; yields the base URL."""
    handler = type("BoundHandler", (Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
