"""Reading back what a table has committed: its batch number and input positions.

Each commit a table's run makes carries a Delta transaction action
(`txn`: appId = "headwater/<table>", version = batch number) and, in the
commit's metadata, the positions of its inputs after that batch. The txn
version is kept in every snapshot and checkpoint; the positions are found in
the commit whose metadata names the same batch. Headwater's own maintenance
commits repeat the latest positions, so they stay near the head of the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PositionLost
from ..tables.delta import DeltaTarget

META_KEY = "headwater"
# Commits looked through for a run's own commit.
HISTORY_LOOKUP = 64


@dataclass(frozen=True)
class CommittedState:
    batch: int  # last committed batch; 0 when the table has none
    positions: dict[str, Any] = field(default_factory=dict)
    version: int | None = None  # the table version that holds them
    # Versions of the side tables (state, late events...) that go with this batch.
    side_versions: dict[str, int] = field(default_factory=dict)
    # A streaming table's checkpoint (watermarks, state version...), None for other tables.
    stream: dict[str, Any] | None = None

    def position(self, alias: str) -> Any:
        return self.positions.get(alias)


def read_committed_state(target: DeltaTarget, app: str) -> CommittedState:
    table = target.load()
    if table is None:
        return CommittedState(0)
    batch = table.transaction_version(app)
    if batch is None:
        return CommittedState(0, {}, table.version())
    limit = 8
    while True:
        entries = table.history(limit)
        for entry in entries:
            meta = entry.get(META_KEY)
            if isinstance(meta, dict) and meta.get("app") == app and meta.get("batch") == batch:
                return CommittedState(
                    batch,
                    dict(meta.get("positions") or {}),
                    int(entry["version"]),
                    {str(k): int(v) for k, v in (meta.get("side_versions") or {}).items()},
                    meta.get("stream"),
                )
        if len(entries) < limit:
            break
        limit *= 4
    raise PositionLost(
        f"table {target.name}: batch {batch} is committed but its positions are no longer in the log",
        f"rebuild with `headwater run {target.name} --full-refresh`",
    )


def find_commit_version(
    target: DeltaTarget, app: str, batch: int, run_id: str, after: int | None = None
) -> int | None:
    """The version our own commit of `batch` landed at (None if it did not).

    With `after` (the version the commit was built on), the commits after it
    are read one by one: usually the first is ours, and reading it is much
    cheaper than loading the table.
    """
    target.refresh()
    if after is not None:
        from ..tables.log import ChangesUnavailable, read_commit

        for version in range(after + 1, after + 1 + HISTORY_LOOKUP):
            try:
                ours = read_commit(target, version).headwater
            except ChangesUnavailable:
                break  # past the head of the log: look the history up below
            if ours.get("app") == app and ours.get("batch") == batch and "run_id" in ours:
                return version if ours["run_id"] == run_id else None
    table = target.load()
    if table is None:
        return None
    for entry in table.history(HISTORY_LOOKUP):
        meta = entry.get(META_KEY)
        if (
            isinstance(meta, dict)
            and meta.get("app") == app
            and meta.get("batch") == batch
            and "run_id" in meta
        ):
            # Maintenance commits repeat the batch without a run id; skip them.
            return int(entry["version"]) if meta["run_id"] == run_id else None
    return None
