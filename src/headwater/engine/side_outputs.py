"""Side outputs: tables a run writes next to its main table, exactly once.

A transform may return, besides its rows, extra tables: a stream operator's
state, the events that arrived too late for their window, the rows a contract
quarantined. Each goes to `<table>__<name>` and is committed *before* the main
commit, carrying the main table's batch number as its Delta transaction version;
the main commit records the version of every side table it goes with.

- A replay of a batch whose side output was already committed (the process died
  before the main commit) finds the batch in the side table and does not write
  it again.
- The next batch reads a side table at the version the main table recorded
  (`RunContext.side(name)`), never a newer one a crashed attempt left behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from ..tables.strategies import WriteContext, WriteOptions, get_strategy
from .commit import CommitRequest, commit
from .position import META_KEY
from .schema_fit import fit_increment

if TYPE_CHECKING:
    from ..project import Project

SideStrategy = Literal["append", "overwrite", "merge"]


@dataclass
class SideOutput:
    """Rows for `<table>__<name>`, written with `strategy` (merge needs `keys`).

    Deletes for a merged side table are rows with `_change_type` = 'delete'.
    """

    data: pa.Table
    strategy: SideStrategy = "append"
    keys: tuple[str, ...] = ()
    description: str = ""


@dataclass
class Outputs:
    """What a transform may return instead of a single relation: its rows and side outputs."""

    rows: Any  # anything a transform may return for the main table
    side: dict[str, SideOutput] = field(default_factory=dict)


def side_table_name(table: str, name: str) -> str:
    return f"{table}__{name}"


def write_side_output(
    project: Project,
    table: str,
    name: str,
    batch: int,
    run_id: str,
    run_ts: datetime,
    output: SideOutput,
    positions: dict[str, Any] | None = None,
    stream: dict[str, Any] | None = None,
) -> int:
    """Commit `output` as batch `batch` of `<table>__<name>`; returns that table's version.

    If the batch is there already (an earlier attempt got this far), nothing is
    written and the version that holds it is returned. `positions` and `stream`
    (a streaming table's end positions and checkpoint for the batch) are recorded
    in the side commit, so a replay of the batch can read exactly the same input.
    """
    full_name = side_table_name(table, name)
    target = project.target(full_name).refresh()
    app = f"headwater/{full_name}"
    snapshot = target.load()
    if snapshot is not None and (snapshot.transaction_version(app) or 0) >= batch:
        return _version_of_batch(snapshot, app, batch)
    options = WriteOptions(keys=tuple(output.keys))
    strategy = get_strategy(output.strategy)
    strategy.check(full_name, options)
    data = output.data
    plan, conformed = fit_increment(
        full_name,
        "evolve",
        target,
        pa.RecordBatchReader.from_batches(data.schema, data.to_batches()),
        strategy,
        options,
        app,
        Counter(),
    )
    snapshot = target.load()
    defaults = project.config.defaults
    ctx = WriteContext(
        table=full_name,
        target=target,
        snapshot=snapshot,
        schema=plan.table_schema,
        options=options,
        run_ts=run_ts,
        run_id=run_id,
        target_file_size=defaults.target_file_size,
        compression=defaults.compression,
        memory_limit=defaults.memory_limit,
    )
    try:
        staged = strategy.stage_with_refresh(ctx, conformed)
    finally:
        ctx.close()
    request = CommitRequest(
        app=app,
        batch=batch,
        run_id=run_id,
        run_ts=run_ts.isoformat(),
        table=full_name,
        positions=positions or {},
        strategy=output.strategy,
        schema=plan.table_schema,
        partition_by=(),
        description=output.description,
        stream=stream,
    )
    commit(target, snapshot, staged, request)
    written = target.refresh().load()
    assert written is not None
    return _version_of_batch(written, app, batch)


def _version_of_batch(snapshot: Any, app: str, batch: int) -> int:
    """The version of the side table whose commit carries `batch` (its latest if not found)."""
    for entry in snapshot.history(64):
        meta = entry.get(META_KEY)
        if isinstance(meta, dict) and meta.get("app") == app and meta.get("batch") == batch:
            return int(entry["version"])
    return int(snapshot.version())
