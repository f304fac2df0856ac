"""From raw pgoutput messages to the change rows of one table, without message objects.

The same rules as `_pgoutput_changes.Assembler` (which works on decoded
messages and stays the reference for them), done in one pass over the bytes
the server sent, because this loop runs once per change and per column:

- Messages of other tables, and every change of a transaction committed
  before `start` (already in the table), are skipped without decoding their
  values.
- An INSERT, a DELETE and an UPDATE that sent no old values and left no TOASTed
  value out (the common cases) become a row: the list of its values in the
  relation's column order, plus an operation. Nothing else is built per change:
  the sequence and commit time of each row follow from the transaction it is
  in (`<commit LSN, ordinal>`, the ordinal counting the rows of the
  transaction), and the rows become columns in one transpose at the end.
- An UPDATE with old values (the key changed, or REPLICA IDENTITY FULL) or with
  unchanged TOASTed values is settled exactly as the Assembler does: a delete
  of the old key and an insert of the new one; unchanged values from the old
  row, from the key's previous image in the batch, or `Pending`. The previous
  images are indexed only when first needed.
- A TRUNCATE becomes a `TRUNCATE` row with the keys of the rows before it.
- Only whole transactions count: rows of one the round cut short are dropped.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import DataError
from ._pgoutput import PG_EPOCH, UNCHANGED, Column, DecodeError, Relation, decode
from ._pgoutput_changes import DELETE, INSERT, TRUNCATE, UPDATE, Key, Pending

_I32: Final = struct.Struct(">i").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
_BEGIN: Final = struct.Struct(">Qq").unpack_from  # final LSN, commit time
_COMMIT: Final = struct.Struct(">Qq").unpack_from  # end LSN, commit time (after the commit LSN)
# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_MICROS: Final = int(PG_EPOCH.timestamp()) * 1_000_000
_WHAT: Final = {INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE"}


def values(data: bytes, pos: int, encoding: str) -> tuple[list[Any], int, bool]:
    """A TupleData at `pos`: its values (text, None, or UNCHANGED), the position after
    it, and whether a value is UNCHANGED. Binary values (never asked for) are None."""
    end = len(data)
    try:
        count = (data[pos] << 8) | data[pos + 1]
    except IndexError:
        raise DecodeError(f"message ends early at byte {pos}") from None
    pos += 2
    out: list[Any] = []
    append = out.append
    unchanged = False
    # An ASCII message (nearly all are) is decoded once and its values sliced from the text.
    text = data.decode("ascii") if encoding == "utf-8" and data.isascii() else None
    try:
        for _ in range(count):
            kind = data[pos]
            pos += 1
            if kind == 116:  # 't': text
                (length,) = _I32(data, pos)
                pos += 4
                stop = pos + length
                if length < 0 or stop > end:
                    raise DecodeError(
                        f"value of {length} bytes runs past the message at byte {pos}"
                    )
                append(text[pos:stop] if text is not None else data[pos:stop].decode(encoding))
                pos = stop
            elif kind == 110:  # 'n': NULL
                append(None)
            elif kind == 117:  # 'u': unchanged TOAST
                append(UNCHANGED)
                unchanged = True
            elif kind == 98:  # 'b': binary
                (length,) = _I32(data, pos)
                pos += 4 + length
                append(None)
            else:
                raise DecodeError(f"unknown tuple value kind {chr(kind)!r}")
    except (IndexError, struct.error):
        raise DecodeError(f"message ends early at byte {pos}") from None
    if pos > end:
        raise DecodeError(f"message ends early at byte {end}")
    return out, pos, unchanged


@dataclass
class _Layout:
    """Our relation's columns as one Relation message describes them."""

    names: tuple[str, ...]
    keys: tuple[int, ...]  # positions of the key columns (-1: not a column)

    @property
    def width(self) -> int:
        return len(self.names)


@dataclass
class ColumnBatch:
    """The changes of whole transactions, in commit order, column by column."""

    columns: dict[str, Column] = field(default_factory=dict)  # name -> latest definition
    values: dict[str, list[Any]] = field(default_factory=dict)  # name -> one cell per row
    ops: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # commit time, microseconds since 1970 UTC
    seen: dict[int, set[Key]] = field(default_factory=dict)  # TRUNCATE row -> keys before it
    pending: bool = False  # some cell is `Pending`
    transactions: int = 0
    last_end: int | None = None  # end of the last transaction read (ours or not)
    last_commit_micros: int | None = None

    def __len__(self) -> int:
        return len(self.ops)


class ColumnAssembler:
    """Turns raw pgoutput messages into the change rows of one table, as columns."""

    def __init__(
        self,
        table: str,
        keys: Sequence[str],
        ours: Iterable[int],
        names: tuple[str, str],
        start: int,
        encoding: str = "utf-8",
    ) -> None:
        self.table = table
        self.keys = tuple(keys)
        self.ours = set(ours)
        self.names = names
        self.start = start
        self.encoding = encoding
        self.relations: dict[int, Relation] = {}
        self.layouts: dict[int, _Layout] = {}  # our relations, by oid

    # -- the pass ---------------------------------------------------------------------------
    def assemble(self, messages: Iterable[bytes]) -> ColumnBatch:
        batch = ColumnBatch()
        encoding = self.encoding
        layouts = self.layouts
        rows: list[list[Any]] = []
        ops: list[str] = []
        segments: list[tuple[int, _Layout]] = []  # (first row, layout) whenever it changes
        spans: list[tuple[int, int, int, int]] = []  # kept transactions: rows from, to, LSN, time
        state = _State(self, rows, ops, segments, batch)
        add_row, add_op = rows.append, ops.append
        keep = False
        began = 0  # first row of the current transaction
        lsn = ts = 0
        committed = 0  # rows of whole transactions
        for data in messages:
            kind = data[0]
            if kind == 73 or kind == 85 or kind == 68:  # I, U, D
                if not keep:
                    continue  # already in the table (or outside a transaction)
                (oid,) = _U32(data, 1)
                layout = layouts.get(oid)
                if layout is None:
                    self._not_ours(oid)
                    continue
                if not segments or segments[-1][1] is not layout:
                    segments.append((len(rows), layout))
                marker = data[5]
                if kind == 73:  # Insert
                    if marker != 78:
                        raise DecodeError("INSERT without a new tuple")
                    new, _, unchanged = values(data, 6, encoding)
                    if len(new) != layout.width:
                        self._width(new, layout)
                    if unchanged:
                        new = [None if v is UNCHANGED else v for v in new]
                    add_row(new)
                    add_op(INSERT)
                elif kind == 68:  # Delete
                    if marker != 75 and marker != 79:
                        raise DecodeError("DELETE without old values")
                    old, _, unchanged = values(data, 6, encoding)
                    if len(old) != layout.width:
                        self._width(old, layout)
                    if unchanged:
                        old = [None if v is UNCHANGED else v for v in old]
                    add_row(old)
                    add_op(DELETE)
                elif marker == 78:  # Update, new values only
                    new, _, unchanged = values(data, 6, encoding)
                    if len(new) != layout.width:
                        self._width(new, layout)
                    if unchanged:
                        state.update(layout, None, None, new)
                    else:
                        add_row(new)
                        add_op(UPDATE)
                elif marker == 75 or marker == 79:  # Update with old values ('K' or 'O')
                    old, pos, _ = values(data, 6, encoding)
                    if pos >= len(data) or data[pos] != 78:
                        raise DecodeError("UPDATE without a new tuple")
                    new, _, _ = values(data, pos + 1, encoding)
                    if len(new) != layout.width:
                        self._width(new, layout)
                    if len(old) != layout.width:
                        self._width(old, layout)
                    state.update(layout, chr(marker), old, new)
                else:
                    raise DecodeError("UPDATE without a new tuple")
            elif kind == 66:  # Begin
                if len(data) < 21:
                    raise DecodeError(f"message ends early at byte {len(data)}")
                if len(rows) != committed:
                    state.drop_after(committed)  # a transaction without its commit
                lsn, ts = _BEGIN(data, 1)
                keep = lsn >= self.start
                began = committed
            elif kind == 67:  # Commit
                if len(data) < 26:
                    raise DecodeError(f"message ends early at byte {len(data)}")
                end, commit_ts = _COMMIT(data, 10)
                if keep:
                    count = len(rows) - began
                    if count:
                        spans.append((began, count, lsn, ts))
                        batch.transactions += 1
                    committed = len(rows)
                    batch.last_end = end
                    batch.last_commit_micros = commit_ts + PG_EPOCH_MICROS
                elif len(rows) != committed:
                    state.drop_after(committed)
                keep = False
            elif kind == 82:  # Relation
                self._relation(decode(data, encoding), batch)  # type: ignore[arg-type]
            elif kind == 84:  # Truncate
                if keep:
                    truncate = decode(data, encoding)
                    ours = [o for o in truncate.relations if self._is_ours(o)]  # type: ignore[union-attr]
                    if ours:
                        state.truncate(self.layouts.get(ours[0]))
            elif kind not in (79, 89, 77):  # Origin, Type, Message: no effect on rows
                raise DecodeError(f"unknown pgoutput message {chr(kind)!r}")
        if len(rows) != committed:
            state.drop_after(committed)
        self._finish(batch, rows, ops, segments, spans)
        return batch

    # -- the rare cases -----------------------------------------------------------------------
    def _is_ours(self, oid: int) -> bool:
        if oid in self.ours:
            return True
        relation = self.relations.get(oid)
        return relation is not None and (relation.namespace, relation.name) == self.names

    def _relation(self, relation: Relation, batch: ColumnBatch) -> None:
        self.relations[relation.oid] = relation
        if not self._is_ours(relation.oid):
            self.layouts.pop(relation.oid, None)
            return
        names = tuple(c.name for c in relation.columns)
        index = {n: i for i, n in enumerate(names)}
        self.layouts[relation.oid] = _Layout(names, tuple(index.get(k, -1) for k in self.keys))
        for column in relation.columns:
            batch.columns.pop(column.name, None)  # re-added last: the newest wins
            batch.columns[column.name] = column

    def _not_ours(self, oid: int) -> None:
        if oid in self.ours and oid not in self.relations:
            raise DataError(
                f"PostgreSQL table {self.table}: a change arrived before its relation description",
                "this is a protocol error; please report it",
            )

    def _width(self, got: list[Any], layout: _Layout) -> None:
        raise DataError(
            f"PostgreSQL table {self.table}: a change has {len(got)} values for "
            f"{layout.width} columns",
            "this is a protocol error; please report it",
        )

    def key_error(self, name: str, what: str) -> DataError:
        return DataError(
            f"PostgreSQL table {self.table}: a {what} carries no value for key column {name!r}",
            "keys must be columns of the table's replica identity (its primary key, "
            "or any column under REPLICA IDENTITY FULL)",
        )

    def _finish(
        self,
        batch: ColumnBatch,
        rows: list[list[Any]],
        ops: list[str],
        segments: list[tuple[int, _Layout]],
        spans: list[tuple[int, int, int, int]],
    ) -> None:
        n = len(rows)
        batch.ops = ops
        seqs: list[int] = []
        times: list[int] = []
        for _, count, lsn, ts in spans:
            base = lsn << 32
            seqs += range(base + 1, base + count + 1)
            times += [ts + PG_EPOCH_MICROS] * count
        batch.seqs, batch.times = seqs, times
        out: dict[str, list[Any]] = {name: [] for name in batch.columns}
        bounds = [start for start, _ in segments] + [n]
        for (first, layout), last in zip(segments, bounds[1:], strict=True):
            if last <= first:
                continue
            part = rows[first:last] if len(segments) > 1 else rows
            transposed = list(zip(*part, strict=True)) if layout.width else []
            for name, part_cells in zip(layout.names, transposed, strict=True):
                out.setdefault(name, []).extend(part_cells)
            for cells in out.values():
                if len(cells) < last:
                    cells.extend([None] * (last - len(cells)))
        # Keys: a change without a value for a key column cannot be applied.
        for name in self.keys:
            found = out.get(name)
            if found is None:
                changed = next((op for op in ops if op != TRUNCATE), None)
                if changed is not None:
                    raise self.key_error(name, _WHAT[changed])
                continue
            if None in found:
                for row, value in enumerate(found):
                    if value is None and ops[row] != TRUNCATE:
                        raise self.key_error(name, _WHAT[ops[row]])
        batch.values = out


class _State:
    """What the rare cases (key changes, TOAST, TRUNCATE) need of the rows so far."""

    def __init__(
        self,
        owner: ColumnAssembler,
        rows: list[list[Any]],
        ops: list[str],
        segments: list[tuple[int, _Layout]],
        batch: ColumnBatch,
    ) -> None:
        self.owner = owner
        self.rows = rows
        self.ops = ops
        self.segments = segments
        self.batch = batch
        self.images: dict[Key, tuple[int, _Layout]] = {}  # key -> its latest image's row
        self.indexed = 0  # rows replayed into `images`

    def layout_of(self, row: int) -> _Layout:
        i = bisect_right([s for s, _ in self.segments], row) - 1
        return self.segments[i][1]

    def key_of(self, row: int) -> Key | None:
        if self.ops[row] == TRUNCATE:
            return None
        layout = self.layout_of(row)
        cells = self.rows[row]
        return tuple(cells[i] if i >= 0 else None for i in layout.keys)

    def _index(self) -> None:
        """Replay the rows not yet in `images` (an image: the row after an insert or update)."""
        images = self.images
        for row in range(self.indexed, len(self.rows)):
            op = self.ops[row]
            if op == TRUNCATE:
                images.clear()
                continue
            key = self.key_of(row)
            assert key is not None
            if op == DELETE:
                images.pop(key, None)
            else:
                images[key] = (row, self.layout_of(row))
        self.indexed = len(self.rows)

    def drop_after(self, count: int) -> None:
        """Forget the rows from `count` on (a transaction that did not commit here)."""
        del self.rows[count:]
        del self.ops[count:]
        while self.segments and self.segments[-1][0] >= count:
            self.segments.pop()
        for row in [r for r in self.batch.seen if r >= count]:
            del self.batch.seen[row]
        if self.indexed > count:
            self.images.clear()
            self.indexed = 0

    def _key(self, layout: _Layout, cells: list[Any], what: str, fallback: Key | None) -> Key:
        key: list[str | None] = []
        for name, i in zip(self.owner.keys, layout.keys, strict=True):
            value = cells[i] if i >= 0 else None
            if not isinstance(value, str):
                if fallback is not None:
                    return fallback
                raise self.owner.key_error(name, what)
            key.append(value)
        return tuple(key)

    def update(
        self, layout: _Layout, old_kind: str | None, old_raw: list[Any] | None, raw: list[Any]
    ) -> None:
        """An UPDATE with old values or unchanged TOASTed ones (see the Assembler)."""
        old = None if old_raw is None else [v if isinstance(v, str) else None for v in old_raw]
        key = self._key(layout, raw, "UPDATE", None)
        before = key if old is None else self._key(layout, old, "UPDATE", key)
        new: list[Any] = list(raw)
        if any(v is UNCHANGED for v in raw):
            self._index()
            base = self.images.get(before)
            for i, value in enumerate(raw):
                if value is not UNCHANGED:
                    continue
                name = layout.names[i]
                if old_kind == "O" and old is not None and old[i] is not None:
                    new[i] = old[i]  # REPLICA IDENTITY FULL: the old row has it
                    continue
                carried: Any = self._cell(base, name) if base is not None else _ABSENT
                if carried is _ABSENT:
                    new[i] = Pending(before, name, key)
                    self.batch.pending = True
                elif isinstance(carried, Pending) and carried.moved_to != key:
                    new[i] = Pending(carried.key, carried.column, key)
                else:
                    new[i] = carried
        if before == key:
            self._emit(layout, new, UPDATE)
            return
        # A new key: the old row goes, the new one arrives (as Debezium has it).
        self._emit(layout, old if old is not None else [None] * layout.width, DELETE)
        self._emit(layout, new, INSERT)

    def _cell(self, base: tuple[int, _Layout], name: str) -> Any:
        row, layout = base
        if name not in layout.names:
            return _ABSENT
        return self.rows[row][layout.names.index(name)]

    def _emit(self, layout: _Layout, cells: list[Any], op: str) -> None:
        if not self.segments or self.segments[-1][1] is not layout:
            self.segments.append((len(self.rows), layout))
        self.rows.append(cells)
        self.ops.append(op)

    def truncate(self, layout: _Layout | None) -> None:
        seen = {k for row in range(len(self.rows)) if (k := self.key_of(row)) is not None}
        if layout is None:
            layout = self.segments[-1][1] if self.segments else _Layout((), ())
        self.batch.seen[len(self.rows)] = seen
        self._emit(layout, [None] * layout.width, TRUNCATE)


_ABSENT: Final = object()
