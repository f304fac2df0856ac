"""A small harness for tests: declare tables in code, feed them batches, run, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from headwater import Project, Runner, TableRun
from headwater.declare import TableSpec, collecting
from headwater.sources.memory import MemorySource


class Feed(MemorySource):
    """An in-memory source that tests can keep appending batches to."""

    def push(self, *rows_or_tables: list[dict[str, Any]] | pa.Table) -> None:
        for item in rows_or_tables:
            self.batches.append(item if isinstance(item, pa.Table) else pa.Table.from_pylist(item))


class Lake:
    """Tables declared in a test, on real Delta tables under `root/warehouse`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.specs: list[TableSpec] = []

    def declare(self, build: Any) -> Any:
        """Run `build()` (which calls headwater.table(...)) and keep what it declares."""
        with collecting() as found:
            result = build()
        self.specs += found
        return result

    @property
    def project(self) -> Project:
        return Project.of_specs(self.root, self.specs)

    def run(
        self, *names: str, full_refresh: bool = False, check: bool = True, **kwargs: Any
    ) -> list[TableRun]:
        results = Runner(self.project, full_refresh=full_refresh, **kwargs).run(list(names) or None)
        if check:
            failed = [r for r in results if r.status == "failed"]
            if failed:
                raise AssertionError(
                    "; ".join(f"{r.table}: {r.error}" for r in failed)
                ) from failed[0].exception
        return results

    def target(self, name: str):  # type: ignore[no-untyped-def]
        return self.project.target(name).refresh()

    def table(self, name: str) -> pa.Table:
        return self.target(name).table.to_pyarrow_table()

    def rows(self, name: str, *order: str, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        table = self.table(name)
        if drop:
            table = table.drop_columns([c for c in drop if c in table.schema.names])
        keys = list(order) or table.schema.names
        return table.sort_by([(k, "ascending") for k in keys]).to_pylist()  # type: ignore[no-any-return]

    def files(self, name: str) -> set[str]:
        return set(self.target(name).add_actions.column("path").to_pylist())

    def version(self, name: str) -> int:
        version = self.target(name).version
        assert version is not None
        return version


def content(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows as a sorted multiset, for order-independent equality."""
    rows = [tuple(sorted(r.items())) for r in table.to_pylist()]
    return sorted(rows, key=repr)
