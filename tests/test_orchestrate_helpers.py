"""Shared pieces of the orchestrator tests (this module holds no tests itself)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from headwater.orchestrate import ManualClock
from headwater.orchestrate.metadata import Metadata
from headwater.orchestrate.scheduler import Scheduler

from .lake import Lake


def scheduler(lake: Lake, clock: ManualClock, **kwargs: Any) -> Scheduler:
    """A scheduler on a real SQLite metadata DB beside the lake, with a manual clock."""
    meta = Metadata.open("sqlite:///.headwater/metadata.db", lake.root)
    return Scheduler(lake.project, metadata=meta, clock=clock, seed=7, **kwargs).start()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def commits(table_uri: str | Path) -> list[dict[str, Any]]:
    """Headwater's commit metadata of every data commit of a table, oldest first."""
    history = DeltaTable(str(table_uri)).history()
    found = [e["headwater"] for e in history if isinstance(e.get("headwater"), dict)]
    return [m for m in reversed(found) if "run_id" in m]


class Webhook:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.received.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/T000/secret-token"

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def lines(text: str) -> Iterator[str]:
    return (line.strip() for line in text.splitlines() if line.strip())
