"""The table graph: which table reads which, and the order to build them in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from graphlib import CycleError, TopologicalSorter

from ..declare import TableSpec
from ..errors import ConfigError


def check_graph(tables: Mapping[str, TableSpec]) -> None:
    """Every input exists and there is no cycle; errors name the declaring file."""
    for spec in tables.values():
        for upstream in spec.upstream_tables():
            if upstream not in tables:
                raise ConfigError(
                    f"{spec.defined_at}: table {spec.name} reads {upstream}, which no pipeline declares",
                    f"declared tables: {', '.join(sorted(tables)) or 'none'}",
                )
    build_order(tables, tables)


def build_order(tables: Mapping[str, TableSpec], selected: Iterable[str]) -> list[str]:
    """The selected tables in dependency order (upstream first)."""
    chosen = set(selected)
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in sorted(tables):
        sorter.add(name, *[u for u in tables[name].upstream_tables() if u in tables])
    try:
        order = list(sorter.static_order())
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        first = tables[exc.args[1][0]]
        raise ConfigError(
            f"{first.defined_at}: tables read each other in a cycle: {cycle}", "break the cycle"
        ) from None
    return [name for name in order if name in chosen]


def downstream_of(tables: Mapping[str, TableSpec], name: str) -> list[str]:
    """Tables that read `name` directly."""
    return sorted(t for t, spec in tables.items() if name in spec.upstream_tables())


def reads_changes(tables: Mapping[str, TableSpec], name: str) -> bool:
    """Whether any table reads the changes (not a snapshot) of `name`."""
    return any(name in s.changes_read() for spec in tables.values() for s in spec.inputs.values())
