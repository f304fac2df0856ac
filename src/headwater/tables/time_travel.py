"""Reading a table as it was: at a version or a point in time, and its history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deltalake import DeltaTable

from ..errors import HeadwaterError
from .delta import DeltaTarget


def snapshot_at(
    target: DeltaTarget, version: int | None = None, as_of: datetime | str | None = None
) -> DeltaTable:
    """The table at `version`, or as of a timestamp (ISO text or datetime), or latest."""
    if version is not None and as_of is not None:
        raise HeadwaterError("give either a version or a timestamp, not both")
    if as_of is not None:
        moment = as_of if isinstance(as_of, datetime) else _parse_time(as_of)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # delta-rs answers any earlier time with the oldest version; that table did not exist yet.
        oldest = target.table.history()[-1]
        created = datetime.fromtimestamp(int(oldest["timestamp"]) / 1000, UTC)
        if moment < created:
            raise HeadwaterError(
                f"table {target.name} has no version as of {moment.isoformat()}: "
                f"its oldest version, {oldest['version']}, is from {created.isoformat()}",
                f"`headwater history {target.name}` lists the versions",
            )
        table = target.load(moment)
    else:
        table = target.load(version) if version is not None else target.table
    assert table is not None
    return table


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HeadwaterError(
            f"cannot read {text!r} as a timestamp", "write e.g. 2024-05-01T12:00:00Z"
        ) from None


@dataclass
class HistoryEntry:
    """One commit of a table, with what Headwater recorded in it."""

    version: int
    timestamp: datetime
    operation: str
    batch: int | None = None
    run_id: str | None = None
    strategy: str | None = None
    metrics: dict[str, int] = field(default_factory=dict)
    positions: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def history(target: DeltaTarget, limit: int | None = None) -> list[HistoryEntry]:
    """Commits newest first: operation, time, and Headwater's batch, run and row counts."""
    entries = []
    for raw in target.table.history(limit):
        found = raw.get("headwater")
        meta: dict[str, Any] = found if isinstance(found, dict) else {}
        operation = str(raw.get("operation", ""))
        if "run_id" in meta and meta.get("strategy"):
            # delta-rs logs every file commit as WRITE; the strategy says what it did.
            operation = f"{meta.get('operation', operation)} ({meta['strategy']})"
        elif meta.get("operation"):
            operation = f"{operation} ({meta['operation']})"
        entries.append(
            HistoryEntry(
                version=int(raw["version"]),
                timestamp=datetime.fromtimestamp(int(raw.get("timestamp", 0)) / 1000, UTC),
                operation=operation,
                batch=meta.get("batch") if "run_id" in meta else None,
                run_id=meta.get("run_id"),
                strategy=meta.get("strategy"),
                metrics=dict(meta.get("metrics") or {}),
                positions=dict(meta.get("positions") or {}),
                parameters=dict(raw.get("operationParameters") or {}),
            )
        )
    return entries
