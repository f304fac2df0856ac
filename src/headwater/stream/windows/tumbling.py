"""Tumbling windows: [k*size + offset, (k+1)*size + offset), one per event."""

from __future__ import annotations

from ..frame import micros
from ..spec import Tumbling
from .base import Assignment


def assign(window: Tumbling) -> Assignment:
    size, offset = micros(window.size), micros(window.offset)
    # Floor modulo, so event times before the epoch fall in the right window too.
    start = f"(_ts - ((((_ts - {offset}) % {size}) + {size}) % {size}))"
    return Assignment(start=start, size=size, copies=1)
