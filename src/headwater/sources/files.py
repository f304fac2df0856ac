"""Files source: new files matching a glob, each loaded exactly once.

Position: the set of files already loaded, each with its size and modification
time, so a new file loads once and a modified one loads again. With
`archive_to`, files are moved to an archive folder once the commit that holds
them is done (the move is only tidying: a file still in place after a crash is
recognised as loaded by the position and skipped).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ..errors import ConfigError, HeadwaterError
from .base import Increment, Position, ReadContext, Source

Format = Literal["ndjson", "json", "csv", "parquet"]
_SUFFIXES: dict[str, Format] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def _glob_base(pattern: str) -> Path:
    """The fixed leading folders of a glob ('landing/events/*.json' -> 'landing/events')."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class FilesSource(Source):
    kind = "files"

    def __init__(
        self,
        pattern: str,
        *,
        format: Format | None = None,
        archive_to: str | None = None,
        chunk_files: int = 1000,
    ) -> None:
        if format is not None and format not in _SUFFIXES.values():
            raise ConfigError(
                f"files source {pattern}: format must be one of ndjson, json, csv, parquet"
            )
        self.pattern = pattern
        self.format = format
        self.archive_to = archive_to
        self.chunk_files = chunk_files
        self._root = Path(".")

    def describe(self) -> str:
        return f"files {self.pattern}"

    def _matches(self) -> list[Path]:
        pattern = Path(self.pattern)
        if pattern.is_absolute():
            anchor = Path(pattern.anchor)
            return sorted(p for p in anchor.glob(str(pattern.relative_to(anchor))) if p.is_file())
        return sorted(p for p in self._root.glob(self.pattern) if p.is_file())

    def _key(self, path: Path) -> str:
        try:
            return path.relative_to(self._root).as_posix()
        except ValueError:
            return path.as_posix()

    def read(self, position: Position | None, ctx: ReadContext) -> Iterator[Increment]:
        self._root = ctx.project_root
        loaded: dict[str, str] = {} if position is None else dict(position.get("files", {}))
        pending = []
        for path in self._matches():
            if path.name.startswith((".", "_")):
                continue  # hidden, temporary and marker files (_SUCCESS) are not data
            signature = _signature(path)
            if loaded.get(self._key(path)) != signature:
                pending.append((path.stat().st_mtime_ns, path, signature))
        pending.sort()
        rows = 0
        tables: list[pa.Table] = []
        batch_files: dict[str, str] = {}
        for _, path, signature in pending:
            table = self._read_file(path, ctx.table)
            tables.append(table)
            batch_files[self._key(path)] = signature
            rows += table.num_rows
            if rows >= ctx.chunk_rows or len(batch_files) >= self.chunk_files:
                loaded.update(batch_files)
                yield Increment(
                    _concat(tables), {"files": dict(loaded)}, info={"files": sorted(batch_files)}
                )
                tables, batch_files, rows = [], {}, 0
        if batch_files:
            loaded.update(batch_files)
            yield Increment(
                _concat(tables), {"files": dict(loaded)}, info={"files": sorted(batch_files)}
            )

    def _read_file(self, path: Path, table: str) -> pa.Table:
        fmt = self.format or _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise HeadwaterError(
                f"table {table}: cannot tell the format of {path}",
                "set format='ndjson' | 'json' | 'csv' | 'parquet' on the files source",
            )
        try:
            if fmt == "ndjson":
                return pajson.read_json(path)
            if fmt == "json":
                with path.open() as handle:
                    data = json.load(handle)
                return pa.Table.from_pylist(data if isinstance(data, list) else [data])
            if fmt == "csv":
                return pacsv.read_csv(path)
            return pq.read_table(path)
        except (pa.ArrowInvalid, json.JSONDecodeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HeadwaterError(
                f"table {table}: cannot read {path} as {fmt}: {reason}",
                "fix or remove the file; it will be read again on the next run",
            ) from exc

    def acknowledge(self, position: Position, ctx: ReadContext) -> None:
        if not self.archive_to:
            return
        self._root = ctx.project_root
        archive = Path(self.archive_to)
        archive = archive if archive.is_absolute() else self._root / archive
        base = _glob_base(self.pattern)
        base = base if base.is_absolute() else self._root / base
        for key, signature in position.get("files", {}).items():
            path = self._root / key if not Path(key).is_absolute() else Path(key)
            if path.exists() and _signature(path) == signature:
                # Keep the layout below the glob's fixed folder (dated sub-folders stay apart).
                try:
                    destination = archive / path.relative_to(base)
                except ValueError:
                    destination = archive / path.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(destination))


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


# The name pipelines use: `files(...)` builds the connector.
files = FilesSource
