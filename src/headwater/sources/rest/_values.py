"""Small helpers on JSON values: dotted paths, comparing incremental values, redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

_MISSING = object()


def get_path(value: Any, path: str | None) -> Any:
    """`value` at a dotted path ('meta.next', 'data.0.id'); None when any step is missing."""
    if not path:
        return value
    current = value
    for step in path.split("."):
        if isinstance(current, dict):
            current = current.get(step, _MISSING)
        elif isinstance(current, list) and step.lstrip("-").isdigit():
            index = int(step)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            return None
        if current is _MISSING:
            return None
    return current


def has_path(value: Any, path: str | None) -> bool:
    """Whether every step of `path` exists in `value` (the last one may hold null)."""
    if not path:
        return True
    current = value
    for step in path.split("."):
        if isinstance(current, dict) and step in current:
            current = current[step]
        elif isinstance(current, list) and step.lstrip("-").isdigit():
            index = int(step)
            if not -len(current) <= index < len(current):
                return False
            current = current[index]
        else:
            return False
    return True


def _as_datetime(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def later(a: Any, b: Any) -> Any:
    """The later of two incremental values (numbers, ISO timestamps or text); None is earliest.

    ISO timestamps compare as instants (offsets differ between APIs); the value
    kept is the one the API sent, so it goes back to the API in its own format.
    """
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, bool) or isinstance(b, bool):
        raise TypeError("booleans cannot be incremental values")
    if isinstance(a, int | float) and isinstance(b, int | float):
        return b if b > a else a
    if isinstance(a, str) and isinstance(b, str):
        da, db = _as_datetime(a), _as_datetime(b)
        if da is not None and db is not None:
            return b if db > da else a
        return b if b > a else a
    raise TypeError(f"cannot compare {type(a).__name__} with {type(b).__name__}")


def short(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters (for error messages)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by ***."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def canonical(value: Any) -> str:
    """A stable text form of a JSON value (sorting, identity of parameter sets)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def extract_records(body: Any, path: str | None, where: str) -> list[Any]:
    """The records of a response body: the list at `path` (an object counts as one record)."""
    from ...errors import HeadwaterError

    if path and not has_path(body, path):
        keys = ", ".join(sorted(body)[:10]) if isinstance(body, dict) else type(body).__name__
        raise HeadwaterError(
            f"{where}: records path {path!r} is not in the response (it has: {keys})",
            "set records= to the dotted path of the list of records, e.g. 'data' or 'result.items'",
        )
    value = get_path(body, path)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    raise HeadwaterError(
        f"{where}: records path {path or '(the body)'!r} holds {type(value).__name__}, not a list of records",
        "set records= to the dotted path of the list of records",
    )
