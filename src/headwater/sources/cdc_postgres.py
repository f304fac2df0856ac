"""PostgreSQL change data capture: logical decoding with the built-in `pgoutput` plugin.

    table("bronze.orders", source=cdc_postgres("shop", "public.orders"),
          strategy="cdc-apply", keys=["order_id"], sequence_by="_seq", op_column="_op")

Each Headwater table reading a PostgreSQL table owns one logical replication
slot and one publication, both named `headwater_<database>_<layer>_<table>`.
Nothing is installed on the server, so it works on managed PostgreSQL too.

- **Initial copy.** The first run (re)creates the slot over a replication
  connection, exporting the snapshot the slot starts from; a second connection
  imports it (SET TRANSACTION SNAPSHOT) and copies the table in key order, one
  commit per chunk. The copy holds exactly the transactions committed before
  the slot's start and the slot streams exactly those after it, so nothing is
  missed or applied twice. If a run dies during the copy, the next one copies
  the remaining keys from the snapshot of a temporary slot; those rows carry
  that newer snapshot's position as their sequence, so the changes the stream
  then replays for them are older and ignored by `cdc-apply`'s sequence guard.
- **Changes.** Psycopg 3 has no streaming-replication protocol, so changes are
  read with `pg_logical_slot_peek_binary_changes`, which never consumes, up to
  the WAL flushed when the read began, in rounds of whole transactions of about
  `chunk_rows` changes, joined by the server into one buffer and cut into
  columns here (`_pgoutput_columns`, numpy). Each round is one
  increment; its position is the LSN before which every transaction is in the
  table, and the reader skips transactions committed before it.
- **Acknowledging.** The slot moves (`pg_replication_slot_advance`) only after
  the Delta commit that holds the changes: in `acknowledge`, and at the start
  of the next read to the committed position. Until then the slot keeps the
  WAL, so a crash anywhere replays from the committed position. A read that
  finds nothing for its table moves the slot past the WAL it read, so an idle
  table does not make the server keep WAL.

Rows carry the table's columns plus `_op` (r snapshot, c insert, u update, d
delete, as Debezium), `_seq` (the commit's LSN and the change's ordinal in its
transaction, as one decimal(38,0) in log order), `_commit_ts` and `_change_type`
(insert / update_postimage / delete: how merge and scd2 see deletes; never
stored), as every change data source (see _change_rows). See docs/cdc.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
from psycopg import sql

from ..errors import ConfigError, HeadwaterError
from . import _pgoutput_admin as admin
from ._change_rows import CHANGE_TYPE, CHANGE_TYPES, SEQUENCE_TYPE
from ._pgoutput import DecodeError, int_to_lsn, lsn_to_int
from ._pgoutput_changes import DELETE, SNAPSHOT, TRUNCATE, Key, Pending, sequence
from ._pgoutput_columns import ColumnAssembler, ColumnBatch, frame
from ._pgoutput_server import (
    NAME,
    RETRIES,
    ConnectError,
    Connector,
    Control,
    Server,
    SlotState,
    StreamState,
    TableInfo,
    base_types,
    close_quietly,
    create_slot,
    default_name,
    describe_table,
    drop_slot,
    ensure_publication,
    first_line,
    flushed_lsn,
    one,
    read_server,
    stream_state,
    text_cursor,
    transient,
)
from ._pgoutput_types import is_builtin, text_of, to_arrow
from .base import Increment, Position, ReadContext, Source

log = logging.getLogger("headwater.cdc.postgres")

COPY_BATCH: Final = 20_000  # rows fetched (and turned into Arrow) at a time during the copy


def cdc_postgres(
    connection: str | Mapping[str, Any],
    table: str,
    *,
    keys: Sequence[str] | None = None,
    slot: str | None = None,
    publication: str | None = None,
    snapshot: bool = True,
    chunk_rows: int | None = None,
    op_column: str | None = "_op",
    sequence_column: str = "_seq",
    commit_ts_column: str | None = "_commit_ts",
    change_type: bool = True,
) -> PostgresCdcSource:
    """Every change of one PostgreSQL table, after a consistent initial copy.

    `connection` names a [connections.NAME] section of headwater.toml (or is a
    mapping of libpq settings); `table` is `schema.table` (schema `public` if
    left out). `keys` default to the replica identity (the primary key).
    `snapshot=False` skips the initial copy: the table gets the changes made
    after its first run. `change_type=False` leaves out `_change_type` (an
    append-only table of the changes then keeps its delete rows).
    """
    return PostgresCdcSource(
        connection,
        table,
        keys=keys,
        slot=slot,
        publication=publication,
        snapshot=snapshot,
        chunk_rows=chunk_rows,
        op_column=op_column,
        sequence_column=sequence_column,
        commit_ts_column=commit_ts_column,
        change_type=change_type,
    )


@dataclass
class _Exported:
    """A transaction that sees exactly the data a slot's stream starts after."""

    conn: psycopg.Connection[Any]
    lsn: int
    at: datetime  # a time no later than any commit the slot streams


class PostgresCdcSource(Source):
    """Logical decoding of one PostgreSQL table through `pgoutput` (see the module doc)."""

    kind = "postgres-cdc"

    def __init__(
        self,
        connection: str | Mapping[str, Any],
        table: str,
        *,
        keys: Sequence[str] | None = None,
        slot: str | None = None,
        publication: str | None = None,
        snapshot: bool = True,
        chunk_rows: int | None = None,
        op_column: str | None = "_op",
        sequence_column: str = "_seq",
        commit_ts_column: str | None = "_commit_ts",
        change_type: bool = True,
    ) -> None:
        if not isinstance(connection, str | Mapping):
            raise ConfigError("cdc_postgres: connection must be a connection name or a mapping")
        schema, _, name = table.rpartition(".")
        if not name:
            raise ConfigError(f"cdc_postgres: {table!r} is not a table name (schema.table)")
        for what, value in (("slot", slot), ("publication", publication)):
            if value is not None and not NAME.match(value):
                raise ConfigError(
                    f"cdc_postgres({table!r}): {what} name {value!r} is not valid",
                    "use at most 63 lowercase letters, digits and underscores",
                )
        if chunk_rows is not None and chunk_rows < 1:
            raise ConfigError(f"cdc_postgres({table!r}): chunk_rows must be at least 1")
        columns = [c for c in (op_column, sequence_column, commit_ts_column) if c]
        if not sequence_column or len(set(columns)) != len(columns):
            raise ConfigError(
                f"cdc_postgres({table!r}): the operation, sequence and commit time columns "
                "must have different names (and the sequence one a name)"
            )
        self.connection = connection
        self.schema = schema or "public"
        self.table = name
        self.keys = tuple(keys) if keys else None
        self.slot = slot
        self.publication = publication
        self.snapshot = snapshot
        self.chunk_rows = chunk_rows
        self.op_column = op_column
        self.sequence_column = sequence_column
        self.commit_ts_column = commit_ts_column
        self.change_type = change_type
        self._control = Control()
        # slot -> (the connection it was seen on, its confirmed position then)
        self._confirmed: dict[str, tuple[psycopg.Connection[Any], int]] = {}

    # -- naming ---------------------------------------------------------------------------
    def describe(self) -> str:
        if isinstance(self.connection, str):
            where = self.connection
        else:
            database = self.connection.get("database") or self.connection.get("dbname") or ""
            where = f"{self.connection.get('host', 'localhost')}/{database}"
        return f"postgres-cdc {where}:{self.schema}.{self.table}"

    def connector(self, ctx: ReadContext) -> Connector:
        if isinstance(self.connection, str):
            raw, where = ctx.connection(self.connection), f"connection {self.connection!r}"
        else:
            raw, where = dict(self.connection), f"table {ctx.table}: cdc_postgres"
        return Connector(raw, ctx.table, where, self.describe())

    def slot_name(self, ctx: ReadContext) -> str:
        return self.slot or default_name(self.connector(ctx).database, ctx.table)

    def publication_name(self, ctx: ReadContext) -> str:
        return self.publication or default_name(self.connector(ctx).database, ctx.table)

    def names(self, ctx: ReadContext) -> admin.Names:
        return admin.Names(
            table=ctx.table,
            schema=self.schema,
            relation=self.table,
            slot=self.slot_name(ctx),
            publication=self.publication_name(ctx),
            owns_publication=self.publication is None,
            keys=self.keys,
            reserved=tuple(self.change_columns()),
        )

    def change_columns(self) -> list[str]:
        """The columns this source adds to the table's own."""
        names = [self.op_column, self.sequence_column, self.commit_ts_column]
        names += [CHANGE_TYPE] if self.change_type else []
        return [n for n in names if n]

    def close(self) -> None:
        """Close the connection kept between runs."""
        self._control.close()

    # -- reading --------------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        connector = self.connector(ctx)
        names = self.names(ctx)

        def prepare(conn: psycopg.Connection[Any]) -> tuple[Server, TableInfo]:
            server = read_server(conn, ctx.table)
            info = describe_table(
                conn, ctx.table, self.schema, self.table, self.keys, names.reserved
            )
            return server, info

        server, info = self._control.run(connector, "reading the catalog", prepare)
        slot = names.slot
        upto: int | None = None
        if position is None or ctx.full_refresh:
            self._confirmed.pop(slot, None)  # the slot is made anew
            # A new start: whatever an old slot kept is superseded by a new snapshot.
            self._control.run(
                connector,
                "checking the publication",
                lambda c: ensure_publication(
                    c, ctx.table, info, names.publication, names.owns_publication
                ),
            )
            self._control.run(
                connector,
                "dropping the old slot",
                lambda c: drop_slot(c, ctx.table, slot, connector.database),
            )
            if self.snapshot:
                start = yield from self._copy(ctx, connector, server, info, slot, None, None)
            else:
                start = self._create(connector, server, slot)
                yield Increment(self._rows(info, [], [], [], []), self._position(slot, start))
        else:
            start = self._check_position(ctx, position, slot)
            found = self._control.run(
                connector,
                "reading the slot",
                lambda c: self._learn(c, stream_state(c, slot, names.publication)),
            )
            self._check_slot(ctx, connector, found.slot, slot, start)
            upto = found.flushed
            if not found.published:
                # Decoding looks publications up as of each change: one created anew
                # later does not cover the changes in between.
                raise HeadwaterError(
                    f"table {ctx.table}: publication {names.publication} does not exist",
                    "it was dropped; rebuild the table from a new copy (this creates it "
                    f"again): headwater run {ctx.table} --full-refresh",
                )
            copying = position.get("snapshot")
            if isinstance(copying, dict):
                start = yield from self._copy(
                    ctx, connector, server, info, slot, start, copying.get("after")
                )
                upto = None
        yield from self._stream(ctx, connector, server, info, slot, start, upto)

    def _create(self, connector: Connector, server: Server, slot: str) -> int:
        try:
            lsn, _, _ = create_slot(connector, server, slot, temporary=False, export=False)
        except psycopg.Error as exc:
            raise connector.failure(exc, f"creating replication slot {slot}") from exc
        return lsn

    def _check_position(self, ctx: ReadContext, position: Position, slot: str) -> int:
        if not isinstance(position, dict) or not isinstance(position.get("lsn"), str):
            raise HeadwaterError(
                f"table {ctx.table}: its committed position {str(position)[:60]!r} is not a "
                "PostgreSQL log position",
                f"it was loaded by another source; rebuild it: headwater run {ctx.table} --full-refresh",
            )
        if position.get("slot", slot) != slot:
            raise HeadwaterError(
                f"table {ctx.table}: it was loaded through replication slot "
                f"{position.get('slot')}, but is now declared with slot {slot}",
                "the new slot has not kept the changes in between; "
                f"rebuild: headwater run {ctx.table} --full-refresh",
            )
        return lsn_to_int(position["lsn"])

    def _check_slot(
        self,
        ctx: ReadContext,
        connector: Connector,
        state: SlotState | None,
        slot: str,
        start: int,
    ) -> None:
        lost = (
            f"the changes after {int_to_lsn(start)} are lost; rebuild the table from a new "
            f"snapshot: headwater run {ctx.table} --full-refresh"
        )
        if state is None:
            raise HeadwaterError(f"table {ctx.table}: replication slot {slot} does not exist", lost)
        if state.wal_status == "lost":
            raise HeadwaterError(
                f"table {ctx.table}: replication slot {slot} was invalidated "
                "(the server removed WAL it still needed)",
                lost + "; consider a larger max_slot_wal_keep_size",
            )
        if state.plugin != "pgoutput" or (
            state.database is not None and state.database != connector.database
        ):
            raise HeadwaterError(
                f"table {ctx.table}: replication slot {slot} is not this table's "
                f"(plugin {state.plugin}, database {state.database})",
                "give the table a slot of its own: cdc_postgres(..., slot=...)",
            )

    @staticmethod
    def _position(
        slot: str, lsn: int, after: list[str | None] | None = None, copying: bool = False
    ) -> dict[str, Any]:
        position: dict[str, Any] = {"slot": slot, "lsn": int_to_lsn(lsn)}
        if copying:
            position["snapshot"] = {"after": after}
        return position

    # -- the initial copy ---------------------------------------------------------------------
    def _export(
        self, connector: Connector, server: Server, slot: str, *, temporary: bool
    ) -> _Exported:
        """Create a slot exporting its snapshot, and open a transaction on that snapshot."""
        # Taken before the slot exists: every commit the slot streams is later.
        started = self._control.run(
            connector, "reading the clock", lambda c: one(c, "SELECT clock_timestamp()")[0]
        )
        lsn, replication, name = create_slot(
            connector, server, slot, temporary=temporary, export=True
        )
        assert replication is not None and name is not None
        try:
            copying = connector.connect(autocommit=False)
            copying.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            copying.read_only = True
            copying.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(name)))
        finally:
            # Imported, the snapshot needs its exporter no more (a temporary slot goes with it).
            close_quietly(replication)
        return _Exported(copying, lsn, started)

    def _copy(
        self,
        ctx: ReadContext,
        connector: Connector,
        server: Server,
        info: TableInfo,
        slot: str,
        start: int | None,
        after: list[str | None] | None,
    ) -> Generator[Increment, None, int]:
        """Copy the table in key order from an exported snapshot; returns where the stream starts.

        `start` None: create the table's slot and copy from the snapshot it
        exports. Otherwise resume a copy after key `after`, from the snapshot of
        a temporary slot; the stream still starts at `start`.
        """
        limit = self.chunk_rows or ctx.chunk_rows
        exported: _Exported | None = None
        attempts = 0
        try:
            while True:
                try:
                    if exported is None:
                        if start is None:
                            exported = self._export(connector, server, slot, temporary=False)
                            start = exported.lsn
                        else:
                            name = f"{slot[:40]}_copy_{uuid.uuid4().hex[:12]}"
                            exported = self._export(connector, server, name, temporary=True)
                        log.info(
                            "table %s: copying %s from the snapshot at %s",
                            ctx.table,
                            info.qualified,
                            int_to_lsn(exported.lsn),
                        )
                    data, last = self._chunk(exported.conn, info, after, limit, exported)
                except (psycopg.Error, ConnectError) as exc:
                    if exported is not None:
                        close_quietly(exported.conn)
                        exported = None
                    attempts += 1
                    if start is None or attempts > RETRIES or not transient(exc):
                        raise connector.failure(
                            exc,
                            f"copying {info.qualified}",
                            "the next run resumes the copy after the last committed chunk",
                        ) from exc
                    log.warning(
                        "table %s: the copy was interrupted (%s); resuming from a new snapshot",
                        ctx.table,
                        connector.scrub(first_line(exc)),
                    )
                    self._control.close()
                    time.sleep(min(0.5 * 2**attempts, 8.0))
                    continue
                assert start is not None  # the table's slot exists from here on
                done = data.num_rows < limit
                after = last or after
                yield Increment(
                    data,
                    self._position(slot, start, after, copying=not done),
                    info={
                        "source": self.kind,
                        "phase": "snapshot",
                        "slot": slot,
                        "rows": data.num_rows,
                        "snapshot_lsn": int_to_lsn(exported.lsn),
                    },
                )
                if done:
                    return start
        finally:
            if exported is not None:
                close_quietly(exported.conn)

    def _chunk(
        self,
        conn: psycopg.Connection[Any],
        info: TableInfo,
        after: list[str | None] | None,
        limit: int,
        exported: _Exported,
    ) -> tuple[pa.Table, list[str | None] | None]:
        """The next `limit` rows after key `after`, and the key of the last one.

        Rows come through a server-side cursor and become Arrow a batch at a
        time, so a chunk costs its Arrow size rather than a Python object per value.
        """
        order = sql.SQL(", ").join(sql.Identifier(k) for k in info.keys)
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in info.columns),
            sql.Identifier(info.schema, info.name),
        )
        if after is not None:
            bound = sql.SQL(", ").join(
                sql.SQL("%s::{}").format(sql.SQL(info.column(k).type_sql)) for k in info.keys
            )
            query += sql.SQL(" WHERE ({}) > ({})").format(order, bound)
        query += sql.SQL(" ORDER BY {} LIMIT {}").format(order, sql.Literal(limit))
        parts: list[pa.Table] = []
        last: list[str | None] | None = None
        with text_cursor(conn, {c.type_oid for c in info.columns}, name="headwater_copy") as cursor:
            cursor.execute(query, after or [])
            while rows := cursor.fetchmany(COPY_BATCH):
                columns = [[r[i] for r in rows] for i in range(len(info.columns))]
                n = len(rows)
                parts.append(
                    self._rows(
                        info,
                        columns,
                        [SNAPSHOT] * n,
                        [sequence(exported.lsn, 0)] * n,
                        [exported.at] * n,
                    )
                )
                last = [rows[-1][i] for i in info.key_indexes]
        if not parts:
            return self._rows(info, [], [], [], []), None
        return pa.concat_tables(parts), last

    def _rows(
        self,
        info: TableInfo,
        columns: list[list[str | None]],
        ops: list[str],
        seqs: list[int],
        times: list[datetime],
    ) -> pa.Table:
        """The table's columns (text, converted by type) and the change columns."""
        arrays: dict[str, pa.Array] = {}
        for i, column in enumerate(info.columns):
            values = columns[i] if columns else []
            arrays[column.name] = to_arrow(
                values, column.base_oid, column.base_typmod, info.qualified, column.name
            )
        return self._with_changes(arrays, ops, seqs, times)

    def _with_changes(
        self,
        arrays: dict[str, pa.Array],
        ops: list[str],
        seqs: list[int],
        times: list[datetime] | pa.Array,
    ) -> pa.Table:
        columns = dict(arrays)
        op_array = pa.array(ops, pa.string())
        if self.op_column:
            columns[self.op_column] = op_array
        columns[self.sequence_column] = pa.array(seqs, SEQUENCE_TYPE)
        if self.commit_ts_column:
            columns[self.commit_ts_column] = (
                times if isinstance(times, pa.Array) else pa.array(times, pa.timestamp("us", "UTC"))
            )
        if self.change_type:
            # Each distinct operation is looked up once, not once per row.
            encoded = op_array.dictionary_encode()
            kinds = pa.array([CHANGE_TYPES[o] for o in encoded.dictionary.to_pylist()], pa.string())
            columns[CHANGE_TYPE] = kinds.take(encoded.indices)
        return pa.table(columns)

    # -- the change stream --------------------------------------------------------------------
    def _stream(
        self,
        ctx: ReadContext,
        connector: Connector,
        server: Server,
        info: TableInfo,
        slot: str,
        start: int,
        upto: int | None = None,
    ) -> Iterator[Increment]:
        """Rounds of whole transactions after `start`, up to the WAL flushed when reading
        began (`upto`, if read with the slot just before)."""
        limit = self.chunk_rows or ctx.chunk_rows
        publication = self.publication_name(ctx)
        if upto is None:
            upto = self._control.run(connector, "reading the WAL position", flushed_lsn)
        assembler = ColumnAssembler(
            info.qualified,
            info.keys,
            info.relids,
            (info.schema, info.name),
            start,
            server.encoding,
        )
        while True:
            # The table holds everything before `start`, so the slot may forget it: this
            # repairs a crash between a commit and its acknowledgement, and a server that
            # restarted before it saved the slot's last move.
            self._advance(connector, slot, start)
            began = time.monotonic()
            changes = self._control.run(
                connector,
                "reading changes",
                lambda c: self._peek(c, slot, publication, upto, limit, server),
            )
            assembler.start = start
            try:
                batch = assembler.assemble_frames(changes)
            except DecodeError as exc:
                raise HeadwaterError(
                    f"table {ctx.table}: cannot decode a change from slot {slot}: {exc}",
                    "please report this with the PostgreSQL version",
                ) from exc
            # Fewer messages than asked for: everything committed before `upto` was read.
            complete = batch.messages < limit
            end = upto if complete else max(start, batch.last_end or start)
            if len(batch):
                data, filled = self._batch_table(ctx, connector, info, batch)
                metrics = self._metrics(
                    ctx, connector, slot, batch, end, time.monotonic() - began, filled
                )
                yield Increment(data, self._position(slot, end), info=metrics)
                start = end
                confirmed = self._confirmed_at(slot)
                if confirmed is None or confirmed < end:
                    state = self._control.run(
                        connector,
                        "reading the slot",
                        lambda c: self._learn(c, stream_state(c, slot, publication)),
                    ).slot
                    confirmed = None if state is None else state.confirmed
                if confirmed is None or confirmed < end:
                    # Not acknowledged: the engine publishes the run's increments
                    # together; peeking again would return the same changes.
                    return
            elif end > start:
                # Nothing of this table in between: let the server recycle that WAL.
                self._advance(connector, slot, end)
                start = end
            elif not complete:
                return  # no headway (cannot happen with the slot at `start`); the next run goes on
            if complete:
                return

    def _peek(
        self,
        conn: psycopg.Connection[Any],
        slot: str,
        publication: str,
        upto: int,
        limit: int,
        server: Server,
    ) -> bytes:
        """The messages in one buffer, each after its length (`_pgoutput_columns.frame`).

        The server joins them, so the client handles one value, not a row per
        message. The function is parallel-unsafe, so one process reads its rows
        into the aggregate in the order it returns them: log order, without a
        sort. A round past the 1 GB a value may hold is read row by row.
        """
        changes = (
            "pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
            "'proto_version', '1', 'publication_names', %s)"
        )
        params = [slot, int_to_lsn(upto), limit, publication]
        try:
            with conn.cursor(binary=True) as cursor:
                row = cursor.execute(
                    "SELECT coalesce(string_agg(int4send(length(data)) || data, ''::bytea), "
                    f"''::bytea) FROM {changes}",
                    params,
                ).fetchone()
            assert row is not None
            return bytes(row[0])
        except (psycopg.errors.ProgramLimitExceeded, psycopg.errors.OutOfMemory):
            log.info("slot %s: a round of changes over 1 GB, read message by message", slot)
        with conn.cursor(binary=True) as cursor:
            cursor.execute(f"SELECT data FROM {changes}", params)
            return frame(bytes(r[0]) for r in cursor)

    def _advance(self, connector: Connector, slot: str, lsn: int) -> None:
        """Move the slot forward to `lsn` (never back, never past the flushed WAL)."""

        def advance(conn: psycopg.Connection[Any]) -> None:
            known = self._confirmed.get(slot)
            if known is not None and known[0] is conn and known[1] >= lsn:
                return  # this connection saw the slot there (a slot never moves back)
            row = one(
                conn,
                "SELECT pg_current_wal_flush_lsn()::text, (SELECT confirmed_flush_lsn::text "
                "FROM pg_replication_slots WHERE slot_name = %s)",
                [slot],
            )
            if row[1] is None:
                return
            flushed, confirmed = lsn_to_int(row[0]), lsn_to_int(row[1])
            if confirmed < lsn:
                target = min(lsn, flushed)
                moved = one(
                    conn,
                    "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)",
                    [slot, int_to_lsn(target)],
                )
                confirmed = max(confirmed, lsn_to_int(moved[0]))
            self._confirmed[slot] = (conn, confirmed)

        self._control.run(connector, f"advancing replication slot {slot}", advance)

    def _learn(self, conn: psycopg.Connection[Any], state: StreamState) -> StreamState:
        """Remember where the slot is confirmed, as seen on `conn`."""
        if state.slot is not None and state.slot.confirmed is not None:
            self._confirmed[state.slot.name] = (conn, state.slot.confirmed)
        return state

    def _confirmed_at(self, slot: str) -> int | None:
        """Where the slot was last seen confirmed, on the connection still in use.

        A slot's confirmed position only moves forward while the server runs; a
        server restart may set it back to what it last saved, but it also ends the
        connection, and with it what was learned on it.
        """
        known = self._confirmed.get(slot)
        if known is None or known[0] is not self._control.current():
            return None
        return known[1]

    def acknowledge(self, position: Position, ctx: ReadContext) -> None:
        """After the commit holding `position`: the slot may release the WAL before it."""
        if (
            not isinstance(position, dict)
            or "snapshot" in position
            or not isinstance(position.get("lsn"), str)
        ):
            return
        slot = str(position.get("slot") or self.slot_name(ctx))
        self._advance(self.connector(ctx), slot, lsn_to_int(position["lsn"]))

    # -- a round of changes as Arrow ---------------------------------------------------------------
    def _batch_table(
        self, ctx: ReadContext, connector: Connector, info: TableInfo, batch: ColumnBatch
    ) -> tuple[pa.Table, int]:
        if batch.seen:
            self._expand_truncates(ctx, info, batch)
        pending: set[Pending] = set()
        if batch.pending:
            for cells in batch.values.values():
                pending.update(v for v in cells if isinstance(v, Pending))
        filled = self._fill(ctx, connector, info, pending) if pending else {}
        declared = {c.type_oid for c in batch.columns.values()}
        bases = (
            self._control.run(connector, "reading column types", lambda c: base_types(c, declared))
            if any(not is_builtin(o) for o in declared)
            else {}
        )
        arrays: dict[str, pa.Array] = {}
        # The newest relation description wins: a column added mid-round is in every row.
        for name, column in batch.columns.items():
            oid, typmod = bases.get(column.type_oid, (column.type_oid, column.typmod))
            typmod = typmod if typmod != -1 else column.typmod
            values = batch.values.get(name)
            if values is None:
                values = [None] * len(batch)
            elif filled and isinstance(values, list):
                values = [filled.get(v) if isinstance(v, Pending) else v for v in values]
            arrays[name] = to_arrow(values, oid, typmod, info.qualified, name)
        times = pa.array(batch.times, pa.int64()).cast(pa.timestamp("us", "UTC"))
        table = self._with_changes(arrays, batch.ops, batch.seqs, times)
        return table, len(pending)

    def _expand_truncates(self, ctx: ReadContext, info: TableInfo, batch: ColumnBatch) -> None:
        """A TRUNCATE deletes every key the table holds and every key changed before it."""
        held = self._table_keys(ctx, info)
        names = list(batch.values)
        columns = [batch.values[n] for n in names]
        out: list[list[Any]] = [[] for _ in names]
        ops: list[str] = []
        seqs: list[int] = []
        times: list[int] = []
        for row, op in enumerate(batch.ops):
            if op != TRUNCATE:
                for column, cells in zip(out, columns, strict=True):
                    column.append(cells[row])
                ops.append(op)
                seqs.append(batch.seqs[row])
                times.append(batch.times[row])
                continue
            for key in sorted(held | batch.seen[row], key=repr):
                values = dict(zip(info.keys, key, strict=True))
                for column, name in zip(out, names, strict=True):
                    column.append(values.get(name))
                ops.append(DELETE)
                seqs.append(batch.seqs[row])
                times.append(batch.times[row])
        batch.values = dict(zip(names, out, strict=True))
        batch.ops, batch.seqs, batch.times = ops, seqs, times
        batch.seen = {}

    def _target(self, ctx: ReadContext) -> Any:
        """The table being written (its committed state), if it exists yet."""
        if ctx.resolve is None:
            return None
        target = ctx.resolve(ctx.table).refresh()
        return target if target.exists else None

    def _table_keys(self, ctx: ReadContext, info: TableInfo) -> set[Key]:
        target = self._target(ctx)
        if target is None:
            return set()
        missing = [k for k in info.keys if k not in target.schema.names]
        if missing:
            raise HeadwaterError(
                f"table {ctx.table}: PostgreSQL truncated {info.qualified}, but the table has no "
                f"key column(s) {missing} to delete its rows by",
                f"rebuild it: headwater run {ctx.table} --full-refresh",
            )
        keys = target.dataset().to_table(columns=list(info.keys))
        return {tuple(text_of(v) for v in row.values()) for row in keys.to_pylist()}

    def _fill(
        self, ctx: ReadContext, connector: Connector, info: TableInfo, pending: set[Pending]
    ) -> dict[Pending, str | None]:
        """Values of unchanged TOASTed columns.

        The table written so far holds each value as of the committed position,
        which is exactly the value the change left unchanged. A table written
        through a transform may lack the column: then the source's current row
        is taken (a later change in the log corrects it if it changed since).
        """
        columns = sorted({p.column for p in pending})
        found = self._from_table(ctx, info, {p.key for p in pending}, columns)
        rest = [p for p in pending if p.key not in found]
        current: dict[Key, dict[str, str | None]] = {}
        if rest:
            wanted = {p.moved_to for p in rest} | {p.key for p in rest}
            current = self._control.run(
                connector,
                "reading unchanged values",
                lambda c: self._from_source(c, info, wanted, columns),
            )
        values: dict[Pending, str | None] = {}
        gone = 0
        for p in pending:
            row = found.get(p.key) or current.get(p.moved_to) or current.get(p.key)
            gone += row is None
            values[p] = None if row is None else row.get(p.column)
        if gone:
            log.warning(
                "table %s: %d unchanged large value(s) could not be found (rows deleted since)",
                ctx.table,
                gone,
            )
        return values

    def _from_table(
        self, ctx: ReadContext, info: TableInfo, keys: set[Key], columns: list[str]
    ) -> dict[Key, dict[str, str | None]]:
        target = self._target(ctx)
        if target is None:
            return {}
        schema = target.schema
        wanted = [*info.keys, *[c for c in columns if c not in info.keys]]
        if any(name not in schema.names for name in wanted):
            return {}  # written through a transform: its columns are not the source's
        key_list = sorted(keys, key=repr)
        typed = []
        for i, name in enumerate(info.keys):
            column = info.column(name)
            texts = [k[i] for k in key_list]
            typed.append(to_arrow(texts, column.base_oid, column.base_typmod, info.qualified, name))
        by_value = dict(
            zip(zip(*(a.to_pylist() for a in typed), strict=True), key_list, strict=True)
        )
        first = typed[0].cast(schema.field(info.keys[0]).type)
        newest = self.sequence_column if self.sequence_column in schema.names else None
        read = [*wanted, newest] if newest and newest not in wanted else wanted
        rows = target.dataset().to_table(columns=read, filter=ds.field(info.keys[0]).isin(first))
        if newest:
            rows = rows.sort_by([(newest, "ascending")])  # SCD2: the newest version of a key last
        found: dict[Key, dict[str, str | None]] = {}
        for row in rows.to_pylist():
            key = by_value.get(tuple(row[k] for k in info.keys))
            if key is not None:
                found[key] = {c: text_of(row[c]) for c in columns}
        return found

    def _from_source(
        self, conn: psycopg.Connection[Any], info: TableInfo, keys: set[Key], columns: list[str]
    ) -> dict[Key, dict[str, str | None]]:
        key_sql = sql.SQL(", ").join(sql.Identifier(k) for k in info.keys)
        one_key = sql.SQL("({})").format(
            sql.SQL(", ").join(
                sql.SQL("%s::{}").format(sql.SQL(info.column(k).type_sql)) for k in info.keys
            )
        )
        found: dict[Key, dict[str, str | None]] = {}
        key_list = sorted(keys, key=repr)
        width = len(info.keys)
        for i in range(0, len(key_list), 500):
            part = key_list[i : i + 500]
            query = sql.SQL("SELECT {}, {} FROM {} WHERE ({}) IN ({})").format(
                key_sql,
                sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                sql.Identifier(info.schema, info.name),
                key_sql,
                sql.SQL(", ").join([one_key] * len(part)),
            )
            cursor = text_cursor(conn, {c.type_oid for c in info.columns})
            cursor.execute(query, [v for key in part for v in key])
            for row in cursor.fetchall():
                found[tuple(row[:width])] = dict(zip(columns, row[width:], strict=True))
        return found

    def _metrics(
        self,
        ctx: ReadContext,
        connector: Connector,
        slot: str,
        batch: ColumnBatch,
        end: int,
        seconds: float,
        filled: int,
    ) -> dict[str, Any]:
        def measure(conn: psycopg.Connection[Any]) -> tuple[int, int | None]:
            row = one(
                conn,
                "SELECT pg_current_wal_flush_lsn()::text, (SELECT restart_lsn::text "
                "FROM pg_replication_slots WHERE slot_name = %s)",
                [slot],
            )
            return lsn_to_int(row[0]), None if row[1] is None else lsn_to_int(row[1])

        flushed, restart = self._control.run(connector, "measuring the slot", measure)
        lag = (
            max(0.0, time.time() - batch.last_commit_micros / 1e6)
            if batch.last_commit_micros is not None
            else 0.0
        )
        metrics: dict[str, Any] = {
            "source": self.kind,
            "phase": "stream",
            "slot": slot,
            "changes": len(batch),
            "transactions": batch.transactions,
            "changes_per_second": round(len(batch) / max(seconds, 1e-6), 1),
            "lag_bytes": max(0, flushed - end),
            "lag_seconds": round(lag, 3),
            "retained_wal_bytes": None if restart is None else max(0, flushed - restart),
            "toast_values_filled": filled,
        }
        log.info(
            "table %s: %d change(s) in %d transaction(s) from slot %s; %d bytes and %.1fs behind",
            ctx.table,
            metrics["changes"],
            metrics["transactions"],
            slot,
            metrics["lag_bytes"],
            lag,
        )
        return metrics

    # -- operations: `headwater cdc setup | status | teardown` ------------------------------------
    def setup(
        self, ctx: ReadContext, declared_keys: Sequence[str], *, apply: bool
    ) -> list[admin.SetupCheck]:
        """Check every prerequisite, explain what is missing, create the publication."""
        return admin.setup(self.connector(ctx), self.names(ctx), declared_keys, apply=apply)

    def status(
        self, ctx: ReadContext, position: Position | None, max_lag_bytes: int
    ) -> admin.SlotReport:
        """The table's slot: where it is, how far behind, how much WAL it keeps."""
        return admin.status(self.connector(ctx), self.names(ctx), position, max_lag_bytes)

    def abandoned_slots(self, ctx: ReadContext, known: set[str]) -> list[admin.SlotReport]:
        """Headwater's slots in this database that no declared table uses."""
        return admin.abandoned(self.connector(ctx), known)

    def teardown(self, ctx: ReadContext) -> list[str]:
        """Drop the table's slot, and its publication if Headwater created it."""
        return admin.teardown(self.connector(ctx), self.names(ctx))
