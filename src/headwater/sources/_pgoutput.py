"""Decoding PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

The built-in `pgoutput` plugin (what CREATE SUBSCRIPTION uses, so it exists on
every managed PostgreSQL) encodes each change as one binary message: Begin,
Relation, Insert/Update/Delete/Truncate, Commit. This module turns those bytes
into small dataclasses; it does no I/O. The layout is the one documented in
"Logical Replication Message Formats" of the PostgreSQL manual.

Tuple values arrive in text form (the type's output function, run in the
decoding session, so the session's TimeZone and DateStyle apply), as NULL, or
as "unchanged TOAST": an UPDATE that did not touch a large out-of-line value
does not repeat it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

# PostgreSQL timestamps count microseconds from 2000-01-01 00:00 UTC.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    """An UPDATE's value of a TOASTed column it did not change (not sent by the server)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | bytes | None | _Unchanged


class DecodeError(ValueError):
    """The bytes are not a pgoutput message this decoder understands."""


def lsn_to_int(text: str) -> int:
    """'16/B374D848' -> the 64-bit WAL position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    """The 64-bit WAL position -> PostgreSQL's 'X/Y' text."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_timestamp(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class Begin:
    final_lsn: int  # where the transaction's commit record starts
    commit_ts: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # just after the commit record: where the next transaction may start
    commit_ts: datetime


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault) n(othing) f(ull) i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Insert:
    relation: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    relation: int
    # 'K': the old replica identity (sent when it changed); 'O': the whole old row
    # (REPLICA IDENTITY FULL); None: no old values were sent.
    old_kind: str | None
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Delete:
    relation: int
    old_kind: str  # 'K' (identity columns only, the rest NULL) or 'O' (whole row)
    old: tuple[Value, ...]


@dataclass(frozen=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Other:
    """Messages with no effect on rows (Origin, Type, logical decoding Message)."""

    kind: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Other

_I8 = struct.Struct(">b")
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
BEGIN: Final = struct.Struct(">QqI")  # final LSN, commit time, xid
COMMIT: Final = struct.Struct(">QQq")  # commit LSN, end LSN, commit time (after the flags byte)


class _Reader:
    __slots__ = ("data", "encoding", "pos")

    def __init__(self, data: bytes, encoding: str) -> None:
        self.data = data
        self.encoding = encoding
        self.pos = 0

    def _take(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error as exc:
            raise DecodeError(f"message ends early at byte {self.pos}") from exc
        self.pos += fmt.size
        return int(value)

    def u8(self) -> int:
        return self._take(_U8)

    def i8(self) -> int:
        return self._take(_I8)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def u32(self) -> int:
        return self._take(_U32)

    def u64(self) -> int:
        return self._take(_U64)

    def i64(self) -> int:
        return self._take(_I64)

    def byte(self) -> str:
        return chr(self.u8())

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos : end].decode(self.encoding)
        self.pos = end + 1
        return text

    def tuple(self) -> tuple[Value, ...]:
        values, self.pos, _ = tuple_data(self.data, self.pos, len(self.data), self.encoding)
        return tuple(values)


def tuple_data(data: bytes, pos: int, end: int, encoding: str) -> tuple[list[Value], int, bool]:
    """A TupleData at `pos` of a message ending at `end`: its values (text, None,
    UNCHANGED, or bytes for a binary value, which Headwater never asks for), the
    position after it, and whether a value is UNCHANGED.

    The hot loop of decoding (one iteration per column of every change): bytes are
    indexed directly, without a method call per field."""
    try:
        count = (data[pos] << 8) | data[pos + 1]
    except IndexError:
        raise DecodeError(f"message ends early at byte {pos}") from None
    pos += 2
    out: list[Value] = []
    append = out.append
    unchanged = False
    # An ASCII message (nearly all are) is decoded once and its values sliced from the text.
    text = None
    if encoding == "utf-8":
        part = data[pos:end]
        if part.isascii():
            text, base = part.decode("ascii"), pos
    try:
        for _ in range(count):
            kind = data[pos]
            pos += 1
            if kind == 116 or kind == 98:  # 't': text, 'b': binary
                (length,) = _I32.unpack_from(data, pos)
                pos += 4
                stop = pos + length
                if length < 0 or stop > end:
                    raise DecodeError(
                        f"value of {length} bytes runs past the message at byte {pos}"
                    )
                if kind == 98:
                    append(data[pos:stop])
                elif text is not None:
                    append(text[pos - base : stop - base])
                else:
                    append(data[pos:stop].decode(encoding))
                pos = stop
            elif kind == 110:  # 'n': NULL
                append(None)
            elif kind == 117:  # 'u': unchanged TOAST
                append(UNCHANGED)
                unchanged = True
            else:
                raise DecodeError(f"unknown tuple value kind {chr(kind)!r}")
    except (IndexError, struct.error):
        raise DecodeError(f"message ends early at byte {pos}") from None
    if pos > end:
        raise DecodeError(f"message ends early at byte {end}")
    return out, pos, unchanged


def decode(data: bytes, encoding: str = "utf-8") -> Message:
    """One pgoutput message (protocol version 1, without streamed transactions).

    Names and text values are in the database's encoding (`encoding`, a Python codec).
    """
    if not data:
        raise DecodeError("empty message")
    data = bytes(data)
    kind = chr(data[0])
    r = _Reader(data, encoding)
    r.pos = 1
    if kind == "B":
        final_lsn, ts, xid = r.u64(), r.i64(), r.u32()
        return Begin(final_lsn, pg_timestamp(ts), xid)
    if kind == "C":
        r.u8()  # flags, unused
        commit_lsn, end_lsn, ts = r.u64(), r.u64(), r.i64()
        return Commit(commit_lsn, end_lsn, pg_timestamp(ts))
    if kind == "R":
        oid, namespace, name = r.u32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.i16()):
            flags = r.u8()
            columns.append(Column(r.string(), r.u32(), r.i32(), bool(flags & 1)))
        return Relation(oid, namespace or "pg_catalog", name, identity, tuple(columns))
    if kind == "I":
        relation = r.u32()
        if r.byte() != "N":
            raise DecodeError("INSERT without a new tuple")
        return Insert(relation, r.tuple())
    if kind == "U":
        relation = r.u32()
        marker = r.byte()
        old_kind: str | None = None
        old = None
        if marker in ("K", "O"):
            old_kind, old = marker, r.tuple()
            marker = r.byte()
        if marker != "N":
            raise DecodeError("UPDATE without a new tuple")
        return Update(relation, old_kind, old, r.tuple())
    if kind == "D":
        relation = r.u32()
        marker = r.byte()
        if marker not in ("K", "O"):
            raise DecodeError("DELETE without old values")
        return Delete(relation, marker, r.tuple())
    if kind == "T":
        count = r.i32()
        options = r.i8()
        relations = tuple(r.u32() for _ in range(count))
        return Truncate(relations, bool(options & 1), bool(options & 2))
    if kind in ("O", "Y", "M"):
        return Other(kind)
    raise DecodeError(f"unknown pgoutput message {kind!r}")
