"""`headwater demo`: a shop's bronze -> silver -> gold pipeline, built twice.

The demo writes a real project: an SQLite shop database, a landing folder of
NDJSON events, and `pipelines/shop.py` written with the public API exactly as a
user would. Run 1 builds every table; then the source changes a little (a
customer moves, orders arrive and change, two event files land, one repeating
an event) and run 2 processes only those changes. The data is generated from a
fixed seed, so every run of the demo prints the same numbers.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from rich.text import Text

from ..errors import HeadwaterError
from ..project import Project
from ..tables.time_travel import history
from . import render
from .progress import current_versions, run_with_progress

SEED = 20240301
CUSTOMERS = 200
ORDERS = 2000
EVENT_FILES = 3
EVENTS_PER_FILE = 100
DAYS = 30
FIRST_DAY = date(2024, 3, 1)
LOADED_AT = datetime(2024, 3, 31, 23, 0, 0)
CHANGED_AT = datetime(2024, 4, 1, 9, 0, 0)
MOVER = 7  # the customer who moves city between the runs
TRY_QUERY = "SELECT order_date, revenue FROM gold.daily_revenue ORDER BY order_date DESC LIMIT 7"

CITIES = ["Lisbon", "Porto", "Madrid", "Berlin", "Paris", "Milan", "Vienna", "Prague"]
TIERS = ["basic", "plus", "premium"]
FIRST_NAMES = ["Ana", "Ben", "Carla", "Dev", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jon"]
LAST_NAMES = ["Silva", "Novak", "Meyer", "Rossi", "Dubois", "Khan", "Lopez", "Berg", "Costa"]
# Source systems are messy: the silver layer cleans case and stray spaces.
STATUSES = ["NEW", "paid", "Paid", "PAID ", "shipped", "Shipped", "cancelled"]
EVENT_TYPES = ["page_view", "page_view", "page_view", "add_to_cart", "checkout"]

SHOP_PIPELINE = '''\
"""The shop: raw data lands in bronze, is cleaned in silver and modelled in gold."""

from headwater import changes, snapshot, table
from headwater.sources import files, sqlite

# -- bronze: land the sources as they are -------------------------------------
# High-water mark on updated_at (customer_id breaks ties), upserted by key; the
# mark is stored in each table's own Delta commit, so it is exactly-once.
table(
    "bronze.customers",
    source=sqlite("shop.db", "customers", cursor="updated_at", tiebreak="customer_id"),
    strategy="merge",
    keys=["customer_id"],
    version_column="updated_at",
)

table(
    "bronze.orders",
    source=sqlite("shop.db", "orders", cursor="updated_at", tiebreak="order_id"),
    strategy="merge",
    keys=["order_id"],
    version_column="updated_at",
)

# Every event file is loaded once and then archived; an event delivered twice
# is kept once.
table(
    "bronze.events",
    source=files("landing/events/*.ndjson", archive_to="landing/archive"),
    strategy="insert-if-absent",
    keys=["event_id"],
)

# -- silver: clean and keep history ----------------------------------------------
# Every version of a customer: a change of name, email, city or tier closes the
# current row (valid_to) and opens a new one (is_current).
table(
    "silver.customers",
    inputs=["bronze.customers"],
    strategy="scd2",
    keys=["customer_id"],
    tracked_columns=["name", "email", "city", "tier"],
)


# The function receives the changes of bronze.orders since its last run.
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


# -- gold: recompute only what the changes touch ----------------------------------
# Customers whose orders changed (or whose own row changed) are recomputed from
# the full order table and joined with their current version.
@table(
    "gold.customer_revenue",
    inputs={
        "changed": changes("silver.orders"),
        "moved": changes("silver.customers"),
        "orders": snapshot("silver.orders"),
        "customers": snapshot("silver.customers"),
    },
    strategy="merge",
    keys=["customer_id"],
)
def customer_revenue(ctx):
    return ctx.sql("""
        WITH touched AS (
            SELECT customer_id FROM changed
            UNION
            SELECT customer_id FROM moved
        )
        SELECT c.customer_id, c.name, c.city, c.tier,
               count(o.order_id) AS orders,
               coalesce(sum(o.amount), 0) AS revenue,
               max(o.order_date) AS last_order
        FROM touched t
        JOIN customers c ON c.customer_id = t.customer_id AND c.is_current
        LEFT JOIN orders o ON o.customer_id = t.customer_id AND o.status <> 'cancelled'
        GROUP BY ALL
    """)


# Only the dates that changed are recomputed; each replaces its partition.
@table(
    "gold.daily_revenue",
    inputs={"changed": changes("silver.orders"), "orders": snapshot("silver.orders")},
    strategy="replace-partition",
    partition_by=["order_date"],
)
def daily_revenue(changed, orders):
    return """
        SELECT order_date,
               count(*) AS orders,
               count(DISTINCT customer_id) AS customers,
               sum(amount) AS revenue
        FROM orders
        WHERE status <> 'cancelled'
          AND order_date IN (SELECT order_date FROM changed)
        GROUP BY order_date
    """
'''


@dataclass
class Changes:
    """What the demo changes in the source between the two runs."""

    mover: int = MOVER
    moved_from: str = ""
    moved_to: str = ""
    upgraded_to: str = ""
    orders_added: int = 0
    orders_updated: int = 0
    events_added: int = 0
    events_repeated: int = 0


def _stamp(moment: datetime) -> str:
    # One fixed text format: SQLite compares the high-water mark as text.
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def create_shop(root: Path) -> None:
    """The shop database and the first event files, generated from a fixed seed."""
    rng = random.Random(SEED)
    with sqlite3.connect(root / "shop.db") as db:
        db.executescript(
            """
            CREATE TABLE customers (
                customer_id INTEGER PRIMARY KEY, name TEXT, email TEXT, city TEXT,
                tier TEXT, updated_at TIMESTAMP);
            CREATE TABLE orders (
                order_id INTEGER PRIMARY KEY, customer_id INTEGER, amount DECIMAL(10,2),
                status TEXT, order_date DATE, updated_at TIMESTAMP);
            """
        )
        customers = []
        for customer_id in range(1, CUSTOMERS + 1):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            customers.append(
                (
                    customer_id,
                    f"{first} {last}",
                    f"{first}.{last}{customer_id}@example.com".lower(),
                    rng.choice(CITIES),
                    rng.choice(TIERS),
                    _stamp(datetime(2024, 1, 1) + timedelta(minutes=customer_id)),
                )
            )
        db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", customers)
        orders = []
        for order_id in range(1, ORDERS + 1):
            day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
            # About one order in fifty is a test order or a zero-amount correction.
            amount = "0.00" if rng.random() < 0.02 else f"{rng.uniform(5, 400):.2f}"
            placed = datetime.combine(day, datetime.min.time()) + timedelta(
                minutes=rng.randrange(24 * 60)
            )
            orders.append(
                (
                    order_id,
                    rng.randint(1, CUSTOMERS),
                    amount,
                    rng.choice(STATUSES),
                    day.isoformat(),
                    _stamp(placed),
                )
            )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
    events = root / "landing" / "events"
    events.mkdir(parents=True, exist_ok=True)
    for index in range(EVENT_FILES):
        start = index * EVENTS_PER_FILE + 1
        ids = range(start, start + EVENTS_PER_FILE)
        _write_events(events / f"events-{index + 1:03d}.ndjson", ids, rng)


def _write_events(path: Path, ids: range | list[int], rng: random.Random) -> None:
    lines = []
    for event_id in ids:
        moment = datetime(2024, 3, 1) + timedelta(seconds=event_id * 617)
        lines.append(
            json.dumps(
                {
                    "event_id": f"ev-{event_id:05d}",
                    "customer_id": rng.randint(1, CUSTOMERS),
                    "type": rng.choice(EVENT_TYPES),
                    "ts": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


def change_shop(root: Path) -> Changes:
    """A day of change: 3 customers updated (one moves), 25 orders added, 10 updated,
    two event files, one repeating an event already loaded."""
    rng = random.Random(SEED + 1)
    changed = Changes()
    stamp = _stamp(CHANGED_AT)
    with sqlite3.connect(root / "shop.db") as db:
        (city,) = db.execute("SELECT city FROM customers WHERE customer_id = ?", [MOVER]).fetchone()
        changed.moved_from = city
        changed.moved_to = next(c for c in CITIES if c != city)
        db.execute(
            "UPDATE customers SET city = ?, updated_at = ? WHERE customer_id = ?",
            [changed.moved_to, stamp, MOVER],
        )
        (tier,) = db.execute("SELECT tier FROM customers WHERE customer_id = 12").fetchone()
        changed.upgraded_to = TIERS[(TIERS.index(tier) + 1) % len(TIERS)]
        db.execute(
            "UPDATE customers SET tier = ?, updated_at = ? WHERE customer_id = 12",
            [changed.upgraded_to, stamp],
        )
        db.execute(
            "UPDATE customers SET email = 'customer30.new@example.com', updated_at = ? "
            "WHERE customer_id = 30",
            [stamp],
        )
        new_orders = []
        for offset in range(25):
            day = FIRST_DAY + timedelta(days=DAYS - 1 - offset % 3)
            new_orders.append(
                (
                    ORDERS + 1 + offset,
                    MOVER if offset < 2 else rng.randint(1, CUSTOMERS),
                    f"{rng.uniform(5, 400):.2f}",
                    "NEW",
                    day.isoformat(),
                    stamp,
                )
            )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", new_orders)
        changed.orders_added = len(new_orders)
        updated = sorted(rng.sample(range(1, ORDERS + 1), 10))
        db.executemany(
            "UPDATE orders SET status = 'Shipped', updated_at = ? WHERE order_id = ?",
            [(stamp, order_id) for order_id in updated],
        )
        changed.orders_updated = len(updated)
    events = root / "landing" / "events"
    first = EVENT_FILES * EVENTS_PER_FILE + 1
    _write_events(events / "events-004.ndjson", range(first, first + 12), rng)
    # A producer retried: event 42, already loaded in run 1, is delivered again.
    _write_events(events / "events-005.ndjson", [42, *range(first + 12, first + 19)], rng)
    changed.events_added = 20
    changed.events_repeated = 1
    return changed


def write_project(root: Path) -> None:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "headwater.toml").write_text('[project]\nname = "shop-demo"\n')
    (root / ".gitignore").write_text("warehouse/\n.headwater/\n")
    (root / "pipelines" / "shop.py").write_text(SHOP_PIPELINE)


def _check_directory(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise HeadwaterError(
            f"{directory} is not an empty directory",
            "give --dir a new or empty directory for the demo project",
        )


def run_demo(directory: Path | None, *, keep: bool = False, debug: bool = False) -> None:
    if directory is not None:
        _check_directory(directory)
        root = directory
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="headwater-demo-"))
    root = root.resolve()
    try:
        _demo(root, debug)
    finally:
        kept = directory is not None or keep
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
    out = render.out()
    out.print()
    if kept:
        out.print(Text.assemble("The demo project is in ", (str(root), "bold"), ". Try:"))
        out.print(f"  headwater --project {root} tables", markup=False)
        out.print(f"  headwater --project {root} sql {TRY_QUERY!r}", markup=False)
    else:
        out.print("The demo project was removed; keep it with --keep or --dir DIR.", style="dim")


def _demo(root: Path, debug: bool) -> None:
    out = render.out()
    out.print(Text("Headwater demo: a shop pipeline, bronze -> silver -> gold", style="bold"))
    out.print(f"project: {root}", style="dim", markup=False)
    write_project(root)
    create_shop(root)
    out.print(
        f"source: shop.db with {CUSTOMERS} customers and {ORDERS:,} orders; "
        f"{EVENT_FILES} event files of {EVENTS_PER_FILE} events in landing/events/",
        style="dim",
    )

    render.heading("Run 1: build every table from scratch")
    _run(root, "run 1", debug)

    changed = change_shop(root)
    render.heading("Meanwhile, in the source")
    lines = [
        f"customer {changed.mover} moved from {changed.moved_from} to {changed.moved_to}; "
        f"customer 12 changed tier to {changed.upgraded_to}; customer 30 changed email",
        f"{changed.orders_added} new orders, {changed.orders_updated} orders shipped",
        f"2 new event files: {changed.events_added} events, {changed.events_repeated} of them "
        "already loaded (a producer retry)",
    ]
    for line in lines:
        out.print(f"  • {line}", markup=False)

    render.heading("Run 2: only the changes are read and written")
    _run(root, "run 2", debug)
    out.print(
        "Rows in are the changed rows, not the table sizes: bronze reads after its "
        "high-water mark, silver and gold read the change feed of their inputs.",
        style="dim",
    )

    project = Project.load(root)
    _top_customers(project)
    render.heading("History of silver.customers")
    out.print(render.history_table(history(project.target("silver.customers"))))
    _versions_of(project, changed)


def _run(root: Path, label: str, debug: bool) -> None:
    project = Project.load(root)
    results = run_with_progress(project, None, render.err())
    render.out().print(render.run_summary(results, current_versions(project, results)))
    if any(r.status in render.FAILED for r in results):
        render.run_failures(results, debug=debug)
        raise HeadwaterError(f"the demo's {label} failed")


def _top_customers(project: Project) -> None:
    from .query import run_query

    render.heading("gold.customer_revenue: top customers by revenue")
    top = run_query(
        project,
        "SELECT customer_id, name, city, tier, orders, revenue, last_order "
        "FROM gold.customer_revenue ORDER BY revenue DESC, customer_id LIMIT 5",
    )
    assert top is not None
    render.out().print(render.rows_table(top.column_names, top.to_pylist()))


def _versions_of(project: Project, changed: Changes) -> None:
    from .query import run_query

    render.heading(f"silver.customers: every version of customer {changed.mover} (SCD2)")
    versions = run_query(
        project,
        "SELECT customer_id, name, city, tier, valid_from, valid_to, is_current "
        "FROM silver.customers WHERE customer_id = ? ORDER BY valid_from",
        [changed.mover],
    )
    assert versions is not None
    render.out().print(render.rows_table(versions.column_names, versions.to_pylist()))
