"""`headwater run --continuous`: new data is picked up while it runs; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deltalake import DeltaTable

from .conftest import write_pipeline


def test_continuous_run_picks_up_new_files_and_stops_on_sigterm(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "events",
        """
        from headwater import table
        from headwater.sources import files
        table("bronze.events", source=files("in/*.ndjson"), strategy="append")
        """,
    )
    folder = project_dir / "in"
    folder.mkdir()
    (folder / "a.ndjson").write_text(json.dumps({"id": 1}) + "\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater",
            "--project",
            str(project_dir),
            "run",
            "--continuous",
            "--trigger",
            "0.2s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    table = project_dir / "warehouse" / "bronze" / "events"
    try:
        deadline = time.monotonic() + 60
        while not (table / "_delta_log").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (folder / "b.ndjson").write_text(json.dumps({"id": 2}) + "\n")
        while time.monotonic() < deadline:
            if DeltaTable(str(table)).version() >= 1:
                break
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    ids = sorted(DeltaTable(str(table)).to_pyarrow_table().column("id").to_pylist())
    assert ids == [1, 2]
    assert "committed version 0" in err and "committed version 1" in err


def test_continuous_and_full_refresh_are_refused_together(project_dir: Path) -> None:
    from .conftest import run_cli

    result = run_cli(project_dir, "run", "--continuous", "--full-refresh", check=False)
    assert result.returncode != 0 and "do not go together" in result.stderr
