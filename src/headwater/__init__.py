"""Headwater: lakehouse data pipelines into Delta Lake tables with exactly-once results.

    from headwater import table, changes, snapshot
    from headwater.sources import sqlite, files

The small public API: `table` declares a table, `changes` / `snapshot` name
upstream inputs, `Project` loads a project and `Runner` runs its tables.
"""

from .declare import TableSpec, changes, snapshot, table
from .engine.context import RunContext
from .engine.run import Runner, TableRun
from .engine.side_outputs import Outputs, SideOutput
from .errors import HeadwaterError
from .project import Project

__version__ = "0.1.0"

__all__ = [
    "HeadwaterError",
    "Outputs",
    "Project",
    "RunContext",
    "Runner",
    "SideOutput",
    "TableRun",
    "TableSpec",
    "changes",
    "snapshot",
    "table",
]
