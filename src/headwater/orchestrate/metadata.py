"""The metadata database: run history, leases, backfills, alerts, trigger state.

SQLite (WAL) by default — `[metadata] url = "sqlite:///.headwater/metadata.db"`,
relative to the project — or PostgreSQL (`postgresql://user@host/db`) when
several schedulers share one project. Statements are written once, with `?`
placeholders, in the SQL both understand (upserts with ON CONFLICT ... WHERE,
RETURNING); only the DDL differs. Times are seconds since the epoch (UTC).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TransientError

SCHEMA_VERSION = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS hw_runs (
    run_id TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    run_key TEXT,
    kind TEXT NOT NULL,
    trigger_kind TEXT,
    interval_start {REAL},
    interval_end {REAL},
    covers_start {REAL},
    logical_ts {REAL},
    backfill_id TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before {REAL},
    wait_deadline {REAL},
    failure TEXT,
    error TEXT,
    hint TEXT,
    created_at {REAL} NOT NULL,
    started_at {REAL},
    finished_at {REAL},
    seconds {REAL},
    rows_in BIGINT,
    rows_out BIGINT,
    metrics TEXT,
    positions TEXT,
    version BIGINT,
    engine_run_id TEXT,
    owner TEXT,
    UNIQUE (table_name, run_key)
);
CREATE INDEX IF NOT EXISTS hw_runs_table ON hw_runs (table_name, created_at);
CREATE INDEX IF NOT EXISTS hw_runs_status ON hw_runs (status);
CREATE INDEX IF NOT EXISTS hw_runs_backfill ON hw_runs (backfill_id);
CREATE TABLE IF NOT EXISTS hw_attempts (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    engine_run_id TEXT NOT NULL,
    owner TEXT,
    started_at {REAL} NOT NULL,
    finished_at {REAL},
    status TEXT NOT NULL,
    failure TEXT,
    error TEXT,
    PRIMARY KEY (run_id, attempt)
);
CREATE TABLE IF NOT EXISTS hw_leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at {REAL} NOT NULL,
    acquired_at {REAL} NOT NULL
);
CREATE TABLE IF NOT EXISTS hw_backfills (
    backfill_id TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    start_at {REAL} NOT NULL,
    end_at {REAL} NOT NULL,
    options TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    created_at {REAL} NOT NULL,
    finished_at {REAL}
);
CREATE TABLE IF NOT EXISTS hw_alerts (
    alert_key TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    first_at {REAL} NOT NULL,
    last_at {REAL} NOT NULL,
    resolved_at {REAL},
    occurrences INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS hw_trigger_state (
    table_name TEXT PRIMARY KEY,
    next_fire {REAL},
    last_fire {REAL},
    state TEXT
);
CREATE TABLE IF NOT EXISTS hw_events (
    id {SERIAL},
    at {REAL} NOT NULL,
    table_name TEXT NOT NULL,
    run_id TEXT,
    owner TEXT,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS hw_schema (version INTEGER NOT NULL);
"""

_DIALECT = {
    "sqlite": {"REAL": "REAL", "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"REAL": "DOUBLE PRECISION", "SERIAL": "BIGSERIAL PRIMARY KEY"},
}


class Metadata:
    """One connection to the metadata database, shared by a process's threads."""

    def __init__(self, dialect: str, connection: Any, where: str) -> None:
        self.dialect = dialect
        self.where = where  # for messages: a path or a URL without password
        self._con = connection
        self._lock = threading.RLock()
        self._in_transaction = 0

    # -- opening --------------------------------------------------------------
    @classmethod
    def open(cls, url: str, root: Path | str = ".") -> Metadata:
        """Open (and create, first time) the database named by `[metadata] url`."""
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            path = path if path.is_absolute() else Path(root) / path
            return cls._sqlite(path)
        if url.startswith(("postgresql://", "postgres://")):
            return cls._postgres(url)
        raise ConfigError(
            f"[metadata] url {_redact(url)!r} is neither sqlite:///PATH nor postgresql://...",
            'e.g. url = "sqlite:///.headwater/metadata.db" or "postgresql://user@host/db"',
        )

    @classmethod
    def _sqlite(cls, path: Path) -> Metadata:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit; transactions are explicit (BEGIN IMMEDIATE) where read-then-write.
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash; only an OS crash may lose the last one.
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA busy_timeout=30000")
        meta = cls("sqlite", con, str(path))
        meta._create()
        return meta

    @classmethod
    def _postgres(cls, url: str) -> Metadata:
        import psycopg

        try:
            con = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise TransientError(
                f"cannot reach the metadata database {_redact(url)}: {str(exc).strip().splitlines()[0]}",
                "check [metadata] url in headwater.toml and that the server is up",
            ) from None
        meta = cls("postgresql", con, _redact(url))
        meta._create()
        return meta

    def _create(self) -> None:
        ddl = _TABLES.format(**_DIALECT[self.dialect])
        with self.transaction():
            if self.dialect == "postgresql":
                # Two schedulers starting together must not race on CREATE TABLE.
                self.execute("SELECT pg_advisory_xact_lock(4242001)")
            for statement in filter(None, (s.strip() for s in ddl.split(";"))):
                self.execute(statement)
            if not self.execute("SELECT version FROM hw_schema"):
                self.execute("INSERT INTO hw_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # -- statements -----------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (SELECT or RETURNING), else []."""
        with self._lock:
            if self.dialect == "postgresql":
                cursor = self._con.execute(sql.replace("?", "%s"), tuple(params))
                return list(cursor.fetchall()) if cursor.description else []
            cursor = self._con.execute(sql, tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.execute(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements inside run atomically (and, on SQLite, hold the write lock throughout)."""
        with self._lock:
            if self._in_transaction:
                self._in_transaction += 1
                try:
                    yield
                finally:
                    self._in_transaction -= 1
                return
            self._in_transaction = 1
            try:
                if self.dialect == "postgresql":
                    with self._con.transaction():
                        yield
                else:
                    self._con.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                    except BaseException:
                        self._con.execute("ROLLBACK")
                        raise
                    self._con.execute("COMMIT")
            finally:
                self._in_transaction = 0


def _redact(url: str) -> str:
    """A URL without its password (never print or log secrets)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return (
            f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
        )
    return url


def open_metadata(project: Any) -> Metadata:
    """The metadata database of a project (its `[metadata] url`)."""
    return Metadata.open(project.config.metadata.url, project.root)
