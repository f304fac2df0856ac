"""Shared fixtures: throwaway projects on real Delta tables on local disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.declare import collecting


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run long soak and scale tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak and scale tests run only with --soak: without it they are deselected (reported
    as such), never collected and skipped."""
    if config.getoption("--soak"):
        return
    soak = [item for item in items if "soak" in item.keywords]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if "soak" not in item.keywords]


@pytest.fixture
def declarations() -> Iterator[list]:
    """Collect the tables declared inside a test (not into the global registry)."""
    with collecting() as found:
        yield found


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "headwater.toml").write_text('[project]\nname = "test"\n')
    (tmp_path / "pipelines").mkdir()
    return tmp_path


def write_pipeline(project: Path, name: str, code: str) -> Path:
    path = project / "pipelines" / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


def run_cli(
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: int = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the `headwater` command as a user would, in a separate process."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "headwater", "--project", str(project), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"headwater {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result
