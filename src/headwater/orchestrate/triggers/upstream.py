"""on_upstream(): run when an input table gets a new version.

The scheduler hears of its own commits at once; commits made elsewhere (a
manual `headwater run`, another engine) are noticed by polling the inputs'
Delta versions. While an input is itself queued or running, the table waits
for it, so a fan-in table runs once after a wave of upstream runs, not once
per input.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Trigger


class OnUpstream(Trigger):
    kind = "on-upstream"

    def __init__(self, tables: Sequence[str] | None = None) -> None:
        # None: any input table; otherwise only these inputs trigger a run.
        self.tables = tuple(tables) if tables is not None else None

    def describe(self) -> str:
        return "on upstream commit" + (f" of {', '.join(self.tables)}" if self.tables else "")


def on_upstream(tables: Sequence[str] | None = None) -> OnUpstream:
    """Run when an input table (or one of `tables`) commits a new version."""
    return OnUpstream(tables)
