"""From raw pgoutput messages to the change rows of one table, without message objects.

The rules of `_pgoutput_changes` (which the message-by-message reference
decoder in the tests applies to decoded messages), done in one pass over the bytes
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
  unchanged TOASTed values is settled by the same rules: a delete
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
from itertools import pairwise
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ..errors import DataError
from ._pgoutput import (
    BEGIN,
    COMMIT,
    PG_EPOCH,
    UNCHANGED,
    Column,
    DecodeError,
    Relation,
    decode,
    tuple_data,
)
from ._pgoutput_changes import DELETE, INSERT, TRUNCATE, UPDATE, Key, Pending

_I32: Final = struct.Struct(">i").unpack_from
_LENGTH: Final = struct.Struct(">i").pack
_U32: Final = struct.Struct(">I").unpack_from
# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_MICROS: Final = int(PG_EPOCH.timestamp()) * 1_000_000
_WHAT: Final = {INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE"}


def frame(messages: Iterable[bytes]) -> bytes:
    """Messages in one buffer, each after its length (what `assemble_frames` reads)."""
    parts: list[bytes] = []
    for message in messages:
        parts += (_LENGTH(len(message)), message)
    return b"".join(parts)


class _Layout:
    """Our relation's columns as one Relation message describes them."""

    __slots__ = ("keys", "names", "width")

    def __init__(self, names: tuple[str, ...], keys: tuple[int, ...]) -> None:
        self.names = names
        self.keys = keys  # positions of the key columns (-1: not a column)
        self.width = len(names)


@dataclass
class ColumnBatch:
    """The changes of whole transactions, in commit order, column by column."""

    columns: dict[str, Column] = field(default_factory=dict)  # name -> latest definition
    # name -> one cell per row: text, None or `Pending`; or the column's text as Arrow
    values: dict[str, list[Any] | pa.Array] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # commit time, microseconds since 1970 UTC
    seen: dict[int, set[Key]] = field(default_factory=dict)  # TRUNCATE row -> keys before it
    pending: bool = False  # some cell is `Pending`
    transactions: int = 0
    last_end: int | None = None  # end of the last transaction read (ours or not)
    last_commit_micros: int | None = None
    messages: int = 0  # messages read, of every table

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
        self.gather_bytes = 1 << 21  # bytes of values cut out of the buffer at a time

    # -- the pass ---------------------------------------------------------------------------
    def assemble(self, messages: Iterable[bytes]) -> ColumnBatch:
        """Messages one by one (as `pg_logical_slot_peek_binary_changes` rows)."""
        return self.assemble_frames(frame(messages))

    def assemble_frames(self, buf: bytes) -> ColumnBatch:
        """Messages in one buffer, each after its length (a 32-bit big-endian integer)."""
        last = len(buf)
        pos = 0
        batch = ColumnBatch()
        encoding = self.encoding
        layouts = self.layouts
        rows: list[Any] = []  # a tuple's offset in `buf`, or its decoded values
        ops: list[str] = []
        segments: list[tuple[int, _Layout]] = []  # (first row, layout) whenever it changes
        spans: list[tuple[int, int, int, int]] = []  # kept transactions: first row, rows, LSN, time
        state = _State(self, buf, rows, ops, segments, batch)
        add_row, add_op = rows.append, ops.append
        segment: _Layout | None = None  # the layout of the last segment, if rows went there
        keep = False
        began = 0  # first row of the current transaction
        lsn = ts = 0
        committed = 0  # rows of whole transactions
        count = 0
        while pos < last:
            (length,) = _I32(buf, pos)
            m = pos + 4
            pos = m + length
            if length < 1:
                raise DecodeError(f"a change message of {length} bytes")
            count += 1
            kind = buf[m]
            if kind == 73 or kind == 85 or kind == 68:  # I, U, D
                if not keep:
                    continue  # already in the table (or outside a transaction)
                if length < 8:
                    raise DecodeError(f"message ends early at byte {length}")
                (oid,) = _U32(buf, m + 1)
                layout = layouts.get(oid)
                if layout is None:
                    self._not_ours(oid)
                    continue
                if layout is not segment:
                    segments.append((len(rows), layout))
                    segment = layout
                marker = buf[m + 5]
                if kind == 73:  # Insert
                    if marker != 78:
                        raise DecodeError("INSERT without a new tuple")
                    add_op(INSERT)
                elif kind == 68:  # Delete
                    if marker != 75 and marker != 79:
                        raise DecodeError("DELETE without old values")
                    add_op(DELETE)
                elif marker == 78:  # Update, new values only
                    add_op(UPDATE)
                elif marker == 75 or marker == 79:  # Update with old values ('K' or 'O')
                    old, at, _ = tuple_data(buf, m + 6, pos, encoding)
                    if at >= pos or buf[at] != 78:
                        raise DecodeError("UPDATE without a new tuple")
                    new, _, _ = tuple_data(buf, at + 1, pos, encoding)
                    if len(new) != layout.width:
                        self._width(new, layout)
                    if len(old) != layout.width:
                        self._width(old, layout)
                    state.update(layout, chr(marker), old, new)
                    segment = None
                    continue
                else:
                    raise DecodeError("UPDATE without a new tuple")
                # The values stay in `buf` until the rows become columns.
                add_row(m + 6)
            elif kind == 66:  # Begin
                if length < 21:
                    raise DecodeError(f"message ends early at byte {length}")
                if len(rows) != committed:
                    state.drop_after(committed)  # a transaction without its commit
                    segment = None
                lsn, ts, _ = BEGIN.unpack_from(buf, m + 1)
                keep = lsn >= self.start
                began = committed
            elif kind == 67:  # Commit
                if length < 26:
                    raise DecodeError(f"message ends early at byte {length}")
                _, end, commit_ts = COMMIT.unpack_from(buf, m + 2)
                if keep:
                    changes = len(rows) - began
                    if changes:
                        spans.append((began, changes, lsn, ts))
                        batch.transactions += 1
                    committed = len(rows)
                    batch.last_end = end
                    batch.last_commit_micros = commit_ts + PG_EPOCH_MICROS
                elif len(rows) != committed:
                    state.drop_after(committed)
                    segment = None
                keep = False
            elif kind == 82:  # Relation
                self._relation(decode(buf[m:pos], encoding), batch)  # type: ignore[arg-type]
                segment = None
            elif kind == 84:  # Truncate
                if keep:
                    truncate = decode(buf[m:pos], encoding)
                    ours = [o for o in truncate.relations if self._is_ours(o)]  # type: ignore[union-attr]
                    if ours:
                        state.truncate(self.layouts.get(ours[0]))
                        segment = None
            elif kind not in (79, 89, 77):  # Origin, Type, Message: no effect on rows
                raise DecodeError(f"unknown pgoutput message {chr(kind)!r}")
        if pos != last:
            raise DecodeError(f"the last change message runs {pos - last} bytes past the data")
        if len(rows) != committed:
            state.drop_after(committed)
        batch.messages = count
        self._finish(batch, state, spans)
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
        self, batch: ColumnBatch, state: _State, spans: list[tuple[int, int, int, int]]
    ) -> None:
        rows, ops = state.rows, state.ops
        batch.ops = ops
        seqs: list[int] = []
        times: list[int] = []
        for _first, count, lsn, ts in spans:
            base = lsn << 32
            seqs += range(base + 1, base + count + 1)
            times += [ts + PG_EPOCH_MICROS] * count
        batch.seqs, batch.times = seqs, times
        fast = (
            self.encoding == "utf-8"
            and not batch.seen
            and all(type(r) is int for r in rows)
            and self._arrow_columns(batch, state)
        )
        if not fast:
            self._list_columns(batch, state)
        # Keys: a change without a value for a key column cannot be applied.
        for name in self.keys:
            found = batch.values.get(name)
            if found is None:
                changed = next((op for op in ops if op != TRUNCATE), None)
                if changed is not None:
                    raise self.key_error(name, _WHAT[changed])
                continue
            if isinstance(found, pa.Array):
                if not found.null_count:
                    continue
                found = found.to_pylist()
            if None in found:
                for row, value in enumerate(found):
                    if value is None and ops[row] != TRUNCATE:
                        raise self.key_error(name, _WHAT[ops[row]])

    def _list_columns(self, batch: ColumnBatch, state: _State) -> None:
        """Every row decoded (TOAST left out resolved in log order), then transposed."""
        state.resolve_all()
        rows = state.rows
        n = len(rows)
        out: dict[str, list[Any]] = {name: [] for name in batch.columns}
        segments = state.segments
        bounds = [first for first, _ in segments] + [n]
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
        batch.values = dict(out)

    def _arrow_columns(self, batch: ColumnBatch, state: _State) -> bool:
        """The columns cut out of the buffer by numpy, without a Python object per value.

        False (and nothing done) if some value is neither text nor NULL (unchanged
        TOAST: the rows are then decoded one by one).
        """
        buf = np.frombuffer(state.buf, dtype=np.uint8)
        size = len(buf)
        starts = np.asarray(state.rows, dtype=np.int64)
        n = len(starts)
        out: dict[str, list[pa.Array]] = {name: [] for name in batch.columns}
        segments = state.segments
        bounds = [first for first, _ in segments] + [n]
        for (first, layout), last in zip(segments, bounds[1:], strict=True):
            if last <= first:
                continue
            pos = starts[first:last]
            # Each message ends where its length (just before it) says.
            quad = buf[pos[:, None] + np.arange(-10, -6)].astype(np.int64)
            end = (
                pos - 6 + ((quad[:, 0] << 24) | (quad[:, 1] << 16) | (quad[:, 2] << 8) | quad[:, 3])
            )
            if np.any(pos + 2 > end):
                raise DecodeError("a change message ends early")
            counts = (buf[pos].astype(np.int64) << 8) | buf[pos + 1]
            if np.any(counts != layout.width):
                bad = int(counts[counts != layout.width][0])
                raise DataError(
                    f"PostgreSQL table {self.table}: a change has {bad} values for "
                    f"{layout.width} columns",
                    "this is a protocol error; please report it",
                )
            pos = pos + 2
            rows = last - first
            for name in layout.names:
                if np.any(pos >= end):
                    raise DecodeError("a change message ends early")
                kind = buf[pos]
                text = kind == 116
                if not np.all(text | (kind == 110)):
                    return False  # unchanged TOAST (or binary): row by row
                quad = buf[np.minimum(pos[:, None] + np.arange(1, 5), size - 1)].astype(np.int64)
                lengths = (quad[:, 0] << 24) | (quad[:, 1] << 16) | (quad[:, 2] << 8) | quad[:, 3]
                lengths = np.where(text, lengths, 0)
                begin = pos + 5
                if np.any(text & ((lengths < 0) | (begin + lengths > end))):
                    raise DecodeError("a value runs past its message")
                offsets = np.zeros(rows + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                total = int(offsets[-1])
                if total >= 2**31:
                    return False  # beyond a string array's 32-bit offsets
                data = self._gather(buf, begin, lengths, offsets)
                nulls = rows - int(np.count_nonzero(text))
                validity = pa.array(text).buffers()[1] if nulls else None
                array = pa.Array.from_buffers(
                    pa.string(),
                    rows,
                    [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
                    null_count=nulls,
                )
                out.setdefault(name, []).append(array)
                pos = np.where(text, begin + lengths, pos + 1)
            for parts in out.values():
                have = sum(len(p) for p in parts)
                if have < last:
                    parts.append(pa.nulls(last - have, pa.string()))
        columns: dict[str, list[Any] | pa.Array] = {}
        for name, parts in out.items():
            array = parts[0] if len(parts) == 1 else pa.concat_arrays(parts) if parts else None
            if array is None:
                array = pa.nulls(0, pa.string())
            try:
                array.validate(full=True)  # UTF-8, as the database's encoding promises
            except pa.ArrowInvalid as exc:
                raise DecodeError(f"column {name!r} has a value that is not UTF-8") from exc
            columns[name] = array
        batch.values = columns
        return True

    def _gather(
        self, buf: np.ndarray, begin: np.ndarray, lengths: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """The values (`lengths` bytes from `begin`) one after the other, gathered a block
        of rows at a time: the index of every byte is 8 bytes, so a block stays small."""
        total = int(offsets[-1])
        data = np.empty(total, dtype=np.uint8)
        rows = len(lengths)
        edges = np.searchsorted(offsets, np.arange(0, total, self.gather_bytes), side="right") - 1
        bounds = [*np.unique(np.clip(edges, 0, rows)).tolist(), rows]
        for first, last in pairwise(bounds):
            low, high = int(offsets[first]), int(offsets[last])
            if high > low:
                index = np.repeat(begin[first:last] - offsets[first:last], lengths[first:last])
                index += np.arange(low, high)
                data[low:high] = buf[index]
        return data


class _State:
    """What the rare cases (key changes, TOAST, TRUNCATE) need of the rows so far."""

    def __init__(
        self,
        owner: ColumnAssembler,
        buf: bytes,
        rows: list[Any],
        ops: list[str],
        segments: list[tuple[int, _Layout]],
        batch: ColumnBatch,
    ) -> None:
        self.owner = owner
        self.buf = buf
        self.rows = rows
        self.ops = ops
        self.segments = segments
        self.batch = batch
        self.images: dict[Key, tuple[int, _Layout]] = {}  # key -> its latest image's row
        self.indexed = 0  # rows replayed into `images` (and decoded)

    def stop(self, offset: int) -> int:
        """Where the message of the tuple at `offset` (6 bytes into it) ends."""
        (length,) = _I32(self.buf, offset - 10)
        return int(offset - 6 + length)

    def layout_of(self, row: int) -> _Layout:
        i = bisect_right([s for s, _ in self.segments], row) - 1
        return self.segments[i][1]

    def cells(self, row: int) -> list[Any]:
        """The values of `row` (of a row before `indexed`: decoded, TOAST left out settled)."""
        cells = self.rows[row]
        if type(cells) is not int:
            return cells  # type: ignore[no-any-return]
        decoded, _, _ = tuple_data(self.buf, cells, self.stop(cells), self.owner.encoding)
        return decoded

    def key_of(self, row: int) -> Key | None:
        if self.ops[row] == TRUNCATE:
            return None
        layout = self.layout_of(row)
        cells = self.cells(row)
        return tuple(cells[i] if i >= 0 else None for i in layout.keys)

    def _decode(self, row: int) -> None:
        """Decode a row still in the buffer; its unchanged TOAST from the images before it
        (all rows before it are in `images`)."""
        offset = self.rows[row]
        if type(offset) is not int:
            return
        layout = self.layout_of(row)
        cells, _, unchanged = tuple_data(self.buf, offset, self.stop(offset), self.owner.encoding)
        if len(cells) != layout.width:
            self.owner._width(cells, layout)
        if unchanged:
            if self.ops[row] == UPDATE:
                key = self._key(layout, cells, "UPDATE", None)
                cells = self._settle(layout, None, None, cells, key, key, indexed=True)
            else:
                cells = [None if v is UNCHANGED else v for v in cells]
        self.rows[row] = cells

    def _index(self) -> None:
        """Replay the rows not yet in `images` (an image: the row after an insert or update)."""
        images = self.images
        for row in range(self.indexed, len(self.rows)):
            self._decode(row)
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

    def resolve_all(self) -> None:
        """Every row decoded; unchanged TOAST settled in log order."""
        for row in range(self.indexed, len(self.rows)):
            offset = self.rows[row]
            if type(offset) is not int:
                continue
            cells, _, unchanged = tuple_data(
                self.buf, offset, self.stop(offset), self.owner.encoding
            )
            if unchanged:
                self._index()  # this row and every later one, in log order
                return
            layout = self.layout_of(row)
            if len(cells) != layout.width:
                self.owner._width(cells, layout)
            self.rows[row] = cells

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
        """An UPDATE with old values: a key change, or REPLICA IDENTITY FULL."""
        old = None if old_raw is None else [v if isinstance(v, str) else None for v in old_raw]
        key = self._key(layout, raw, "UPDATE", None)
        before = key if old is None else self._key(layout, old, "UPDATE", key)
        new = self._settle(layout, old_kind, old, raw, key, before)
        if before == key:
            self._emit(layout, new, UPDATE)
            return
        # A new key: the old row goes, the new one arrives (as Debezium has it).
        self._emit(layout, old if old is not None else [None] * layout.width, DELETE)
        self._emit(layout, new, INSERT)

    def _settle(
        self,
        layout: _Layout,
        old_kind: str | None,
        old: list[Any] | None,
        raw: list[Any],
        key: Key,
        before: Key,
        *,
        indexed: bool = False,
    ) -> list[Any]:
        """An update's values, those it left out (unchanged TOAST) taken from the old row, the key's previous image, or `Pending`."""
        if not any(v is UNCHANGED for v in raw):
            return raw
        if not indexed:
            self._index()
        base = self.images.get(before)
        new = list(raw)
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
        return new

    def _cell(self, base: tuple[int, _Layout], name: str) -> Any:
        row, layout = base
        if name not in layout.names:
            return _ABSENT
        return self.cells(row)[layout.names.index(name)]

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
