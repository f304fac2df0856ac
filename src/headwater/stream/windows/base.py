"""What a fixed window type tells the aggregation: each event's window starts."""

from __future__ import annotations

from dataclasses import dataclass


def floor_to(ts: str, size: int, offset: int = 0) -> str:
    """SQL: the start of the `size`-µs slot (slots start at `offset` + k*size) holding the
    µs time `ts`. Floor modulo, so times before the epoch fall in the right slot too."""
    shifted = f"({ts} - {offset})" if offset else ts
    return f"({ts} - ((({shifted} % {size}) + {size}) % {size}))"


@dataclass(frozen=True)
class Assignment:
    """`start`: SQL over `_ts` (and `_k`, 0..copies-1, when an event is in several
    windows) giving a window's start in µs; windows are `size` µs long. `every`
    (sliding windows): the µs between window starts."""

    start: str
    size: int
    copies: int
    every: int = 0
