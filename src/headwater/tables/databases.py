"""In-memory DuckDB databases for writes, reused from one write to the next.

Opening a DuckDB database registers every built-in function: about 20-25 ms
of CPU, and closing it more, a fixed cost of every small write (each
micro-batch of each CDC table). A write borrows a database here and works in
a new connection to it (a cursor, under 1 ms): what it registers and its
temporary objects end with that connection, and the tables and views it
created are dropped when the database comes back, so the next write finds it
as new. A database serves one write at a time; writes side by side get their
own.
"""

from __future__ import annotations

import os
import threading

import duckdb

from .._sql import q

# Databases kept idle per configuration (about as many as tables written side by side).
MAX_IDLE = 8

_Config = tuple[int, str, str]


class Lease:
    """One write's use of a pooled database: `con` until `release()`."""

    def __init__(self, pool: DatabasePool, config: _Config, database: duckdb.DuckDBPyConnection):
        self._pool, self._config, self._database = pool, config, database
        self.con = database.cursor()

    def release(self) -> None:
        self.con.close()
        self._pool._give_back(self._config, self._database)


class DatabasePool:
    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self._max_idle = max_idle
        self._idle: dict[_Config, list[duckdb.DuckDBPyConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def borrow(self, threads: int, memory_limit: str, temp_directory: str) -> Lease:
        config = (max(1, threads), memory_limit, temp_directory)
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's databases
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(config)
            database = idle.pop() if idle else None
        if database is None:
            database = duckdb.connect(
                config={
                    "threads": config[0],
                    # Beyond the limit DuckDB spills to disk instead of growing.
                    "memory_limit": memory_limit,
                    "temp_directory": temp_directory,
                }
            )
        return Lease(self, config, database)

    def _give_back(self, config: _Config, database: duckdb.DuckDBPyConnection) -> None:
        if not _empty(database):
            database.close()
            return
        with self._lock:
            idle = self._idle.setdefault(config, [])
            if self._pid == os.getpid() and len(idle) < self._max_idle:
                idle.append(database)
                return
        database.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for databases in idle.values():
            for database in databases:
                database.close()


def _empty(database: duckdb.DuckDBPyConnection) -> bool:
    """Drop what a write left in the database; False if that fails (then it is not reused)."""
    try:
        with database.cursor() as con:
            left = con.sql(
                "SELECT 'VIEW', schema_name, view_name FROM duckdb_views() "
                "WHERE NOT internal AND NOT temporary AND database_name = 'memory' "
                "UNION ALL SELECT 'TABLE', schema_name, table_name FROM duckdb_tables() "
                "WHERE NOT temporary AND database_name = 'memory' "
                "UNION ALL SELECT 'SCHEMA', schema_name, NULL FROM duckdb_schemas() "
                "WHERE NOT internal AND database_name = 'memory' AND schema_name <> 'main'"
            ).fetchall()
            if any(kind == "SCHEMA" for kind, _, _ in left):
                return False  # writes do not make schemas; do not guess what else was made
            # Views first: they may read the tables.
            for kind, schema, name in sorted(left, key=lambda r: r[0] != "VIEW"):
                con.execute(f"DROP {kind} IF EXISTS {q(schema)}.{q(name)} CASCADE")
            return True
    except duckdb.Error:
        return False


POOL = DatabasePool()
