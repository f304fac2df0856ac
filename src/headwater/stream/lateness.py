"""Observed lateness: how far behind its partition's newest event each event arrived.

Kept as a histogram with logarithmic buckets (25% wide, from 1 ms to years) in
the stream's checkpoint, so it is small, merges by adding, and answers
quantiles to within a bucket. `recommend` proposes the watermark delay B that
would have kept 99.9% of events on time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATIO = 1.25
FIRST_MS = 1.0  # bucket 1 starts at 1 ms; bucket 0 holds events that were not behind at all


def bucket_counts(behind_us: np.ndarray) -> dict[int, int]:
    """Bucket index -> events, for lateness values in µs."""
    if len(behind_us) == 0:
        return {}
    ms = np.asarray(behind_us, dtype=np.float64) / 1000.0
    index = np.zeros(len(ms), dtype=np.int64)
    behind = ms >= FIRST_MS
    index[behind] = 1 + np.floor(np.log(ms[behind] / FIRST_MS) / math.log(RATIO)).astype(np.int64)
    # Under 1 ms but behind: bucket 1 too (the histogram's resolution).
    index[(ms > 0) & ~behind] = 1
    values, counts = np.unique(index, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def add(histogram: dict[str, int], counts: dict[int, int]) -> dict[str, int]:
    merged = dict(histogram)
    for bucket, n in counts.items():
        merged[str(bucket)] = merged.get(str(bucket), 0) + n
    return merged


def upper_ms(bucket: int) -> float:
    """The upper edge of a bucket in ms (0 for the on-time bucket)."""
    return 0.0 if bucket == 0 else FIRST_MS * RATIO**bucket


@dataclass(frozen=True)
class Lateness:
    events: int
    quantiles: dict[str, float]  # "p50" -> ms (upper bucket edge)
    max_ms: float
    recommended_ms: float


QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p99.9", 0.999))


def summarise(histogram: dict[str, int]) -> Lateness:
    buckets = sorted((int(k), int(v)) for k, v in histogram.items())
    total = sum(n for _, n in buckets)
    quantiles: dict[str, float] = {}
    for name, fraction in QUANTILES:
        quantiles[name] = _quantile(buckets, total, fraction)
    top = upper_ms(buckets[-1][0]) if buckets else 0.0
    return Lateness(total, quantiles, top, _round_up(quantiles.get("p99.9", 0.0)))


def _quantile(buckets: list[tuple[int, int]], total: int, fraction: float) -> float:
    if total == 0:
        return 0.0
    wanted = fraction * total
    seen = 0
    for bucket, n in buckets:
        seen += n
        if seen >= wanted:
            return upper_ms(bucket)
    return upper_ms(buckets[-1][0])


_ROUND = sorted(step * unit for unit in (1.0, 1000.0, 60_000.0) for step in (1, 2, 5, 10, 15, 30))


def _round_up(ms: float) -> float:
    """A round duration at least `ms` long (1, 2, 5, 10, 15, 30 ms, s or min; then hours)."""
    if ms <= 0:
        return 0.0
    for candidate in _ROUND:
        if candidate >= ms:
            return candidate
    return math.ceil(ms / 3_600_000.0) * 3_600_000.0


def describe_ms(ms: float) -> str:
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g}s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.3g}m"
    return f"{ms / 3_600_000:.3g}h"
