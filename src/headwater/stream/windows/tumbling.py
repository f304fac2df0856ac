"""Tumbling windows: [k*size + offset, (k+1)*size + offset), one per event."""

from __future__ import annotations

from ..frame import micros
from ..spec import Tumbling
from .base import Assignment, floor_to


def assign(window: Tumbling) -> Assignment:
    size, offset = micros(window.size), micros(window.offset)
    return Assignment(start=floor_to("_ts", size, offset), size=size, copies=1)
