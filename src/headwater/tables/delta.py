"""Access to one Delta table: its snapshot, files, schema, and where to write."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from ..errors import HeadwaterError
from .writer import FileWriter


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def table_filesystem(
    uri: str, storage_options: dict[str, str] | None = None
) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the table root inside it (local disk or object store)."""
    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(uri, storage_options or {})), ""


class DeltaTarget:
    """One table location. Holds the snapshot loaded last; `refresh()` reloads it."""

    def __init__(
        self, uri: str, name: str = "", storage_options: dict[str, str] | None = None
    ) -> None:
        self.uri = uri.rstrip("/")
        self.name = name or uri
        self.storage_options = dict(storage_options or {})
        self._table: DeltaTable | None = None
        self._loaded = False

    # -- snapshot ----------------------------------------------------------
    def refresh(self) -> DeltaTarget:
        self._loaded = False
        self._table = None
        for attr in ("schema", "add_actions", "partition_by"):
            self.__dict__.pop(attr, None)
        return self

    def load(self, version: int | str | datetime | None = None) -> DeltaTable | None:
        """The table at `version` (number, timestamp) or latest; None if it does not exist."""
        if version is None and self._loaded:
            return self._table
        try:
            table = DeltaTable(self.uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            table = None
        if version is not None:
            if table is None:
                raise HeadwaterError(
                    f"table {self.name} does not exist yet", "run it first with `headwater run`"
                )
            try:
                table.load_as_version(version)
            except Exception as exc:
                raise HeadwaterError(
                    f"table {self.name} has no version {version}: {str(exc).splitlines()[0]}",
                    f"`headwater history {self.name}` lists the versions",
                ) from exc
            return table
        self._table, self._loaded = table, True
        return table

    @property
    def exists(self) -> bool:
        return self.load() is not None

    @property
    def table(self) -> DeltaTable:
        table = self.load()
        if table is None:
            raise HeadwaterError(
                f"table {self.name} does not exist yet", "run it first with `headwater run`"
            )
        return table

    @property
    def version(self) -> int | None:
        table = self.load()
        return None if table is None else table.version()

    @cached_property
    def schema(self) -> pa.Schema | None:
        table = self.load()
        return None if table is None else pa.schema(table.schema())

    @cached_property
    def partition_by(self) -> tuple[str, ...]:
        table = self.load()
        return () if table is None else tuple(table.metadata().partition_columns)

    @cached_property
    def add_actions(self) -> pa.Table:
        """One row per live data file: path (as logged), size, partition.* and stats."""
        table = self.load()
        if table is None:
            return pa.table({"path": pa.array([], pa.string())})
        return pa.table(table.get_add_actions(flatten=True))

    # -- reading -----------------------------------------------------------
    def dataset(
        self, paths: Iterable[str] | None = None, table: DeltaTable | None = None
    ) -> ds.Dataset:
        """The snapshot (latest, or `table`) as a pyarrow dataset, optionally only the
        files in `paths` (as logged).

        Built from the add actions alone, so reads never depend on how a writer
        filled in file statistics: pyarrow prunes row groups by the Parquet
        footers, which are exact.
        """
        source = table or self.table
        features = set(source.protocol().reader_features or [])
        if {"deletionVectors", "columnMapping"} & features:
            # Features Headwater does not write itself; delta-rs applies them.
            dataset = source.to_pyarrow_dataset()
            if paths is None:
                return dataset
            wanted = {unquote(p) for p in paths}
            fragments = [f for f in dataset.get_fragments() if f.path.lstrip("/") in wanted]
            return ds.FileSystemDataset(
                fragments, dataset.schema, dataset.format, dataset.filesystem
            )
        schema = pa.schema(source.schema())
        partition_by = list(source.metadata().partition_columns)
        actions = (
            self.add_actions if table is None else pa.table(source.get_add_actions(flatten=True))
        )
        rows = actions.select(["path", *[f"partition.{c}" for c in partition_by]]).to_pylist()
        if paths is not None:
            wanted = set(paths)
            rows = [r for r in rows if r["path"] in wanted]
        expressions = []
        for row in rows:
            expression = ds.scalar(True)
            for column in partition_by:
                value = row[f"partition.{column}"]
                field = ds.field(column)
                if value is None:
                    expression &= field.is_null()
                else:
                    expression &= field == pa.scalar(value, schema.field(column).type)
            expressions.append(expression)
        fs, root = self._fs
        filesystem = pafs.SubTreeFileSystem(root, fs) if root else fs
        # No pre-buffering: files are streamed batch by batch, and pre-buffering
        # holds a whole row group's bytes per column in memory.
        file_format = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us"),
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
        )
        return ds.FileSystemDataset.from_paths(
            [unquote(r["path"]) for r in rows],
            schema=schema,
            format=file_format,
            filesystem=filesystem,
            partitions=expressions,
        )

    def dataset_after(
        self, snapshot: DeltaTable | None, schema: pa.Schema, adds: list[Any], removes: list[Any]
    ) -> ds.Dataset:
        """The table as it would be once staged `adds` and `removes` are committed."""
        removed = {r.path for r in removes}
        partition_by = list(snapshot.metadata().partition_columns) if snapshot is not None else []
        rows: list[tuple[str, dict[str, Any]]] = []
        if snapshot is not None:
            actions = (
                self.add_actions
                if snapshot is self._table
                else pa.table(snapshot.get_add_actions(flatten=True))
            )
            for row in actions.to_pylist():
                if row["path"] not in removed:
                    rows.append((row["path"], {c: row.get(f"partition.{c}") for c in partition_by}))
        for add in adds:
            partition_by = partition_by or list(add.partition_values)
            typed = {c: _typed(v, schema.field(c).type) for c, v in add.partition_values.items()}
            rows.append((add.path, typed))
        return self._files_dataset(rows, schema, partition_by)

    def _files_dataset(
        self, rows: list[tuple[str, dict[str, Any]]], schema: pa.Schema, partition_by: list[str]
    ) -> ds.Dataset:
        expressions = []
        for _, values in rows:
            expression = ds.scalar(True)
            for column in partition_by:
                value = values.get(column)
                field = ds.field(column)
                if value is None:
                    expression &= field.is_null()
                else:
                    expression &= field == pa.scalar(value, schema.field(column).type)
            expressions.append(expression)
        fs, root = self._fs
        filesystem = pafs.SubTreeFileSystem(root, fs) if root else fs
        file_format = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us"),
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
        )
        return ds.FileSystemDataset.from_paths(
            [unquote(path) for path, _ in rows],
            schema=schema,
            format=file_format,
            filesystem=filesystem,
            partitions=expressions,
        )

    # -- writing -----------------------------------------------------------
    @cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return table_filesystem(self.uri, self.storage_options)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return self._fs

    def writer(
        self,
        schema: pa.Schema,
        partition_by: tuple[str, ...],
        target_file_size: int,
        compression: str,
        subdir: str = "",
        data_change: bool = True,
    ) -> FileWriter:
        fs, root = self._fs
        if is_local(self.uri):
            Path(root).mkdir(parents=True, exist_ok=True)
        return FileWriter(
            fs, root, schema, partition_by, target_file_size, compression, subdir, data_change
        )

    def delete_files(self, relative_paths: Iterable[str]) -> None:
        fs, root = self._fs
        for rel in relative_paths:
            with contextlib.suppress(OSError):
                fs.delete_file(f"{root}/{unquote(rel)}" if root else unquote(rel))

    def read_json(self, relative: str) -> Any:
        import json

        fs, root = self._fs
        with fs.open_input_stream(f"{root}/{relative}" if root else relative) as handle:
            return [
                json.loads(line) for line in handle.read().decode().splitlines() if line.strip()
            ]


def _typed(text: str | None, dtype: pa.DataType) -> Any:
    """A partition value as logged (text) in the column's type."""
    import pyarrow.compute as pc

    if text is None:
        return None
    if pa.types.is_timestamp(dtype) and dtype.tz is not None:
        return pc.cast(pc.cast(pa.array([text]), pa.timestamp("us")), dtype)[0].as_py()
    return pc.cast(pa.array([text]), dtype)[0].as_py()
