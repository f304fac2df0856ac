"""Child-process steps of the quality benchmark (run.py starts them; never run in-process).

child.py data  DIR --rows N                       write the tables, manifest and expectations
child.py check headwater|great_expectations|soda DIR   run the ten checks, report time and findings

The `check` step of a peer runs under the peers' interpreter (see run.py), which
has Great Expectations and Soda but not Headwater.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` and `quality` importable

from _common import child_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="child.py")
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("data")
    p.add_argument("dir", type=Path)
    p.add_argument("--rows", type=int, required=True)
    p = steps.add_parser("check")
    p.add_argument(
        "contestant",
        choices=["headwater", "great_expectations", "great_expectations_9", "soda", "soda_v3"],
    )
    p.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    if args.step == "data":
        from quality import data

        data.write(args.dir, args.rows)
        return 0

    from quality.contestants import CONTESTANTS

    manifest = json.loads((args.dir / "manifest.json").read_text())
    watch, base, findings = CONTESTANTS[args.contestant](args.dir, manifest)
    child_report(watch.wall_s, watch.cpu_s, base, findings=findings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
