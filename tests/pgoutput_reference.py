"""The message-by-message pgoutput decoder: decoded messages to change rows, a dict per row.

Headwater decodes pgoutput column-wise (`headwater.sources._pgoutput_columns`);
this plain form of the same rules is the oracle the column decoder is checked
against on bytes from the real server (tests/test_cdc_postgres_decode.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from headwater.errors import DataError
from headwater.sources._pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    Update,
    Value,
)
from headwater.sources._pgoutput_changes import (
    DELETE,
    INSERT,
    TRUNCATE,
    UPDATE,
    Cell,
    Key,
    Pending,
    sequence,
)


@dataclass
class ChangeRow:
    values: dict[str, Cell]
    op: str
    seq: int
    commit_ts: datetime
    # TRUNCATE rows: the keys of rows changed before it in this batch.
    seen: set[Key] = field(default_factory=set)


@dataclass
class Batch:
    """The changes of whole transactions, in commit order."""

    rows: list[ChangeRow] = field(default_factory=list)
    columns: dict[str, Column] = field(default_factory=dict)  # name -> latest definition
    transactions: int = 0
    last_end: int | None = None  # end of the last transaction read (ours or not)
    last_commit_ts: datetime | None = None


class Assembler:
    """Turns a message stream into the change rows of one table."""

    def __init__(
        self,
        table: str,
        keys: Sequence[str],
        ours: Iterable[int],
        names: tuple[str, str],
        start: int,
    ) -> None:
        self.table = table
        self.keys = tuple(keys)
        self.ours = set(ours)
        self.names = names
        self.start = start
        self.relations: dict[int, Relation] = {}

    def _is_ours(self, oid: int) -> bool:
        if oid in self.ours:
            return True
        relation = self.relations.get(oid)
        return relation is not None and (relation.namespace, relation.name) == self.names

    def assemble(self, messages: Iterable[Message]) -> Batch:
        batch = Batch()
        images: dict[Key, dict[str, Cell]] = {}  # the latest row image per key in this batch
        seen: set[Key] = set()
        current: Begin | None = None
        rows: list[ChangeRow] = []
        ordinal = 0

        def emit(values: dict[str, Cell], op: str) -> ChangeRow:
            nonlocal ordinal
            assert current is not None
            ordinal += 1
            row = ChangeRow(values, op, sequence(current.final_lsn, ordinal), current.commit_ts)
            rows.append(row)
            return row

        for message in messages:
            if isinstance(message, Begin):
                current, rows, ordinal = message, [], 0
            elif isinstance(message, Relation):
                self.relations[message.oid] = message
                if self._is_ours(message.oid):
                    for column in message.columns:
                        batch.columns.pop(column.name, None)  # re-added last: the newest wins
                        batch.columns[column.name] = column
            elif isinstance(message, Commit):
                # Only whole transactions count; one cut short is read again next time.
                if current is not None and current.final_lsn >= self.start:
                    batch.rows += rows
                    batch.transactions += 1 if rows else 0
                    batch.last_end = message.end_lsn
                    batch.last_commit_ts = message.commit_ts
                current, rows = None, []
            elif current is None or current.final_lsn < self.start:
                continue  # already in the table (or outside a transaction)
            elif isinstance(message, Insert):
                relation = self._relation(message.relation)
                if relation is None:
                    continue
                inserted = _known(self._values(relation, message.new))
                key = self._key(inserted, "INSERT")
                images[key] = inserted
                seen.add(key)
                emit(inserted, INSERT)
            elif isinstance(message, Update):
                relation = self._relation(message.relation)
                if relation is None:
                    continue
                raw = self._values(relation, message.new)
                old = None if message.old is None else _known(self._values(relation, message.old))
                key = self._key(raw, "UPDATE")
                before = key if old is None else self._key(old, "UPDATE", fallback=key)
                base = images.get(before)
                new: dict[str, Cell] = {}
                for name, value in raw.items():
                    if value is not UNCHANGED:
                        new[name] = value if isinstance(value, str) else None
                    elif message.old_kind == "O" and old is not None and old.get(name) is not None:
                        new[name] = old[name]  # REPLICA IDENTITY FULL: the old row has it
                    elif base is not None and name in base:
                        carried = base[name]
                        if isinstance(carried, Pending) and carried.moved_to != key:
                            carried = Pending(carried.key, carried.column, key)
                        new[name] = carried
                    else:
                        new[name] = Pending(before, name, key)
                images[key] = new
                seen.add(key)
                if before == key:
                    emit(new, UPDATE)
                    continue
                # A new key: the old row goes, the new one arrives (as Debezium has it).
                images.pop(before, None)
                seen.add(before)
                emit(dict.fromkeys(new, None) | (old or {}), DELETE)
                emit(new, INSERT)
            elif isinstance(message, Delete):
                relation = self._relation(message.relation)
                if relation is None:
                    continue
                old = _known(self._values(relation, message.old))
                key = self._key(old, "DELETE")
                images.pop(key, None)
                seen.add(key)
                emit(old, DELETE)
            elif isinstance(message, Truncate) and any(
                self._is_ours(oid) for oid in message.relations
            ):
                images.clear()
                emit({}, TRUNCATE).seen = set(seen)
        return batch

    def _relation(self, oid: int) -> Relation | None:
        relation = self.relations.get(oid)
        if relation is None:
            if oid in self.ours:
                raise DataError(
                    f"PostgreSQL table {self.table}: a change arrived before its relation description",
                    "this is a protocol error; please report it",
                )
            return None
        return relation if self._is_ours(oid) else None

    def _values(self, relation: Relation, values: tuple[Value, ...]) -> dict[str, Value]:
        if len(values) != len(relation.columns):
            raise DataError(
                f"PostgreSQL table {self.table}: a change has {len(values)} values for "
                f"{len(relation.columns)} columns",
                "this is a protocol error; please report it",
            )
        return {c.name: v for c, v in zip(relation.columns, values, strict=True)}

    def _key(self, values: Mapping[str, object], what: str, fallback: Key | None = None) -> Key:
        key: list[str | None] = []
        for name in self.keys:
            value = values.get(name)
            if not isinstance(value, str):
                if fallback is not None:
                    return fallback
                raise DataError(
                    f"PostgreSQL table {self.table}: a {what} carries no value for key column {name!r}",
                    "keys must be columns of the table's replica identity (its primary key, "
                    "or any column under REPLICA IDENTITY FULL)",
                )
            key.append(value)
        return tuple(key)


def _known(values: dict[str, Value]) -> dict[str, Cell]:
    """Values as cells: text stays, NULL and values the server left out become None."""
    return {k: v if isinstance(v, str) else None for k, v in values.items()}
