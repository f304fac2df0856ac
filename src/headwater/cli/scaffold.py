"""`headwater init`: a new project with a small pipeline that runs as it is."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import CONFIG_FILE
from ..errors import HeadwaterError

CONFIG_TEMPLATE = """\
# Headwater project settings. Every key is optional; the values shown are the defaults.

[project]
name = {name}

[warehouse]
# Where the Delta tables live: a folder relative to this file, or an object
# store URI such as "s3://bucket/lake".
path = "warehouse"
# Credentials are read from environment variables, never written here:
# storage_options_env = {{ AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID", AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY" }}

[metadata]
# Run history and schedules.
url = "sqlite:///.headwater/metadata.db"

[defaults]
# What happens when incoming data has new or different columns: evolve | freeze | discard-columns
schema_policy = "evolve"
target_file_size = "128MB"
compression = "snappy"

[maintenance]
# `headwater maintain` removes files unreferenced for longer than this (time travel reaches back as far).
vacuum_retention_hours = 168
compact_target_size = "128MB"
"""

EXAMPLE_PIPELINE = '''\
"""An example pipeline: orders land from CSV files (bronze) and are cleaned (silver).

    headwater run
    headwater show silver.orders
    headwater sql "SELECT status, count(*) AS orders FROM silver.orders GROUP BY ALL"

Drop another CSV into landing/orders/ and run again: only the new file is read.
Every .py file under pipelines/ is loaded; replace this one with your own.
"""

from headwater import table
from headwater.sources import files

# Bronze: each new file is loaded once. The files already loaded are recorded
# in the table's own Delta commit, so a rerun (or a crash) never loads one twice.
table(
    "bronze.orders",
    source=files("landing/orders/*.csv"),
    strategy="merge",  # upsert by key: a corrected order replaces its old row
    keys=["order_id"],
    version_column="updated_at",  # an older version never overwrites a newer one
)


# Silver: receives only the rows of bronze.orders that changed since its last
# run, as a DuckDB relation named after the input; return SQL or a relation.
@table(
    "silver.orders",
    inputs=["bronze.orders"],
    strategy="merge",
    keys=["order_id"],
    version_column="updated_at",
)
def orders(orders):
    return """
        SELECT * REPLACE (lower(trim(status)) AS status)
        FROM orders
        WHERE amount > 0
    """
'''

EXAMPLE_DATA = """\
order_id,customer,amount,status,updated_at
1,alice,19.90,Paid,2024-05-01T09:00:00Z
2,bob,5.00,NEW,2024-05-01T09:05:00Z
3,carol,42.50,paid ,2024-05-01T09:12:00Z
4,alice,0.00,Cancelled,2024-05-01T09:30:00Z
5,dave,12.00,SHIPPED,2024-05-01T10:02:00Z
"""

GITIGNORE = """\
# Data and run state stay out of version control.
warehouse/
.headwater/
"""


def scaffold(directory: Path) -> list[Path]:
    """Create the project files under `directory`; returns what was created."""
    config = directory / CONFIG_FILE
    if config.exists():
        raise HeadwaterError(
            f"{config} already exists",
            "init only creates new projects; choose another directory",
        )
    if directory.exists() and not directory.is_dir():
        raise HeadwaterError(f"{directory} exists and is not a directory")
    name = json.dumps(directory.resolve().name or "headwater")  # a valid TOML basic string
    files = {
        CONFIG_FILE: CONFIG_TEMPLATE.format(name=name),
        "pipelines/example.py": EXAMPLE_PIPELINE,
        "landing/orders/2024-05-01.csv": EXAMPLE_DATA,
        "models/.gitkeep": "",
        "contracts/.gitkeep": "",
        ".gitignore": GITIGNORE,
    }
    created = []
    for relative, text in files.items():
        path = directory / relative
        if path.exists():
            continue  # never overwrite what the user already has
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        created.append(path)
    return created
