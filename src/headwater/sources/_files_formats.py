"""Reading one file as a stream of pieces, each with the place reading would go on after it.

Text (NDJSON, CSV) is cut into blocks of whole records (`block_size` bytes) and
each block is parsed by pyarrow's multithreaded readers. CSV blocks stay Arrow
buffers (no copy unless a record straddles two reads); the record ends, line
numbers and whether any line end lies inside a quoted value (if none, the parser
need not track quoted newlines) are found by numpy. Only a block that fails
is taken apart: it is split in halves until the records that cannot be read on
their own are isolated; those are rejected with their line and the reason, the
rest load. Parquet streams by batches of row groups, Avro by blocks (fastavro).
A piece's `at` ({"byte", "line"} for text, {"row"} for Parquet and Avro,
{"item"} in a JSON document) is where a resumed read starts again.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

Format = Literal["ndjson", "json", "csv", "parquet", "avro"]
FORMATS: tuple[str, ...] = ("ndjson", "json", "csv", "parquet", "avro")
SUFFIXES: dict[str, Format] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".avro": "avro",
}
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4", ".br")
_BOM = b"\xef\xbb\xbf"
_JSON_BLOCK = 4 << 20  # pyarrow's JSON reader needs every line inside one block


class Unreadable(Exception):
    """The file cannot be read at all (not of its format, truncated, no access)."""


class _NotADocument(Exception):
    """Starts like an object but is no single JSON document: NDJSON with long lines."""


@dataclass
class Piece:
    table: pa.Table | None
    rejected: list[dict[str, Any]]
    at: dict[str, int]


@dataclass
class ReadOptions:
    columns: pa.Schema | None = None  # declared types (text formats)
    delimiter: str | None = None  # CSV; None: ',' or tab for .tsv
    header: bool = True  # CSV
    block_size: int = 16 << 20
    batch_rows: int = 65_536
    quote: bytes = field(default=b'"')
    select: tuple[str, ...] | None = None  # the columns to keep (None: all)


def _plain_name(path: str) -> str:
    """The file's name without a compression suffix, lower case."""
    name = path.rpartition("/")[2].lower()
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def format_of(path: str) -> Format | None:
    name = _plain_name(path)
    dot = name.rfind(".")
    return SUFFIXES.get(name[dot:]) if dot >= 0 else None


def pieces(
    fs: pafs.FileSystem,
    path: str,
    source: str,
    fmt: Format,
    options: ReadOptions,
    at: dict[str, int] | None,
) -> Iterator[Piece]:
    """The file's pieces from `at` (None: the start). `source` names the file in rejections."""
    if options.select is not None and fmt != "csv":
        # CSV converts only the selected columns; the other formats are projected after.
        whole = pieces(fs, path, source, fmt, replace(options, select=None), at)
        yield from (replace(p, table=_select(p.table, options.select)) for p in whole)
        return
    try:
        if fmt == "parquet":
            yield from _parquet(fs, path, (at or {}).get("row", 0), options)
        elif fmt == "avro":
            yield from _avro(fs, path, (at or {}).get("row", 0), options)
        elif fmt == "csv":
            yield from _csv(fs, path, source, at, options)
        elif fmt == "json" and at is not None and "item" in at:
            yield from _json_document(fs, path, source, at["item"], options)
        elif fmt == "json" and at is None and _is_document(fs, path):
            document = _json_document(fs, path, source, 0, options)
            try:
                first = next(document)
            except _NotADocument:
                yield from _ndjson(fs, path, source, None, options)  # NDJSON after all
            else:
                yield first
                yield from document
        else:
            yield from _ndjson(fs, path, source, at, options)
    except Unreadable:
        raise
    except (OSError, pa.ArrowException, ValueError, EOFError) as exc:
        raise Unreadable(_reason(exc)) from exc


def _select(table: pa.Table | None, names: tuple[str, ...]) -> pa.Table | None:
    """The selected columns a file has (one it lacks is left out, as without select)."""
    if table is None:
        return None
    return table.select([n for n in names if n in table.schema.names])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:300] + "…"


# -- text ------------------------------------------------------------------------
def _open(fs: pafs.FileSystem, path: str, start: int) -> Any:
    if path.lower().endswith(COMPRESSED):
        stream = fs.open_input_stream(path, compression="detect")
        while start > 0:  # compressed streams cannot seek: read up to the start
            skipped = len(stream.read(min(start, 1 << 24)))
            if not skipped:
                break
            start -= skipped
        return stream
    stream = fs.open_input_file(path)
    if start:
        stream.seek(start)
    return stream


def _line_cut(buffer: bytearray) -> int:
    return buffer.rfind(b"\n") + 1


def _record_cut(quote: bytes) -> Callable[[bytearray], int]:
    """The end of the last whole CSV record: a newline after an even number of quotes."""

    def cut(buffer: bytearray) -> int:
        end = buffer.rfind(b"\n")
        if end < 0:
            return 0
        quotes = buffer.count(quote, 0, end)
        while end >= 0:
            if quotes % 2 == 0:
                return end + 1
            previous = buffer.rfind(b"\n", 0, end)
            quotes -= buffer.count(quote, previous + 1, end)
            end = previous
        return 0

    return cut


def _blocks(stream: Any, size: int, cut: Callable[[bytearray], int]) -> Iterator[bytes]:
    """Blocks of whole records. A record longer than a block makes the block grow; quoting
    that never closes (a malformed file) is cut at a line end after 8 blocks."""
    buffer = bytearray()
    while True:
        data = stream.read(size)
        if not data:
            if buffer:
                yield bytes(buffer)
            return
        buffer += data
        end = cut(buffer)
        if end == 0 and len(buffer) > 8 * size:
            end = _line_cut(buffer)
        if end:
            yield bytes(buffer[:end])
            del buffer[:end]


def _records(data: bytes, first_line: int, quote: bytes | None) -> list[tuple[int, bytes, int]]:
    """(line number, record, end offset) of each non-blank record; CSV records may span lines."""
    out: list[tuple[int, bytes, int]] = []
    line, start, pos, quotes = first_line, 0, 0, 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        if quote is not None:
            quotes += data.count(quote, pos, end)
        pos = end
        if quote is not None and quotes % 2 and pos < len(data):
            continue  # inside a quoted value
        record = data[start:pos]
        if record.strip():
            out.append((line, record, pos))
        line += record.count(b"\n")
        start, quotes = pos, 0
    return out


def _salvage(
    records: list[tuple[int, bytes, int]],
    parse: Callable[[bytes], pa.Table | None],
    explain: Callable[[bytes, Exception], str],
    source: str,
    unit: str = "line",
) -> tuple[list[pa.Table], list[dict[str, Any]]]:
    """Parse records in halves until each failure is one record; those are rejected."""
    tables: list[pa.Table] = []
    rejected: list[dict[str, Any]] = []

    def visit(lo: int, hi: int, known_bad: bool) -> None:
        if not known_bad:
            try:
                table = parse(b"".join(_terminated(r) for _, r, _ in records[lo:hi]))
            except (pa.ArrowException, ValueError) as exc:
                if hi - lo == 1:
                    number, record, _ = records[lo]
                    rejected.append(
                        {
                            "source": source,
                            "location": f"{unit} {number}",
                            "check": "malformed",
                            "reason": explain(record, exc),
                            "record": record.decode("utf-8", "replace").rstrip("\r\n"),
                        }
                    )
                    return
            else:
                if table is not None:
                    tables.append(table)
                return
        mid = (lo + hi) // 2
        visit(lo, mid, False)
        visit(mid, hi, False)

    if records:
        visit(0, len(records), len(records) > 1)
    return tables, rejected


def _terminated(record: bytes) -> bytes:
    return record if record.endswith(b"\n") else record + b"\n"


def _text_pieces(
    fs: pafs.FileSystem,
    path: str,
    at: dict[str, int],
    options: ReadOptions,
    cut: Callable[[bytearray], int],
    parse: Callable[[bytes, int], tuple[list[pa.Table], list[dict[str, Any]]]],
) -> Iterator[Piece]:
    byte, line = at["byte"], at["line"]
    with _open(fs, path, byte) as stream:
        for block in _blocks(stream, options.block_size, cut):
            tables, rejected = parse(block, line)
            byte += len(block)
            line += block.count(b"\n")
            yield Piece(_concat(tables), rejected, {"byte": byte, "line": line})


def _start(fs: pafs.FileSystem, path: str, at: dict[str, int] | None) -> dict[str, int]:
    if at is not None:
        return at
    with _open(fs, path, 0) as stream:
        head = stream.read(len(_BOM))
    return {"byte": len(_BOM) if head == _BOM else 0, "line": 1}


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise Unreadable(f"{_reason(exc)}; declare the column's type with columns={{...}}") from exc


# -- NDJSON ------------------------------------------------------------------------
def _json_parser(options: ReadOptions) -> Callable[[bytes], pa.Table | None]:
    parse_options = pajson.ParseOptions(
        explicit_schema=options.columns, unexpected_field_behavior="infer"
    )

    def parse(data: bytes) -> pa.Table | None:
        if not data.strip():
            return None
        block = len(data) + 1 if len(data) < _JSON_BLOCK else _JSON_BLOCK
        return pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=block),
            parse_options=parse_options,
        )

    return parse


def _explain_json(record: bytes, exc: Exception) -> str:
    try:
        value = json.loads(record)
    except ValueError as bad:
        if isinstance(bad, json.JSONDecodeError):
            return f"invalid JSON: {bad.msg} at column {bad.colno}"
        return f"invalid JSON: {_reason(bad)}"
    if not isinstance(value, dict):
        return f"not a JSON object but {type(value).__name__}"
    return _reason(exc).removeprefix("JSON parse error: ").split(" in row ")[0]


def _ndjson(
    fs: pafs.FileSystem, path: str, source: str, at: dict[str, int] | None, options: ReadOptions
) -> Iterator[Piece]:
    parse = _json_parser(options)

    def parse_block(block: bytes, line: int) -> tuple[list[pa.Table], list[dict[str, Any]]]:
        try:
            table = parse(block)
        except (pa.ArrowException, ValueError):
            return _salvage(_records(block, line, None), parse, _explain_json, source)
        return ([table] if table is not None else []), []

    yield from _text_pieces(fs, path, _start(fs, path, at), options, _line_cut, parse_block)


def _is_document(fs: pafs.FileSystem, path: str) -> bool:
    """A .json file is one document (an array, or one object over several lines) or NDJSON."""
    with _open(fs, path, 0) as stream:
        head = bytes(stream.read(1 << 16)).removeprefix(_BOM).lstrip()
    if head.startswith(b"["):
        return True
    first = head.split(b"\n", 1)[0]
    try:
        json.loads(first)
    except ValueError:
        return head.startswith(b"{")  # an object spread over lines
    return False


def _json_document(
    fs: pafs.FileSystem, path: str, source: str, start: int, options: ReadOptions
) -> Iterator[Piece]:
    # A JSON document has no record boundaries to stream by: it is read whole.
    with _open(fs, path, 0) as stream:
        raw = bytes(stream.read()).removeprefix(_BOM)
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        if raw.lstrip().startswith(b"{"):
            raise _NotADocument from exc
        raise Unreadable(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    items = document if isinstance(document, list) else [document]
    parse = _json_parser(options)
    index = start
    while index < len(items) or index == start == 0:
        records: list[tuple[int, bytes, int]] = []
        rejected: list[dict[str, Any]] = []
        size = 0
        while index < len(items) and size < options.block_size:
            item = items[index]
            index += 1
            if isinstance(item, dict):
                text = json.dumps(item).encode()
                records.append((index, text, 0))
                size += len(text)
            else:
                rejected.append(
                    {
                        "source": source,
                        "location": f"item {index}",
                        "check": "malformed",
                        "reason": f"not a JSON object but {type(item).__name__}",
                        "record": json.dumps(item),
                    }
                )
        try:
            table = parse(b"\n".join(r for _, r, _ in records))
            tables = [table] if table is not None else []
        except (pa.ArrowException, ValueError):
            tables, bad = _salvage(records, parse, _explain_json, source, unit="item")
            rejected += bad
        yield Piece(_concat(tables), rejected, {"item": index})
        if index >= len(items):
            return


# -- CSV ---------------------------------------------------------------------------
@dataclass
class _Block:
    data: pa.Buffer
    lines: int  # line ends in the block
    plain: bool  # no line end inside a quoted value


def _csv_blocks(stream: Any, size: int, quote: bytes) -> Iterator[_Block]:
    """Blocks of whole CSV records, as Arrow buffers read `size` bytes at a time.

    A record ends at a line end after an even number of quotes (counted from the
    block's start, which is a record's start). The file's rest is one block once
    the next read comes back empty (not judged line by line: `plain` is False
    there unless it holds no quote). A record longer than a block makes the block
    grow; quoting that never closes (a malformed file) is cut at a line end after
    8 blocks."""
    mark = quote[0] if len(quote) == 1 else None
    quoted = re.compile(re.escape(quote)) if mark is not None else None
    carry: pa.Buffer | None = None
    data = stream.read_buffer(size)
    while True:
        if carry is not None and carry.size:
            data = pa.py_buffer(carry.to_pybytes() + data.to_pybytes())
        carry = None
        if not data.size:
            return
        following = stream.read_buffer(size)
        if not following.size:
            # The file's rest ends where the file does: no record end needs finding.
            # Unless it has no quote at all, the parser that allows line ends in quoted
            # values reads it (cheaper than judging every line end here).
            lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))
            yield _Block(data, lines, quoted is None or quoted.search(memoryview(data)) is None)
            return
        text = data.to_pybytes()
        if mark is None or text.find(quote) < 0:
            # No quote at all: every line end ends a record; bytes' own search is
            # several times faster than marking them in an array.
            end = text.rfind(b"\n") + 1
            if end:
                yield _Block(data.slice(0, end), text.count(b"\n"), True)
                carry, data = data.slice(end), following
            else:
                carry, data = data, following
            continue
        view = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(view == 10)
        quotes = np.flatnonzero(view == mark)
        inside = (np.searchsorted(quotes, ends) & 1).astype(bool)
        outside = np.flatnonzero(~inside)
        if len(outside):
            count = int(outside[-1]) + 1
        elif data.size > 8 * size and len(ends):
            count = len(ends)
        else:
            carry, data = data, following
            continue
        end = int(ends[count - 1]) + 1
        yield _Block(data.slice(0, end), count, not inside[:count].any())
        carry, data = data.slice(end), following


def _csv(
    fs: pafs.FileSystem, path: str, source: str, at: dict[str, int] | None, options: ReadOptions
) -> Iterator[Piece]:
    delimiter = options.delimiter or ("\t" if _plain_name(path).endswith(".tsv") else ",")
    cut = _record_cut(options.quote)
    names, after_header = _csv_header(fs, path, delimiter, options, cut)
    start = after_header if at is None else at
    declared = {f.name: f.type for f in options.columns} if options.columns is not None else {}
    quoted = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    plain = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False)
    read_options = pacsv.ReadOptions(column_names=names)

    select = None if options.select is None else list(options.select)

    def read(data: pa.Buffer | bytes, types: dict[str, pa.DataType], how: Any) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=read_options,
            parse_options=how,
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=select,
                include_missing_columns=select is not None,
            ),
        )

    def parse(data: pa.Buffer | bytes, how: Any = quoted) -> pa.Table | None:
        table = read(data, declared, how)
        if table.num_rows == 0:
            return None
        # Text that is not UTF-8 turns a column into binary: read it as text again,
        # so that the rows at fault fail and are rejected.
        binary = [
            f.name for f in table.schema if pa.types.is_binary(f.type) and f.name not in declared
        ]
        if binary:
            table = read(data, {**declared, **{name: pa.string() for name in binary}}, how)
        return table

    def explain(record: bytes, exc: Exception) -> str:
        reason = _reason(exc).removeprefix("CSV parse error: ")
        if reason.startswith("Expected") and ": " in reason:
            reason = reason.split(": ", 1)[0]  # the record itself is kept beside the reason
        if "CSV conversion error to string" in reason or "invalid UTF8" in reason:
            return "not valid UTF-8 text"
        return reason

    def parse_block(block: _Block, line: int) -> tuple[list[pa.Table], list[dict[str, Any]]]:
        try:
            table = parse(block.data, plain if block.plain else quoted)
        except (pa.ArrowException, ValueError):
            try:
                # A carriage return inside a quoted value also needs the quoted parser.
                table = parse(block.data) if block.plain else None
            except (pa.ArrowException, ValueError):
                table = None
            if table is None:
                records = _records(block.data.to_pybytes(), line, options.quote)
                return _salvage(records, parse, explain, source)
        return ([table] if table is not None else []), []

    byte, line = start["byte"], start["line"]
    with _open(fs, path, byte) as stream:
        for block in _csv_blocks(stream, options.block_size, options.quote):
            tables, rejected = parse_block(block, line)
            byte += block.data.size
            line += block.lines
            yield Piece(_concat(tables), rejected, {"byte": byte, "line": line})


def _csv_header(
    fs: pafs.FileSystem,
    path: str,
    delimiter: str,
    options: ReadOptions,
    cut: Callable[[bytearray], int],
) -> tuple[list[str], dict[str, int]]:
    """The column names, and where the data starts (after the header record, if any)."""
    start = _start(fs, path, None)
    declared = [f.name for f in options.columns] if options.columns is not None else None
    if not options.header and declared is not None:
        return declared, start
    first: tuple[int, bytes, int] | None = None
    with _open(fs, path, start["byte"]) as stream:
        for block in _blocks(stream, 1 << 16, cut):
            records = _records(block, 1, options.quote)
            first = records[0] if records else None
            break
    if first is None:
        return declared or [], start
    line, record, end = first
    if not options.header:
        if declared is not None:
            return declared, start
        table = pacsv.read_csv(
            io.BytesIO(_terminated(record)),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        )
        return list(table.schema.names), start
    table = pacsv.read_csv(
        io.BytesIO(_terminated(record)),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
    )
    return list(table.schema.names), {
        "byte": start["byte"] + end,
        "line": line + record.count(b"\n"),
    }


# -- Parquet and Avro -------------------------------------------------------------
def _parquet(fs: pafs.FileSystem, path: str, start: int, options: ReadOptions) -> Iterator[Piece]:
    with fs.open_input_file(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise Unreadable(f"not a Parquet file ({_reason(exc)})") from exc
        meta = parquet.metadata
        row, groups = 0, list[int]()
        for index in range(meta.num_row_groups):
            count = meta.row_group(index).num_rows
            if not groups and row + count <= start:
                row += count  # row groups before the start are not read
                continue
            groups.append(index)
        if not groups:
            if start == 0:
                yield Piece(parquet.schema_arrow.empty_table(), [], {"row": 0})
            return
        for batch in parquet.iter_batches(batch_size=options.batch_rows, row_groups=groups):
            before, row = row, row + batch.num_rows
            if row <= start:
                continue
            if before < start:
                batch = batch.slice(start - before)
            yield Piece(pa.Table.from_batches([batch]), [], {"row": row})


def _avro(fs: pafs.FileSystem, path: str, start: int, options: ReadOptions) -> Iterator[Piece]:
    from ._files_avro import AvroTypeError, avro_batches

    with fs.open_input_file(path) as handle:
        row = start
        try:
            for table, row in avro_batches(handle, start, options.batch_rows):
                yield Piece(table, [], {"row": row})
        except AvroTypeError as exc:
            raise Unreadable(str(exc)) from exc
        except (pa.ArrowException, OSError):
            raise
        except Exception as exc:  # fastavro reports corrupt data with many exception types
            raise Unreadable(
                f"not a readable Avro file after record {row} ({_reason(exc)})"
            ) from exc
