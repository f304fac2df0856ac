"""The files source's position: which files are loaded, kept small for folders that only grow.

    {"files": {key: [size, mtime, time?, digest?], ...},   files remembered as loaded
     "high": ns, "floor": ns,                               the arrival-time watermark
     "partial": {"file": key, "seen": [...], "at": {...}}}  a file loaded up to a point

The rule (docs/sources-files.md): a file is new unless it is remembered with the
same size and modification time, or it is not remembered and arrived before
`floor`. `high` is the latest arrival time among loaded files (never later than
the run's clock, so a writer whose clock runs ahead cannot push it forward);
`floor` trails it by the lookback window and never passes a file still to be
loaded. Remembered files older than `floor` are forgotten: they count as loaded
through the watermark. Files that disappear from the folder are forgotten too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Seen:
    """A loaded file's stamp: size and mtime (ns), arrival time if later, content digest."""

    size: int
    mtime: int | None
    time: int | None = None  # arrival (marker or manifest time) when later than mtime
    digest: str | None = None

    @property
    def arrived(self) -> int | None:
        return self.time if self.time is not None else self.mtime

    def same_stamp(self, other: Seen) -> bool:
        return self.size == other.size and self.mtime == other.mtime

    def to_json(self) -> list[Any]:
        out: list[Any] = [self.size, self.mtime]
        if self.digest is not None:
            out += [self.time, self.digest]
        elif self.time is not None and self.time != self.mtime:
            out.append(self.time)
        return out

    @classmethod
    def from_json(cls, value: Any) -> Seen:
        if isinstance(value, str):  # "size:mtime", the first format of this position
            size, _, mtime = value.partition(":")
            return cls(int(size), int(mtime) if mtime else None)
        size, mtime, *rest = value
        time = rest[0] if rest else None
        digest = rest[1] if len(rest) > 1 else None
        return cls(int(size), None if mtime is None else int(mtime), time, digest)


@dataclass(frozen=True)
class Partial:
    """A file whose first rows are committed; `at` says where reading goes on."""

    key: str
    seen: Seen
    at: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.key, "seen": self.seen.to_json(), "at": dict(self.at)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Partial:
        return cls(str(value["file"]), Seen.from_json(value["seen"]), dict(value["at"]))


@dataclass
class FilesState:
    files: dict[str, Seen] = field(default_factory=dict)
    high: int | None = None
    floor: int | None = None
    partial: Partial | None = None

    @classmethod
    def from_position(cls, position: Any) -> FilesState:
        if not position:
            return cls()
        partial = position.get("partial")
        return cls(
            {str(k): Seen.from_json(v) for k, v in (position.get("files") or {}).items()},
            position.get("high"),
            position.get("floor"),
            Partial.from_json(partial) if partial else None,
        )

    def to_position(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": {k: v.to_json() for k, v in sorted(self.files.items())}}
        if self.high is not None:
            out["high"] = self.high
        if self.floor is not None:
            out["floor"] = self.floor
        if self.partial is not None:
            out["partial"] = self.partial.to_json()
        return out

    def copy(self) -> FilesState:
        return FilesState(dict(self.files), self.high, self.floor, self.partial)

    def is_loaded(self, key: str, seen: Seen) -> bool:
        """Whether a listed file needs no loading: remembered as it is, or older than the floor."""
        known = self.files.get(key)
        if known is not None:
            return known.same_stamp(seen)
        arrived = seen.arrived
        return self.floor is not None and arrived is not None and arrived < self.floor

    def loaded(self, key: str, seen: Seen, now: int) -> None:
        self.files[key] = seen
        arrived = seen.arrived
        if arrived is not None:
            arrived = min(arrived, now)  # a clock running ahead must not move the watermark
            self.high = arrived if self.high is None else max(self.high, arrived)

    def forget_absent(self, present: set[str]) -> None:
        self.files = {k: v for k, v in self.files.items() if k in present}

    def advance(self, lookback: int | None, keep: int, limit: int | None) -> None:
        """Raise the floor behind the newest arrival and forget what falls below it.

        `limit` is the arrival time of the earliest file not loaded yet: the floor
        never passes it, so a crash before that file is committed cannot make
        it look old. Files without a modification time are never forgotten by
        the watermark (their age is unknown).
        """
        if lookback is None or self.high is None:
            return
        floor = self.high - lookback
        timed = sorted(
            (s.arrived for s in self.files.values() if s.arrived is not None), reverse=True
        )
        if len(timed) > keep:
            floor = max(floor, min(timed[keep - 1], self.high))
        if limit is not None:
            floor = min(floor, limit)
        if self.floor is not None and floor <= self.floor:
            return
        self.floor = floor
        self.files = {
            k: v for k, v in self.files.items() if v.arrived is None or v.arrived >= floor
        }
