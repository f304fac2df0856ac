"""Stream metrics of a micro-batch, and the one line the CLI prints for it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from .lateness import describe_ms

# Counters added up over a run (TableRun.metrics); the others describe the last micro-batch.
COUNTERS = (
    "events_in",
    "late",
    "dropped_duplicates",
    "re_emitted",
    "emitted",
    "retracted",
    "joined",
    "state_expired",
    "state_compacted",
    "quarantined_events",
)
GAUGES = (
    "batch_ms",
    "input_rate",
    "processing_rate",
    "watermark_delay_ms",
    "consumer_lag",
    "state_rows",
    "state_bytes",
)


def fold(total: Counter[str], batch: Counter[str]) -> None:
    """Add a micro-batch's metrics to a run's: counters add up, gauges take the latest."""
    for name, value in batch.items():
        if name in GAUGES:
            total[name] = value
        else:
            total[name] += value


def rates(metrics: Counter[str], seconds: float, previous_ms: float | None) -> None:
    """Batch duration, processing rate (events per second of work) and input rate
    (events per second of wall time since the previous micro-batch)."""
    events = metrics["events_in"]
    # Whole numbers: the metrics are counters, and a millisecond is fine enough.
    metrics["batch_ms"] = round(seconds * 1000)
    metrics["processing_rate"] = round(events / seconds) if seconds > 0 else 0
    if previous_ms is not None:
        elapsed = max(1e-3, datetime.now(UTC).timestamp() - previous_ms / 1000)
        metrics["input_rate"] = round(events / elapsed)


def summary(batch: int, metrics: Counter[str] | dict[str, float], watermark: int | None) -> str:
    """`batch 12: 5,000 events, watermark 12:00:05 (delay 3.2s), 3 late, state 1,200 rows (1.2 MB)`."""
    parts = [f"batch {batch}: {int(metrics.get('events_in', 0)):,} events"]
    if watermark is not None:
        when = datetime.fromtimestamp(watermark / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
        delay = describe_ms(float(metrics.get("watermark_delay_ms", 0)))
        parts.append(f"watermark {when} (delay {delay})")
    for name, label in (
        ("late", "late"),
        ("dropped_duplicates", "duplicates dropped"),
        ("re_emitted", "re-emitted"),
    ):
        if metrics.get(name):
            parts.append(f"{int(metrics[name]):,} {label}")
    parts.append(
        f"state {int(metrics.get('state_rows', 0)):,} rows "
        f"({float(metrics.get('state_bytes', 0)) / 1e6:.1f} MB)"
    )
    parts.append(f"{float(metrics.get('processing_rate', 0)):,.0f} events/s")
    if metrics.get("consumer_lag"):
        parts.append(f"lag {int(metrics['consumer_lag']):,}")
    return ", ".join(parts)
