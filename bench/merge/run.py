"""Merge benchmark: Headwater's merge strategy against delta-rs MERGE, side by side.

    .venv/bin/python bench/merge/run.py            # full: 1M upsert into 10M rows
    .venv/bin/python bench/merge/run.py --quick    # smoke: 100k upsert into 1M rows

Scenarios (N = --rows, U = --upsert, S = --small-upsert):
  main         U rows (half updates of random existing keys, half new keys) into N rows
  small-N/10   S rows into a N/10-row table   } how the cost of a small upsert
  small-N      S rows into a N-row table      } grows with the table

Every merge runs in a fresh child process on a fresh copy of the target table;
the child times the merge and the kernel reports its peak RSS. Every result is
checked against the expected table (fingerprint of all rows) before it counts.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # started as a script: make `_common` importable

from _common import (  # noqa: E402
    MIB,
    BenchError,
    Measurement,
    Repeats,
    load_average,
    machine_info,
    markdown_table,
    ratio,
    run_checked,
    run_measured,
    source_revision,
    write_json,
)

CHILD = Path(__file__).resolve().parent / "child.py"
RESULTS = BENCH / "results"
# Bump when the generated data changes, so cached tables are rebuilt.
DATA_VERSION = "v1"
DATA = RESULTS / "data" / "merge" / DATA_VERSION
WORK = RESULTS / "work" / "merge"
CONTESTANTS = ("headwater", "deltalake")
UPSERT_SEED = 7
CHILD_TIMEOUT_S = 4 * 3600
GOAL_TIME_RATIO = 1.0
GOAL_RSS_RATIO = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    target_rows: int
    upsert_rows: int
    file_size: int | None = None
    recent: bool = False  # updated keys are the newest 1%, not spread over the table

    @property
    def label(self) -> str:
        return f"{_count(self.upsert_rows)} into {_count(self.target_rows)}"

    @property
    def target(self) -> Path:
        suffix = f"-fs{self.file_size}" if self.file_size else ""
        return DATA / f"target-{self.target_rows}{suffix}"

    @property
    def upsert(self) -> Path:
        kind = "-recent" if self.recent else ""
        return DATA / f"upsert-{self.target_rows}-{self.upsert_rows}{kind}.parquet"

    @property
    def expected(self) -> Path:
        kind = "-recent" if self.recent else ""
        return DATA / f"expected-{self.target_rows}-{self.upsert_rows}{kind}.json"


@dataclass
class Outcome(Repeats):
    scenario: Scenario
    contestant: str


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % (size // 10) == 0:
            text = f"{n / size:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return str(n)


def _python() -> str:
    return sys.executable


# -- data ----------------------------------------------------------------------


def ensure_data(scenarios: list[Scenario]) -> None:
    """Build whatever the scenarios need and is not cached yet (deterministic)."""
    DATA.mkdir(parents=True, exist_ok=True)
    for scenario in scenarios:
        ready = scenario.target.with_name(scenario.target.name + ".ready")
        if not ready.exists():
            shutil.rmtree(scenario.target, ignore_errors=True)
            _say(f"writing the {_count(scenario.target_rows)}-row target table (once)")
            argv = [_python(), str(CHILD), "target", str(scenario.target)]
            argv += ["--rows", str(scenario.target_rows)]
            if scenario.file_size:
                argv += ["--file-size", str(scenario.file_size)]
            run_checked(argv)
            ready.touch()
        if not scenario.upsert.exists():
            _say(f"writing the upsert batch {scenario.label}")
            run_checked(
                [
                    _python(),
                    str(CHILD),
                    "upsert",
                    str(scenario.upsert),
                    "--target-rows",
                    str(scenario.target_rows),
                    "--size",
                    str(scenario.upsert_rows),
                    "--seed",
                    str(UPSERT_SEED),
                    *(["--recent"] if scenario.recent else []),
                ]
            )
        if not scenario.expected.exists():
            _say(f"computing the expected result of {scenario.label}")
            run_checked(
                [
                    _python(),
                    str(CHILD),
                    "expected",
                    str(scenario.target),
                    str(scenario.upsert),
                    str(scenario.expected),
                ]
            )


def _table_files(table: Path) -> tuple[int, int]:
    """(data files, bytes) of a table directory, counted on disk."""
    files = [p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


# -- runs ----------------------------------------------------------------------


def workspace(scenario: Scenario, contestant: str, index: int) -> tuple[Path, Path, Path]:
    """A fresh copy of the target: (work folder, the table, the child's argument)."""
    work = WORK / f"{scenario.name}-{contestant}-{index}"
    shutil.rmtree(work, ignore_errors=True)
    if contestant == "headwater":
        table = work / "warehouse" / "bench" / "target"  # the project's table bench.target
        argument = work
    else:
        table = work / "table"
        argument = table
    shutil.copytree(scenario.target, table)
    os.sync()  # the copy's writeback must not land inside the timed merge
    return work, table, argument


def run_once(
    scenario: Scenario, contestant: str, index: int
) -> tuple[Measurement, tuple[float, float, float]]:
    work, table, argument = workspace(scenario, contestant, index)
    load = load_average()
    measurement = run_measured(
        [_python(), str(CHILD), "merge", contestant, str(argument), str(scenario.upsert)],
        timeout_s=CHILD_TIMEOUT_S,
    )
    files, size = _table_files(table)
    # Removed files stay on disk (no vacuum), so these count old and new files.
    measurement.extra["parquet_files_on_disk_after"] = files
    measurement.extra["parquet_bytes_on_disk_after"] = size
    run_checked(
        [
            _python(),
            str(CHILD),
            "verify",
            str(table),
            str(scenario.target),
            str(scenario.upsert),
            str(scenario.expected),
        ]
    )
    shutil.rmtree(work)  # kept only when something failed, for inspection
    return measurement, load


def run_scenario(scenario: Scenario, contestants: list[str], repeat: int) -> list[Outcome]:
    outcomes = {c: Outcome(scenario, c) for c in contestants}
    for index in range(repeat):
        # Alternate who goes first, so neither always inherits the warmer machine.
        order = contestants if index % 2 == 0 else list(reversed(contestants))
        for contestant in order:
            measurement, load = run_once(scenario, contestant, index)
            outcomes[contestant].runs.append(measurement)
            outcomes[contestant].loads.append(load)
            _say(
                f"{scenario.name} ({scenario.label}) {contestant} #{index + 1}: "
                f"{measurement.wall_s:.2f}s (CPU {measurement.cpu_s:.2f}s), "
                f"peak RSS {measurement.peak_rss_mib:.0f} MiB, load {load[0]:.2f}"
            )
    return [outcomes[c] for c in contestants]


# -- report --------------------------------------------------------------------


def results_table(outcomes: list[Outcome]) -> str:
    rows: list[list[Any]] = []
    by_key = {(o.scenario.name, o.contestant): o for o in outcomes}
    for o in outcomes:
        peer = by_key.get((o.scenario.name, "deltalake"))
        is_headwater = o.contestant == "headwater" and peer is not None
        rows.append(
            [
                o.scenario.name,
                o.scenario.label,
                o.contestant,
                o.wall_s,
                o.cpu_s,
                o.peak_rss_bytes / MIB,
                ratio(o.wall_s, peer.wall_s) if is_headwater and peer else None,
                ratio(o.cpu_s, peer.cpu_s) if is_headwater and peer else None,
                ratio(o.peak_rss_bytes, peer.peak_rss_bytes) if is_headwater and peer else None,
            ]
        )
    return markdown_table(
        [
            "scenario",
            "upsert",
            "contestant",
            "wall s (median)",
            "CPU s (median)",
            "peak RSS MiB (max)",
            "time ratio hw/dl",
            "CPU ratio hw/dl",
            "RSS ratio hw/dl",
        ],
        rows,
    )


def growth_table(outcomes: list[Outcome], small: Scenario, large: Scenario) -> str:
    rows: list[list[Any]] = []
    by_key = {(o.scenario.name, o.contestant): o for o in outcomes}
    for contestant in CONTESTANTS:
        a, b = by_key.get((small.name, contestant)), by_key.get((large.name, contestant))
        if a is None or b is None:
            continue
        rows.append(
            [
                contestant,
                a.wall_s,
                b.wall_s,
                ratio(b.wall_s, a.wall_s),
                ratio(b.cpu_s, a.cpu_s),
                a.peak_rss_bytes / MIB,
                b.peak_rss_bytes / MIB,
            ]
        )
    return markdown_table(
        [
            "contestant",
            f"{small.label} s",
            f"{large.label} s",
            "time growth",
            "CPU growth",
            f"{small.label} MiB",
            f"{large.label} MiB",
        ],
        rows,
    )


def goal_lines(outcomes: list[Outcome], main: Scenario) -> list[str]:
    by_key = {(o.scenario.name, o.contestant): o for o in outcomes}
    hw, dl = by_key.get((main.name, "headwater")), by_key.get((main.name, "deltalake"))
    if hw is None or dl is None:
        return []
    time_ratio = hw.wall_s / dl.wall_s
    rss_ratio = hw.peak_rss_bytes / dl.peak_rss_bytes
    return [
        f"- time ratio {time_ratio:.2f} (goal <= {GOAL_TIME_RATIO}): "
        + ("met" if time_ratio <= GOAL_TIME_RATIO else "NOT met"),
        f"- peak-RSS ratio {rss_ratio:.2f} (goal <= {GOAL_RSS_RATIO}): "
        + ("met" if rss_ratio <= GOAL_RSS_RATIO else "NOT met"),
        f"- CPU-time ratio {hw.cpu_s / dl.cpu_s:.2f} (no goal; steadier than wall time on a busy host)",
    ]


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/merge/run.py",
        description="Upsert into a Delta table: Headwater merge vs delta-rs MERGE.",
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="target rows (main scenario)")
    parser.add_argument("--upsert", type=int, default=1_000_000, help="upsert rows (main scenario)")
    parser.add_argument("--small-upsert", type=int, default=10_000, help="upsert rows (scaling)")
    parser.add_argument(
        "--repeat", type=int, help="runs per contestant and scenario (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1M rows, 100k upsert, 1 repeat"
    )
    parser.add_argument("--only", choices=CONTESTANTS, help="run one contestant (no ratios)")
    parser.add_argument(
        "--scenarios",
        default="main,scaling,recent",
        help="comma-separated subset of: main, scaling, recent (default all)",
    )
    parser.add_argument(
        "--file-size",
        type=int,
        help="target_file_size (bytes) for writing the target; default: delta-rs's default",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, profile Headwater's merge of the main scenario (phases and cProfile)",
    )
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="only profile Headwater's merge of the main scenario (no measured runs)",
    )
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/merge-*.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.upsert = 1_000_000, 100_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def scenarios_for(args: argparse.Namespace) -> tuple[Scenario, Scenario, Scenario]:
    """(main, small upsert into the N/10 table, small upsert into the N table)."""
    main_scenario = Scenario("main", args.rows, args.upsert, args.file_size)
    small = Scenario(
        f"small-{_count(args.rows // 10)}", args.rows // 10, args.small_upsert, args.file_size
    )
    large = Scenario(f"small-{_count(args.rows)}", args.rows, args.small_upsert, args.file_size)
    return main_scenario, small, large


def recent_scenarios(args: argparse.Namespace) -> tuple[Scenario, Scenario]:
    """The small upsert again, its updates on the newest 1% of keys (N/10 and N tables)."""
    small = Scenario(
        f"recent-{_count(args.rows // 10)}",
        args.rows // 10,
        args.small_upsert,
        args.file_size,
        True,
    )
    large = Scenario(
        f"recent-{_count(args.rows)}", args.rows, args.small_upsert, args.file_size, True
    )
    return small, large


def render(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    chosen: list[Scenario],
    machine: dict[str, Any],
    finished_load: tuple[float, float, float],
) -> str:
    main_scenario, small, large = scenarios_for(args)
    names = {s.name for s in chosen}
    lines = ["## Merge: Headwater vs delta-rs", "", results_table(outcomes), ""]
    if main_scenario.name in names:
        lines += goal_lines(outcomes, main_scenario)
    if large.name in names:
        lines += [
            "",
            f"Growth of a {_count(args.small_upsert)}-row upsert's cost with the table"
            " (updated keys spread uniformly):",
            "",
            growth_table(outcomes, small, large),
        ]
    recent_small, recent_large = recent_scenarios(args)
    if recent_large.name in names:
        lines += [
            "",
            f"Growth of a {_count(args.small_upsert)}-row upsert's cost with the table"
            " (updated keys among the newest 1%):",
            "",
            growth_table(outcomes, recent_small, recent_large),
        ]
    layouts = {s.name: _table_files(s.target) for s in chosen}
    lines += [
        "",
        "Targets: "
        + "; ".join(
            f"{s.name}: {_count(s.target_rows)} rows in {layouts[s.name][0]} file(s) "
            f"({layouts[s.name][1] / MIB:.0f} MiB)"
            for s in chosen
        ),
        f"Machine: {machine['cpus']} cpus, {machine['memory_gib']} GiB, python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f" (source {machine['headwater_revision']})",
        f"Load average (1/5/15 min): start {_loads(machine['load_average'])}, "
        f"end {_loads(finished_load)}; highest 1-min load before a run: "
        + ", ".join(
            f"{o.scenario.name}/{o.contestant} {max(load[0] for load in o.loads):.2f}"
            for o in outcomes
        ),
        f"Repeats: {args.repeat} per contestant and scenario, alternating who goes first; "
        "wall = median, peak RSS = max.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    contestants = [args.only] if args.only else list(CONTESTANTS)
    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    main_scenario, small, large = scenarios_for(args)
    recent_small, recent_large = recent_scenarios(args)
    chosen = (
        ([main_scenario] if "main" in wanted else [])
        + ([small, large] if "scaling" in wanted else [])
        + ([recent_small, recent_large] if "recent" in wanted else [])
    )
    if not chosen:
        print("no scenario selected (--scenarios main,scaling,recent)", file=sys.stderr)
        return 2

    machine = machine_info(["headwater", "deltalake", "duckdb", "pyarrow"])
    machine["headwater_revision"] = source_revision(BENCH.parent)
    _say(
        f"{machine['cpus']} cpus, {machine['memory_gib']} GiB, "
        f"load {machine['load_average'][0]:.2f}; contestants {', '.join(contestants)}; "
        f"repeat {args.repeat}"
    )
    try:
        ensure_data(chosen if not args.profile_only else [main_scenario])
        if not args.profile_only:
            outcomes: list[Outcome] = []
            for scenario in chosen:
                outcomes += run_scenario(scenario, contestants, args.repeat)
            report = render(args, outcomes, chosen, machine, load_average())
            print(report)
            out = args.out or RESULTS / f"merge-{time.strftime('%Y%m%dT%H%M%S')}.json"
            write_json(out, results_json(args, machine, chosen, outcomes, report))
            _say(f"results written to {out}")
        if args.profile or args.profile_only:
            print("\n" + profile_headwater(main_scenario))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


def results_json(
    args: argparse.Namespace,
    machine: dict[str, Any],
    chosen: list[Scenario],
    outcomes: list[Outcome],
    report: str,
) -> dict[str, Any]:
    return {
        "benchmark": "merge",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "load_average_end": load_average(),
        "targets": {
            s.name: dict(zip(("files", "bytes"), _table_files(s.target), strict=True))
            | {"rows": s.target_rows}
            for s in chosen
        },
        "results": [
            {
                "scenario": o.scenario.name,
                "target_rows": o.scenario.target_rows,
                "upsert_rows": o.scenario.upsert_rows,
                "contestant": o.contestant,
                "wall_s_median": o.wall_s,
                "cpu_s_median": o.cpu_s,
                "peak_rss_bytes_max": o.peak_rss_bytes,
                "load_average_before_runs": o.loads,
                "runs": o.runs,
            }
            for o in outcomes
        ],
        "report": report,
    }


def profile_headwater(scenario: Scenario) -> str:
    """Headwater's merge of `scenario` by phase, then under cProfile (fresh copy each)."""
    texts = []
    for kind in ("phases", "cprofile"):
        work, _, argument = workspace(scenario, "headwater", 0)
        out = RESULTS / f"merge-profile-{kind}.txt"
        _say(f"profiling headwater ({kind}) on {scenario.label}")
        run_checked(
            [_python(), str(CHILD), "profile", kind, str(argument), str(scenario.upsert), str(out)]
        )
        texts.append(out.read_text())
        shutil.rmtree(work)
    return "\n".join(texts)


def _loads(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
