"""The two ways of applying the same upsert batch to the same Delta table.

Each function prepares everything that is not the merge (imports, declarations),
then times the merge itself: from the upsert file on disk to the committed
table version. Both read the batch inside the timed region, so neither is
handed data the other has to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import Stopwatch, current_rss_bytes

TABLE_NAME = "bench.target"


class Timed:
    """What a contestant reports: the stopwatch, RSS before the merge, and its metrics."""

    def __init__(self, watch: Stopwatch, base_rss_bytes: int, metrics: dict[str, Any]) -> None:
        self.watch = watch
        self.base_rss_bytes = base_rss_bytes
        self.metrics = metrics


def deltalake_merge(table_dir: Path, source: Path) -> Timed:
    """delta-rs MERGE as its documentation shows it: update all matched, insert the rest."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    base_rss = current_rss_bytes()
    with Stopwatch() as watch:
        batch = pq.read_table(source)
        metrics = (
            DeltaTable(str(table_dir))
            .merge(source=batch, predicate="t.id = s.id", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
    return Timed(watch, base_rss, dict(metrics))


def headwater_merge(project_root: Path, source: Path) -> Timed:
    """The same upsert as a Headwater table with strategy="merge", run by the engine."""
    from headwater import Project, Runner, table
    from headwater.declare import collecting
    from headwater.sources import files

    with collecting() as specs:
        table(TABLE_NAME, source=files(str(source)), strategy="merge", keys=["id"])
    runner = Runner(Project.of_specs(project_root, specs))

    base_rss = current_rss_bytes()
    with Stopwatch() as watch:
        (result,) = runner.run([TABLE_NAME])
    if result.status != "committed":
        raise RuntimeError(f"headwater run ended {result.status}: {result.error} ({result.hint})")
    return Timed(watch, base_rss, {"version": result.version, **dict(result.metrics)})
