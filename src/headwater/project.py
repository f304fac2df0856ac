"""A Headwater project: `headwater.toml`, the tables declared under `pipelines/`,
and where each table lives in the warehouse."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .config import CONFIG_FILE, ProjectConfig, load_config
from .declare import NAME, TableSpec, collecting
from .errors import ConfigError, HeadwaterError
from .tables.delta import DeltaTarget
from .transform.graph import build_order, check_graph

PIPELINES_DIR = "pipelines"


@dataclass
class Project:
    root: Path
    config: ProjectConfig
    tables: dict[str, TableSpec] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | str = ".", discover: bool = True) -> Project:
        root = Path(root).resolve()
        if not (root / CONFIG_FILE).exists() and not (root / PIPELINES_DIR).exists():
            raise ConfigError(
                f"{root} is not a Headwater project (no {CONFIG_FILE})",
                "run `headwater init DIR` to create one, or pass --project DIR",
            )
        project = cls(root, load_config(root))
        if discover:
            project.tables = discover_tables(root)
            _order_contract_references(project)
            check_graph(project.tables)
        return project

    @classmethod
    def of_specs(
        cls, root: Path | str, specs: list[TableSpec], config: ProjectConfig | None = None
    ) -> Project:
        """A project from declarations made in code (scripts, tests)."""
        tables: dict[str, TableSpec] = {}
        for spec in specs:
            tables[spec.name] = spec
        project = cls(Path(root).resolve(), config or ProjectConfig(), tables)
        check_graph(tables)
        return project

    # -- locations -----------------------------------------------------------
    @property
    def warehouse(self) -> str:
        return self.config.warehouse_uri(self.root)

    def table_uri(self, name: str) -> str:
        if not NAME.match(name):
            raise HeadwaterError(
                f"{name!r} is not a table name", "table names are 'layer.table', e.g. silver.orders"
            )
        layer, table = name.split(".", 1)
        return f"{self.warehouse}/{layer}/{table}"

    def target(self, name: str) -> DeltaTarget:
        return DeltaTarget(self.table_uri(name), name, self.config.storage_options())

    def existing_tables(self) -> list[str]:
        """Every table in the warehouse, declared or not (local warehouses)."""
        base = Path(self.warehouse)
        if not base.exists():
            return []
        found = []
        for log in sorted(base.glob("*/*/_delta_log")):
            found.append(f"{log.parent.parent.name}.{log.parent.name}")
        return found

    def spec(self, name: str) -> TableSpec:
        try:
            return self.tables[name]
        except KeyError:
            raise HeadwaterError(
                f"no pipeline declares table {name}",
                f"declared tables: {', '.join(sorted(self.tables)) or 'none'}",
            ) from None

    def order(self, selected: list[str] | None = None) -> list[str]:
        if selected:
            for name in selected:
                self.spec(name)
        return build_order(self.tables, selected or list(self.tables))


def _order_contract_references(project: Project) -> None:
    """A table whose contract checks keys against another declared table runs after it,
    so the check sees the keys that table gains in the same run."""
    from .quality.gates import referenced_tables

    for spec in project.tables.values():
        try:
            referenced = referenced_tables(spec, project)
        except HeadwaterError:
            # A broken contract is reported where it is used (run, contract validate),
            # with its own message; it must not stop every other command from loading.
            continue
        spec.checked_against = tuple(
            t for t in referenced if t in project.tables and t != spec.name
        )


def discover_tables(root: Path) -> dict[str, TableSpec]:
    """Import every `pipelines/**/*.py` and collect the tables they declare; add the SQL models."""
    folder = root / PIPELINES_DIR
    tables: dict[str, TableSpec] = {}
    if not folder.exists():
        return _with_models(root, tables)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # pipelines may import helpers from the project
    package = "headwater_project_" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    for path in sorted(folder.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = (
            f"{package}.{path.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}"
        )
        with collecting() as found:
            _import(path, module_name)
        for spec in found:
            if spec.name in tables:
                raise ConfigError(
                    f"{spec.defined_at}: table {spec.name} is declared twice",
                    f"the other declaration is at {tables[spec.name].defined_at}",
                )
            tables[spec.name] = spec
    return _with_models(root, tables)


def _with_models(root: Path, tables: dict[str, TableSpec]) -> dict[str, TableSpec]:
    """SQL models (`models/<layer>/<table>.sql`) join the tables declared in Python."""
    if not (root / "models").is_dir():
        return tables
    from .transform.sql_models import discover_models  # sqlglot loads only when there are models

    return discover_models(root, tables)


def _import(path: Path, module_name: str) -> None:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except HeadwaterError:
        raise
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}", "fix the pipeline file") from exc
