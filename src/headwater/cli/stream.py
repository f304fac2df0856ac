"""`headwater stream lateness TABLE`: how late a streaming table's events arrive.

Every micro-batch adds how far behind its partition's newest event each event
arrived to a histogram kept in the table's stream checkpoint (see
docs/streaming.md). This command prints its quantiles and recommends the
watermark delay B that would have kept 99.9% of the events on time.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..engine.position import read_committed_state
from ..errors import HeadwaterError
from ..stream.lateness import QUANTILES, describe_ms, summarise

app = typer.Typer(help="Streaming tables: observed lateness.", no_args_is_help=True)


@app.command()
def lateness(
    table: Annotated[str, typer.Argument(help="The streaming table (layer.table).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Observed lateness (p50/p95/p99/p99.9, max) and the watermark delay to declare."""
    from .main import _load

    project = _load()
    spec = project.spec(table)
    if spec.stream is None:
        raise HeadwaterError(
            f"table {table} is not a streaming table",
            "lateness is measured for tables declared with stream=stream(...)",
        )
    target = project.target(table).refresh()
    committed = read_committed_state(target, spec.app_id)
    histogram = (committed.stream or {}).get("lateness") or {}
    if not histogram:
        raise HeadwaterError(
            f"table {table} has committed no events yet",
            f"run `headwater run {table}` first",
        )
    found = summarise(histogram)
    declared_ms = spec.stream.watermark.total_seconds() * 1000
    if as_json:
        payload = {
            "table": table,
            "events": found.events,
            **{name: round(found.quantiles[name] / 1000, 3) for name, _ in QUANTILES},
            "max": round(found.max_ms / 1000, 3),
            "declared_watermark": declared_ms / 1000,
            "recommended_watermark": found.recommended_ms / 1000,
        }
        typer.echo(json.dumps(payload))
        return
    typer.echo(f"{table}: {found.events:,} events, lateness behind their partition's newest")
    for name, _ in QUANTILES:
        typer.echo(f"  {name:>6}  {describe_ms(found.quantiles[name])}")
    typer.echo(f"  {'max':>6}  {describe_ms(found.max_ms)}")
    typer.echo(
        f"declared watermark delay: {describe_ms(declared_ms)}; "
        f"recommended: watermark={describe_ms(found.recommended_ms)!r} (the p99.9, rounded up)"
    )
