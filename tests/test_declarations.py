"""Declaring tables in a project's pipeline files, and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater import Project, Runner
from headwater.errors import ConfigError

from .conftest import write_pipeline


def test_tables_are_discovered_and_run_in_dependency_order(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "b_silver",
        """
        from headwater import table

        @table("silver.doubled", inputs=["bronze.numbers"], strategy="merge", keys=["n"])
        def doubled(numbers):
            return numbers.select("n, n * 2 AS twice")
        """,
    )
    write_pipeline(
        project_dir,
        "a_bronze",
        """
        from headwater import table
        from headwater.sources import memory

        table("bronze.numbers", source=memory([[{"n": 1}, {"n": 2}]]), strategy="append", description="numbers")
        """,
    )
    project = Project.load(project_dir)
    assert project.order() == ["bronze.numbers", "silver.doubled"]
    assert project.spec("bronze.numbers").description == "numbers"
    results = Runner(project).run()
    assert [r.status for r in results] == ["committed", "committed"]
    rows = project.target("silver.doubled").table.to_pyarrow_table().sort_by("n").to_pylist()
    assert rows == [{"n": 1, "twice": 2}, {"n": 2, "twice": 4}]


def test_a_function_can_return_sql_over_its_inputs(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "p",
        """
        from headwater import table
        from headwater.sources import memory

        table("bronze.a", source=memory([[{"k": 1, "x": 10}]]), strategy="append")
        table("bronze.b", source=memory([[{"k": 1, "y": 20}]]), strategy="append")

        @table("silver.ab", inputs=["bronze.a", "bronze.b"], strategy="overwrite")
        def ab(ctx, a, b):
            return "SELECT a.k, x, y, '" + ctx.table + "' AS made_by FROM a JOIN b USING (k)"
        """,
    )
    project = Project.load(project_dir)
    Runner(project).run()
    assert project.target("silver.ab").table.to_pyarrow_table().to_pylist() == [
        {"k": 1, "x": 10, "y": 20, "made_by": "silver.ab"}
    ]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ('table("orders", source=memory([]))', "must be 'layer.table'"),
        (
            'table("silver.x", inputs=["bronze.missing"])',
            "reads bronze.missing, which no pipeline declares",
        ),
        ('table("silver.x", source=memory([]), inputs=["bronze.y"])', "exactly one of source"),
        (
            'table("silver.x", source=memory([]), strategy="upsert")',
            "unknown write strategy 'upsert'",
        ),
        ('table("silver.x", source=memory([]), strategy="merge")', "strategy 'merge' needs keys"),
        ('table("silver.x", source=memory([]), schema="loose")', "schema policy must be one of"),
        ("1 / 0", "ZeroDivisionError"),
    ],
)
def test_declaration_errors_name_the_file_and_line(
    project_dir: Path, code: str, message: str
) -> None:
    path = write_pipeline(
        project_dir,
        "bad",
        f"""
        from headwater import table
        from headwater.sources import memory

        {code}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Project.load(project_dir)
    assert message in caught.value.message
    assert f"{path}:5" in caught.value.message


def test_a_table_declared_twice_names_both_places(project_dir: Path) -> None:
    for name in ("one", "two"):
        write_pipeline(
            project_dir,
            name,
            'from headwater import table\nfrom headwater.sources import memory\ntable("bronze.t", source=memory([]))\n',
        )
    with pytest.raises(ConfigError) as caught:
        Project.load(project_dir)
    assert "declared twice" in caught.value.message and "one.py" in (caught.value.hint or "")


def test_a_cycle_is_reported(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "cycle",
        """
        from headwater import table
        table("silver.a", inputs=["silver.b"])
        table("silver.b", inputs=["silver.a"])
        """,
    )
    with pytest.raises(ConfigError, match="cycle: silver"):
        Project.load(project_dir)


def test_function_parameters_must_match_inputs(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "params",
        """
        from headwater import table
        from headwater.sources import memory
        table("bronze.a", source=memory([]))
        table("bronze.b", source=memory([]))

        @table("silver.ab", inputs=["bronze.a", "bronze.b"])
        def ab(a, c):
            return a
        """,
    )
    with pytest.raises(ConfigError, match=r"parameter\(s\) \['c'\] match no input"):
        Project.load(project_dir)


def test_a_directory_without_headwater_toml_is_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Headwater project") as caught:
        Project.load(tmp_path)
    assert "headwater init" in (caught.value.hint or "")


def test_bad_configuration_is_reported_with_its_section(project_dir: Path) -> None:
    (project_dir / "headwater.toml").write_text("[defaults]\ntarget_file_size = 'huge'\n")
    with pytest.raises(ConfigError, match="target_file_size"):
        Project.load(project_dir)
    (project_dir / "headwater.toml").write_text("[defaults]\nunknown_key = 1\n")
    with pytest.raises(ConfigError, match=r"\[defaults.unknown_key\]"):
        Project.load(project_dir)
