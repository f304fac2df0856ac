"""The three ways of reading the source table: the COPY floor, Headwater and dlt.

Each function prepares what is not the load (imports, the project or pipeline
object), then times the load itself: from connecting to the database to the
committed destination. This module imports only the standard library at the
top: dlt runs from its own virtualenv, which has no Headwater, and Headwater's
from the project's, which has no dlt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from _common import Stopwatch, current_rss_bytes

TABLE_NAME = "bronze.events"  # Headwater's table; dlt's is `events` in dataset `bronze`
DLT_PIPELINE = "ingest_bench"
DLT_DATASET = "bronze"
DLT_TABLE = "events"


class Timed:
    """What a contestant reports: the stopwatch, RSS before the load, rows and facts."""

    def __init__(
        self, watch: Stopwatch, base_rss_bytes: int, rows: int, metrics: dict[str, Any]
    ) -> None:
        self.watch = watch
        self.base_rss_bytes = base_rss_bytes
        self.rows = rows
        self.metrics = metrics


# -- the floor -----------------------------------------------------------------


def copy_floor(dsn: str, select: str) -> Timed:
    """`COPY (SELECT ...) TO STDOUT (FORMAT binary)` through psycopg, every byte discarded."""
    import psycopg

    statement = f"COPY ({select}) TO STDOUT (FORMAT binary)"
    base_rss = current_rss_bytes()
    received = 0
    with (
        Stopwatch() as watch,
        psycopg.connect(dsn) as conn,
        conn.cursor().copy(statement) as copy,
    ):
        for block in copy:
            received += len(block)
    return Timed(watch, base_rss, -1, {"bytes": received})


# -- Headwater -------------------------------------------------------------------


def write_headwater_project(
    root: Path, connection: dict[str, Any], table: str, chunk_rows: int, strategy: str
) -> None:
    """A project as a data engineer writes it: headwater.toml and one pipeline file."""
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    lines = ["[connections.source]"]
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in connection.items()]
    lines += ["", "[defaults]", f"chunk_rows = {int(chunk_rows)}", ""]
    (root / "headwater.toml").write_text("\n".join(lines))
    keys = ', keys=["id"]' if strategy == "merge" else ""
    (root / "pipelines" / "bronze.py").write_text(
        "from headwater import table\n"
        "from headwater.sources import postgres\n\n"
        f"table(\n"
        f'    "{TABLE_NAME}",\n'
        f'    source=postgres("public.{table}", connection="source", cursor="updated_at"),\n'
        f'    strategy="{strategy}"{keys},\n'
        ")\n"
    )


def headwater_load(root: Path) -> Timed:
    """`Runner(Project.load(root)).run()`: the first run loads everything, later ones what changed."""
    import adbc_driver_postgresql.dbapi  # noqa: F401  (imported here so the load does not time it)
    import deltalake  # noqa: F401
    import duckdb  # noqa: F401
    import psycopg  # noqa: F401

    from headwater import Project, Runner

    runner = Runner(Project.load(root))
    base_rss = current_rss_bytes()
    with Stopwatch() as watch:
        (result,) = runner.run()
    if result.status not in ("committed", "up-to-date"):
        raise RuntimeError(f"headwater run ended {result.status}: {result.error} ({result.hint})")
    metrics = {k: int(v) for k, v in result.metrics.items()}
    metrics |= {"commits": result.commits, "version": result.version}
    rows = int(result.metrics.get("rows_in", result.metrics.get("rows", -1)))
    return Timed(watch, base_rss, rows, metrics)


def headwater_table_path(root: Path) -> Path:
    layer, name = TABLE_NAME.split(".")
    return root / "warehouse" / layer / name


# -- dlt ---------------------------------------------------------------------------


def dlt_environment() -> dict[str, str]:
    """Settings for dlt's children: no telemetry; errors only in the log."""
    return {"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "ERROR"}


def dlt_load(root: Path, dsn: str, table: str, chunk_size: int, strategy: str) -> Timed:
    """dlt's `sql_table` (pyarrow backend, incremental on updated_at) into a local Delta table."""
    os.environ.update(dlt_environment())
    import deltalake  # noqa: F401  (imported here so the load does not time it)
    import dlt
    import psycopg  # noqa: F401
    import pyarrow  # noqa: F401
    import sqlalchemy  # noqa: F401
    from dlt.sources.sql_database import sql_table

    pipeline = dlt.pipeline(
        pipeline_name=DLT_PIPELINE,
        destination=dlt.destinations.filesystem(bucket_url=(root / "lake").as_uri()),
        dataset_name=DLT_DATASET,
        pipelines_dir=str(root / "pipelines"),
    )
    disposition: Any = (
        {"disposition": "merge", "strategy": "upsert"} if strategy == "merge" else "append"
    )
    base_rss = current_rss_bytes()
    with Stopwatch() as watch:
        resource = sql_table(
            credentials=dsn,
            table=table,
            schema="public",
            backend="pyarrow",
            chunk_size=chunk_size,
            incremental=dlt.sources.incremental("updated_at"),
        )
        info = pipeline.run(
            resource,
            table_name=DLT_TABLE,
            write_disposition=disposition,
            primary_key="id",
            table_format="delta",
        )
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    counts = dict(trace.last_normalize_info.row_counts) if trace.last_normalize_info else {}
    rows = int(counts.get(DLT_TABLE, 0))
    return Timed(watch, base_rss, rows, {"row_counts": counts, "loads": len(info.loads_ids)})


def dlt_table_path(root: Path) -> Path:
    return root / "lake" / DLT_DATASET / DLT_TABLE
