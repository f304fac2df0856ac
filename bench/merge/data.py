"""The merge benchmark's data: a keyed target table, an upsert batch, and fingerprints.

Rows are a pure function of their key and a seed (DuckDB's `hash`), so every
run builds the same data without holding it in memory: the target streams
from DuckDB into `write_deltalake` in order of key, which clusters the files
by key as an append-only fact table would be.

An upsert batch for a target of N rows holds `updates` existing keys drawn
uniformly without replacement (with new values in every column) and `inserts`
new keys N, N+1, ..., shuffled together.

A fingerprint is (row count, sum and xor of a per-row hash) over canonical
column types: equal fingerprints mean equal tables whatever the row order or
file layout. The expected fingerprint of a merge is computed independently
of both contestants: the target's rows whose key is not in the batch, plus the
batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("customer_id", pa.int64()),
        pa.field("price", pa.float64()),
        pa.field("customer_name", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("amount", pa.decimal128(12, 2)),
        pa.field("status", pa.string()),
    ]
)
TARGET_SEED = 1
BATCH_ROWS = 1 << 18

# Rows for the keys in table `keys`: every value a hash of the key and a seed.
ROWS_MACRO = """
CREATE TEMP MACRO bench_rows(seed) AS TABLE
SELECT id,
       (hash(id, seed * 10 + 1) % 1000000)::BIGINT AS customer_id,
       (hash(id, seed * 10 + 2) % 10000000)::DOUBLE / 100 AS price,
       substr(md5(hash(id, seed * 10 + 3)::VARCHAR), 1, 20) AS customer_name,
       TIMESTAMPTZ '2024-01-01 00:00:00+00'
         + to_microseconds((hash(id, seed * 10 + 4) % 31536000000000)::BIGINT) AS updated_at,
       ((hash(id, seed * 10 + 5) % 10000000000)::DECIMAL(18, 0) / 100)::DECIMAL(12, 2) AS amount,
       ['new', 'paid', 'shipped', 'returned', 'cancelled'][(hash(id, seed * 10 + 6) % 5)::INT + 1]
         AS status
FROM keys
"""

# Canonical types, so equal content hashes equal whatever types a writer chose.
FINGERPRINT_SQL = """
SELECT count(*) AS rows,
       sum(h)::VARCHAR AS hash_sum,
       bit_xor(h)::VARCHAR AS hash_xor,
       count(DISTINCT id) AS keys
FROM (
    SELECT id,
           hash(id::BIGINT, customer_id::BIGINT, price::DOUBLE, customer_name::VARCHAR,
                epoch_us(updated_at), amount::DECIMAL(12, 2), status::VARCHAR) AS h
    FROM candidate
)
"""

EXPECTED_VIEW = """
CREATE TEMP VIEW expected_rows AS
SELECT id, customer_id, price, customer_name, updated_at, amount, status
FROM target_rows ANTI JOIN upsert_rows USING (id)
UNION ALL
SELECT id, customer_id, price, customer_name, updated_at, amount, status FROM upsert_rows
"""

# Shown as text: timestamps with a time zone would need pytz to reach Python.
MISSING_SQL = """
SELECT id, customer_id, price, customer_name, updated_at::VARCHAR, amount::VARCHAR, status FROM (
    SELECT id, customer_id, price, customer_name, updated_at, amount, status FROM expected_rows
    EXCEPT ALL
    SELECT id, customer_id, price, customer_name, updated_at, amount, status FROM result_rows
) ORDER BY id LIMIT 5
"""

UNEXPECTED_SQL = """
SELECT id, customer_id, price, customer_name, updated_at::VARCHAR, amount::VARCHAR, status FROM (
    SELECT id, customer_id, price, customer_name, updated_at, amount, status FROM result_rows
    EXCEPT ALL
    SELECT id, customer_id, price, customer_name, updated_at, amount, status FROM expected_rows
) ORDER BY id LIMIT 5
"""


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def write_target(path: Path, rows: int, file_size: int | None) -> None:
    """The target table: keys 0..rows-1 in order, written once by delta-rs."""
    con = _connect()
    con.execute("CREATE TEMP TABLE keys AS SELECT range AS id FROM range(0, ?)", [rows])
    con.execute(ROWS_MACRO)  # binds to `keys`, so it comes after it
    reader = con.sql(
        "SELECT * FROM bench_rows(?) ORDER BY id", params=[TARGET_SEED]
    ).to_arrow_reader(BATCH_ROWS)
    batches = (batch.cast(SCHEMA) for batch in reader)
    write_deltalake(
        str(path),
        pa.RecordBatchReader.from_batches(SCHEMA, batches),
        mode="error",
        target_file_size=file_size,
    )


def write_upsert(path: Path, target_rows: int, size: int, seed: int, recent: bool = False) -> None:
    """`size` rows, half updates of existing keys, half new keys.

    Updated keys are drawn uniformly from the whole table, or with `recent` from
    its newest 1% (recent orders change, old ones rarely do).
    """
    updates = size // 2
    first = target_rows - max(updates, target_rows // 100) if recent else 0
    con = _connect()
    con.execute(
        "CREATE TEMP TABLE keys AS "
        "(SELECT range AS id FROM range($first, $rows) ORDER BY hash(range, $seed) LIMIT $updates) "
        "UNION ALL SELECT range AS id FROM range($rows, $rows + $inserts)",
        {
            "first": first,
            "rows": target_rows,
            "seed": seed,
            "updates": updates,
            "inserts": size - updates,
        },
    )
    con.execute(ROWS_MACRO)
    # Another seed than the target's gives updated rows new values in every column;
    # the final order shuffles updates and inserts together.
    table = (
        con.sql("SELECT * FROM bench_rows(?) ORDER BY hash(id, ?)", params=[seed, seed + 1])
        .to_arrow_table()
        .cast(SCHEMA)
    )
    if table.num_rows != size or pc.count_distinct(table["id"]).as_py() != size:
        raise RuntimeError(f"upsert batch {path.name} does not hold {size} distinct keys")
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# -- fingerprints -------------------------------------------------------------


def _fingerprint(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    relation = con.sql(FINGERPRINT_SQL)
    (row,) = relation.fetchall()
    return dict(zip(relation.columns, row, strict=True))


def _register(
    con: duckdb.DuckDBPyConnection,
    *,
    result: Path | None = None,
    target: Path | None = None,
    upsert: Path | None = None,
) -> None:
    if result is not None:
        con.register("result_rows", DeltaTable(str(result)).to_pyarrow_dataset())
    if target is not None:
        con.register("target_rows", DeltaTable(str(target)).to_pyarrow_dataset())
    if upsert is not None:
        con.register("upsert_rows", pq.read_table(upsert))


def table_fingerprint(path: Path) -> dict[str, Any]:
    con = _connect()
    _register(con, result=path)
    con.execute("CREATE TEMP VIEW candidate AS SELECT * FROM result_rows")
    return _fingerprint(con)


def expected_fingerprint(target: Path, upsert: Path) -> dict[str, Any]:
    """The fingerprint a correct upsert of `upsert` into `target` must produce."""
    con = _connect()
    _register(con, target=target, upsert=upsert)
    con.execute(EXPECTED_VIEW)
    con.execute("CREATE TEMP VIEW candidate AS SELECT * FROM expected_rows")
    return _fingerprint(con)


def explain_mismatch(result: Path, target: Path, upsert: Path) -> str:
    """A few rows that differ between a merge's result and the correct result."""
    con = _connect()
    _register(con, result=result, target=target, upsert=upsert)
    con.execute(EXPECTED_VIEW)
    missing = con.sql(MISSING_SQL).fetchall()
    unexpected = con.sql(UNEXPECTED_SQL).fetchall()
    return f"missing or wrong in the result: {missing}\nunexpected in the result: {unexpected}"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
