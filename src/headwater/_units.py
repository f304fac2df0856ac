"""Parsing of human-friendly sizes and durations used in configuration."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: str | int, what: str = "size") -> int:
    """'128MB', '64 MiB', '1g' or a plain byte count -> bytes (binary multiples)."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(f"{what}: cannot read {value!r} as a size", "write e.g. '128MB' or '1GB'")
    number, unit = match.groups()
    factor = _SIZE_FACTORS[(unit or "").lower().rstrip("b").rstrip("i")]
    return int(float(number) * factor)


def parse_duration(value: str | int | float | timedelta, what: str = "duration") -> timedelta:
    """'7d', '36h', '5m', '1h30m' or seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = value.strip().replace(" ", "")
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
        raise ConfigError(
            f"{what}: cannot read {value!r} as a duration", "write e.g. '7d', '36h' or '1h30m'"
        )
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
