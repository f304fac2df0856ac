"""End-to-end lag of every change: from its commit in PostgreSQL to its Delta commit.

Two records, both exact, are joined by log position:

- **The source's truth.** A `test_decoding` slot created just before the
  workload starts, and read after it ends (so decoding it costs nothing during
  the measurement), lists every transaction with the end of its commit record
  (an LSN), its commit time as the WAL has it (`include-timestamp`) and the
  number of changes it made to each table.
- **The Delta logs.** Every commit of a Headwater table records, in its commit
  metadata, the position the table holds: the LSN before which every
  transaction of the source table is in it. A transaction becomes visible in
  the first version whose position is at or past its commit record's end.
  The version's visibility time is the modification time of its
  `_delta_log/NNN.json` file: the moment the commit was published (delta-rs
  writes the file once, put-if-absent, as the last step of a commit).

lag = visibility time - commit time, for each change (a transaction's
changes to a table share one lag). Both clocks are this machine's.

A read may take in a transaction whose commit record straddles the position
it commits (the position is the WAL flushed when the read began); such a
transaction is counted from the next version, which can only overstate its
lag, by one cycle, for at most one transaction per cycle.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

from cdc import source


def versions(table: Path) -> list[tuple[int, float, float, int]]:
    """(version, published at, commitInfo timestamp, position LSN) of a table's commits."""
    found = []
    for log in sorted((table / "_delta_log").glob("*.json")):
        version = int(log.stem)
        info: dict[str, Any] = {}
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                info = action["commitInfo"]
        meta = info.get("headwater") or {}
        position = (meta.get("positions") or {}).get("source") or {}
        if "lsn" not in position or "snapshot" in position:
            continue  # the initial copy, or a maintenance commit
        found.append(
            (
                version,
                os.stat(log).st_mtime,
                float(info.get("timestamp", 0)) / 1000,
                source.lsn_int(position["lsn"]),
            )
        )
    return found


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q of all at or below it."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def measure(root: Path) -> dict[str, Any]:
    truth = source.read_truth()
    lags: list[float] = []
    by_table: dict[str, dict[str, Any]] = {}
    first = min((t.commit_ts for t in truth), default=0.0)
    last = max((t.commit_ts for t in truth), default=0.0)
    for name in source.TABLES:
        commits = versions(root / "warehouse" / "bronze" / name)
        positions = [c[3] for c in commits]
        mine: list[float] = []
        unseen = 0
        for txn in truth:
            n = txn.changes.get(name, 0)
            if not n:
                continue
            i = bisect.bisect_left(positions, txn.end_lsn)
            if i == len(commits):
                unseen += n
                continue
            mine += [commits[i][1] - txn.commit_ts] * n
        mine.sort()
        lags += mine
        applied = [c for c in commits if c[3] >= (truth[0].end_lsn if truth else 0)]
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(applied)]
        by_table[name] = {
            "changes": len(mine),
            # how often the table committed while changes kept coming: the micro-batch cycle
            "seconds_between_commits": sum(gaps) / len(gaps) if gaps else None,
            "not_visible": unseen,
            "commits": len(applied),
            "p50_s": percentile(mine, 0.50),
            "p99_s": percentile(mine, 0.99),
            "max_s": mine[-1] if mine else None,
            # cross-check of the two clocks of a commit: log file mtime - commitInfo.timestamp
            "mtime_minus_commit_info_ms_p50": percentile(
                sorted((c[1] - c[2]) * 1000 for c in applied), 0.5
            ),
        }
    lags.sort()
    changes = sum(sum(t.changes.values()) for t in truth)
    return {
        "transactions": len(truth),
        "changes": changes,
        "seconds": last - first,
        "changes_per_s": changes / (last - first) if last > first else None,
        "not_visible": sum(t["not_visible"] for t in by_table.values()),
        "p50_s": percentile(lags, 0.50),
        "p90_s": percentile(lags, 0.90),
        "p99_s": percentile(lags, 0.99),
        "max_s": lags[-1] if lags else None,
        "tables": by_table,
    }
