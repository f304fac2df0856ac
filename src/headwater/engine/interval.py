"""An interval of event time a run is asked to (re)build: [start, end)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from ..errors import ConfigError


def _moment(text: str | date | datetime, what: str) -> datetime:
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
    else:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{what}: cannot read {text!r} as a date or time",
                "write e.g. 2024-05-01 or 2024-05-01T06:00Z",
            ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Interval:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ConfigError(
                f"interval start {self.start.isoformat()} is not before its end {self.end.isoformat()}"
            )

    @classmethod
    def of(cls, start: str | date | datetime, end: str | date | datetime) -> Interval:
        """From dates or times; a date means midnight UTC."""
        return cls(_moment(start, "--start"), _moment(end, "--end"))

    def contains(self, value: date | datetime | None) -> bool:
        """Whether a partition value (a day, an hour...) falls inside the interval."""
        if value is None:
            return False
        moment = _moment(value, "partition value")
        return self.start <= moment < self.end

    def as_json(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]
