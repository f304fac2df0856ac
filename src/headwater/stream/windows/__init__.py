"""Windows, one type per module; this registry maps a declared window to its code.

Tumbling and sliding windows are fixed: an event's windows follow from its
time alone (`assign`), and `fixed.aggregate` keeps one partial aggregate per
key and window. Sessions depend on the other events of their key and merge as
events arrive (`session.aggregate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..spec import Sliding, Tumbling
from . import sliding, tumbling
from .base import Assignment

ASSIGN: dict[type, Callable[[Any], Assignment]] = {
    Tumbling: tumbling.assign,
    Sliding: sliding.assign,
}


def assignment(window: Tumbling | Sliding) -> Assignment:
    return ASSIGN[type(window)](window)


__all__ = ["Assignment", "assignment"]
