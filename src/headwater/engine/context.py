"""The run context a transform receives as `ctx`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from ..project import Project
    from .interval import Interval


@dataclass
class RunContext:
    """One run of one table: its id, its timestamp (constant for the run) and SQL."""

    table: str
    run_id: str
    run_ts: datetime
    full_refresh: bool
    con: duckdb.DuckDBPyConnection
    project: Project | None = None
    inputs: dict[str, duckdb.DuckDBPyRelation] = field(default_factory=dict)
    # Set when the run rebuilds an interval of event time ([start, end), UTC).
    interval: Interval | None = None
    # Versions of this table's side tables recorded by its last commit.
    side_versions: dict[str, int] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("headwater.run"))
    _modeling_functions: bool = False

    def sql(self, query: str, params: list[Any] | None = None) -> duckdb.DuckDBPyRelation:
        """Run DuckDB SQL in which the inputs are visible by their names.

        The modeling functions (surrogate_key...) are registered the first time a
        query uses them; registering them costs more than most small queries.
        """
        if "surrogate_key" in query and not self._modeling_functions:
            from ..transform.dimensional import register

            register(self.con)
            self._modeling_functions = True
        return self.con.sql(query, params=params)

    def side(self, name: str) -> duckdb.DuckDBPyRelation | None:
        """This table's side table `name` (e.g. its state) as of the table's last commit.

        None before the first commit that wrote it. A newer version left by an
        attempt that died before its main commit is never read.
        """
        version = self.side_versions.get(name)
        if version is None or self.project is None:
            return None
        from .side_outputs import side_table_name

        target = self.project.target(side_table_name(self.table, name))
        snapshot = target.load(version)
        if snapshot is None:
            from ..errors import HeadwaterError

            raise HeadwaterError(
                f"table {self.table}: side table {target.name} version {version} is gone; "
                f"run `headwater run {self.table} --full-refresh` to rebuild it"
            )
        return self.con.from_arrow(target.dataset(table=snapshot))

    def read(self, name: str) -> duckdb.DuckDBPyRelation:
        """The current snapshot of any table of the project (for lookups)."""
        if self.project is None:
            raise LookupError("no project attached to this run")
        dataset = self.project.target(name).dataset()
        return self.con.from_arrow(dataset)
