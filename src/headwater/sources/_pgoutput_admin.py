"""`headwater cdc setup | status | teardown` for PostgreSQL: prerequisites, slots, publications.

Setup checks what logical decoding needs and explains what is missing; it
creates the publication, but not the slot: the first run creates the slot
together with the snapshot it starts from (a slot made earlier would only keep
WAL until then). Status shows how far each slot is and how much WAL it keeps:
a slot nobody reads keeps WAL until the server's disk is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import HeadwaterError
from ._pgoutput import int_to_lsn
from ._pgoutput_server import (
    MIN_SERVER_VERSION,
    Connector,
    close_quietly,
    ddl,
    describe_table,
    drop_slot,
    ensure_publication,
    first_line,
    flushed_lsn,
    one,
    slot_state,
)


@dataclass(frozen=True)
class SetupCheck:
    """One prerequisite: ok, created (just now), warning or failed."""

    name: str
    status: str
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class SlotReport:
    """One slot as `headwater cdc status` shows it."""

    table: str
    slot: str
    exists: bool
    active: bool = False
    confirmed_lsn: str | None = None
    table_lsn: str | None = None
    lag_bytes: int | None = None
    retained_wal_bytes: int | None = None
    wal_status: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Names:
    """What one Headwater table reads and holds on the server."""

    table: str  # the Headwater table
    schema: str
    relation: str
    slot: str
    publication: str
    owns_publication: bool  # named by Headwater (so created and dropped by it)
    keys: tuple[str, ...] | None
    reserved: tuple[str, ...]  # the change columns the source adds


def setup(
    connector: Connector, names: Names, declared_keys: Sequence[str], *, apply: bool
) -> list[SetupCheck]:
    try:
        conn = connector.connect()
    except HeadwaterError as exc:
        return [SetupCheck("connection", "failed", exc.message, exc.hint)]
    try:
        return _setup(conn, connector, names, declared_keys, apply)
    except psycopg.Error as exc:
        return [SetupCheck("server", "failed", connector.scrub(first_line(exc)))]
    finally:
        close_quietly(conn)


def _setup(
    conn: psycopg.Connection[Any],
    connector: Connector,
    names: Names,
    declared_keys: Sequence[str],
    apply: bool,
) -> list[SetupCheck]:
    checks: list[SetupCheck] = []
    version, number, database, wal_level, slots, senders, keep = one(
        conn,
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "current_database(), current_setting('wal_level'), "
        "current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int, "
        "current_setting('max_slot_wal_keep_size')",
    )
    supported = number >= MIN_SERVER_VERSION
    checks.append(
        SetupCheck(
            "server",
            "ok" if supported else "failed",
            f"PostgreSQL {version}, database {database}",
            None if supported else "Headwater needs PostgreSQL 13 or later",
        )
    )
    checks.append(
        SetupCheck("wal_level", "ok", "logical")
        if wal_level == "logical"
        else SetupCheck(
            "wal_level",
            "failed",
            f"wal_level is {wal_level}; logical decoding needs logical",
            "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL "
            "(managed services: turn on logical replication in the parameter group)",
        )
    )
    state = slot_state(conn, names.slot)
    used = int(one(conn, "SELECT count(*) FROM pg_replication_slots")[0])
    free = slots - used
    if state is not None or free >= 2:
        checks.append(SetupCheck("replication slots", "ok", f"{used} of {slots} in use"))
    else:
        checks.append(
            SetupCheck(
                "replication slots",
                "failed" if free < 1 else "warning",
                f"{free} of {slots} free: the table needs one, and one more while it "
                "resumes an interrupted initial copy",
                "raise max_replication_slots (restart), or drop abandoned slots (`headwater cdc status`)",
            )
        )
    walsenders = int(one(conn, "SELECT count(*) FROM pg_stat_replication")[0])
    checks.append(
        SetupCheck("wal senders", "ok", f"{senders - walsenders} of {senders} free")
        if senders - walsenders >= 1
        else SetupCheck(
            "wal senders",
            "failed",
            f"none of {senders} is free; creating a slot needs one",
            "raise max_wal_senders (restart)",
        )
    )
    privileged = one(
        conn,
        "SELECT r.rolsuper OR r.rolreplication OR EXISTS (SELECT 1 FROM pg_roles g "
        "WHERE g.rolname = 'rds_replication' AND pg_has_role(current_user, g.oid, 'member')) "
        "FROM pg_roles r WHERE r.rolname = current_user",
    )[0]
    checks.append(
        SetupCheck("privileges", "ok", "the user may create replication slots")
        if privileged
        else SetupCheck(
            "privileges",
            "failed",
            "the user may not create replication slots",
            "ALTER ROLE <user> REPLICATION (managed services: GRANT rds_replication TO <user>)",
        )
    )
    try:
        info = describe_table(
            conn, names.table, names.schema, names.relation, names.keys, names.reserved
        )
    except HeadwaterError as exc:
        checks.append(SetupCheck("table", "failed", exc.message, exc.hint))
        return checks
    readable = one(conn, "SELECT has_table_privilege(%s, 'SELECT')", [info.oid])[0]
    checks.append(
        SetupCheck("table", "ok", f"{info.qualified}: {len(info.columns)} columns, readable")
        if readable
        else SetupCheck(
            "table",
            "failed",
            f"the user may not read {info.qualified} (the initial copy needs SELECT)",
            f"GRANT SELECT ON {info.qualified} TO <user>",
        )
    )
    identity = {
        "d": f"DEFAULT (primary key {', '.join(info.primary_key)}): deletes and key changes "
        "carry only the key",
        "i": f"USING INDEX ({', '.join(info.identity_columns)}): deletes carry only those columns",
        "f": "FULL: deletes and updates carry the whole old row (more WAL)",
    }[info.identity]
    checks.append(SetupCheck("replica identity", "ok", identity))
    keys = list(info.keys)
    if declared_keys and list(declared_keys) != keys:
        checks.append(
            SetupCheck(
                "keys",
                "warning",
                f"the table declares keys {list(declared_keys)}; changes are keyed by {keys}",
                f"declare keys={keys}, or pass keys=... to cdc_postgres",
            )
        )
    else:
        checks.append(SetupCheck("keys", "ok", ", ".join(keys)))
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", [names.publication]
    ).fetchone()
    if exists is None and not apply:
        checks.append(
            SetupCheck(
                "publication",
                "warning",
                f"{names.publication} is missing",
                "run `headwater cdc setup` without --dry-run to create it",
            )
        )
    else:
        try:
            done = ensure_publication(
                conn, names.table, info, names.publication, names.owns_publication
            )
        except HeadwaterError as exc:
            checks.append(SetupCheck("publication", "failed", exc.message, exc.hint))
        else:
            detail = {
                "created": f"{names.publication} for {info.qualified}",
                "added": f"added {info.qualified} to {names.publication}",
            }.get(done or "", f"{names.publication} publishes {info.qualified}")
            checks.append(SetupCheck("publication", "created" if done else "ok", detail))
    if state is None:
        checks.append(
            SetupCheck(
                "slot", "ok", f"{names.slot} is created by the first run, with the initial snapshot"
            )
        )
    elif state.wal_status == "lost":
        checks.append(
            SetupCheck(
                "slot",
                "failed",
                f"{names.slot} was invalidated: the server removed WAL it still needed",
                f"rebuild the table: headwater run {names.table} --full-refresh",
            )
        )
    else:
        checks.append(
            SetupCheck("slot", "ok", f"{names.slot} at {int_to_lsn(state.confirmed or 0)}")
        )
    if keep == "-1":
        checks.append(
            SetupCheck(
                "max_slot_wal_keep_size",
                "warning",
                "unlimited: an abandoned slot keeps WAL until the disk is full",
                "set max_slot_wal_keep_size, watch `headwater cdc status`, "
                "and tear down the streams of tables you drop",
            )
        )
    return checks


def status(connector: Connector, names: Names, position: Any, max_lag_bytes: int) -> SlotReport:
    conn = connector.connect()
    try:
        state = slot_state(conn, names.slot)
        flushed = flushed_lsn(conn)
    finally:
        close_quietly(conn)
    table_lsn = position.get("lsn") if isinstance(position, dict) else None
    if state is None:
        warnings = (
            ("the slot is missing: changes after the table's position are lost",)
            if table_lsn is not None
            else ()
        )
        return SlotReport(names.table, names.slot, False, table_lsn=table_lsn, warnings=warnings)
    confirmed = state.confirmed or 0
    lag = max(0, flushed - confirmed)
    retained = None if state.restart_lsn is None else max(0, flushed - state.restart_lsn)
    found: list[str] = []
    if max(lag, retained or 0) > max_lag_bytes:
        found.append(
            "the slot is far behind and keeps WAL on the server: run the table, "
            "or tear the stream down if the table is gone"
        )
    if state.wal_status in ("unreserved", "lost"):
        found.append(f"WAL status {state.wal_status}: the slot is losing (or lost) WAL it needs")
    return SlotReport(
        names.table,
        names.slot,
        True,
        active=state.active_pid is not None,
        confirmed_lsn=int_to_lsn(confirmed),
        table_lsn=table_lsn,
        lag_bytes=lag,
        retained_wal_bytes=retained,
        wal_status=state.wal_status,
        warnings=tuple(found),
    )


def abandoned(connector: Connector, known: set[str]) -> list[SlotReport]:
    """Headwater's slots in this database that no declared table uses."""
    conn = connector.connect()
    try:
        rows = conn.execute(
            "SELECT slot_name, active_pid, confirmed_flush_lsn::text, "
            "(pg_current_wal_flush_lsn() - restart_lsn)::bigint, wal_status "
            "FROM pg_replication_slots WHERE slot_name LIKE 'headwater\\_%' AND NOT temporary "
            "AND database = current_database() ORDER BY slot_name"
        ).fetchall()
    finally:
        close_quietly(conn)
    return [
        SlotReport(
            "(none)",
            name,
            True,
            active=pid is not None,
            confirmed_lsn=confirmed,
            retained_wal_bytes=None if retained is None else int(retained),
            wal_status=wal_status,
            warnings=(
                "no declared table uses this slot, and it keeps WAL; if its table is gone, "
                f"drop it: SELECT pg_drop_replication_slot('{name}')",
            ),
        )
        for name, pid, confirmed, retained, wal_status in rows
        if name not in known
    ]


def teardown(connector: Connector, names: Names) -> list[str]:
    """Drop the slot, and the publication if Headwater named (and so created) it."""
    done: list[str] = []
    conn = connector.connect()
    try:
        if drop_slot(conn, names.table, names.slot, connector.database):
            done.append(f"dropped replication slot {names.slot}")
        else:
            done.append(f"replication slot {names.slot} did not exist")
        if not names.owns_publication:
            done.append(f"kept publication {names.publication} (named in the declaration)")
        elif conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", [names.publication]
        ).fetchone():
            ddl(
                conn,
                names.table,
                sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(names.publication)),
                f"drop publication {names.publication}",
            )
            done.append(f"dropped publication {names.publication}")
    except psycopg.Error as exc:
        raise connector.failure(exc, "tearing down", "check the server and try again") from exc
    finally:
        close_quietly(conn)
    return done
