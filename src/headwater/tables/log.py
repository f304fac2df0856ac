"""Reading single commits of a table's Delta log (`_delta_log/<version>.json`).

The change feed needs each commit's own actions (which files it added and
removed, its change-data files and commit metadata); a snapshot only has the
net result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow.fs as pafs

from ..errors import HeadwaterError
from .delta import DeltaTarget


@dataclass
class CommitActions:
    version: int
    info: dict[str, Any] = field(default_factory=dict)
    adds: list[dict[str, Any]] = field(default_factory=list)
    removes: list[dict[str, Any]] = field(default_factory=list)
    cdc: list[dict[str, Any]] = field(default_factory=list)
    metadata_changed: bool = False

    @property
    def headwater(self) -> dict[str, Any]:
        meta = self.info.get("headwater")
        return meta if isinstance(meta, dict) else {}

    @property
    def timestamp_ms(self) -> int | None:
        value = self.info.get("timestamp")
        return int(value) if value is not None else None


class ChangesUnavailable(HeadwaterError):
    """The log no longer holds the commits a reader needs."""


def _commit_file(target: DeltaTarget, version: int) -> tuple[pafs.FileSystem, str]:
    fs, root = target.filesystem()
    name = f"_delta_log/{version:020d}.json"
    return fs, f"{root}/{name}" if root else name


def commit_exists(target: DeltaTarget, version: int) -> bool:
    """Whether the log holds commit `version` (a look at one file, not the whole log)."""
    fs, path = _commit_file(target, version)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_commit(target: DeltaTarget, version: int) -> CommitActions:
    fs, path = _commit_file(target, version)
    try:
        with fs.open_input_stream(path) as handle:
            text = handle.read().decode()
    except (FileNotFoundError, OSError) as exc:
        raise ChangesUnavailable(
            f"table {target.name}: commit {version} is no longer in the log (expired by log retention)",
            "rebuild the reading table with --full-refresh",
        ) from exc
    commit = CommitActions(version)
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            commit.info = action["commitInfo"]
        elif "add" in action:
            commit.adds.append(action["add"])
        elif "remove" in action:
            commit.removes.append(action["remove"])
        elif "cdc" in action:
            commit.cdc.append(action["cdc"])
        elif "metaData" in action:
            commit.metadata_changed = True
    return commit


def file_path(action: dict[str, Any]) -> str:
    """The storage path (relative to the table root) of an add/remove/cdc action."""
    return unquote(str(action["path"]))
