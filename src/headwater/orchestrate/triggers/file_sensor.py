"""file_sensor("landing/{ds}/_SUCCESS"): run once a file or marker appears.

The pattern is a glob relative to the project (or absolute). For a table with
an interval, it is formatted with the interval first: `{ds}` (start date,
YYYY-MM-DD), `{ds_nodash}`, `{start:%Y/%m/%d}`, `{end:...}`; the interval's
run waits until a file matches, poking every `poke`, and fails with an alert
when `timeout` passes after the interval became eligible. Without an interval,
the table runs whenever the set of matching files changes.
"""

from __future__ import annotations

import glob
import hashlib
from datetime import timedelta
from pathlib import Path

from ...engine.interval import Interval
from ...errors import ConfigError
from .base import Sensor


class FileSensor(Sensor):
    kind = "file-sensor"

    def __init__(
        self,
        pattern: str,
        poke: str | float | timedelta = "30s",
        timeout: str | float | timedelta = "6h",
    ) -> None:
        super().__init__(poke, timeout)
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("file_sensor: pattern must be a non-empty path or glob")
        self.pattern = pattern

    def describe(self) -> str:
        return f"file sensor {self.pattern!r} (poke {self.poke}, timeout {self.timeout})"

    def resolve(self, root: Path, interval: Interval | None) -> str:
        pattern = self.pattern
        if interval is not None:
            try:
                pattern = pattern.format(
                    ds=interval.start.date().isoformat(),
                    ds_nodash=interval.start.strftime("%Y%m%d"),
                    start=interval.start,
                    end=interval.end,
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"file_sensor {self.pattern!r}: cannot fill in {exc}",
                    "use {ds}, {ds_nodash}, {start:%Y-%m-%d} or {end:...}",
                ) from None
        path = Path(pattern)
        return str(path if path.is_absolute() else root / path)

    def poke_once(self, root: Path, interval: Interval | None) -> str | None:
        """A token naming what matched (changes when the files change), or None."""
        matched = sorted(glob.glob(self.resolve(root, interval), recursive=True))
        if not matched:
            return None
        digest = hashlib.sha1()
        for name in matched:
            try:
                stat = Path(name).stat()
            except OSError:
                continue  # vanished between glob and stat
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def file_sensor(
    pattern: str, poke: str | float | timedelta = "30s", timeout: str | float | timedelta = "6h"
) -> FileSensor:
    """Run when a file matching `pattern` exists (e.g. a `_SUCCESS` marker)."""
    return FileSensor(pattern, poke, timeout)
