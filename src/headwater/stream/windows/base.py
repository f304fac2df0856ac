"""What a fixed window type tells the aggregation: each event's window starts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assignment:
    """`start`: SQL over `_ts` (and `_k`, 0..copies-1, when an event is in several
    windows) giving a window's start in µs; windows are `size` µs long. `every`
    (sliding windows): the µs between window starts."""

    start: str
    size: int
    copies: int
    every: int = 0
