"""`headwater maintain`: compact, z-order, checkpoint and vacuum, one report per table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.text import Text

from ..errors import HeadwaterError
from ..project import Project
from . import render

if TYPE_CHECKING:
    from ..tables.maintenance import MaintenanceReport


def maintain_tables(
    project: Project,
    names: list[str] | None,
    *,
    retention_hours: float | None,
    force: bool,
    dry_run: bool,
) -> bool:
    """Maintain each table in turn; a failure is reported and the rest still run.

    Returns whether every table succeeded.
    """
    from ..tables.maintenance import maintain_table

    settings = project.config.maintenance
    retention = settings.vacuum_retention_hours if retention_hours is None else retention_hours
    if names:
        for name in names:
            if name not in project.tables and name not in project.existing_tables():
                project.spec(name)  # raises, listing the declared tables
        chosen = names
    else:
        chosen = [n for n in project.order() if project.target(n).exists]
        if not chosen:
            render.out().print("No table is built yet; nothing to maintain.")
            return True
    ok = True
    for name in chosen:
        spec = project.tables.get(name)
        target = project.target(name)
        if not target.exists:
            render.error(f"table {name} does not exist", "build it first with `headwater run`")
            ok = False
            continue
        try:
            zorder_by = spec.zorder_by if spec else ()
            report = maintain_table(
                target,
                app_id=spec.app_id if spec else None,
                target_size=(spec.target_file_size if spec else None)
                or settings.compact_target_size,
                zorder_by=zorder_by,
                retention_hours=retention,
                force=force,
                dry_run=dry_run,
            )
        except HeadwaterError as exc:
            render.error(
                exc.message if name in exc.message else f"table {name}: {exc.message}", exc.hint
            )
            ok = False
            continue
        render.out().print(
            report_table(report, zorder_by, dry_run=dry_run, retention_hours=retention)
        )
    return ok


def report_table(
    report: MaintenanceReport,
    zorder_by: Sequence[str],
    *,
    dry_run: bool,
    retention_hours: float,
) -> RenderableType:
    """A heading, the health before and after, and one line of what was done."""
    before, after = report.health_before, report.health_after
    if dry_run:
        heading = f"{report.table} · dry run, nothing changed"
    else:
        heading = f"{report.table} · version {before.version} → {after.version}"
    table = render.new_table()
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("files", render.number(before.files), render.number(after.files))
    table.add_row(
        "small files", render.number(before.small_files), render.number(after.small_files)
    )
    table.add_row(
        "small-file ratio", f"{before.small_file_ratio:.0%}", f"{after.small_file_ratio:.0%}"
    )
    table.add_row(
        "mean file size", render.size(before.mean_file_bytes), render.size(after.mean_file_bytes)
    )
    table.add_row("bytes", render.size(before.bytes), render.size(after.bytes))
    table.add_row("rows", render.number(before.rows), render.number(after.rows))
    table.add_row("partitions", render.number(before.partitions), render.number(after.partitions))
    would = "would be " if dry_run else ""
    done = [
        f"{report.files_compacted:,} files {would}compacted",
        f"{would}z-ordered by {', '.join(zorder_by)}" if report.zordered else "",
        f"{len(report.vacuumed):,} files {would}vacuumed (unreferenced for over {retention_hours:g} h)",
        f"checkpoint at version {report.checkpoint_version}"
        if report.checkpoint_version is not None
        else "",
    ]
    return Group(
        Text(heading, style="bold"),
        table,
        Text(" · ".join(d for d in done if d), style="dim"),
        Text(""),
    )
