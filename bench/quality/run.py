"""Quality benchmark: ten checks on a 10M-row table, Headwater vs Great Expectations vs Soda Core.

    .venv/bin/python bench/quality/run.py                  # 10M rows, 3 repeats (GX once)
    .venv/bin/python bench/quality/run.py --quick          # 1M rows, 1 repeat
    .venv/bin/python bench/quality/run.py --setup-peers    # (re)create the peers' venvs

Each contestant runs in a fresh child process (its own peak RSS, its own timing
of the checks alone); every contestant's findings are compared with the
expected outcome of each check, computed independently by plain SQL, before
its time counts. See bench/README.md and bench/quality/contestants.py.

Great Expectations and Soda Core 4 (soda-duckdb) live in their own virtualenv
(bench/results/quality/peers-venv), Soda Core 3 (soda-core-duckdb) in another
(bench/results/quality/soda3-venv: the two Soda lines cannot share one); the
first run creates whichever is missing. None of them belongs in Headwater's
environment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    MIB,
    BenchError,
    Repeats,
    load_average,
    machine_info,
    markdown_table,
    peer_python,
    ratio,
    run_checked,
    run_measured,
    source_revision,
    write_json,
)

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
RESULTS = BENCH / "results"
DATA_VERSION = "v1"
PEERS_VENV = RESULTS / "quality" / "peers-venv"
PEER_PACKAGES = ("great-expectations==1.24.1", "soda-duckdb==4.28.0", "pyarrow")
# Soda Core 3 (SodaCL) cannot share a venv with Soda Core 4: it gets its own.
SODA_V3_VENV = RESULTS / "quality" / "soda3-venv"
SODA_V3_PACKAGES = ("soda-core-duckdb==3.5.6", "pytz", "pyarrow")
CONTESTANTS = ("headwater", "great_expectations", "great_expectations_9", "soda", "soda_v3")
# The ratios are Headwater / each of these.
PEERS = ("great_expectations", "great_expectations_9", "soda", "soda_v3")
# Row checks whose failing-row counts every tool defines the same way.
COUNTED = ("not_null", "accepted_values", "range", "regex", "references", "custom_row")
CHILD_TIMEOUT_S = 4 * 3600


@dataclass
class Outcome(Repeats):
    contestant: str


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peers_python(venv: Path = PEERS_VENV) -> Path:
    return venv / "bin" / "python"


def setup_peers() -> None:
    for venv in (PEERS_VENV, SODA_V3_VENV):
        shutil.rmtree(venv, ignore_errors=True)
    ensure_peers(list(CONTESTANTS))


def ensure_peers(contestants: list[str]) -> None:
    """Create the peers' venvs the chosen contestants need, when they are missing."""
    wanted = {
        SODA_V3_VENV if c == "soda_v3" else PEERS_VENV for c in contestants if c != "headwater"
    }
    for venv, packages in ((PEERS_VENV, PEER_PACKAGES), (SODA_V3_VENV, SODA_V3_PACKAGES)):
        if venv in wanted:
            peer_python(venv, packages)


def interpreter(contestant: str) -> str:
    if contestant == "headwater":
        return sys.executable
    python = peers_python(SODA_V3_VENV if contestant == "soda_v3" else PEERS_VENV)
    if not python.exists():
        raise BenchError(f"no {python}: run bench/quality/run.py --setup-peers first")
    return str(python)


def ensure_data(rows: int) -> Path:
    data = RESULTS / "data" / "quality" / DATA_VERSION / str(rows)
    ready = data / ".ready"
    if not ready.exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        _say(f"writing the {rows:,}-row orders table and 1M customers (once)")
        run_checked([sys.executable, str(CHILD), "data", str(data), "--rows", str(rows)])
        ready.touch()
    return data


def verify(contestant: str, findings: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every check's verdict as expected, and the same failing rows where tools count alike."""
    wanted = set(expected["passed"]) - (
        {"references"} if contestant == "great_expectations_9" else set()
    )
    problems = []
    missing = wanted - set(findings)
    if missing:
        problems.append(f"checks not reported: {sorted(missing)}")
    for name in sorted(wanted & set(findings)):
        found = findings[name]
        if found["passed"] != expected["passed"][name]:
            problems.append(
                f"{name}: passed={found['passed']}, expected {expected['passed'][name]}"
            )
        count = found.get("failing_rows")
        if name in COUNTED and count is not None and int(count) != expected["counts"][name]:
            problems.append(f"{name}: {count} failing rows, expected {expected['counts'][name]}")
    if problems:
        raise BenchError(f"{contestant} found the wrong things: " + "; ".join(problems))


def run_all(data: Path, contestants: list[str], repeat: int, gx_repeat: int) -> list[Outcome]:
    expected = json.loads((data / "expected.json").read_text())
    outcomes = {c: Outcome(c) for c in contestants}
    for index in range(repeat):
        order = contestants if index % 2 == 0 else list(reversed(contestants))
        for contestant in order:
            if contestant.startswith("great_expectations") and index >= gx_repeat:
                continue
            load = load_average()
            measurement = run_measured(
                [interpreter(contestant), str(CHILD), "check", contestant, str(data)],
                timeout_s=CHILD_TIMEOUT_S,
            )
            verify(contestant, measurement.extra["findings"], expected)
            outcomes[contestant].runs.append(measurement)
            outcomes[contestant].loads.append(load)
            _say(
                f"{contestant} #{index + 1}: {measurement.wall_s:.2f}s (CPU {measurement.cpu_s:.2f}s), "
                f"peak RSS {measurement.peak_rss_mib:.0f} MiB, load {load[0]:.2f}"
            )
    return [outcomes[c] for c in contestants if outcomes[c].runs]


def report(outcomes: list[Outcome], rows: int, machine: dict[str, Any], repeat: int) -> str:
    by_name = {o.contestant: o for o in outcomes}
    hw = by_name.get("headwater")
    table_rows: list[list[Any]] = []
    for o in outcomes:
        table_rows.append(
            [
                o.contestant,
                len(o.runs),
                o.wall_s,
                o.cpu_s,
                o.peak_rss_bytes / MIB,
                o.base_rss_bytes / MIB,
                ratio(hw.wall_s, o.wall_s) if hw and o is not hw else None,
                ratio(hw.cpu_s, o.cpu_s) if hw and o is not hw else None,
                ratio(hw.peak_rss_bytes, o.peak_rss_bytes) if hw and o is not hw else None,
            ]
        )
    lines = [
        f"## Quality: ten checks on {rows:,} rows (Headwater vs Great Expectations vs Soda Core)",
        "",
        markdown_table(
            [
                "contestant",
                "runs",
                "wall s (median)",
                "CPU s (median)",
                "peak RSS MiB (max)",
                "RSS before checks MiB",
                "time ratio hw/x",
                "CPU ratio hw/x",
                "RSS ratio hw/x",
            ],
            table_rows,
        ),
        "",
    ]
    if hw:
        for peer in PEERS:
            o = by_name.get(peer)
            if o is None:
                continue
            faster = hw.wall_s < o.wall_s
            leaner = hw.peak_rss_bytes <= o.peak_rss_bytes
            lines.append(
                f"- vs {peer}: {o.wall_s / hw.wall_s:.1f}x {'faster' if faster else 'SLOWER'}, "
                f"peak RSS {hw.peak_rss_bytes / o.peak_rss_bytes:.2f}x "
                f"({'goal met' if faster and leaner else 'goal NOT met'}: faster at no more memory)"
            )
    lines += [
        "",
        f"Machine: {machine['cpus']} cpus, {machine['memory_gib']} GiB, python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f" (source {machine['headwater_revision']}); peers: {machine['peers']}",
        "Highest 1-min load average before a run: "
        + ", ".join(f"{o.contestant} {max(load[0] for load in o.loads):.2f}" for o in outcomes),
        f"Up to {repeat} run(s) per contestant (see runs), alternating who goes first; "
        "wall = median, peak RSS = max.",
    ]
    return "\n".join(lines)


def peer_versions() -> str:
    found = []
    for venv, packages in (
        (PEERS_VENV, ("great-expectations", "soda-core", "soda-duckdb", "duckdb", "pandas")),
        (SODA_V3_VENV, ("soda-core", "soda-core-duckdb", "duckdb")),
    ):
        python = peers_python(venv)
        if not python.exists():
            found.append(f"{venv.name}: not installed")
            continue
        code = (
            "from importlib import metadata as m\n"
            f"print(', '.join(f'{{p}} {{m.version(p)}}' for p in {packages!r}))"
        )
        versions = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
        found.append(f"{venv.name}: {versions.stdout.strip()}")
    return "; ".join(found)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/quality/run.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument(
        "--repeat", type=int, help="runs per contestant (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--gx-repeat", type=int, default=1, help="runs of Great Expectations (slow; default 1)"
    )
    parser.add_argument("--quick", action="store_true", help="1M rows, 1 repeat")
    parser.add_argument(
        "--only", choices=CONTESTANTS, action="append", help="run these contestants"
    )
    parser.add_argument(
        "--setup-peers", action="store_true", help="(re)create the peers' venv and exit"
    )
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/quality-*.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 1_000_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_peers:
        setup_peers()
        return 0
    contestants = args.only or list(CONTESTANTS)
    ensure_peers(contestants)
    machine = machine_info(["headwater", "deltalake", "duckdb", "pyarrow"])
    machine["headwater_revision"] = source_revision(BENCH.parent)
    machine["peers"] = peer_versions()
    _say(f"{machine['cpus']} cpus, load {machine['load_average'][0]:.2f}; {', '.join(contestants)}")
    try:
        data = ensure_data(args.rows)
        outcomes = run_all(data, contestants, args.repeat, args.gx_repeat)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    text = report(outcomes, args.rows, machine, args.repeat)
    print(text)
    out = args.out or RESULTS / f"quality-{time.strftime('%Y%m%dT%H%M%S')}.json"
    write_json(
        out,
        {
            "benchmark": "quality",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine,
            "expected": json.loads((data / "expected.json").read_text()),
            "results": [
                {
                    "contestant": o.contestant,
                    "wall_s_median": o.wall_s,
                    "cpu_s_median": o.cpu_s,
                    "peak_rss_bytes_max": o.peak_rss_bytes,
                    "load_average_before_runs": o.loads,
                    "runs": o.runs,
                }
                for o in outcomes
            ],
            "report": text,
        },
    )
    _say(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
