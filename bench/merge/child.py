"""Child-process steps of the merge benchmark (run.py starts them; never run in-process).

child.py target   PATH --rows N [--file-size BYTES]
child.py upsert   PATH --target-rows N --size K --seed S
child.py expected TARGET UPSERT OUT.json
child.py verify   RESULT TARGET UPSERT EXPECTED.json
child.py merge    deltalake|headwater DIR UPSERT
child.py profile  phases|cprofile PROJECT_ROOT UPSERT OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `merge` importable

from _common import child_report  # noqa: E402
from merge import contestants  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="child.py")
    steps = parser.add_subparsers(dest="step", required=True)

    p = steps.add_parser("target")
    p.add_argument("path", type=Path)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--file-size", type=int)

    p = steps.add_parser("upsert")
    p.add_argument("path", type=Path)
    p.add_argument("--target-rows", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--recent", action="store_true", help="update the newest 1%% of keys")

    p = steps.add_parser("expected")
    p.add_argument("target", type=Path)
    p.add_argument("upsert", type=Path)
    p.add_argument("out", type=Path)

    p = steps.add_parser("verify")
    p.add_argument("result", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("upsert", type=Path)
    p.add_argument("expected", type=Path)

    p = steps.add_parser("merge")
    p.add_argument("contestant", choices=["deltalake", "headwater"])
    p.add_argument("dir", type=Path, help="the table (deltalake) or the project root (headwater)")
    p.add_argument("upsert", type=Path)

    p = steps.add_parser("profile")
    p.add_argument("kind", choices=["phases", "cprofile"])
    p.add_argument("root", type=Path)
    p.add_argument("upsert", type=Path)
    p.add_argument("out", type=Path)

    args = parser.parse_args(argv)

    if args.step == "merge":
        merge = (
            contestants.deltalake_merge
            if args.contestant == "deltalake"
            else contestants.headwater_merge
        )
        timed = merge(args.dir, args.upsert)
        child_report(
            timed.watch.wall_s, timed.watch.cpu_s, timed.base_rss_bytes, metrics=timed.metrics
        )
        return 0

    if args.step == "profile":
        from merge import profiling

        profiling.run(args.kind, args.root, args.upsert, args.out)
        return 0

    from merge import data

    if args.step == "target":
        data.write_target(args.path, args.rows, args.file_size)
    elif args.step == "upsert":
        data.write_upsert(args.path, args.target_rows, args.size, args.seed, args.recent)
    elif args.step == "expected":
        data.write_json(args.out, data.expected_fingerprint(args.target, args.upsert))
    elif args.step == "verify":
        expected = json.loads(args.expected.read_text())
        found = data.table_fingerprint(args.result)
        if found != expected:
            print(
                f"WRONG RESULT in {args.result}:\n  expected {expected}\n  found    {found}\n"
                + data.explain_mismatch(args.result, args.target, args.upsert),
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
