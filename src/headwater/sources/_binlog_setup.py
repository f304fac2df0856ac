"""Connecting to MySQL/MariaDB for change data capture, and checking the server is ready.

`check_prerequisites(settings)` answers "can Headwater read this server's
changes?" as a list of checks, each with what was found, what is needed and
the fix; `apply_fixes(settings, checks)` applies the fixes that are dynamic
server variables (the rest need my.cnf or a GRANT by an administrator).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import pymysql

from ..errors import ConfigError, HeadwaterError

# Connection settings understood (from headwater.toml [connections.NAME] or a dict).
_KEYS = ("host", "port", "user", "password", "database", "connect_timeout", "unix_socket")
_SSL_KEYS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity")


def connect_args(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """PyMySQL arguments from connection settings (`url` or host/port/user/password/database)."""
    values = dict(settings)
    url = values.pop("url", None)
    if url:
        parsed = urlparse(str(url))
        if parsed.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise ConfigError(
                f"{where}: connection url must start with mysql:// or mariadb://",
                "e.g. url = 'mysql://cdc@db.example.com:3306/shop' with password_env = 'SHOP_PASSWORD'",
            )
        from_url = {
            "host": parsed.hostname,
            "port": parsed.port,
            "user": unquote(parsed.username) if parsed.username else None,
            "password": unquote(parsed.password) if parsed.password else None,
            "database": parsed.path.lstrip("/") or None,
        }
        values = {**{k: v for k, v in from_url.items() if v is not None}, **values}
    unknown = sorted(set(values) - set(_KEYS) - set(_SSL_KEYS) - {"server_id"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown connection setting(s) {', '.join(unknown)}",
            f"MySQL connections take url or {', '.join(_KEYS)}",
        )
    args: dict[str, Any] = {
        "host": str(values.get("host", "127.0.0.1")),
        "port": int(values.get("port", 3306)),
        "user": str(values.get("user", "root")),
        "password": str(values.get("password", "") or ""),
        "connect_timeout": int(values.get("connect_timeout", 10)),
        "charset": "utf8mb4",
    }
    if values.get("unix_socket"):
        args["unix_socket"] = str(values["unix_socket"])
    for key in _SSL_KEYS:
        if key in values:
            args[key] = values[key]
    if values.get("database"):
        args["database"] = str(values["database"])
    return args


def describe_server(args: Mapping[str, Any]) -> str:
    """host:port of the server (never the user or password)."""
    return f"{args.get('host')}:{args.get('port')}"


def connection_error(exc: BaseException, args: Mapping[str, Any], where: str) -> HeadwaterError:
    """A one-line error for a failed connection or statement (no secrets)."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    server = describe_server(args)
    if code in (1044, 1045, 1698):
        return HeadwaterError(
            f"{where}: MySQL at {server} refused the login ({text})",
            "check user and password of the connection (password_env or the secrets file)",
        )
    if code in (2002, 2003, 2005, 2006, 2013):
        return HeadwaterError(
            f"{where}: cannot reach MySQL at {server} ({text})",
            "check that the server is running and host/port of the connection",
        )
    if code in (1142, 1143, 1227, 1370):
        return HeadwaterError(
            f"{where}: MySQL at {server} denied a privilege ({text})",
            "run `headwater cdc status` to see which grants are missing",
        )
    return HeadwaterError(f"{where}: MySQL at {server}: {text}")


@contextmanager
def connection(
    args: Mapping[str, Any], where: str, **extra: Any
) -> Iterator[pymysql.Connection[Any]]:
    try:
        conn = pymysql.connect(**{**args, **extra})
    except pymysql.MySQLError as exc:
        raise connection_error(exc, args, where) from exc
    try:
        yield conn
    finally:
        with suppress(pymysql.MySQLError):  # already gone
            conn.close()


def is_mariadb(conn: pymysql.Connection[Any]) -> bool:
    return "mariadb" in str(getattr(conn, "server_version", "")).lower()


def variables(conn: pymysql.Connection[Any], names: Sequence[str]) -> dict[str, str]:
    """Global server variables (lower-case names; missing ones absent)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT LOWER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
            "WHERE LOWER(VARIABLE_NAME) IN (" + ", ".join(["%s"] * len(names)) + ")",
            [n.lower() for n in names],
        )
        return {str(k): "" if v is None else str(v) for k, v in cur.fetchall()}


# -- prerequisites ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One prerequisite of binlog change data capture."""

    name: str  # "binlog_format"
    ok: bool
    actual: str  # what the server has: "MIXED"
    expected: str  # what is needed: "ROW"
    fix: str = ""  # what to do, for a person
    statement: str | None = None  # SQL that fixes it now (a dynamic variable), if any

    def line(self) -> str:
        state = "ok" if self.ok else "FAILED"
        text = f"{self.name}: {state} ({self.actual}; needs {self.expected})"
        return text if self.ok or not self.fix else f"{text} - {self.fix}"


def check_prerequisites(
    settings: Mapping[str, Any], tables: Sequence[str] = (), where: str = "cdc"
) -> list[Check]:
    """Everything binlog CDC needs from the server, checked with the connection's user.

    `settings` are the connection's settings (headwater.toml [connections.NAME]
    with secrets resolved); `tables` ("db.table" or "table" in the connection's
    database) are checked to exist with a primary key in a transactional engine.
    A failed connection is a single failed check, not an exception.
    """
    args = connect_args(settings, where)
    try:
        conn = pymysql.connect(**args)
    except pymysql.MySQLError as exc:
        error = connection_error(exc, args, where)
        return [Check("connection", False, error.message, "a working connection", error.hint or "")]
    try:
        return _checks(conn, args, tables)
    finally:
        conn.close()


def _checks(
    conn: pymysql.Connection[Any], args: Mapping[str, Any], tables: Sequence[str]
) -> list[Check]:
    mariadb = is_mariadb(conn)
    # MariaDB reports "5.5.5-10.11.6-MariaDB" to old clients; the prefix is not its version.
    version = str(getattr(conn, "server_version", "")).removeprefix("5.5.5-")
    server = f"{'MariaDB' if mariadb else 'MySQL'} {version} at {describe_server(args)}"
    checks = [Check("connection", True, server, "a working connection")]
    found = variables(
        conn,
        [
            "log_bin",
            "binlog_format",
            "binlog_row_image",
            "binlog_row_metadata",
            "server_id",
            "gtid_mode",
            "expire_logs_days",
            "binlog_expire_logs_seconds",
        ],
    )
    persist = "and the same in the server's my.cnf [mysqld] section, so it survives a restart"
    log_bin = found.get("log_bin", "OFF").upper()
    checks.append(
        Check(
            "log_bin",
            log_bin in ("ON", "1"),
            log_bin,
            "ON",
            "add log_bin = mysql-bin to my.cnf [mysqld] and restart the server",
        )
    )
    for name, expected in (("binlog_format", "ROW"), ("binlog_row_image", "FULL")):
        value = found.get(name, "").upper()
        checks.append(
            Check(
                name,
                value == expected,
                value or "unset",
                expected,
                f"SET GLOBAL {name} = '{expected}' {persist}",
                f"SET GLOBAL {name} = '{expected}'",
            )
        )
    metadata = found.get("binlog_row_metadata")
    if metadata is None:
        checks.append(
            Check(
                "binlog_row_metadata",
                False,
                "not supported by this server",
                "FULL (MariaDB 10.5+ or MySQL 8.0.14+)",
                "upgrade the server: column names are read from the binlog's row metadata",
            )
        )
    else:
        checks.append(
            Check(
                "binlog_row_metadata",
                metadata.upper() == "FULL",
                metadata.upper(),
                "FULL",
                f"SET GLOBAL binlog_row_metadata = 'FULL' {persist}",
                "SET GLOBAL binlog_row_metadata = 'FULL'",
            )
        )
    server_id = found.get("server_id", "0")
    checks.append(
        Check(
            "server_id",
            server_id not in ("", "0"),
            server_id,
            "a non-zero server_id",
            "set server_id = 1 (any id unique among the servers) in my.cnf and restart",
        )
    )
    retention = _retention(found)
    checks.append(
        Check(
            "binlog retention",
            True,
            retention,
            "longer than the longest pause between runs",
            "",
        )
    )
    checks.extend(_privilege_checks(conn, mariadb))
    for name in tables:
        checks.append(_table_check(conn, args, name))
    return checks


def _retention(found: Mapping[str, str]) -> str:
    seconds = found.get("binlog_expire_logs_seconds")
    if seconds and seconds != "0":
        return f"binlogs kept {int(seconds) // 3600} h"
    days = found.get("expire_logs_days")
    if days and float(days) > 0:
        return f"binlogs kept {days} day(s)"
    return "binlogs never expire"


_GRANT = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)


def _privileges(conn: pymysql.Connection[Any]) -> dict[str, set[str]]:
    """Privileges of the current user by object ('*.*', '`shop`.*'), upper-case."""
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        rows = [str(r[0]) for r in cur.fetchall()]
        try:  # roles granted to the user contribute their privileges
            cur.execute("SELECT CURRENT_ROLE()")
            role = cur.fetchone()
            if role and role[0] and role[0] != "NONE":
                cur.execute(f"SHOW GRANTS FOR {role[0]}")
                rows += [str(r[0]) for r in cur.fetchall()]
        except pymysql.MySQLError:
            pass  # servers without roles
    granted: dict[str, set[str]] = {}
    for row in rows:
        match = _GRANT.match(row)
        if not match:
            continue
        privileges = {p.strip().upper() for p in match.group(1).split(",")}
        granted.setdefault(match.group(2).replace("`", ""), set()).update(privileges)
    return granted


def _privilege_checks(conn: pymysql.Connection[Any], mariadb: bool) -> list[Check]:
    granted = _privileges(conn)
    everything = granted.get("*.*", set())
    all_privileges = "ALL PRIVILEGES" in everything or "ALL" in everything
    needed: list[tuple[str, tuple[str, ...]]] = [
        ("REPLICATION SLAVE", ("REPLICATION SLAVE", "REPLICATION REPLICA"))
    ]
    if mariadb:
        # MariaDB 10.5 split REPLICATION CLIENT; older versions still call it that.
        needed.append(("BINLOG MONITOR", ("BINLOG MONITOR", "REPLICATION CLIENT", "SUPER")))
    else:
        needed.append(("REPLICATION CLIENT", ("REPLICATION CLIENT", "SUPER")))
        needed.append(("RELOAD", ("RELOAD",)))  # FLUSH TABLES WITH READ LOCK for the snapshot
    checks = []
    user = _current_user(conn)
    for label, accepted in needed:
        ok = all_privileges or any(a in everything for a in accepted)
        checks.append(
            Check(
                f"privilege {label}",
                ok,
                "granted" if ok else "missing",
                f"{label} ON *.*",
                f"GRANT {label} ON *.* TO {user}",
            )
        )
    select_ok = (
        all_privileges
        or "SELECT" in everything
        or any("SELECT" in privs or "ALL PRIVILEGES" in privs for privs in granted.values())
    )
    checks.append(
        Check(
            "privilege SELECT",
            select_ok,
            "granted" if select_ok else "missing",
            "SELECT on the captured tables (for the initial snapshot)",
            f"GRANT SELECT ON shop.* TO {user} (for each captured database)",
        )
    )
    return checks


def _current_user(conn: pymysql.Connection[Any]) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        row = cur.fetchone()
    user, _, host = str(row[0] if row else "user@%").partition("@")
    return f"'{user}'@'{host}'"


def _table_check(conn: pymysql.Connection[Any], args: Mapping[str, Any], name: str) -> Check:
    database, _, table = name.rpartition(".")
    database = database or str(args.get("database") or "")
    label = f"table {database}.{table}" if database else f"table {table}"
    if not database:
        return Check(label, False, "no database", "db.table", "name the table as database.table")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (database, table),
        )
        row = cur.fetchone()
        if row is None:
            return Check(label, False, "not found", "an existing table", "check the table name")
        engine = str(row[0] or "")
        keys = primary_key(conn, database, table)
    if not keys:
        return Check(
            label,
            False,
            f"{engine}, no primary key",
            "a primary key",
            "add a primary key to the table",
        )
    if engine.upper() not in ("INNODB", "XTRADB", "ROCKSDB", "TOKUDB"):
        return Check(
            label,
            False,
            f"{engine} engine",
            "a transactional engine (InnoDB)",
            f"ALTER TABLE {database}.{table} ENGINE = InnoDB (a consistent snapshot needs transactions)",
        )
    return Check(label, True, f"{engine}, key ({', '.join(keys)})", "a primary key")


def primary_key(conn: pymysql.Connection[Any], database: str, table: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (database, table),
        )
        return [str(r[0]) for r in cur.fetchall()]


def apply_fixes(
    settings: Mapping[str, Any], checks: Sequence[Check], where: str = "cdc"
) -> list[str]:
    """Run the SQL fixes of failed checks (dynamic variables); returns the statements run.

    Needs SUPER (or SYSTEM_VARIABLES_ADMIN); the settings last until the server
    restarts, so my.cnf needs them too (each check's `fix` says so).
    """
    statements = [c.statement for c in checks if not c.ok and c.statement]
    if not statements:
        return []
    args = connect_args(settings, where)
    with connection(args, where) as conn, conn.cursor() as cur:
        for statement in statements:
            try:
                cur.execute(statement)
            except pymysql.MySQLError as exc:
                raise connection_error(exc, args, where) from exc
    return statements


def binlog_backlog(
    settings: Mapping[str, Any], position: Mapping[str, Any], where: str = "cdc"
) -> int | None:
    """Bytes of binlog after a committed position that the table has not read yet.

    `position` is a cdc_mysql position (the table's committed `source` position).
    None when its binlog file is no longer on the server (purged: the position is lost).
    """
    args = connect_args(settings, where)
    with connection(args, where) as conn, conn.cursor() as cur:
        try:
            cur.execute("SHOW BINARY LOGS")
            logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        except pymysql.MySQLError as exc:
            raise connection_error(exc, args, where) from exc
    names = [name for name, _ in logs]
    file, pos = str(position.get("file", "")), int(position.get("pos", 0))
    if file not in names:
        return None
    index = names.index(file)
    return sum(size for _, size in logs[index:]) - pos
