"""What every trigger shares: a trigger says *when* a table runs; the table's
interval options (interval, safety_delay, lookback) say *what* a run covers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import timedelta
from typing import ClassVar

from ..._units import parse_duration
from ...errors import ConfigError


class Trigger(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def describe(self) -> str:
        """One line for `headwater status` (never secrets)."""


class Sensor(Trigger):
    """A trigger that pokes a condition until it holds, or gives up after `timeout`."""

    def __init__(self, poke: str | float | timedelta, timeout: str | float | timedelta) -> None:
        self.poke = _positive(poke, f"{self.kind}: poke")
        self.timeout = _positive(timeout, f"{self.kind}: timeout")


def _positive(value: str | float | timedelta, what: str) -> timedelta:
    duration = parse_duration(value, what)
    if duration <= timedelta(0):
        raise ConfigError(f"{what} must be positive, not {value!r}", "write e.g. '30s' or '5m'")
    return duration
