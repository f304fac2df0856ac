"""sql_sensor("SELECT count(*) > 0 FROM loads WHERE day = :ds", database="shop.db"):
run once a SQL condition on a source becomes true.

The query's first column of its first row is the condition. `database` is a
SQLite file (relative to the project) or a `postgresql://` URL; `connection`
names a [connections.NAME] of headwater.toml instead (Postgres: host, port,
user, password or password_env, dbname). Bind parameters `:start`, `:end`,
`:ds` (SQLite) or `%(start)s`... (Postgres) hold the interval being waited for.
Like every sensor it pokes every `poke` and gives up after `timeout`. A source
that cannot be reached counts as "not yet" until the timeout.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...engine.interval import Interval
from ...errors import ConfigError
from .base import Sensor

if TYPE_CHECKING:
    from ...config import ProjectConfig


class SqlSensor(Sensor):
    kind = "sql-sensor"

    def __init__(
        self,
        query: str,
        *,
        database: str | None = None,
        connection: str | None = None,
        poke: str | float | timedelta = "1m",
        timeout: str | float | timedelta = "6h",
    ) -> None:
        super().__init__(poke, timeout)
        if (database is None) == (connection is None):
            raise ConfigError(
                "sql_sensor needs exactly one of database=... or connection=...",
                "database='shop.db' (SQLite), 'postgresql://...', or connection='shop'",
            )
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("sql_sensor: query must be a SQL string")
        self.query = query
        self.database = database
        self.connection = connection

    def describe(self) -> str:
        where = (self.connection and f"connection {self.connection}") or _redact(
            self.database or ""
        )
        return f"sql sensor on {where} (poke {self.poke}, timeout {self.timeout})"

    def poke_once(
        self, root: Path, interval: Interval | None, config: ProjectConfig | None = None
    ) -> str | None:
        params: dict[str, Any] = {}
        if interval is not None:
            params = {
                "start": interval.start.isoformat(),
                "end": interval.end.isoformat(),
                "ds": interval.start.date().isoformat(),
            }
        value = self._fetch(root, params, config)
        if not value:
            return None
        return hashlib.sha1(repr(value).encode()).hexdigest()[:16]

    def _fetch(self, root: Path, params: dict[str, Any], config: ProjectConfig | None) -> Any:
        database = self.database
        if database is not None and not database.startswith(("postgresql://", "postgres://")):
            path = Path(database)
            path = path if path.is_absolute() else root / path
            if not path.exists():
                return None  # the source is not there yet: not ready
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute(self.query, _used(self.query, params, ":")).fetchone()
            finally:
                con.close()
            return None if row is None else row[0]
        import psycopg

        conninfo: str
        if database is not None:
            conninfo = database
            kwargs: dict[str, Any] = {}
        else:
            if config is None:
                raise ConfigError(f"sql_sensor: connection {self.connection!r} needs a project")
            settings = config.connection(str(self.connection))
            kwargs = {
                k: settings[k]
                for k in ("host", "port", "user", "password", "dbname")
                if k in settings
            }
            conninfo = ""
        with psycopg.connect(conninfo, connect_timeout=10, **kwargs) as pg:
            found = pg.execute(self.query.encode(), _used(self.query, params, "%(")).fetchone()
        return None if found is None else found[0]
        return None if row is None else row[0]


def _used(query: str, params: dict[str, Any], style: str) -> dict[str, Any]:
    """Only the parameters the query names (drivers reject unused named ones)."""
    if style == ":":
        return {k: v for k, v in params.items() if f":{k}" in query}
    return {k: v for k, v in params.items() if f"%({k})s" in query}


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def sql_sensor(
    query: str,
    *,
    database: str | None = None,
    connection: str | None = None,
    poke: str | float | timedelta = "1m",
    timeout: str | float | timedelta = "6h",
) -> SqlSensor:
    """Run when `query`'s first value is true (a row count, a flag, a max date)."""
    return SqlSensor(query, database=database, connection=connection, poke=poke, timeout=timeout)
