"""Files source: files matching a glob, on local disk or an object store, each loaded exactly once.

The position is the set of loaded files (size and modification time, or a
checksum) with an arrival-time watermark, so it stays small for folders that
only grow (see `_files_position`). A large file is read in pieces and may span
several increments: until its last row is committed the position holds it as
*partial* with the place to go on from, never as loaded. Rows that cannot be
parsed go to the table's quarantine with file, line and reason; the rest load.
With `archive_to`, files move to an archive folder once the commit that holds
them is done (tidying only: a file still in place after a crash is recognised
as loaded by the position and skipped). docs/sources-files.md has the rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs

from .._units import parse_duration, parse_size
from ..engine.quarantine import rejected_rows
from ..errors import ConfigError, HeadwaterError
from ._files_formats import FORMATS, Format, Piece, ReadOptions, Unreadable, format_of, pieces
from ._files_fs import Found, Location, discover, move, read_manifest
from ._files_position import FilesState, Partial, Seen
from .base import Increment, Position, ReadContext, Source

__all__ = ["FilesSource", "files"]
Changes = Literal["mtime", "checksum"]


@dataclass
class _Task:
    found: Found
    seen: Seen
    fmt: Format | None
    at: dict[str, int] | None = None  # resume a partial file here
    touch: bool = False  # same content under a new stamp: remember, do not reload


@dataclass
class _Batch:
    """Rows, rejections and finished files gathered for the next increment."""

    tables: list[pa.Table] = field(default_factory=list)
    schema: pa.Schema | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    partial: bool = False  # ends inside a file

    def fits(self, table: pa.Table) -> bool:
        if self.schema is None:
            return True
        try:
            pa.unify_schemas([self.schema, table.schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return False
        return True

    def add(self, piece: Piece) -> None:
        self.rejected += piece.rejected
        if piece.table is None:
            return
        table = piece.table
        self.schema = (
            table.schema
            if self.schema is None
            else pa.unify_schemas([self.schema, table.schema], promote_options="permissive")
        )
        self.tables.append(table)
        self.rows += table.num_rows
        self.bytes += table.nbytes

    @property
    def empty(self) -> bool:
        return not (self.tables or self.rejected or self.files or self.partial)

    def data(self) -> pa.Table:
        if not self.tables:
            return pa.table({})
        if len(self.tables) == 1:
            return self.tables[0]
        return pa.concat_tables(self.tables, promote_options="permissive")


class FilesSource(Source):
    """`files(pattern, ...)`: new and modified files matching a glob.

    pattern: a local glob (relative to the project), a URI (`file://`, `s3://`,
    `gs://`, `abfs://`, or any fsspec scheme), or a path in `filesystem`.
    select: the columns to keep, in this order (None: all). CSV converts only these
    (the others are skipped over, not parsed into values); a column a file lacks is
    null in CSV and left out in the other formats.
    """

    kind = "files"

    def __init__(
        self,
        pattern: str,
        *,
        format: Format | None = None,
        archive_to: str | None = None,
        chunk_files: int = 1000,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
        connection: str | None = None,
        marker: str | None = None,
        manifest: str | None = None,
        detect_changes: Changes = "mtime",
        lookback: str | float | timedelta | None = "1h",
        max_remembered: int = 10_000,
        columns: dict[str, Any] | pa.Schema | None = None,
        delimiter: str | None = None,
        header: bool = True,
        block_size: str | int = "16MB",
        chunk_bytes: str | int = "256MB",
        select: Sequence[str] | None = None,
    ) -> None:
        where = f"files source {pattern}"
        if format is not None and format not in FORMATS:
            raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}")
        if marker is not None and manifest is not None:
            raise ConfigError(f"{where}: give marker= or manifest=, not both")
        if detect_changes not in ("mtime", "checksum"):
            raise ConfigError(f"{where}: detect_changes must be 'mtime' or 'checksum'")
        if chunk_files < 1 or max_remembered < 1:
            raise ConfigError(f"{where}: chunk_files and max_remembered must be at least 1")
        self.pattern = pattern
        self.format = format
        self.archive_to = archive_to
        self.chunk_files = chunk_files
        self.filesystem = filesystem
        self.storage_options = dict(storage_options or {})
        self.connection = connection
        self.marker = marker
        self.manifest = manifest
        self.detect_changes = detect_changes
        self.lookback = (
            None
            if lookback is None
            else int(parse_duration(lookback, f"{where}: lookback").total_seconds() * 1e9)
        )
        self.max_remembered = max_remembered
        self.chunk_bytes = parse_size(chunk_bytes, f"{where}: chunk_bytes")
        self.options = ReadOptions(
            columns=_schema(columns, where),
            delimiter=delimiter,
            header=header,
            block_size=max(1, parse_size(block_size, f"{where}: block_size")),
            select=None if select is None else tuple(select),
        )

    def describe(self) -> str:
        return f"files {self.pattern}" + (f" ({self.format})" if self.format else "")

    # -- where ---------------------------------------------------------------------
    def _location(self, ctx: ReadContext) -> Location:
        options = dict(self.storage_options)
        if self.connection is not None:
            options = {**ctx.connection(self.connection), **options}
        return Location.resolve(self.pattern, ctx.project_root, self.filesystem, options)

    def _archive_base(self, loc: Location) -> str | None:
        if not self.archive_to:
            return None
        target = self.archive_to
        if "://" in target:
            return target.split("://", 1)[1].rstrip("/")
        if target.startswith("/"):
            return target.rstrip("/")
        if isinstance(loc.fs, pafs.LocalFileSystem):
            root = loc.root if loc.root is not None else None
            if root is None:
                raise ConfigError(
                    f"files source {self.pattern}: archive_to {target!r} is relative but the pattern is not",
                    "give archive_to as an absolute path",
                )
            return f"{root}/{target}".rstrip("/")
        return f"{loc.base.rstrip('/')}/{target}".rstrip("/")

    # -- reading -------------------------------------------------------------------
    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        loc = self._location(ctx)
        archive = self._archive_base(loc)
        now = int(ctx.run_ts.timestamp() * 1e9)
        state = FilesState.from_position(position)
        listing = discover(loc, self.marker, self.manifest, exclude=archive)
        tasks = self._plan(loc, state, listing.ready, ctx)
        if not tasks:
            return
        state.forget_absent(listing.present)
        if state.partial is not None and tasks[0].at is None:
            state.partial = None  # the partial file changed or went away
        # The floor may never pass a file still to be loaded (a crash would make it look old).
        limits: list[int | None] = [None] * (len(tasks) + 1)
        for i in range(len(tasks) - 1, -1, -1):
            arrived = tasks[i].seen.arrived
            later = limits[i + 1]
            limits[i] = (
                arrived if later is None else later if arrived is None else min(arrived, later)
            )
        lookback = None if archive else self.lookback
        batch = _Batch()
        last_files: list[str] = []
        # Delta cannot create a table without columns: while the table does not exist,
        # files that gave no columns (empty files) wait for a batch that has some.
        exists = ctx.resolve is None or ctx.resolve(ctx.table).exists

        def creatable() -> bool:
            return exists or (batch.schema is not None and len(batch.schema) > 0)

        def increment(limit: int | None) -> Increment:
            nonlocal batch, last_files, exists
            exists = creatable()
            state.advance(lookback, self.max_remembered, limit)
            made = Increment(
                batch.data(),
                state.to_position(),
                info={"files": list(batch.files), "rejected": len(batch.rejected)},
                rejected=rejected_rows(batch.rejected) if batch.rejected else None,
            )
            last_files, batch = batch.files, _Batch()
            return made

        def archived() -> None:
            # After a committed increment was acknowledged its files are in the
            # archive; forgetting them keeps the position from growing in the run.
            if archive and last_files:
                infos = loc.stat(loc.path(k) for k in last_files)
                for key in last_files:
                    if infos[loc.path(key)].type == pafs.FileType.NotFound:
                        state.files.pop(key, None)

        for index, task in enumerate(tasks):
            key = task.found.key
            if task.touch:
                state.loaded(key, task.seen, now)
                batch.files.append(key)
            else:
                at = task.at
                mine = False  # the batch holds rows of this file
                full = False  # flush before the next piece (none next: the file is done)
                stream = self._pieces(loc, task, ctx)
                while True:
                    try:
                        piece = next(stream, None)
                    except HeadwaterError:
                        if not batch.empty and creatable():  # commit what came before
                            state.partial = Partial(key, task.seen, at) if at is not None else None
                            batch.partial = True
                            yield increment(limits[index])
                        raise
                    if piece is None:
                        break
                    fits = piece.table is None or batch.fits(piece.table)
                    if mine and not fits and not full:
                        raise self._conflict(ctx, key, batch, piece)
                    if full or not fits:
                        state.partial = Partial(key, task.seen, at) if at is not None else None
                        batch.partial = at is not None
                        yield increment(limits[index])
                        archived()
                        mine = False
                    batch.add(piece)
                    mine, at = True, piece.at
                    full = batch.rows >= ctx.chunk_rows or batch.bytes >= self.chunk_bytes
                state.partial = None
                state.loaded(key, task.seen, now)
                batch.files.append(key)
            if creatable() and (
                len(batch.files) >= self.chunk_files
                or batch.rows >= ctx.chunk_rows
                or batch.bytes >= self.chunk_bytes
            ):
                yield increment(limits[index + 1])
                archived()
        if not batch.empty and creatable():
            yield increment(None)

    def _conflict(self, ctx: ReadContext, key: str, batch: _Batch, piece: Piece) -> HeadwaterError:
        assert batch.schema is not None and piece.table is not None
        reason = "incompatible types"
        try:
            pa.unify_schemas([batch.schema, piece.table.schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            reason = str(exc).strip().splitlines()[0]
        return HeadwaterError(
            f"table {ctx.table}: {key}: its rows disagree on a column's type ({reason})",
            "declare the column's type on the source, e.g. files(..., columns={'name': 'string'})",
        )

    def _plan(
        self, loc: Location, state: FilesState, ready: list[Found], ctx: ReadContext
    ) -> list[_Task]:
        partial = state.partial
        resume: list[_Task] = []
        tasks: list[_Task] = []
        for found in ready:
            fmt = self.format or format_of(found.path)
            seen = Seen(found.size, found.mtime, found.time if found.time != found.mtime else None)
            if partial is not None and found.key == partial.key and partial.seen.same_stamp(seen):
                resume.append(
                    _Task(found, replace(seen, digest=partial.seen.digest), fmt, partial.at)
                )
                continue
            if state.is_loaded(found.key, seen):
                continue
            if fmt is None:
                raise HeadwaterError(
                    f"table {ctx.table}: cannot tell the format of {found.key}",
                    f"set format= ({', '.join(FORMATS)}) on the files source, or narrow the pattern",
                )
            if self.detect_changes == "checksum":
                digest = self._digest(loc, found, ctx)
                known = state.files.get(found.key)
                seen = replace(seen, digest=digest)
                if known is not None and known.digest == digest:
                    tasks.append(_Task(found, seen, fmt, touch=True))
                    continue
            tasks.append(_Task(found, seen, fmt))
        now = int(ctx.run_ts.timestamp() * 1e9)
        tasks.sort(key=lambda t: (min(t.seen.arrived or now, now), t.found.key))
        return resume + tasks

    def _pieces(self, loc: Location, task: _Task, ctx: ReadContext) -> Iterator[Piece]:
        """How one file becomes pieces of rows. Subclasses that parse files their own way
        (the Debezium source) override this and keep listing, positions and archiving."""
        assert task.fmt is not None
        try:
            yield from pieces(
                loc.fs, task.found.path, task.found.key, task.fmt, self.options, task.at
            )
        except Unreadable as exc:
            raise HeadwaterError(
                f"table {ctx.table}: cannot read {task.found.key} as {task.fmt}: {exc}",
                "fix or replace the file (a changed file is read again); files after it wait until then",
            ) from exc

    def _digest(self, loc: Location, found: Found, ctx: ReadContext) -> str:
        digest = hashlib.blake2b(digest_size=16)
        try:
            with loc.fs.open_input_stream(found.path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise HeadwaterError(
                f"table {ctx.table}: cannot read {found.key} to checksum it: {exc}",
                "check the file's permissions",
            ) from exc
        return digest.hexdigest()

    # -- after the commit ---------------------------------------------------------------
    def acknowledge(self, position: Position, ctx: ReadContext) -> None:
        if not self.archive_to or not position:
            return
        loc = self._location(ctx)
        archive = self._archive_base(loc)
        assert archive is not None
        state = FilesState.from_position(position)
        paths = {key: loc.path(key) for key in state.files}
        infos = loc.stat(paths.values())
        folders: set[str] = set()
        for key, seen in state.files.items():
            path = paths[key]
            info = infos[path]
            folders.add(path.rpartition("/")[0])
            stamp = Seen(int(info.size or 0), None if info.mtime_ns is None else int(info.mtime_ns))
            if info.type == pafs.FileType.File and stamp.same_stamp(seen):
                move(loc, path, f"{archive}/{loc.relative(path)}")
        if self.marker or self.manifest:
            for folder in sorted(folders):
                self._tidy(loc, folder, archive)

    def _tidy(self, loc: Location, folder: str, archive: str) -> None:
        """Archive a folder's marker or manifest once none of its files is left."""
        name = self.marker or self.manifest
        assert name is not None
        marker = loc.stat([f"{folder}/{name}"])[f"{folder}/{name}"]
        if marker.type != pafs.FileType.File:
            return
        if self.manifest:
            listed = [
                f"{folder}/{p}" if not p.startswith("/") else p
                for p, _ in read_manifest(loc, marker)
            ]
            left = any(i.type == pafs.FileType.File for i in loc.stat(listed).values())
        else:
            infos = loc.fs.get_file_info(
                pafs.FileSelector(folder, recursive=False, allow_not_found=True)
            )
            left = any(
                i.type == pafs.FileType.File
                and not i.base_name.startswith((".", "_"))
                and loc.matches(i.path)
                for i in infos
            )
        if not left:
            move(loc, marker.path, f"{archive}/{loc.relative(marker.path)}")


def _schema(columns: dict[str, Any] | pa.Schema | None, where: str) -> pa.Schema | None:
    if columns is None or isinstance(columns, pa.Schema):
        return columns
    fields = []
    for name, kind in columns.items():
        if isinstance(kind, pa.DataType):
            fields.append(pa.field(name, kind))
            continue
        try:
            fields.append(pa.field(name, pa.type_for_alias(str(kind))))
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{where}: column {name!r}: unknown type {kind!r}",
                "use an Arrow type name (string, int64, double, bool, date32, timestamp[us]) or a pyarrow type",
            ) from exc
    return pa.schema(fields)


# The name pipelines use: `files(...)` builds the connector.
files = FilesSource
