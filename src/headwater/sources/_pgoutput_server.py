"""The PostgreSQL side of change data capture: connections, catalog, slots, publications.

Used by the `cdc_postgres` source (reading) and by `headwater cdc` (setup,
status, teardown). Every connection runs with the same session settings, so
values arrive as the same text whatever the server's defaults.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader
from psycopg.conninfo import conninfo_to_dict

from ..errors import ConfigError, HeadwaterError
from ._pgoutput import lsn_to_int
from ._pgoutput_types import is_builtin

log = logging.getLogger("headwater.cdc.postgres")

MIN_SERVER_VERSION: Final = 130000  # publish_via_partition_root, pg_replication_slot_advance
NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # slot and publication names
# libpq connection keywords a [connections.NAME] section may hold (`database` is `dbname`).
_LIBPQ: Final = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "channel_binding",
        "connect_timeout",
        "options",
        "application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "target_session_attrs",
        "service",
        "gssencmode",
        "krbsrvname",
    }
)
# Values are read as PostgreSQL's text output; these make it the same on every server.
_SESSION: Final = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8"
)
_CODECS: Final = {"UTF8": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1", "WIN1252": "cp1252"}
# Failures worth a reconnect: lost connections, shutdowns, too many clients, a slot
# still held by a backend that is going away.
_TRANSIENT: Final = frozenset({"57P01", "57P02", "57P03", "55006", "53300"})
RETRIES: Final = 6

T = TypeVar("T")


class ConnectError(HeadwaterError):
    """Could not connect (retried like a lost connection)."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def transient(exc: BaseException) -> bool:
    """A lost or refused connection, as opposed to an error in what was asked."""
    if isinstance(exc, ConnectError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _TRANSIENT


def default_name(database: str, table: str) -> str:
    """`headwater_<database>_<layer>_<table>` (slot names are cluster-wide, hence the database)."""
    raw = re.sub(r"[^a-z0-9_]", "_", f"headwater_{database}_{table.replace('.', '_')}".lower())
    if len(raw) <= 63:
        return raw
    return raw[:54] + "_" + hashlib.sha1(raw.encode()).hexdigest()[:8]


class Connector:
    """How one table reaches its server: the connection's settings, and new connections."""

    def __init__(self, raw: Mapping[str, Any], table: str, where: str, described: str) -> None:
        self.table = table  # the Headwater table, for messages
        self.described = described
        self.settings: dict[str, Any] = {}
        for key, value in raw.items():
            key = {"database": "dbname"}.get(key, key)
            if key in ("url", "dsn", "conninfo"):
                self.settings["conninfo"] = str(value)
            elif key in _LIBPQ:
                self.settings[key] = value
            else:
                raise ConfigError(
                    f"{where}: unknown PostgreSQL setting {key!r}",
                    "use libpq names: host, port, database, user, password, sslmode, ...",
                )

    @property
    def database(self) -> str:
        if "dbname" in self.settings:
            return str(self.settings["dbname"])
        if "conninfo" in self.settings:
            parsed = conninfo_to_dict(self.settings["conninfo"])
            if parsed.get("dbname"):
                return str(parsed["dbname"])
        # libpq's own default: the user name.
        user = self.settings.get("user") or os.environ.get("PGUSER") or os.environ.get("USER")
        return str(os.environ.get("PGDATABASE") or user or "postgres")

    def scrub(self, text: str) -> str:
        """`text` without the password or a connection string a driver may echo."""
        for secret in (self.settings.get("password"), self.settings.get("conninfo")):
            if secret:
                text = text.replace(str(secret), "***")
        return text

    def connect(
        self, *, replication: bool = False, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        settings = dict(self.settings)
        conninfo = settings.pop("conninfo", "")
        options = f"{_SESSION} {settings.pop('options', '')}".strip()
        if replication:
            settings["replication"] = "database"
        settings.setdefault("connect_timeout", 10)
        settings.setdefault("application_name", "headwater")
        try:
            return psycopg.connect(conninfo, autocommit=autocommit, options=options, **settings)
        except psycopg.Error as exc:
            raise ConnectError(
                f"table {self.table}: cannot connect to PostgreSQL ({self.described}): "
                + self.scrub(first_line(exc)),
                "check the connection settings and that the server is up",
            ) from exc

    def failure(self, exc: BaseException, what: str, hint: str | None = None) -> HeadwaterError:
        if isinstance(exc, HeadwaterError):
            return exc
        return HeadwaterError(
            f"table {self.table}: PostgreSQL failed while {what}: {self.scrub(first_line(exc))}",
            hint or "the next run resumes from the last committed position",
        )


class Control:
    """The connection a source keeps between runs, reopened (and the work retried) when lost."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._settings: dict[str, Any] | None = None

    def connection(self, connector: Connector) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and (
            conn.closed or conn.broken or connector.settings != self._settings
        ):
            self.close()
        if self._conn is None:
            self._conn = connector.connect()
            self._settings = dict(connector.settings)
        return self._conn

    def current(self) -> psycopg.Connection[Any] | None:
        """The connection kept, if it is open."""
        conn = self._conn
        return None if conn is None or conn.closed or conn.broken else conn

    def close(self) -> None:
        if self._conn is not None:
            close_quietly(self._conn)
        self._conn = None

    def run(
        self,
        connector: Connector,
        what: str,
        action: Callable[[psycopg.Connection[Any]], T],
    ) -> T:
        """`action` on the kept connection; if the server went away, reconnect and retry."""
        delay = 0.5
        for attempt in range(RETRIES + 1):
            try:
                return action(self.connection(connector))
            except (psycopg.Error, ConnectError) as exc:
                if not transient(exc) or attempt == RETRIES:
                    self.close()
                    raise connector.failure(exc, what) from exc
                cause = exc.__cause__ if isinstance(exc, ConnectError) else exc
                log.warning(
                    "table %s: lost PostgreSQL while %s (%s); reconnecting in %.1fs",
                    connector.table,
                    what,
                    connector.scrub(first_line(cause or exc)),
                    delay,
                )
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")


class TextLoader(Loader):
    """A column as PostgreSQL's text output: the snapshot converts values like the stream."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8")


def text_cursor(
    conn: psycopg.Connection[Any], type_oids: set[int], name: str | None = None
) -> psycopg.Cursor[Any]:
    """A cursor that returns columns of `type_oids` as text (server-side if `name`d)."""
    cursor = conn.cursor(name) if name else conn.cursor()
    for oid in type_oids:
        cursor.adapters.register_loader(oid, TextLoader)
    return cursor


def one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] | None = None) -> Any:
    """The single row of `query`, as a tuple."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def close_quietly(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


# -- the catalog ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_oid: int  # as declared (may be a domain)
    typmod: int
    type_sql: str  # format_type(): for casts of bound key values
    base_oid: int  # the built-in type underneath domains
    base_typmod: int


@dataclass
class TableInfo:
    """What the catalog says about the source table, read at the start of each run."""

    schema: str
    name: str
    oid: int
    relkind: str
    identity: str  # d(efault) f(ull) i(ndex) n(othing)
    identity_columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    columns: list[ColumnInfo]
    keys: tuple[str, ...] = ()
    relids: set[int] = field(default_factory=set)  # the table and its partitions

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> ColumnInfo:
        found = next((c for c in self.columns if c.name == name), None)
        assert found is not None, name
        return found

    @property
    def key_indexes(self) -> list[int]:
        names = [c.name for c in self.columns]
        return [names.index(k) for k in self.keys]


@dataclass(frozen=True)
class Server:
    version: int
    database: str
    encoding: str  # a Python codec


@dataclass(frozen=True)
class SlotState:
    name: str
    database: str | None
    plugin: str | None
    active_pid: int | None
    restart_lsn: int | None
    confirmed: int | None
    wal_status: str | None


def read_server(conn: psycopg.Connection[Any], table: str) -> Server:
    version, database, encoding, wal_level = one(
        conn,
        "SELECT current_setting('server_version_num')::int, current_database(), "
        "current_setting('server_encoding'), current_setting('wal_level')",
    )
    if version < MIN_SERVER_VERSION:
        raise HeadwaterError(
            f"table {table}: PostgreSQL {version // 10000} is too old for change data capture",
            "Headwater needs PostgreSQL 13 or later",
        )
    if wal_level != "logical":
        raise HeadwaterError(
            f"table {table}: PostgreSQL has wal_level={wal_level}; change data capture needs logical",
            "ALTER SYSTEM SET wal_level = logical and restart PostgreSQL "
            "(managed services: turn on logical replication); `headwater cdc setup` checks it",
        )
    codec = _CODECS.get(encoding)
    if codec is None:
        try:
            codec = codecs.lookup(encoding.lower()).name
        except LookupError:
            raise HeadwaterError(
                f"table {table}: the database's encoding {encoding} is not supported",
                "use a UTF8 database",
            ) from None
    return Server(int(version), str(database), codec)


def describe_table(
    conn: psycopg.Connection[Any],
    table: str,
    schema: str,
    name: str,
    keys: Sequence[str] | None,
    reserved: Sequence[str],
) -> TableInfo:
    """The source table `schema.name` of Headwater table `table`, with the keys to use.

    `keys` given must be part of the replica identity; `reserved` are the
    change columns the source adds, which the table must not have.
    """
    found = conn.execute(
        "SELECT c.oid, c.relkind, c.relreplident FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        [schema, name],
    ).fetchone()
    if found is None:
        raise HeadwaterError(
            f"table {table}: PostgreSQL has no table {schema}.{name}",
            "check the schema and table name given to cdc_postgres (names are case-sensitive)",
        )
    oid, relkind, identity = int(found[0]), str(found[1]), str(found[2])
    rows = conn.execute(
        "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        [oid],
    ).fetchall()
    bases = base_types(conn, {int(r[1]) for r in rows})
    columns = []
    for column, type_oid, typmod, type_sql in rows:
        base, base_typmod = bases.get(int(type_oid), (int(type_oid), int(typmod)))
        if base_typmod == -1:
            base_typmod = int(typmod)
        columns.append(
            ColumnInfo(str(column), int(type_oid), int(typmod), str(type_sql), base, base_typmod)
        )
    primary = index_columns(conn, oid, "indisprimary")
    identity_columns = {
        "d": primary,
        "i": index_columns(conn, oid, "indisreplident"),
        "f": tuple(c.name for c in columns),
    }.get(identity, ())
    info = TableInfo(schema, name, oid, relkind, identity, identity_columns, primary, columns)
    info.relids = {oid}
    if relkind == "p":
        partitions = conn.execute("SELECT relid FROM pg_partition_tree(%s)", [oid]).fetchall()
        info.relids |= {int(r[0]) for r in partitions}
    info.keys = choose_keys(info, table, keys)
    clash = sorted(set(reserved) & {c.name for c in columns})
    if clash:
        raise ConfigError(
            f"table {table}: PostgreSQL table {info.qualified} already has column(s) {clash}",
            "name the change columns differently: "
            "cdc_postgres(..., op_column=..., sequence_column=..., commit_ts_column=...)",
        )
    return info


def base_types(conn: psycopg.Connection[Any], oids: set[int]) -> dict[int, tuple[int, int]]:
    """Domains (over domains) resolved to the built-in type beneath, with the domain's typmod."""
    resolved: dict[int, tuple[int, int]] = {}
    todo = {o for o in oids if not is_builtin(o)}
    for _ in range(8):
        if not todo:
            break
        rows = conn.execute(
            "SELECT oid, typtype, typbasetype, typtypmod FROM pg_type WHERE oid = ANY(%s)",
            [list(todo)],
        ).fetchall()
        todo = set()
        for oid, typtype, base, typmod in rows:
            if typtype == "d":
                resolved[int(oid)] = (int(base), int(typmod))
                if not is_builtin(int(base)):
                    todo.add(int(base))
    for oid, (base, typmod) in list(resolved.items()):
        while base in resolved:
            base, inner = resolved[base]
            typmod = typmod if typmod != -1 else inner
        resolved[oid] = (base, typmod)
    return resolved


def index_columns(conn: psycopg.Connection[Any], oid: int, which: str) -> tuple[str, ...]:
    """Columns of the primary key (`indisprimary`) or the replica identity index (`indisreplident`)."""
    flag = {"indisprimary": "i.indisprimary", "indisreplident": "i.indisreplident"}[which]
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        f"WHERE i.indrelid = %s AND {flag} ORDER BY k.n",
        [oid],
    ).fetchall()
    return tuple(str(r[0]) for r in rows)


def choose_keys(info: TableInfo, table: str, keys: Sequence[str] | None) -> tuple[str, ...]:
    """The columns changes are keyed by: given, or the replica identity (the primary key)."""
    names = {c.name for c in info.columns}
    if info.identity == "n" or (info.identity == "d" and not info.primary_key):
        raise HeadwaterError(
            f"table {table}: PostgreSQL table {info.qualified} has no replica identity, "
            "so its updates and deletes cannot be captured",
            f"add a primary key, or ALTER TABLE {info.qualified} REPLICA IDENTITY FULL",
        )
    if keys:
        missing = [k for k in keys if k not in names]
        if missing:
            raise ConfigError(
                f"table {table}: key column(s) {missing} are not in PostgreSQL table {info.qualified}",
                f"its columns: {', '.join(sorted(names))}",
            )
        outside = [k for k in keys if k not in info.identity_columns]
        if outside:
            raise ConfigError(
                f"table {table}: key column(s) {outside} are not in the replica identity of "
                f"{info.qualified} ({', '.join(info.identity_columns)}), so deletes would not carry them",
                f"use the replica identity as keys, or ALTER TABLE {info.qualified} REPLICA IDENTITY FULL",
            )
        return tuple(keys)
    if info.identity == "f":
        if info.primary_key:
            return info.primary_key
        raise ConfigError(
            f"table {table}: PostgreSQL table {info.qualified} has no primary key to use as keys",
            "pass keys=[...] to cdc_postgres (columns that identify a row)",
        )
    return info.identity_columns


# -- slots and publications ---------------------------------------------------------------------


_SLOT_COLUMNS: Final = (
    "s.slot_name, s.database, s.plugin, s.active_pid, s.restart_lsn::text, "
    "s.confirmed_flush_lsn::text, s.wal_status"
)


def slot_state(conn: psycopg.Connection[Any], slot: str) -> SlotState | None:
    row = conn.execute(
        f"SELECT {_SLOT_COLUMNS} FROM pg_replication_slots s WHERE s.slot_name = %s", [slot]
    ).fetchone()
    return _slot(row)


@dataclass(frozen=True)
class StreamState:
    """What a round of reading needs to know of the server, in one query."""

    flushed: int  # where the WAL is flushed to
    slot: SlotState | None
    published: bool  # the publication exists


def stream_state(conn: psycopg.Connection[Any], slot: str, publication: str) -> StreamState:
    """The flushed WAL position, the slot, and whether the publication exists: one round trip."""
    row = conn.execute(
        f"SELECT pg_current_wal_flush_lsn()::text, "
        f"EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %s), {_SLOT_COLUMNS} "
        "FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = %s",
        [publication, slot],
    ).fetchone()
    assert row is not None
    return StreamState(lsn_to_int(row[0]), _slot(row[2:] if row[2] is not None else None), row[1])


def _slot(row: Sequence[Any] | None) -> SlotState | None:
    if row is None:
        return None
    return SlotState(
        row[0],
        row[1],
        row[2],
        row[3],
        lsn_to_int(row[4]) if row[4] else None,
        lsn_to_int(row[5]) if row[5] else None,
        row[6],
    )


def flushed_lsn(conn: psycopg.Connection[Any]) -> int:
    """Where the server's WAL is flushed to: logical decoding reads no further."""
    return lsn_to_int(one(conn, "SELECT pg_current_wal_flush_lsn()::text")[0])


def ensure_publication(
    conn: psycopg.Connection[Any], table: str, info: TableInfo, name: str, owned: bool
) -> str | None:
    """Check that publication `name` publishes the table; create it (or add the table) if `owned`.

    Returns what was done ("created", "added"), or None when it was in place.
    """
    row = conn.execute(
        "SELECT pubinsert, pubupdate, pubdelete, puballtables FROM pg_publication WHERE pubname = %s",
        [name],
    ).fetchone()
    relation = sql.Identifier(info.schema, info.name)
    if row is None:
        if not owned:
            raise HeadwaterError(
                f"table {table}: PostgreSQL has no publication {name}",
                f"CREATE PUBLICATION {name} FOR TABLE {info.qualified}, or leave publication= unset",
            )
        ddl(
            conn,
            table,
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate', "
                "publish_via_partition_root = true)"
            ).format(sql.Identifier(name), relation),
            f"create publication {name}",
        )
        return "created"
    if not (row[0] and row[1] and row[2]):
        raise HeadwaterError(
            f"table {table}: publication {name} does not publish inserts, updates and deletes",
            f"ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')",
        )
    if row[3]:
        return None
    member = conn.execute(
        "SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE p.pubname = %s AND pr.prrelid = ANY(%s)",
        [name, list(info.relids)],
    ).fetchone()
    if member is not None:
        return None
    if not owned:
        raise HeadwaterError(
            f"table {table}: publication {name} does not include {info.qualified}",
            f"ALTER PUBLICATION {name} ADD TABLE {info.qualified}",
        )
    ddl(
        conn,
        table,
        sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), relation),
        f"add {info.qualified} to publication {name}",
    )
    return "added"


def drop_slot(conn: psycopg.Connection[Any], table: str, slot: str, database: str) -> bool:
    """Drop `slot` if it exists (refusing one in use, or one of another database)."""
    state = slot_state(conn, slot)
    if state is None:
        return False
    if state.active_pid is not None:
        raise HeadwaterError(
            f"table {table}: replication slot {slot} is in use by server process {state.active_pid}",
            "another reader (a second Headwater process?) uses it; stop it, "
            "or give this table a slot of its own: cdc_postgres(..., slot=...)",
        )
    if state.database is not None and state.database != database:
        raise HeadwaterError(
            f"table {table}: replication slot {slot} belongs to database {state.database}",
            "give this table a slot of its own: cdc_postgres(..., slot=...)",
        )
    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    return True


def create_slot(
    connector: Connector, server: Server, slot: str, *, temporary: bool, export: bool
) -> tuple[int, psycopg.Connection[Any] | None, str | None]:
    """Create a logical slot over a replication connection.

    Returns the LSN the slot starts at and, when `export`, the still open
    replication connection and the name of the snapshot it exports: the
    snapshot lives until that connection runs another command or closes, so
    the caller imports it first.
    """
    assert NAME.match(slot), slot  # interpolated below: replication commands take no parameters
    replication = connector.connect(replication=True)
    kind = " TEMPORARY" if temporary else ""
    if server.version >= 150000:
        mode = "(SNAPSHOT 'export')" if export else "(SNAPSHOT 'nothing')"
    else:
        mode = "EXPORT_SNAPSHOT" if export else "NOEXPORT_SNAPSHOT"
    log.info(
        "table %s: creating replication slot %s (it waits for open transactions to end)",
        connector.table,
        slot,
    )
    try:
        row = replication.execute(
            f"CREATE_REPLICATION_SLOT {slot}{kind} LOGICAL pgoutput {mode}".encode()
        ).fetchone()
        assert row is not None
    except psycopg.Error as exc:
        close_quietly(replication)
        if exc.sqlstate == "53400":
            raise HeadwaterError(
                f"table {connector.table}: PostgreSQL has no free replication slot for {slot}",
                "raise max_replication_slots, or drop abandoned slots (`headwater cdc status` names them)",
            ) from exc
        if exc.sqlstate == "42501":
            raise HeadwaterError(
                f"table {connector.table}: the PostgreSQL user may not create replication slots",
                "ALTER ROLE <user> REPLICATION (managed services: GRANT rds_replication TO <user>)",
            ) from exc
        raise
    lsn, snapshot = lsn_to_int(str(row[1])), row[2]
    if export:
        return lsn, replication, str(snapshot)
    close_quietly(replication)
    return lsn, None, None


def ddl(conn: psycopg.Connection[Any], table: str, statement: sql.Composed, what: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise HeadwaterError(
            f"table {table}: the PostgreSQL user may not {what}: {first_line(exc)}",
            "run `headwater cdc setup` as the table's owner, or have an administrator do it",
        ) from exc
