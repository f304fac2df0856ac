"""The quality benchmark's data: a 10M-row orders table with known faults, and its customers.

Every value is a function of the row number and DuckDB's `hash`, so the data is
the same on every machine and streams from DuckDB into `write_deltalake`
without being held in memory. A few rows break each rule on purpose (NULL,
duplicate and dangling keys, unknown statuses, negative amounts, malformed
e-mails, orders shipped before they were made), so every contestant has
something to find; the expected counts are computed here by plain SQL,
independently of every contestant, and each contestant's findings are
compared with them.

Both tables are written as a Headwater warehouse (`<data>/warehouse/bench/...`)
so Headwater reads them as tables; the peers read the same Parquet files, listed
from the Delta log in `manifest.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable, write_deltalake

CUSTOMERS = 1_000_000
BATCH_ROWS = 1 << 18
STATUSES = ["new", "paid", "shipped", "delivered", "cancelled"]
EMAIL_PATTERN = r"^[a-z0-9._]+@[a-z0-9]+\.[a-z]+$"
AMOUNT_MAX = 10_000
ROW_COUNT_RANGE = (1, 20_000_000)
FRESHNESS_DAYS = 1  # the data ends in 2024: the freshness check fails, deterministically
CANCELLED_MAX_PERCENT = 25

ORDERS_SQL = """
SELECT
    CASE WHEN i % 200000 = 1 THEN i - 1 ELSE i END AS order_id,
    CASE
        WHEN i % 100000 = 7 THEN NULL
        WHEN i % 20000 = 3 THEN 1000000 + i % 1000
        ELSE (hash(i, 1) % 1000000)::BIGINT
    END AS customer_id,
    CASE WHEN i % 33333 = 5 THEN -1.0 ELSE (hash(i, 2) % 1000000)::DOUBLE / 100 END AS amount,
    CASE WHEN i % 50000 = 11 THEN 'unknown'
         ELSE ['new', 'paid', 'shipped', 'delivered', 'cancelled'][(hash(i, 3) % 5)::INT + 1]
    END AS status,
    CASE WHEN i % 25000 = 13 THEN 'user' || i || '.example.com'
         ELSE 'user' || (hash(i, 4) % 1000000) || '@example.com'
    END AS email,
    TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds((i * 3) % 31536000) AS created_at,
    CASE WHEN i % 16667 = 17 THEN TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds((i * 3) % 31536000) - INTERVAL 1 HOUR
         WHEN hash(i, 3) % 5 IN (2, 3) THEN TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds((i * 3) % 31536000) + to_seconds((hash(i, 5) % 259200)::BIGINT)
         ELSE NULL
    END AS shipped_at,
    (1 + hash(i, 6) % 10)::INTEGER AS quantity,
    ['PT', 'NO', 'IT', 'DE', 'FR', 'ES', 'NL', 'SE'][(hash(i, 7) % 8)::INT + 1] AS country
FROM range({rows}) r(i)
"""

CUSTOMERS_SQL = """
SELECT i AS customer_id, 'customer ' || i AS name, ['PT', 'NO', 'IT'][(i % 3)::INT + 1] AS country
FROM range({rows}) r(i)
"""


def warehouse(data: Path) -> Path:
    return data / "warehouse" / "bench"


def _write(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    write_deltalake(str(path), reader, mode="overwrite")


def write(data: Path, rows: int) -> None:
    """Write bench.orders and bench.customers, the manifest and the expected findings."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    orders, customers = warehouse(data) / "orders", warehouse(data) / "customers"
    _write(con, ORDERS_SQL.format(rows=rows), orders)
    _write(con, CUSTOMERS_SQL.format(rows=CUSTOMERS), customers)
    manifest = {"rows": rows, "orders": _files(orders), "customers": _files(customers)}
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (data / "expected.json").write_text(json.dumps(expected(con, manifest), indent=2))


def _files(table: Path) -> list[str]:
    """The table's live Parquet files, as absolute paths (from its Delta log)."""
    paths = [uri.removeprefix("file://") for uri in DeltaTable(str(table)).file_uris()]
    return [p if p.startswith("/") else str(table / p) for p in paths]


def expected(con: duckdb.DuckDBPyConnection, manifest: dict[str, Any]) -> dict[str, Any]:
    """Each check's outcome on this data, by plain SQL over the Parquet files."""
    con.execute(f"CREATE VIEW o AS SELECT * FROM read_parquet({manifest['orders']!r})")
    con.execute(f"CREATE VIEW c AS SELECT * FROM read_parquet({manifest['customers']!r})")

    def one(sql: str) -> Any:
        return con.sql(sql).fetchall()[0][0]

    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    counts = {
        "not_null": one("SELECT count(*) FROM o WHERE customer_id IS NULL"),
        "unique": one("SELECT count(*) - count(DISTINCT order_id) FROM o"),
        "accepted_values": one(f"SELECT count(*) FROM o WHERE status NOT IN ({statuses})"),
        "range": one(f"SELECT count(*) FROM o WHERE amount < 0 OR amount > {AMOUNT_MAX}"),
        "regex": one(f"SELECT count(*) FROM o WHERE NOT regexp_matches(email, '{EMAIL_PATTERN}')"),
        "references": one(
            "SELECT count(*) FROM o WHERE customer_id IS NOT NULL "
            "AND customer_id NOT IN (SELECT customer_id FROM c)"
        ),
        "custom_row": one("SELECT count(*) FROM o WHERE shipped_at < created_at"),
    }
    rows = one("SELECT count(*) FROM o")
    cancelled = one("SELECT 100.0 * count(*) FILTER (WHERE status = 'cancelled') / count(*) FROM o")
    passed = {name: count == 0 for name, count in counts.items()}
    passed["row_count"] = ROW_COUNT_RANGE[0] <= rows <= ROW_COUNT_RANGE[1]
    passed["freshness"] = False  # the newest order is from 2024
    passed["custom_aggregate"] = cancelled < CANCELLED_MAX_PERCENT
    return {"counts": counts, "passed": passed, "rows": rows, "cancelled_percent": cancelled}
