"""Independent branches of the table graph run side by side; a failure stops only its downstream."""

from __future__ import annotations

import threading
from pathlib import Path

from headwater import table

from .lake import Feed, Lake


def test_independent_branches_run_at_the_same_time(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([[{"x": 1}]], name="feed")
    lake.declare(lambda: table("bronze.src", source=feed, strategy="append"))
    # Both tables wait for each other: they can only finish if they run concurrently.
    meeting = threading.Barrier(2, timeout=30)

    def build() -> None:
        for name in ("silver.left", "silver.right"):

            @table(name, inputs=["bronze.src"], strategy="append")
            def branch(src):  # type: ignore[no-untyped-def]
                meeting.wait()
                return src.select("x")

    lake.declare(build)
    results = lake.run()
    assert [r.status for r in results] == ["committed", "committed", "committed"]
    assert lake.rows("silver.left") == lake.rows("silver.right") == [{"x": 1}]


def test_a_failure_stops_its_downstream_but_not_the_other_branch(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    feed = Feed([[{"x": 1}]], name="feed")
    lake.declare(lambda: table("bronze.src", source=feed, strategy="append"))

    def build() -> None:
        @table("silver.broken", inputs=["bronze.src"], strategy="append")
        def broken(src):  # type: ignore[no-untyped-def]
            raise RuntimeError("bad transform")

        table("gold.after_broken", inputs=["silver.broken"], strategy="append")

        @table("silver.fine", inputs=["bronze.src"], strategy="append")
        def fine(src):  # type: ignore[no-untyped-def]
            return src

    lake.declare(build)
    results = {r.table: r for r in lake.run(check=False)}
    assert results["silver.broken"].status == "failed" and "bad transform" in (
        results["silver.broken"].error or ""
    )
    assert results["gold.after_broken"].status == "upstream-failed"
    assert results["silver.fine"].status == "committed"
