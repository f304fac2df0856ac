"""Child-process steps of the ingest benchmark (run.py starts them; never run in-process).

child.py data ensure  --dsn DSN --admin-dsn DSN --database DB --rows N
child.py data change  --dsn DSN --rows N --out OUT.json
child.py fingerprint source --dsn DSN --rows N [--incremental] --out OUT.json
child.py fingerprint delta  PATH [--latest-per-id] --out OUT.json
child.py load floor     --dsn DSN --select SQL
child.py load headwater ROOT
child.py load dlt       ROOT --dsn DSN --table T --chunk-size K --strategy merge|append

`data`, `fingerprint`, `load floor` and `load headwater` run in the project's
virtualenv; `load dlt` runs in the peers' virtualenv (bench/results/ingest-peers-venv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `ingest` importable

from _common import child_report  # noqa: E402
from ingest import contestants  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="child.py")
    steps = parser.add_subparsers(dest="step", required=True)

    p = steps.add_parser("data")
    p.add_argument("action", choices=["ensure", "change"])
    p.add_argument("--dsn", required=True)
    p.add_argument("--admin-dsn")
    p.add_argument("--database")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", type=Path)

    p = steps.add_parser("fingerprint")
    p.add_argument("kind", choices=["source", "delta"])
    p.add_argument("path", nargs="?")
    p.add_argument("--dsn")
    p.add_argument("--rows", type=int)
    p.add_argument("--incremental", action="store_true", help="only the changed rows")
    p.add_argument("--latest-per-id", action="store_true")
    p.add_argument("--out", type=Path, required=True)

    p = steps.add_parser("load")
    p.add_argument("contestant", choices=["floor", "headwater", "dlt"])
    p.add_argument("root", nargs="?", type=Path)
    p.add_argument("--dsn")
    p.add_argument("--select")
    p.add_argument("--table")
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--strategy", choices=["merge", "append"])

    args = parser.parse_args(argv)

    if args.step == "load":
        if args.contestant == "floor":
            timed = contestants.copy_floor(args.dsn, args.select)
        elif args.contestant == "headwater":
            timed = contestants.headwater_load(args.root)
        else:
            timed = contestants.dlt_load(
                args.root, args.dsn, args.table, args.chunk_size, args.strategy
            )
        child_report(
            timed.watch.wall_s,
            timed.watch.cpu_s,
            timed.base_rss_bytes,
            rows=timed.rows,
            metrics=timed.metrics,
        )
        return 0

    from ingest import data

    if args.step == "data":
        if args.action == "ensure":
            data.ensure_database(args.admin_dsn, args.database)
            data.ensure_table(args.dsn, args.rows)
        else:
            args.out.write_text(json.dumps(data.apply_change(args.dsn, args.rows)))
        return 0

    if args.kind == "source":
        where = data.incremental_filter() if args.incremental else None
        found = data.source_fingerprint(args.dsn, args.rows, where)
    else:
        found = data.delta_fingerprint(args.path, args.latest_per_id)
    args.out.write_text(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
