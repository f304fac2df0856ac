"""The files source: formats, exactly-once discovery, markers, quarantine, streaming, object stores.

Everything runs on real files and real Delta tables. Object stores are stood in
for by an fsspec in-memory filesystem and `file://` URIs (no cloud service runs here).
"""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from headwater import table
from headwater.errors import ConfigError
from headwater.sources import files
from headwater.sources.base import ReadContext

from .conftest import write_pipeline
from .lake import Lake

HOUR = 3600 * 10**9
T0 = (
    1_700_000_000 * 10**9
)  # a fixed modification time (2023-11-14): tests never depend on the clock


def write_ndjson(path: Path, rows: list[dict[str, Any]], mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def ids(lake: Lake, name: str, column: str = "id") -> list[Any]:
    return sorted(lake.table(name).column(column).to_pylist())


def read_all(
    source: files, root: Path, position: Any = None, chunk_rows: int = 500_000
) -> list[Any]:
    """The increments a source yields from `position` (the engine is not involved)."""
    ctx = ReadContext("bronze.t", root, dt.datetime.now(dt.UTC), chunk_rows)
    return list(source.read(position, ctx))


def positions(lake: Lake, name: str) -> list[dict[str, Any]]:
    """The files-source position committed with each version of a table, oldest first."""
    history = DeltaTable(str(lake.target(name).uri)).history()
    found = [h["headwater"]["positions"]["source"] for h in reversed(history) if "headwater" in h]
    return [p for p in found if p]


# -- formats ---------------------------------------------------------------------------
def _write_avro(path: Path, rows: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), rows, sync_interval=64)


ROWS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": None}]


@pytest.mark.parametrize(
    "name",
    [
        "x.ndjson",
        "x.jsonl",
        "x.json",
        "y.json",
        "x.csv",
        "x.tsv",
        "x.csv.gz",
        "x.parquet",
        "x.avro",
    ],
)
def test_each_format_loads_its_rows(tmp_path: Path, name: str) -> None:
    path = tmp_path / "in" / name
    path.parent.mkdir()
    if name in ("x.ndjson", "x.jsonl"):
        write_ndjson(path, ROWS)
    elif name == "x.json":
        path.write_text(json.dumps(ROWS, indent=2))  # one document: an array
    elif name == "y.json":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))  # .json holding NDJSON
    elif name in ("x.csv", "x.tsv", "x.csv.gz"):
        sep = "\t" if name == "x.tsv" else ","
        text = f"id{sep}name\n1{sep}a\n2{sep}b\n3{sep}\n"
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    elif name == "x.parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    else:
        schema = {
            "type": "record",
            "name": "Row",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "name", "type": ["null", "string"]},
            ],
        }
        _write_avro(path, ROWS, schema)
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files(f"in/{name}"), strategy="append"))
    lake.run()
    rows = lake.rows("bronze.x", "id")
    # CSV reads an empty field of a text column as an empty string, as pyarrow does.
    expected_last = "" if "csv" in name or "tsv" in name else None
    assert rows == [*ROWS[:2], {"id": 3, "name": expected_last}]


def test_a_pretty_printed_json_object_is_one_row(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.json").write_text(json.dumps({"id": 7, "tags": ["a", "b"]}, indent=2))
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files("in/*.json"), strategy="append"))
    lake.run()
    assert lake.table("bronze.x").to_pylist() == [{"id": 7, "tags": ["a", "b"]}]


def test_avro_types_map_to_table_types(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Order",
        "namespace": "shop",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {
                "name": "amount",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
            },
            {"name": "ref", "type": ["null", {"type": "string", "logicalType": "uuid"}]},
            {
                "name": "status",
                "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]},
            },
            {
                "name": "lines",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "Line",
                        "fields": [
                            {"name": "sku", "type": "string"},
                            {"name": "qty", "type": "int"},
                        ],
                    },
                },
            },
            {"name": "attrs", "type": {"type": "map", "values": "string"}},
            {"name": "extra", "type": ["null", "long", "string"]},
        ],
    }
    ref = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rows = [
        {
            "id": 1,
            "at": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
            "day": dt.date(2024, 5, 1),
            "amount": decimal.Decimal("12.34"),
            "ref": ref,
            "status": "PAID",
            "lines": [{"sku": "a", "qty": 2}],
            "attrs": {"k": "v"},
            "extra": "note",
        },
        {
            "id": 2,
            "at": dt.datetime(2024, 5, 2, tzinfo=dt.UTC),
            "day": dt.date(2024, 5, 2),
            "amount": decimal.Decimal("0.50"),
            "ref": None,
            "status": "NEW",
            "lines": [],
            "attrs": {},
            "extra": 5,
        },
    ]
    (tmp_path / "in").mkdir()
    _write_avro(tmp_path / "in" / "orders.avro", rows, schema)
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.orders", source=files("in/*.avro"), strategy="append"))
    lake.run()
    stored = lake.table("bronze.orders")
    types = {f.name: f.type for f in stored.schema}
    assert pa.types.is_timestamp(types["at"]) and types["day"] == pa.date32()
    assert types["amount"] == pa.decimal128(10, 2) and types["status"] == pa.string()
    first, second = lake.rows("bronze.orders", "id")
    assert first["at"] == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    assert first["amount"] == decimal.Decimal("12.34") and first["ref"] == str(ref)
    assert first["lines"] == [{"sku": "a", "qty": 2}] and first["status"] == "PAID"
    assert dict(first["attrs"]) == {"k": "v"}
    # A union of unrelated types has no column type: its values are kept as JSON text.
    assert (first["extra"], second["extra"]) == ('"note"', "5")
    assert second["ref"] is None and second["lines"] == []


def test_json_files_holding_ndjson_with_long_or_broken_first_lines(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    long_first = [json.dumps({"id": 1, "text": "x" * 100_000}), json.dumps({"id": 2, "text": "y"})]
    (folder / "a.json").write_text("\n".join(long_first) + "\n")
    (folder / "b.json").write_text(
        '{"id": 3, "text": \n' + json.dumps({"id": 4, "text": "z"}) + "\n"
    )
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files("in/*.json"), strategy="append"))
    lake.run()
    assert ids(lake, "bronze.x") == [1, 2, 4]
    (bad,) = lake.rows("bronze.x__quarantine")
    assert (bad["source"], bad["location"]) == ("in/b.json", "line 1")


def test_empty_files_load_no_rows_and_a_new_table_waits_for_columns(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.ndjson").write_text("")
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files("in/*.ndjson"), strategy="append"))
    assert [r.status for r in lake.run()] == ["up-to-date"]  # nothing to create a table from
    write_ndjson(folder / "b.ndjson", [{"id": 1}])
    lake.run()
    assert set(positions(lake, "bronze.x")[-1]["files"]) == {"in/a.ndjson", "in/b.ndjson"}
    (folder / "c.ndjson").write_text("")
    (run,) = lake.run()
    assert run.status == "committed" and "in/c.ndjson" in positions(lake, "bronze.x")[-1]["files"]
    assert ids(lake, "bronze.x") == [1]
    assert [r.status for r in lake.run()] == ["up-to-date"]


# -- which files, exactly once -------------------------------------------------------------
def test_files_load_once_and_again_when_modified(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.events", source=files("in/*.ndjson"), strategy="append"))
    write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}])
    write_ndjson(tmp_path / "in" / "b.ndjson", [{"id": 2}])
    (tmp_path / "in" / "_SUCCESS").write_text("")
    (tmp_path / "in" / ".c.ndjson.tmp").write_text("{not data")
    lake.run()
    assert [r.status for r in lake.run()] == ["up-to-date"]
    write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}, {"id": 11}])  # rewritten in place
    os.utime(tmp_path / "in" / "a.ndjson", ns=(10**18, 10**18))
    write_ndjson(tmp_path / "in" / "c.ndjson", [{"id": 3}])
    (run,) = lake.run()
    assert run.metrics["inserted"] == 3
    assert ids(lake, "bronze.events") == [1, 1, 2, 3, 11]
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_globs_reach_into_folders_and_skip_hidden_ones(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    write_ndjson(landing / "2024" / "05" / "a.ndjson", [{"id": 1}])
    write_ndjson(landing / "2024" / "06" / "b.ndjson", [{"id": 2}])
    write_ndjson(landing / "c.ndjson", [{"id": 3}])
    write_ndjson(landing / "2024" / "_temporary" / "d.ndjson", [{"id": 98}])
    write_ndjson(landing / "2024" / "05" / "e.csv", [{"id": 99}])
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table("bronze.deep", source=files("landing/**/*.ndjson"), strategy="append")
    )
    lake.declare(
        lambda: table("bronze.months", source=files("landing/*/0[5]/*.ndjson"), strategy="append")
    )
    lake.declare(lambda: table("bronze.folder", source=files("landing/2024/06"), strategy="append"))
    lake.run()
    assert ids(lake, "bronze.deep") == [1, 2, 3]
    assert ids(lake, "bronze.months") == [1]
    assert ids(lake, "bronze.folder") == [2]


def test_checksum_mode_does_not_reload_a_file_rewritten_with_the_same_content(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.by_stamp", source=files("in/*.ndjson"), strategy="append"))
    lake.declare(
        lambda: table(
            "bronze.by_content",
            source=files("in/*.ndjson", detect_changes="checksum"),
            strategy="append",
        )
    )
    path = write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}], mtime=T0)
    lake.run()
    write_ndjson(path, [{"id": 1}], mtime=T0 + HOUR)  # copied again: same bytes, new time
    lake.run()
    assert ids(lake, "bronze.by_stamp") == [1, 1]
    assert ids(lake, "bronze.by_content") == [1]
    write_ndjson(path, [{"id": 2}], mtime=T0 + 2 * HOUR)  # really changed
    lake.run()
    assert ids(lake, "bronze.by_content") == [1, 2]
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]


def test_the_position_stays_small_while_the_folder_grows(tmp_path: Path) -> None:
    """Files older than the lookback window behind the newest loaded file are forgotten
    by name: the watermark covers them, so they never load twice."""
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.events", source=files("in/*.ndjson", lookback="2h"), strategy="append"
        )
    )
    for day in range(6):  # a file every hour, six per run
        for hour in range(6):
            n = day * 6 + hour
            write_ndjson(tmp_path / "in" / f"{n:03d}.ndjson", [{"id": n}], mtime=T0 + n * HOUR)
        lake.run()
    assert ids(lake, "bronze.events") == list(range(36))
    last = positions(lake, "bronze.events")[-1]
    assert sorted(last["files"]) == ["in/033.ndjson", "in/034.ndjson", "in/035.ndjson"]
    assert last["floor"] == T0 + 33 * HOUR
    assert [r.status for r in lake.run()] == ["up-to-date"]  # 36 files listed, none reloaded
    # A late file whose time is inside the window is still new; the rule for one
    # older than the window (docs/sources-files.md) is that it counts as loaded.
    write_ndjson(tmp_path / "in" / "late.ndjson", [{"id": 100}], mtime=T0 + 34 * HOUR)
    write_ndjson(tmp_path / "in" / "too-late.ndjson", [{"id": 101}], mtime=T0 + 30 * HOUR)
    lake.run()
    assert ids(lake, "bronze.events") == [*range(36), 100]


def test_max_remembered_caps_the_position_and_a_burst_still_loads_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    source = files("in/*.ndjson", lookback="30d", max_remembered=5, chunk_files=4)
    lake.declare(lambda: table("bronze.events", source=source, strategy="append"))
    for n in range(20):
        write_ndjson(tmp_path / "in" / f"{n:03d}.ndjson", [{"id": n}], mtime=T0 + n * 10**9)
    lake.run()
    history = positions(lake, "bronze.events")
    assert len(history) == 5 and all(len(p["files"]) <= 5 for p in history)
    assert ids(lake, "bronze.events") == list(range(20))
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_a_clock_running_ahead_does_not_move_the_watermark(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.declare(
        lambda: table(
            "bronze.events", source=files("in/*.ndjson", lookback="1s"), strategy="append"
        )
    )
    future = int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    write_ndjson(tmp_path / "in" / "ahead.ndjson", [{"id": 1}], mtime=future)
    lake.run()
    write_ndjson(tmp_path / "in" / "now.ndjson", [{"id": 2}])  # written now, after the "future" one
    lake.run()
    lake.run()
    assert ids(lake, "bronze.events") == [1, 2]
    assert positions(lake, "bronze.events")[-1]["high"] < future


def test_the_watermark_never_passes_a_file_still_to_load(tmp_path: Path) -> None:
    """A big file resumed first can be newer than a late file waiting behind it: a
    crash after the big file's commit must not leave the late file below the floor."""
    big = write_ndjson(
        tmp_path / "in" / "big.ndjson", [{"id": n} for n in range(2000)], mtime=T0 + 10 * HOUR
    )
    source = files(
        "in/*.ndjson", lookback="15m", block_size="2KB", chunk_bytes="8KB", chunk_files=1
    )
    first = read_all(source, tmp_path)[0]
    assert first.position["partial"]["file"] == "in/big.ndjson"
    write_ndjson(tmp_path / "in" / "late.ndjson", [{"id": -1}], mtime=T0 + 9 * HOUR + HOUR // 2)
    rest = read_all(source, tmp_path, first.position)
    done = next(i for i in rest if "in/big.ndjson" in i.position["files"])
    assert "in/late.ndjson" not in done.position["files"] and big.exists()
    # Killed right after that commit: the next run still finds the late file.
    (after,) = read_all(source, tmp_path, done.position)
    assert after.data.column("id").to_pylist() == [-1]


def test_a_position_of_the_first_format_is_still_understood(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "in" / "a.ndjson", [{"id": 1}])
    write_ndjson(tmp_path / "in" / "b.ndjson", [{"id": 2}])
    stat = path.stat()
    old = {"files": {"in/a.ndjson": f"{stat.st_size}:{stat.st_mtime_ns}"}}
    (increment,) = read_all(files("in/*.ndjson"), tmp_path, old)
    assert increment.data.column("id").to_pylist() == [2]
    assert set(increment.position["files"]) == {"in/a.ndjson", "in/b.ndjson"}


# -- completeness markers and manifests ------------------------------------------------------
def test_a_folder_loads_only_once_its_marker_is_there(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    source = files("landing/*/*.ndjson", marker="_SUCCESS", lookback="1h")
    lake.declare(lambda: table("bronze.events", source=source, strategy="append"))
    done, busy = tmp_path / "landing" / "d1", tmp_path / "landing" / "d2"
    write_ndjson(done / "part-0.ndjson", [{"id": 1}], mtime=T0)
    (done / "_SUCCESS").write_text("")
    os.utime(done / "_SUCCESS", ns=(T0, T0))
    # d2's parts were written long before d1's marker; its own marker comes later.
    write_ndjson(busy / "part-0.ndjson", [{"id": 2}], mtime=T0 - 24 * HOUR)
    write_ndjson(busy / "part-1.ndjson", [{"id": 3}], mtime=T0 - 24 * HOUR)
    lake.run()
    assert ids(lake, "bronze.events") == [1]
    (busy / "_SUCCESS").write_text("")
    os.utime(busy / "_SUCCESS", ns=(T0 + HOUR, T0 + HOUR))
    lake.run()
    # The parts count as arrived when their marker did, so the watermark did not hide them.
    assert ids(lake, "bronze.events") == [1, 2, 3]
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_a_manifest_loads_exactly_the_files_it_lists(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    source = files("landing/*/*.csv", manifest="_manifest.json")
    lake.declare(lambda: table("bronze.orders", source=source, strategy="append"))
    folder = tmp_path / "landing" / "batch-1"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("id\n1\n")
    (folder / "b.csv").write_text("id\n2\n")
    (folder / "attempt-2-abandoned.csv").write_text("id\n99\n")
    listed = [{"path": "a.csv", "size": 5}, {"path": "b.csv", "size": 5}, "c.csv"]
    (folder / "_manifest.json").write_text(json.dumps({"files": listed}))
    (run,) = lake.run()
    assert run.status == "up-to-date"  # c.csv is listed but missing: the folder waits
    (folder / "c.csv").write_text("id\n3\n")
    lake.run()
    assert ids(lake, "bronze.orders") == [1, 2, 3]
    # A second folder with a plain-text manifest whose size promise is not met yet.
    other = tmp_path / "landing" / "batch-2"
    other.mkdir()
    (other / "d.csv").write_text("id\n4\n")
    (other / "_manifest.json").write_text("# files\nd.csv\n")
    lake.run()
    assert ids(lake, "bronze.orders") == [1, 2, 3, 4]
    assert [r.status for r in lake.run()] == ["up-to-date"]


def test_archive_moves_a_manifest_once_its_files_are_archived(tmp_path: Path) -> None:
    folder = tmp_path / "landing" / "b1"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("id\n1\n")
    (folder / "_manifest").write_text("a.csv\n")
    lake = Lake(tmp_path)
    source = files("landing/*/*.csv", manifest="_manifest", archive_to="archive")
    lake.declare(lambda: table("bronze.x", source=source, strategy="append"))
    lake.run()
    assert sorted(p.name for p in (tmp_path / "archive" / "b1").iterdir()) == ["_manifest", "a.csv"]
    assert not list(folder.iterdir())
    folder.joinpath("c.csv").write_text("id\n2\n")  # a new batch in the same folder
    folder.joinpath("_manifest").write_text("c.csv\n")
    lake.run()
    assert ids(lake, "bronze.x") == [1, 2]


# -- bad input ---------------------------------------------------------------------------
def test_malformed_rows_are_quarantined_with_file_line_and_reason(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"id": n, "name": f"n{n}"}) for n in range(40)]
    lines[5] = '{"id": 5, "name": '  # truncated
    lines[17] = "[17]"  # not an object
    lines[30] = ""  # blank lines are not rows and not errors
    (folder / "events.ndjson").write_text("\n".join(lines) + "\n")
    csv_lines = ["id,name,amount"] + [f"{n},n{n},{n}.5" for n in range(1, 40)]
    csv_lines[3] = "3,n3,3.5,surplus"  # one field too many (line 4)
    csv_lines[9] = '9,"two\nlines",9.5'  # a quoted value over two lines is fine
    csv_lines[20] = "20,n20,lots"  # not a number, and the column is declared double
    (folder / "orders.csv").write_bytes(
        ("\n".join(csv_lines) + "\n").encode().replace(b"n33,", b"n\xff33,")  # not UTF-8
    )
    lake = Lake(tmp_path)
    # Small blocks: the bad rows fall in different blocks of each file.
    lake.declare(
        lambda: table(
            "bronze.events", source=files("in/*.ndjson", block_size=200), strategy="append"
        )
    )
    lake.declare(
        lambda: table(
            "bronze.orders",
            source=files("in/*.csv", block_size=150, columns={"amount": "double"}),
            strategy="append",
        )
    )
    runs = lake.run()
    assert {r.table: r.metrics["quarantined"] for r in runs} == {
        "bronze.events": 2,
        "bronze.orders": 3,
    }
    assert ids(lake, "bronze.events") == [n for n in range(40) if n not in (5, 17, 30)]
    assert ids(lake, "bronze.orders") == [n for n in range(1, 40) if n not in (3, 20, 33)]
    assert lake.rows("bronze.orders", "id")[7] == {"id": 9, "name": "two\nlines", "amount": 9.5}
    bad = {(r["source"], r["location"]): r for r in lake.rows("bronze.events__quarantine")}
    assert set(bad) == {("in/events.ndjson", "line 6"), ("in/events.ndjson", "line 18")}
    assert bad["in/events.ndjson", "line 6"]["record"] == '{"id": 5, "name": '
    assert bad["in/events.ndjson", "line 6"]["reason"].startswith("invalid JSON")
    assert bad["in/events.ndjson", "line 18"]["reason"] == "not a JSON object but list"
    bad = {r["location"]: r for r in lake.rows("bronze.orders__quarantine")}
    assert set(bad) == {"line 4", "line 22", "line 35"}  # line numbers count the quoted newline
    assert bad["line 4"]["reason"] == "Expected 3 columns, got 4"
    assert bad["line 4"]["record"] == "3,n3,3.5,surplus"
    assert "double" in bad["line 22"]["reason"] and bad["line 22"]["check"] == "malformed"
    assert bad["line 35"]["reason"] == "not valid UTF-8 text"
    assert all(r["source"] == "in/orders.csv" for r in bad.values())
    assert [r.status for r in lake.run()] == ["up-to-date", "up-to-date"]


def test_an_unreadable_file_is_a_one_line_error_and_the_files_before_it_load(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1]}), folder / "a.parquet")
    os.utime(folder / "a.parquet", ns=(T0, T0))
    (folder / "b.parquet").write_text("id\n2\n")  # a CSV under a Parquet name
    os.utime(folder / "b.parquet", ns=(T0 + 1, T0 + 1))
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files("in/*.parquet"), strategy="append"))
    (run,) = lake.run(check=False)
    assert run.status == "failed" and run.error is not None and "\n" not in run.error
    assert run.error.startswith(
        "table bronze.x: cannot read in/b.parquet as parquet: not a Parquet file"
    )
    assert run.hint and "replace the file" in run.hint
    assert ids(lake, "bronze.x") == [1]  # committed before the failure
    pq.write_table(pa.table({"id": [2]}), folder / "b.parquet")  # fixed
    lake.run()
    assert ids(lake, "bronze.x") == [1, 2]


def test_a_file_without_a_known_format_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dat").write_text("1\n")
    lake = Lake(tmp_path)
    lake.declare(lambda: table("bronze.x", source=files("in/*"), strategy="append"))
    (run,) = lake.run(check=False)
    assert run.error == "table bronze.x: cannot tell the format of in/x.dat"
    with pytest.raises(ConfigError, match="format must be one of"):
        files("in/*", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        files("in/*", marker="_SUCCESS", manifest="_manifest")
    with pytest.raises(ConfigError, match="unknown type"):
        files("in/*", columns={"a": "integer-ish"})


# -- large files ---------------------------------------------------------------------------
def test_a_large_file_streams_in_increments_that_resume_inside_it(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.csv").write_text("id,name\n" + "".join(f"{n},row{n}\n" for n in range(5000)))
    source = files("in/*.csv", block_size="4KB", chunk_bytes="16KB")
    increments = read_all(source, tmp_path)
    assert len(increments) > 3
    for increment in increments[:-1]:  # never claimed loaded before its last row
        assert increment.position["files"] == {}
        assert increment.position["partial"]["file"] == "in/big.csv"
    assert set(increments[-1].position["files"]) == {"in/big.csv"}
    assert "partial" not in increments[-1].position
    got = [n for i in increments for n in i.data.column("id").to_pylist()]
    assert got == list(range(5000))
    # Reading again from any of those positions yields exactly the rest.
    for k in (0, len(increments) // 2):
        rest = read_all(source, tmp_path, increments[k].position)
        tail = [n for i in rest for n in i.data.column("id").to_pylist()]
        assert (
            tail == got[len(got) - len(tail) :]
            and len(tail) + sum(i.data.num_rows for i in increments[: k + 1]) == 5000
        )


@pytest.mark.parametrize("header", [True, False])
def test_select_keeps_only_the_named_columns(tmp_path: Path, header: bool) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    body = "".join(f'{n},name {n},"{n}.5",x\n' for n in range(3000))
    (folder / "a.csv").write_text(("id,name,amount,extra\n" if header else "") + body)
    write_ndjson(folder / "b.ndjson", [{"id": 7, "amount": 1.5, "extra": "y"}])
    columns = {"id": "int64", "name": "string", "amount": "double", "extra": "string"}
    source = files(
        "in/*.*",
        header=header,
        columns=None if header else columns,
        select=["amount", "id"],
        block_size="4KB",
        chunk_files=1,
    )
    increments = read_all(source, tmp_path)
    csv = pa.concat_tables(
        [i.data for i in increments if i.data.num_rows > 1], promote_options="permissive"
    )
    assert csv.column_names == ["amount", "id"]
    assert csv.column("id").to_pylist() == list(range(3000))
    assert csv.column("amount").to_pylist()[:2] == [0.5, 1.5]
    ndjson = [i.data for i in increments if i.data.num_rows == 1]
    assert [t.to_pylist() for t in ndjson] == [[{"amount": 1.5, "id": 7}]]


def _big_csv(path: Path, rows: int, bad: dict[int, str]) -> dict[int, int]:
    """A CSV of `rows` data rows (header first), some with quoted newlines and carriage
    returns in their values; `bad` replaces rows by malformed ones. The line each row
    starts on."""
    lines, starts, line = ["id,name,amount"], {}, 2
    for n in range(rows):
        if n in bad:
            text = bad[n]
        elif n % 997 == 0:
            text = f'{n},"two\nlines {n}",{n}.5'
        elif n % 1009 == 0:
            text = f'{n},"carriage\rreturn, quoted ""{n}""",{n}.5'
        else:
            text = f"{n},name {n},{n}.5"
        lines.append(text)
        starts[n] = line
        line += text.count("\n") + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode())
    return starts


def test_malformed_rows_deep_in_a_large_csv_are_quarantined_at_their_line(
    tmp_path: Path,
) -> None:
    # Whole-block parsing (the default 16MB block holds the file): bad rows far apart,
    # quoted newlines and carriage returns before and after them.
    bad = {
        1234: "1234,surplus,1.5,x",
        150_001: "150001,too few",
        150_002: '150002,"quoted, but not a number",lots',
        199_999: "199999,last NOT-UTF-8,1.5",
    }
    starts = _big_csv(tmp_path / "in" / "big.csv", 200_000, bad)
    path = tmp_path / "in" / "big.csv"
    path.write_bytes(path.read_bytes().replace(b"NOT-UTF-8", b"\xff\xfe"))
    source = files("in/*.csv", columns={"id": "int64", "name": "string", "amount": "double"})
    increments = read_all(source, tmp_path, chunk_rows=10_000_000)
    table = pa.concat_tables([i.data for i in increments])
    rejected = pa.concat_tables([i.rejected for i in increments if i.rejected is not None])
    got = table.column("id").to_pylist()
    assert got == [n for n in range(200_000) if n not in (1234, 150_001, 150_002, 199_999)]
    rows = table.to_pylist()
    assert rows[997] == {"id": 997, "name": "two\nlines 997", "amount": 997.5}
    assert rows[1009] == {"id": 1009, "name": 'carriage\rreturn, quoted "1009"', "amount": 1009.5}
    where = {r["location"]: r for r in rejected.to_pylist()}
    assert set(where) == {f"line {starts[n]}" for n in bad}
    assert where[f"line {starts[1234]}"]["reason"] == "Expected 3 columns, got 4"
    assert where[f"line {starts[150_001]}"]["record"] == "150001,too few"
    assert "double" in where[f"line {starts[150_002]}"]["reason"]
    assert where[f"line {starts[199_999]}"]["reason"] == "not valid UTF-8 text"
    assert all(r["source"] == "in/big.csv" for r in where.values())


def test_a_csv_read_in_blocks_resumes_at_every_position_with_its_line_numbers(
    tmp_path: Path,
) -> None:
    # Blocks smaller than some quoted values: a record straddles reads and grows the
    # block. Every increment's position, as after a crash, yields exactly the rest, and
    # rejections after it keep their lines.
    long_value = "x" * 3000 + "\n" + "y" * 3000
    bad = {2500: "2500,surplus,1.5,x", 4700: "4700,name,lots"}
    starts = _big_csv(tmp_path / "in" / "big.csv", 5000, bad)
    path = tmp_path / "in" / "big.csv"
    path.write_bytes(
        path.read_bytes().replace(b"300,name 300,300.5", f'300,"{long_value}",300.5'.encode())
    )
    source = files("in/*.csv", block_size="4KB", chunk_bytes="8KB", columns={"amount": "double"})
    increments = read_all(source, tmp_path)
    assert len(increments) > 10
    want = [n for n in range(5000) if n not in bad]
    assert [n for i in increments for n in i.data.column("id").to_pylist()] == want
    assert [n for i in increments for n in i.data.column("name").to_pylist()][300] == long_value
    lines = {f"line {starts[n] + 1}" for n in bad}  # after row 300's added line
    for k in range(len(increments) - 1):
        rest = read_all(source, tmp_path, increments[k].position)
        done = sum(i.data.num_rows for i in increments[: k + 1])
        assert [n for i in rest for n in i.data.column("id").to_pylist()] == want[done:]
        later = {
            r["location"] for i in rest if i.rejected is not None for r in i.rejected.to_pylist()
        }
        earlier = {
            r["location"]
            for i in increments[: k + 1]
            if i.rejected is not None
            for r in i.rejected.to_pylist()
        }
        assert later | earlier == lines and not later & earlier


@pytest.mark.parametrize("fmt", ["parquet", "avro", "ndjson", "json"])
def test_every_format_resumes_inside_a_file(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [{"id": n, "text": "x" * 50} for n in range(3000)]
    path = folder / f"big.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    elif fmt == "avro":
        schema = {
            "type": "record",
            "name": "R",
            "fields": [{"name": "id", "type": "long"}, {"name": "text", "type": "string"}],
        }
        _write_avro(path, rows, schema)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        write_ndjson(path, rows)
    source = files(f"in/*.{fmt}", block_size="8KB", chunk_bytes="32KB")
    source.options.batch_rows = 256
    increments = read_all(source, tmp_path)
    assert len(increments) > 2
    middle = increments[len(increments) // 2]
    assert "partial" in middle.position
    done = sum(i.data.num_rows for i in increments[: len(increments) // 2 + 1])
    rest = read_all(source, tmp_path, middle.position)
    assert [n for i in rest for n in i.data.column("id").to_pylist()] == list(range(done, 3000))


def test_a_partial_file_that_changes_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "in" / "big.ndjson", [{"id": n} for n in range(2000)])
    source = files("in/*.ndjson", block_size="2KB", chunk_bytes="8KB")
    first = read_all(source, tmp_path)[0]
    assert "partial" in first.position
    write_ndjson(path, [{"id": -n} for n in range(10)])  # replaced before it was finished
    (again,) = read_all(source, tmp_path, first.position)
    assert again.data.column("id").to_pylist() == [-n for n in range(10)]
    assert "partial" not in again.position


# -- object stores and URIs -------------------------------------------------------------------
@pytest.fixture
def memory_store() -> Any:
    store = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex[:8]}"
    yield store, root
    store.rm(root, recursive=True)


def test_an_object_store_through_an_fsspec_filesystem(tmp_path: Path, memory_store: Any) -> None:
    store, root = memory_store
    store.pipe(f"{root}/landing/2024/a.csv", b"id,v\n1,x\n2,y\n")
    store.pipe(f"{root}/landing/2024/_SUCCESS", b"")
    store.pipe(f"{root}/landing/2025/b.csv", b"id,v\n3,z\n")  # no marker yet
    lake = Lake(tmp_path)
    source = files(
        f"{root}/landing/*/*.csv", filesystem=store, marker="_SUCCESS", archive_to=f"{root}/done"
    )
    lake.declare(lambda: table("bronze.remote", source=source, strategy="append"))
    lake.run()
    assert ids(lake, "bronze.remote") == [1, 2]
    # Loaded files (and the emptied folder's marker) moved to the archive, layout kept.
    assert sorted(store.find(f"{root}/done")) == [
        f"{root}/done/2024/_SUCCESS",
        f"{root}/done/2024/a.csv",
    ]
    store.pipe(f"{root}/landing/2025/_SUCCESS", b"")
    store.pipe(f"{root}/landing/2024/a.csv", b"id,v\n4,w\n")  # a new file under a loaded name
    store.pipe(f"{root}/landing/2024/_SUCCESS", b"")
    lake.run()
    assert ids(lake, "bronze.remote") == [1, 2, 3, 4]
    assert [r.status for r in lake.run()] == ["up-to-date"]
    assert not store.find(f"{root}/landing")


def test_an_object_store_by_uri_and_a_pyarrow_filesystem(tmp_path: Path, memory_store: Any) -> None:
    store, root = memory_store
    store.pipe(f"{root}/in/a.ndjson", b'{"id": 1}\n')  # memory:// is served by fsspec
    local = tmp_path / "elsewhere"
    write_ndjson(local / "b.ndjson", [{"id": 2}])
    write_ndjson(local / "sub" / "c.ndjson", [{"id": 3}])
    lake = Lake(tmp_path / "project")
    lake.declare(
        lambda: table("bronze.mem", source=files(f"memory://{root}/in/*.ndjson"), strategy="append")
    )
    lake.declare(
        lambda: table("bronze.uri", source=files(f"file://{local}/*.ndjson"), strategy="append")
    )
    subtree = pafs.SubTreeFileSystem(str(local), pafs.LocalFileSystem())
    lake.declare(
        lambda: table(
            "bronze.sub", source=files("sub/*.ndjson", filesystem=subtree), strategy="append"
        )
    )
    lake.run()
    assert ids(lake, "bronze.mem") == [1]
    assert ids(lake, "bronze.uri") == [2]
    assert ids(lake, "bronze.sub") == [3]
    store.pipe(f"{root}/in/d.ndjson", b'{"id": 4}\n')
    write_ndjson(local / "e.ndjson", [{"id": 5}])
    lake.run()
    assert ids(lake, "bronze.mem") == [1, 4] and ids(lake, "bronze.uri") == [2, 5]
    assert [r.status for r in lake.run()] == ["up-to-date"] * 3


# -- archive --------------------------------------------------------------------------------
def test_archive_keeps_the_folder_layout_and_a_whole_run_strategy_archives_every_chunk(
    tmp_path: Path,
) -> None:
    for day in ("01", "02"):
        for n in range(3):
            write_ndjson(tmp_path / "landing" / day / f"{n}.ndjson", [{"id": int(day) * 10 + n}])
    lake = Lake(tmp_path)
    source = files("landing/*/*.ndjson", archive_to="archive", chunk_files=2)
    lake.declare(lambda: table("bronze.latest", source=source, strategy="overwrite"))
    lake.run()
    assert ids(lake, "bronze.latest") == [10, 11, 12, 20, 21, 22]
    assert sorted(
        p.relative_to(tmp_path / "archive").as_posix()
        for p in (tmp_path / "archive").rglob("*.ndjson")
    ) == [f"{d}/{n}.ndjson" for d in ("01", "02") for n in range(3)]
    assert not list((tmp_path / "landing").rglob("*.ndjson"))


# -- crash safety ----------------------------------------------------------------------------
PIPELINE = """
from headwater import table
from headwater.sources import files

table("bronze.events",
      source=files("landing/**/*.*", archive_to="archive", chunk_files=3, block_size="2KB", chunk_bytes="8KB"),
      strategy="append")
"""

DRIVER = """
import sys
from headwater import Project, Runner
results = Runner(Project.load(sys.argv[1])).run()
sys.exit(1 if any(r.status == "failed" for r in results) else 0)
"""


def _landing(root: Path) -> Counter[str]:
    """Many small files of every format, one large file, and some malformed lines."""
    expected: Counter[str] = Counter()
    landing = root / "landing"
    for n in range(12):
        rows = [{"event_id": f"s{n}-{i}", "n": i} for i in range(5)]
        folder = landing / f"day{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        if n % 4 == 0:
            pq.write_table(pa.Table.from_pylist(rows), folder / f"f{n}.parquet")
        elif n % 4 == 1:
            (folder / f"f{n}.csv").write_text(
                "event_id,n\n" + "".join(f"{r['event_id']},{r['n']}\n" for r in rows)
            )
        elif n % 4 == 2:
            schema = {
                "type": "record",
                "name": "E",
                "fields": [{"name": "event_id", "type": "string"}, {"name": "n", "type": "long"}],
            }
            _write_avro(folder / f"f{n}.avro", rows, schema)
        else:
            write_ndjson(folder / f"f{n}.ndjson", rows)
        expected.update(r["event_id"] for r in rows)
    big = [json.dumps({"event_id": f"big-{i}", "n": i}) for i in range(1500)]
    for i in (100, 700, 1400):
        big[i] = '{"event_id": "broken'
    (landing / "big.ndjson").write_text("\n".join(big) + "\n")
    expected.update(f"big-{i}" for i in range(1500) if i not in (100, 700, 1400))
    return expected


@pytest.mark.parametrize(
    "point",
    ["after_read@4", "after_stage@6", "after_quarantine@2", "after_commit@3", "after_commit@6"],
)
def test_sigkill_while_loading_many_files_then_resume_loses_and_repeats_nothing(
    tmp_path: Path, point: str
) -> None:
    (tmp_path / "headwater.toml").write_text('[project]\nname = "files"\n')
    (tmp_path / "pipelines").mkdir()
    write_pipeline(tmp_path, "files", PIPELINE)
    expected = _landing(tmp_path)

    def run(failpoint: str | None = None) -> int:
        env = {**os.environ, **({"HEADWATER_FAILPOINTS": failpoint} if failpoint else {})}
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(tmp_path)], env=env, timeout=300, capture_output=True
        )
        return done.returncode

    assert run(point) == -signal.SIGKILL
    assert run() == 0
    warehouse = tmp_path / "warehouse" / "bronze"
    events = DeltaTable(str(warehouse / "events")).to_pyarrow_table()
    assert Counter(events.column("event_id").to_pylist()) == expected  # no loss, no duplicate
    bad = DeltaTable(str(warehouse / "events__quarantine")).to_pyarrow_table().to_pylist()
    assert sorted(r["location"] for r in bad) == ["line 101", "line 1401", "line 701"]
    assert all(r["source"] == "landing/big.ndjson" for r in bad)
    assert not [p for p in (tmp_path / "landing").rglob("*") if p.is_file()]  # all archived
    assert len([p for p in (tmp_path / "archive").rglob("*") if p.is_file()]) == 13
    # Archived files are forgotten: the position holds at most the last increment's files.
    history = DeltaTable(str(warehouse / "events")).history()
    last = next(h for h in history if "headwater" in h)["headwater"]["positions"]["source"]
    assert len(last["files"]) <= 3 and "partial" not in last
    assert run() == 0  # and nothing more to do
    assert DeltaTable(str(warehouse / "events")).to_pyarrow_table().num_rows == sum(
        expected.values()
    )
