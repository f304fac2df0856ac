"""Sliding windows: windows of `size` starting at every multiple of `every`.

An event at t is in the windows starting at floor(t / every) * every - k * every
for k = 0, 1, ... while the window still holds t: ceil(size / every) of them.
"""

from __future__ import annotations

from ..frame import micros
from ..spec import Sliding
from .base import Assignment, floor_to


def assign(window: Sliding) -> Assignment:
    size, every = micros(window.size), micros(window.every)
    copies = -(-size // every)
    start = f"({floor_to('_ts', every)} - _k * {every})"
    return Assignment(start=start, size=size, copies=copies, every=every)
