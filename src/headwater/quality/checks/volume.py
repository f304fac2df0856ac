"""volume change: this run's row count against the average of the table's recent runs.

The baseline comes from the table's own log: every Headwater commit records
its metrics (`rows_in`: rows the run wrote) in its commit metadata, so no
separate history is kept. Until `min_runs` earlier runs exist there is no
baseline and the check passes.
"""

from __future__ import annotations

from typing import Any

from ...engine.position import META_KEY
from .base import CheckUnavailable, ContractResult, TableCheck, TableContext

DEFAULT_WINDOW = 7
DEFAULT_MAX_CHANGE = 20.0  # percent, either way
DEFAULT_MIN_RUNS = 3


class VolumeChange(TableCheck):
    kind = "volume_change"

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_change: float = DEFAULT_MAX_CHANGE,
        min_runs: int = DEFAULT_MIN_RUNS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("severity", "warn")
        super().__init__(None, **kwargs)
        self.window = window
        self.max_change = max_change
        self.min_runs = min(min_runs, window)

    def run(self, ctx: TableContext) -> ContractResult:
        try:
            volumes = self._recent_volumes(
                ctx, self.window + (0 if ctx.increment is not None else 1)
            )
        except CheckUnavailable as exc:
            return self.result(False, message=str(exc))
        if ctx.increment is not None:
            current = ctx.stored_rows
        elif volumes:
            current, volumes = volumes[0], volumes[1:]  # the latest run against those before it
        else:
            return self.result(True, message="no runs recorded yet")
        threshold = f"within ±{self.max_change:g}% of the average of the last {self.window} runs"
        if len(volumes) < self.min_runs:
            return self.result(
                True,
                observed={"rows": current, "baseline_runs": len(volumes)},
                threshold=threshold,
                message=f"no baseline yet ({len(volumes)} of {self.min_runs} runs needed)",
            )
        baseline = sum(volumes) / len(volumes)
        if baseline == 0:
            change = 0.0 if current == 0 else float("inf")
        else:
            change = 100.0 * (current - baseline) / baseline
        passed = abs(change) <= self.max_change
        observed = {
            "rows": current,
            "baseline": round(baseline, 2),
            "change_percent": None if change == float("inf") else round(change, 2),
            "baseline_runs": len(volumes),
        }
        message = (
            ""
            if passed
            else f"{current} rows against an average of {baseline:.1f} over the last "
            f"{len(volumes)} runs ({'new volume' if change == float('inf') else f'{change:+.1f}%'})"
        )
        return self.result(passed, observed=observed, threshold=threshold, message=message)

    def _recent_volumes(self, ctx: TableContext, wanted: int) -> list[int]:
        """Rows written by the table's latest runs, newest first."""
        project = ctx.env.project
        if project is None:
            raise CheckUnavailable("the table's history cannot be read here")
        table = project.target(ctx.env.table).refresh().load()
        if table is None:
            return []
        app = f"headwater/{ctx.env.table}"
        volumes: list[int] = []
        # Maintenance and schema commits interleave with runs; they carry no run id.
        for entry in table.history(wanted * 4 + 8):
            meta = entry.get(META_KEY)
            if not isinstance(meta, dict) or meta.get("app") != app or "run_id" not in meta:
                continue
            metrics = meta.get("metrics") or {}
            volumes.append(int(metrics.get("rows_in", metrics.get("inserted", 0))))
            if len(volumes) == wanted:
                break
        return volumes
