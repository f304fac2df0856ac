"""Where the files source finds files: one filesystem layer for local folders and object stores.

Everything goes through `pyarrow.fs`: local paths, `file://` and the object
stores pyarrow speaks natively (`s3://`, `gs://`, `hdfs://`, `abfs://`), and any
fsspec filesystem (given as an object, or by a URI scheme pyarrow does not know),
wrapped with `pyarrow.fs.FSSpecHandler`. Globs are expanded here, one folder
level at a time (`**` lists below the fixed part recursively), because object
stores have no glob of their own.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ..errors import ConfigError, HeadwaterError

log = logging.getLogger("headwater.sources.files")
_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Found:
    """A data file to consider: where it is, its name in the position, and its stamp."""

    path: str  # in the filesystem
    key: str  # in the position
    size: int
    mtime: int | None  # nanoseconds; None where the store keeps none
    # When the file counts as arrived: its mtime, or its folder's marker/manifest if later.
    time: int | None


@dataclass
class Listing:
    """What one scan of the pattern found."""

    ready: list[Found] = field(default_factory=list)  # files that may be loaded now
    present: set[str] = field(default_factory=set)  # keys of every matched file, ready or not
    waiting: list[str] = field(default_factory=list)  # folders held back (no marker yet...)


def as_arrow_filesystem(filesystem: Any) -> pafs.FileSystem:
    """A pyarrow filesystem for a pyarrow or fsspec filesystem object."""
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    if hasattr(filesystem, "protocol") and hasattr(filesystem, "info"):
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise ConfigError(
        f"files source: filesystem must be a pyarrow.fs.FileSystem or an fsspec filesystem, not {type(filesystem).__name__}"
    )


def _uri_filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[pafs.FileSystem, str]:
    if not storage_options:
        try:
            return pafs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
        except (ValueError, OSError):
            pass  # a scheme pyarrow does not speak: try fsspec
    try:
        fsspec = importlib.import_module("fsspec")
    except ImportError as exc:
        raise ConfigError(
            f"files source {uri}: this kind of storage needs fsspec",
            "pip install fsspec (and the package for the store, e.g. s3fs, gcsfs, adlfs)",
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"files source {uri}: cannot open this storage: {exc}",
            "install the fsspec package for the store (s3fs, gcsfs, adlfs...) or check the URI",
        ) from exc
    return as_arrow_filesystem(fs), str(path)


def translate(segment: str) -> str:
    """A regular expression for one glob segment: `*` and `?` never cross a `/`."""
    out, i = [], 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = segment.find("]", i + 2 if segment[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = segment[i + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _hidden(name: str) -> bool:
    # Hidden, temporary and marker files (.tmp, _SUCCESS, _temporary/) are never data.
    return name.startswith((".", "_"))


@dataclass
class Location:
    """A pattern resolved to a filesystem, its fixed leading folder and the rest of the glob."""

    fs: pafs.FileSystem
    base: str
    parts: tuple[str, ...]
    root: str | None  # keys are relative to this local folder (the project root)
    pattern: str
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        pattern: str,
        root: Path,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Location:
        text = pattern
        local_root: str | None = None
        if filesystem is not None:
            fs = as_arrow_filesystem(filesystem)
            text = text.split("://", 1)[1] if "://" in text else text
            prefix_fs: pafs.FileSystem | None = fs
        elif "://" in text:
            prefix_fs = None
        else:
            # Local files are named relative to the project in the position (where below it).
            local_root = root.absolute().as_posix()
            path = Path(text)
            path = path if path.is_absolute() else Path(local_root) / path
            text, prefix_fs = path.as_posix(), pafs.LocalFileSystem()
        segments = text.split("/")
        fixed = next((i for i, s in enumerate(segments) if _WILD.search(s)), len(segments))
        prefix = "/".join(segments[:fixed])
        if prefix_fs is None:
            prefix_fs, prefix = _uri_filesystem(prefix, storage_options or {})
        fs = prefix_fs
        parts = tuple(s for s in segments[fixed:] if s)
        if parts and parts[-1] == "**":
            parts += ("*",)  # 'folder/**': every file below it
        base = prefix.rstrip("/") or "/"
        if not parts:
            # No wildcard: the pattern names one file, or a folder whose files are all read.
            info = fs.get_file_info(base)
            if info.type == pafs.FileType.Directory:
                parts = ("*",)
            else:
                base, _, name = base.rpartition("/")
                base, parts = base or "/", (name,)
        return cls(fs, base, parts, local_root, pattern)

    def key(self, path: str) -> str:
        if self.root is not None and path.startswith(self.root + "/"):
            return path[len(self.root) + 1 :]
        return path

    def path(self, key: str) -> str:
        if self.root is not None and not key.startswith("/"):
            return f"{self.root}/{key}"
        return key

    def relative(self, path: str) -> str:
        """`path` below the glob's fixed folder (dated sub-folders stay apart in an archive)."""
        base = self.base.rstrip("/") + "/"
        return path[len(base) :] if path.startswith(base) else path.rpartition("/")[2]

    # -- listing ---------------------------------------------------------------
    def folders(self) -> dict[str, list[pafs.FileInfo]]:
        """The files of every folder the pattern's folder part matches, by folder."""
        by_folder: dict[str, list[pafs.FileInfo]] = {}
        if "**" in self.parts:
            infos = self._select(self.base, recursive=True)
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                folder, _, _ = info.path.rpartition("/")
                inside = self.relative(folder) if folder != self.base.rstrip("/") else ""
                if any(_hidden(p) for p in inside.split("/") if p):
                    continue
                by_folder.setdefault(folder, []).append(info)
            return by_folder
        folders = [self.base]
        for segment in self.parts[:-1]:
            wild = bool(_WILD.search(segment))
            rx = re.compile(translate(segment))
            found = []
            for folder in folders:
                if not wild:
                    child = f"{folder.rstrip('/')}/{segment}"
                    if self.fs.get_file_info(child).type == pafs.FileType.Directory:
                        found.append(child)
                    continue
                for info in self._select(folder, recursive=False):
                    name = info.base_name
                    if (
                        info.type == pafs.FileType.Directory
                        and not _hidden(name)
                        and rx.fullmatch(name)
                    ):
                        found.append(info.path)
            folders = sorted(found)
        for folder in folders:
            files = [
                i for i in self._select(folder, recursive=False) if i.type == pafs.FileType.File
            ]
            if files:
                by_folder[folder.rstrip("/") or "/"] = files
        return by_folder

    def matches(self, path: str) -> bool:
        """Whether a file path matches the whole pattern."""
        if self._regex is None:
            *folders, name = self.parts
            self._regex = re.compile(
                "".join("(?:[^/]+/)*" if p == "**" else translate(p) + "/" for p in folders)
                + translate(name)
            )
        return self._regex.fullmatch(self.relative(path)) is not None

    def _select(self, folder: str, *, recursive: bool) -> list[pafs.FileInfo]:
        try:
            return list(
                self.fs.get_file_info(
                    pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
                )
            )
        except (OSError, ValueError) as exc:
            raise HeadwaterError(
                f"files source {self.pattern}: cannot list {folder}: {_first_line(exc)}",
                "check the path and the credentials of the storage",
            ) from exc

    def stat(self, paths: Iterable[str]) -> dict[str, pafs.FileInfo]:
        wanted = list(paths)
        if not wanted:
            return {}
        return {p: i for p, i in zip(wanted, self.fs.get_file_info(wanted), strict=True)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stamp(info: pafs.FileInfo) -> int | None:
    mtime = info.mtime_ns
    return None if mtime is None else int(mtime)


def _later(a: int | None, b: int | None) -> int | None:
    return None if a is None else (a if b is None else max(a, b))


def discover(
    loc: Location, marker: str | None, manifest: str | None, exclude: str | None = None
) -> Listing:
    """Scan the pattern: ready files (with their arrival time), every matched key, held-back
    folders. Files under `exclude` (the archive) are never data."""
    listing = Listing()
    for folder, infos in sorted(loc.folders().items()):
        if exclude is not None and (folder == exclude or folder.startswith(exclude + "/")):
            continue
        by_name = {i.base_name: i for i in infos}
        if manifest is not None:
            if manifest in by_name:
                _from_manifest(loc, folder, by_name[manifest], listing)
            continue
        data = [i for i in infos if not _hidden(i.base_name) and loc.matches(i.path)]
        if not data:
            continue
        gate: pafs.FileInfo | None = None
        if marker is not None:
            gate = by_name.get(marker)
            if gate is None:
                listing.present.update(loc.key(i.path) for i in data)
                listing.waiting.append(folder)
                continue
        for info in data:
            _add(loc, listing, info, None if gate is None else _stamp(gate))
    return listing


def _add(loc: Location, listing: Listing, info: pafs.FileInfo, gate: int | None) -> None:
    mtime = _stamp(info)
    key = loc.key(info.path)
    if key not in listing.present:  # a file listed twice loads once
        listing.ready.append(Found(info.path, key, int(info.size or 0), mtime, _later(mtime, gate)))
    listing.present.add(key)


def read_manifest(loc: Location, info: pafs.FileInfo) -> list[tuple[str, int | None]]:
    """The files a manifest lists: JSON (a list, or {"files": [...]}, entries a path or
    {"path", "size"}) or plain text with one path per line."""
    try:
        with loc.fs.open_input_stream(info.path) as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadwaterError(
            f"files source {loc.pattern}: cannot read manifest {info.path}: {_first_line(exc)}",
            "the manifest must be UTF-8 text: JSON or one file name per line",
        ) from exc
    entries: list[Any]
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parsed = parsed.get("files")
    if isinstance(parsed, list):
        entries = parsed
    else:
        entries = [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    listed: list[tuple[str, int | None]] = []
    for entry in entries:
        if isinstance(entry, str):
            listed.append((entry, None))
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
            size = entry.get("size")
            listed.append((entry["path"], int(size) if size is not None else None))
        else:
            raise HeadwaterError(
                f"files source {loc.pattern}: manifest {info.path} has an entry that is not a file name: {entry!r}",
                'list files as "name" or {"path": "name", "size": bytes}',
            )
    return listed


def _from_manifest(loc: Location, folder: str, manifest: pafs.FileInfo, listing: Listing) -> None:
    listed = read_manifest(loc, manifest)
    paths = [
        name.split("://", 1)[1]
        if "://" in name
        else name
        if name.startswith("/")
        else f"{folder}/{name}"
        for name, _ in listed
    ]
    infos = loc.stat(paths)
    missing = []
    for (name, size), path in zip(listed, paths, strict=True):
        info = infos[path]
        if info.type != pafs.FileType.File:
            missing.append(f"{name} is missing")
        elif size is not None and info.size != size:
            missing.append(f"{name} has {info.size} bytes, not {size}")
    if missing:
        # Not complete yet (or tidied away): the folder waits rather than loading part of it.
        log.warning(
            "manifest %s is not satisfied (%s); its folder waits", manifest.path, missing[0]
        )
        listing.waiting.append(folder)
        listing.present.update(loc.key(p) for p in paths)
        return
    for path in paths:
        _add(loc, listing, infos[path], _stamp(manifest))


def move(loc: Location, source: str, destination: str) -> None:
    parent = destination.rpartition("/")[0]
    try:
        if parent:
            loc.fs.create_dir(parent, recursive=True)
        loc.fs.move(source, destination)
    except OSError as exc:
        raise HeadwaterError(
            f"files source {loc.pattern}: cannot archive {source} to {destination}: {_first_line(exc)}",
            "check that the archive folder is writable; the file is already loaded and will be archived on the next run",
        ) from exc
