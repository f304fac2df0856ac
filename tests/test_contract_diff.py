"""`headwater contract diff`: each kind of change classified, and the exit code as a CI gate."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from headwater.quality.diff import ContractDiff, diff
from headwater.quality.odcs import parse

from .conftest import run_cli

OLD = textwrap.dedent(
    """\
    apiVersion: v3.1.0
    kind: DataContract
    id: silver.orders
    version: 1.4.2
    status: active
    schema:
      - name: orders
        properties:
          - {id: order_id, name: order_id, logicalType: integer, physicalType: int, primaryKey: true}
          - name: amount
            logicalType: number
            physicalType: decimal(10,2)
            logicalTypeOptions: {minimum: 0, maximum: 1000}
          - name: status
            logicalType: string
            physicalType: varchar(10)
            required: true
            quality:
              - {metric: invalidValues, arguments: {validValues: [new, paid, shipped]}}
          - {name: note, logicalType: string}
          - {name: ordered_on, logicalType: date}
        quality:
          - {metric: rowCount, mustBeGreaterThan: 0}
    slaProperties:
      - {property: freshness, value: 1, unit: d, element: orders.ordered_on}
    """
)


def changed(old: str, new: str, version: str = "1.4.2") -> ContractDiff:
    new = new.replace("version: 1.4.2", f"version: {version}")
    return diff(parse(old, "old.yaml"), parse(new, "new.yaml"))


def only(result: ContractDiff) -> tuple[str, str, str]:
    (change,) = result.changes
    return change.kind, change.element, change.description


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # compatible
        (
            "- {name: note, logicalType: string}",
            "- {name: note, logicalType: string}\n      - {name: coupon, logicalType: string}",
            ("compatible", "orders.coupon", "optional column added"),
        ),
        (
            "physicalType: int,",
            "physicalType: bigint,",
            ("compatible", "orders.order_id", "type widened int -> bigint"),
        ),
        (
            "decimal(10,2)",
            "decimal(12,2)",
            ("compatible", "orders.amount", "type widened decimal(10,2) -> decimal(12,2)"),
        ),
        (
            "varchar(10)",
            "varchar(20)",
            ("compatible", "orders.status", "type widened varchar(10) -> varchar(20)"),
        ),
        (
            "{name: ordered_on, logicalType: date}",
            "{name: ordered_on, logicalType: timestamp}",
            ("compatible", "orders.ordered_on", "type widened date -> timestamp"),
        ),
        (
            "required: true\n",
            "required: false\n",
            ("compatible", "orders.status", "required column made optional"),
        ),
        (
            "[new, paid, shipped]",
            "[new, paid, shipped, returned]",
            ("compatible", "orders.status", "accepted value(s) added: ['returned']"),
        ),
        (
            "{minimum: 0, maximum: 1000}",
            "{minimum: 0, maximum: 5000}",
            ("compatible", "orders.amount", "maximum 1000 -> 5000"),
        ),
        (
            "physicalType: int,",
            "physicalType: integer,",
            None,
        ),  # two spellings of one type: no change
        (
            "{metric: rowCount, mustBeGreaterThan: 0}",
            "{metric: rowCount, mustBeGreaterThan: 10}",
            ("compatible", "orders", "check library:rowCount changed"),
        ),
        (
            "value: 1, unit: d",
            "value: 2, unit: d",
            (
                "compatible",
                "contract",
                "service level freshness: (1, 'd', 'orders.ordered_on') -> (2, 'd', 'orders.ordered_on')",
            ),
        ),
        # breaking
        (
            "      - {name: note, logicalType: string}\n",
            "",
            ("breaking", "orders.note", "column dropped"),
        ),
        (
            "{id: order_id, name: order_id,",
            "{id: order_id, name: id,",
            ("breaking", "orders.id", "column renamed order_id -> id"),
        ),
        (
            "physicalType: int,",
            "physicalType: smallint,",
            ("breaking", "orders.order_id", "type narrowed int -> smallint"),
        ),
        (
            "decimal(10,2)",
            "double",
            ("breaking", "orders.amount", "type changed decimal(10,2) -> double"),
        ),
        (
            "{name: ordered_on, logicalType: date}",
            "{name: ordered_on, logicalType: string}",
            ("breaking", "orders.ordered_on", "type changed date -> string"),
        ),
        (
            "varchar(10)",
            "varchar(5)",
            ("breaking", "orders.status", "type narrowed varchar(10) -> varchar(5)"),
        ),
        (
            "{name: note, logicalType: string}",
            "{name: note, logicalType: string, required: true}",
            ("breaking", "orders.note", "optional column made required"),
        ),
        (
            "- {name: note, logicalType: string}",
            "- {name: note, logicalType: string}\n      - {name: coupon, required: true}",
            ("breaking", "orders.coupon", "required column added (existing rows lack it)"),
        ),
        (
            "{minimum: 0, maximum: 1000}",
            "{minimum: 1, maximum: 1000}",
            ("breaking", "orders.amount", "minimum 0 -> 1"),
        ),
        (
            "{name: note, logicalType: string}",
            "{name: note, logicalType: string, unique: true}",
            ("breaking", "orders.note", "made unique"),
        ),
        (
            "{name: note, logicalType: string}",
            "{name: note, logicalType: string, logicalTypeOptions: {pattern: '^[a-z]+$'}}",
            ("breaking", "orders.note", "pattern None -> '^[a-z]+$'"),
        ),
        (
            "{name: note, logicalType: string}",
            "{name: note, logicalType: string, relationships: [{to: notes.id}]}",
            ("breaking", "orders.note", "now references notes.id"),
        ),
    ],
)
def test_changes_are_classified(old: str, new: str, expected: tuple[str, str, str] | None) -> None:
    assert old in OLD
    result = changed(OLD, OLD.replace(old, new))
    if expected is None:
        assert result.changes == []
    else:
        assert only(result) == expected


def test_no_change_is_no_change() -> None:
    result = changed(OLD, OLD)
    assert result.changes == [] and result.ok and result.verdict() == "no changes"


def test_a_rename_without_ids_is_a_drop_and_an_add() -> None:
    result = changed(OLD, OLD.replace("{name: note,", "{name: remark,"))
    kinds = {(c.kind, c.element, c.description) for c in result.changes}
    assert kinds == {
        ("breaking", "orders.note", "column dropped"),
        ("compatible", "orders.remark", "optional column added"),
    }


def test_changing_an_enum_value_is_breaking() -> None:
    result = changed(OLD, OLD.replace("[new, paid, shipped]", "[new, paid, sent]"))
    assert [(c.kind, c.description) for c in result.changes] == [
        ("breaking", "accepted value(s) removed: ['shipped']"),
        ("compatible", "accepted value(s) added: ['sent']"),
    ]


@pytest.mark.parametrize(
    ("version", "ok"),
    [("1.4.3", False), ("1.5.0", False), ("2.0.0", True), ("3.0.0", True)],
)
def test_a_breaking_change_needs_a_major_version(version: str, ok: bool) -> None:
    result = changed(OLD, OLD.replace("      - {name: note, logicalType: string}\n", ""), version)
    assert result.breaking and result.ok is ok
    assert ("make it 2.0.0" in result.verdict()) is not ok


def test_before_1_0_a_minor_bump_may_break() -> None:
    old = OLD.replace("version: 1.4.2", "version: 0.3.1")
    dropped = old.replace("      - {name: note, logicalType: string}\n", "")
    assert not diff(parse(old, "o"), parse(dropped.replace("0.3.1", "0.3.2"), "n")).ok
    assert diff(parse(old, "o"), parse(dropped.replace("0.3.1", "0.4.0"), "n")).ok


def test_compatible_changes_need_no_major_version() -> None:
    result = changed(OLD, OLD.replace("physicalType: int,", "physicalType: bigint,"), "1.5.0")
    assert result.ok and result.verdict() == "compatible"


def test_a_version_going_back_is_breaking() -> None:
    result = changed(OLD, OLD, "1.4.1")
    assert only(result) == ("breaking", "contract", "version goes back from 1.4.2 to 1.4.1")


def test_a_dropped_table_is_breaking() -> None:
    result = diff(parse(_with_refunds(), "o"), parse(OLD, "n"))
    assert ("breaking", "refunds", "table removed from the contract") in {
        (c.kind, c.element, c.description) for c in result.changes
    }


def _with_refunds() -> str:
    head, sla = OLD.split("slaProperties:")
    return head + "  - name: refunds\n    properties: [{name: id}]\nslaProperties:" + sla


def test_the_cli_exits_non_zero_on_a_breaking_change_without_a_major_bump(tmp_path: Path) -> None:
    (tmp_path / "headwater.toml").write_text('[project]\nname = "t"\n')
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(
        OLD.replace("physicalType: int,", "physicalType: smallint,").replace("1.4.2", "1.5.0")
    )
    failed = run_cli(tmp_path, "contract", "diff", str(old), str(new), check=False)
    assert failed.returncode == 1
    assert "type narrowed int -> smallint" in failed.stdout and "make it 2.0.0" in failed.stdout
    new.write_text(new.read_text().replace("1.5.0", "2.0.0"))
    passed = run_cli(tmp_path, "contract", "diff", str(old), str(new))
    assert "breaking, with a major version bump (1.4.2 -> 2.0.0)" in passed.stdout
    new.write_text("apiVersion: v3.1.0\n")
    malformed = run_cli(tmp_path, "contract", "diff", str(old), str(new), check=False)
    assert malformed.returncode == 2 and "new.yaml: field kind is required" in malformed.stderr
