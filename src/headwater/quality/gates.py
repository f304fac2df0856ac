"""Which checks guard a table: a gate object given in code, or its data contract.

A contract is found at `contracts/<layer>/<table>.yaml` (or the path given with
`table(..., contract=...)`) and turned into a gate by `quality.contract`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .gate import Gate

if TYPE_CHECKING:
    from ..declare import TableSpec
    from ..project import Project

CONTRACTS_DIR = "contracts"


def contract_path(spec: TableSpec, project: Project) -> Path | None:
    """The contract file of a table, if it has one."""
    if spec.contract:
        path = Path(spec.contract)
        path = path if path.is_absolute() else project.root / path
        if not path.exists():
            raise ConfigError(
                f"{spec.defined_at}: contract {spec.contract} of table {spec.name} does not exist"
            )
        return path
    layer, name = spec.name.split(".", 1)
    for candidate in (
        project.root / CONTRACTS_DIR / layer / f"{name}.yaml",
        project.root / CONTRACTS_DIR / f"{spec.name}.yaml",
    ):
        if candidate.exists():
            return candidate
    return None


def gate_for(spec: TableSpec, project: Project) -> Gate | None:
    if spec.gate is not None:
        return spec.gate
    path = contract_path(spec, project)
    if path is None:
        return None
    from .contract import contract_gate  # the contract format lives in its own module

    return contract_gate(path, spec, project)


def referenced_tables(spec: TableSpec, project: Project) -> list[str]:
    """Tables the checks of a table's contract read (relationships), for the run order."""
    if spec.gate is not None:
        return []
    path = contract_path(spec, project)
    if path is None:
        return []
    from .checks.referential import References
    from .contract import load_plan, relative

    plan = load_plan(path, spec.name, relative(path, project))
    return sorted({c.parent for c in plan.row_checks if isinstance(c, References)})
