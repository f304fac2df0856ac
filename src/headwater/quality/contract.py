"""A table's data contract as its gate: which checks an ODCS contract asks for, and running them.

    contracts/silver/orders.yaml  --odcs.load-->  Contract  --compile_contract-->  Plan
    Plan + project                --ContractGate-->  check_rows / check_table (the engine's Gate)

What each part of the contract turns into (docs/contracts.md has the full table):

- property `required` / `primaryKey` -> not-null; `unique` -> unique; `primaryKey`
  columns together -> unique key; `logicalTypeOptions` pattern -> regex,
  minimum/maximum -> range, minLength/maxLength -> length; `relationships`
  -> referential integrity; `logicalType` / `physicalType` -> schema;
- quality rules (`library` metrics nullValues, missingValues, invalidValues,
  duplicateValues, rowCount; `sql`; `custom` with `engine: headwater`:
  condition, violations, volumeChange);
- `slaProperties` freshness (or latency) -> freshness of the `element` column.

Headwater settings ride in ODCS `customProperties` at any level (rule,
property, schema object, contract; the nearest wins): `onFail` (`block` or
`quarantine`) and, for checks that come from schema flags, `severity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from .._sql import cols, q
from .._units import parse_duration
from ..errors import ConfigError, HeadwaterError
from ..tables.strategies.base import CHANGE_TYPE, COMMIT_VERSION
from .checks import (
    AcceptedValues,
    Bound,
    Condition,
    ContractResult,
    Declared,
    Env,
    Freshness,
    MissingValues,
    NotNull,
    OnFail,
    Range,
    References,
    Regex,
    RowCheck,
    RowCount,
    ScalarSql,
    Schema,
    TableCheck,
    TableContext,
    Threshold,
    Unique,
    Violations,
    VolumeChange,
)
from .checks.base import INCREMENT_VIEW, TABLE_VIEW, fetch_arrow, scan
from .checks.custom_sql import short, syntax_error
from .evaluate import check_dataset, check_increment, connect
from .gate import CheckResult, RowOutcome, Severity
from .odcs import HINT, Contract, CustomProperty, Property, Quality, SchemaObject, load

if TYPE_CHECKING:
    from ..declare import TableSpec
    from ..project import Project

ERROR_WORDS = frozenset({"error", "critical", "high", "blocker", "fatal"})
WARN_WORDS = frozenset({"warn", "warning", "info", "low", "medium", "minor"})
OPERATORS = {
    "mustBe": "=",
    "mustNotBe": "!=",
    "mustBeGreaterThan": ">",
    "mustBeGreaterOrEqualTo": ">=",
    "mustBeLessThan": "<",
    "mustBeLessOrEqualTo": "<=",
    "mustBeBetween": "between",
    "mustNotBeBetween": "outside",
}
# ODCS v3.0 rule names of the v3.1 metrics.
METRIC_ALIASES = {
    "nullcheck": "nullValues",
    "nullvalues": "nullValues",
    "missingvalues": "missingValues",
    "invalidvalues": "invalidValues",
    "validvalues": "invalidValues",
    "duplicatecount": "duplicateValues",
    "duplicatevalues": "duplicateValues",
    "rowcount": "rowCount",
}
FRESHNESS_PROPERTIES = frozenset({"freshness", "latency", "ly"})
_UNIT_WORDS = {
    "ms": "ms",
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "m": "m",
    "min": "m",
    "minute": "m",
    "minutes": "m",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "hours": "h",
    "d": "d",
    "day": "d",
    "days": "d",
    "w": "w",
    "week": "w",
    "weeks": "w",
}
_YEAR_WORDS = frozenset({"y", "yr", "year", "years"})
# Strategies that keep the newest row of a key when an increment holds several.
COLLAPSING = frozenset({"merge", "scd1", "scd2"})


@dataclass
class Plan:
    """The checks one contract asks of one table."""

    contract: Contract
    path: str
    obj: SchemaObject
    row_checks: list[RowCheck] = field(default_factory=list)
    table_checks: list[TableCheck] = field(default_factory=list)
    retention: timedelta | None = None  # SLA retention: how long data is kept (informational)

    @property
    def checks(self) -> list[RowCheck | TableCheck]:
        return [*self.row_checks, *self.table_checks]


# -- compiling a contract into checks ---------------------------------------------------


class _Compiler:
    def __init__(self, contract: Contract, path: str, table: str) -> None:
        self.contract = contract
        self.path = path
        self.table = table
        self.obj = self._object()
        self.plan = Plan(contract, path, self.obj)

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}", HINT)

    def _object(self) -> SchemaObject:
        objects = self.contract.schema_
        name = self.table.split(".", 1)[1]
        for obj in objects:
            if {obj.name, obj.physicalName} & {name, self.table}:
                return obj
        if len(objects) == 1:
            return objects[0]
        named = ", ".join(o.name for o in objects) or "none"
        raise ConfigError(
            f"{self.path}: no schema object describes table {self.table} (objects: {named})",
            f"name the object {name!r} or give it physicalName: {self.table}",
        )

    # -- settings --------------------------------------------------------------------
    def settings(self, *levels: list[CustomProperty]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for props in (self.contract.customProperties, self.obj.customProperties, *levels):
            for prop in props:
                merged[prop.property.lower()] = prop.value
        return merged

    def on_fail(self, where: str, settings: dict[str, Any]) -> OnFail:
        value = str(settings.get("onfail", "block")).lower()
        if value not in ("block", "quarantine"):
            raise self.fail(where, f"onFail must be block or quarantine, not {value!r}")
        return "quarantine" if value == "quarantine" else "block"

    def severity(self, where: str, value: Any, default: Severity = "error") -> Severity:
        if value is None:
            return default
        word = str(value).lower()
        if word in ERROR_WORDS:
            return "error"
        if word in WARN_WORDS:
            return "warn"
        raise self.fail(where, f"severity {value!r} is neither error nor warning")

    def threshold(self, where: str, rule: Quality | dict[str, Any]) -> Threshold | None:
        values = (
            rule if isinstance(rule, dict) else rule.model_dump(include=set(OPERATORS) | {"unit"})
        )
        bounds: list[Bound] = []
        for key, op in OPERATORS.items():
            value = values.get(key)
            if value is None:
                continue
            if op in ("between", "outside"):
                if not isinstance(value, list | tuple) or len(value) != 2:
                    raise self.fail(where, f"{key} takes two numbers, [low, high]")
                low, high = (float(v) for v in value)
                bounds.append(Bound(op, (min(low, high), max(low, high))))
            else:
                try:
                    bounds.append(Bound(op, float(value)))
                except (TypeError, ValueError):
                    raise self.fail(where, f"{key} must be a number, not {value!r}") from None
        if not bounds:
            return None
        unit = str(values.get("unit") or "rows").lower()
        if unit in ("rows", "row", "count"):
            return Threshold(tuple(bounds), "rows")
        if unit in ("percent", "%", "percentage"):
            return Threshold(tuple(bounds), "percent")
        raise self.fail(where, f"unit must be rows or percent, not {unit!r}")

    # -- the schema object -------------------------------------------------------------
    def compile(self) -> Plan:
        obj_where = f"schema[{self.obj.name}]"
        declared: list[Declared] = []
        keys: list[tuple[int, str]] = []
        for prop in self.obj.properties:
            where = f"{obj_where}.properties[{prop.name}]"
            declared.append(Declared(prop.column, prop.logicalType, prop.physicalType))
            self.property_checks(prop, where)
            if prop.primaryKey:
                keys.append((prop.primaryKeyPosition, prop.column))
        if declared:
            self.plan.table_checks.insert(0, Schema(declared, rule=f"{self.path}: {obj_where}"))
        if keys:
            columns = [c for _, c in sorted(keys, key=lambda k: k[0])]
            settings = self.settings()
            self.plan.table_checks.append(
                Unique(
                    columns,
                    severity=self.severity(obj_where, settings.get("severity")),
                    name=f"primary_key({', '.join(columns)})",
                    rule=f"{self.path}: {obj_where}",
                )
            )
        for i, rel in enumerate(self.obj.relationships):
            self.relationship(
                rel.from_, rel.to, f"{obj_where}.relationships[{i}]", rel.customProperties
            )
        for i, rule in enumerate(self.obj.quality):
            self.quality(rule, None, f"{obj_where}.quality[{rule.name or rule.id or i}]", [])
        self.sla()
        return self.plan

    def property_checks(self, prop: Property, where: str) -> None:
        settings = self.settings(prop.customProperties)
        common: dict[str, Any] = {
            "severity": self.severity(where, settings.get("severity")),
            "rule": f"{self.path}: {where}",
        }
        on_fail = self.on_fail(where, settings)
        column = prop.column
        if prop.required or prop.primaryKey:
            self.plan.row_checks.append(NotNull(column, on_fail=on_fail, **common))
        if prop.unique:
            self.plan.table_checks.append(Unique([column], **common))
        options = prop.logicalTypeOptions
        if options is not None:
            opts_where = f"{where}.logicalTypeOptions"
            if options.pattern is not None:
                self.plan.row_checks.append(
                    Regex(
                        column, self.pattern(options.pattern, opts_where), on_fail=on_fail, **common
                    )
                )
            bounds = (
                options.minimum,
                options.maximum,
                options.exclusiveMinimum,
                options.exclusiveMaximum,
            )
            if any(b is not None for b in bounds):
                for bound in bounds:
                    if isinstance(bound, str) and prop.logicalType not in (
                        "date",
                        "timestamp",
                        "time",
                        "string",
                    ):
                        raise self.fail(opts_where, f"bound {bound!r} is not a number")
                self.plan.row_checks.append(
                    Range(
                        column,
                        minimum=options.minimum,
                        maximum=options.maximum,
                        exclusive_minimum=options.exclusiveMinimum,
                        exclusive_maximum=options.exclusiveMaximum,
                        on_fail=on_fail,
                        **common,
                    )
                )
            if options.minLength is not None or options.maxLength is not None:
                self.plan.row_checks.append(
                    Range(
                        column,
                        minimum=options.minLength,
                        maximum=options.maxLength,
                        length=True,
                        on_fail=on_fail,
                        **common,
                    )
                )
        for i, rel in enumerate(prop.relationships):
            if rel.from_ is not None:
                raise self.fail(
                    f"{where}.relationships[{i}]", "a property's relationship has no 'from'"
                )
            self.relationship(
                column,
                rel.to,
                f"{where}.relationships[{i}]",
                [*prop.customProperties, *rel.customProperties],
            )
        for i, rule in enumerate(prop.quality):
            self.quality(
                rule, prop, f"{where}.quality[{rule.name or rule.id or i}]", prop.customProperties
            )

    def pattern(self, pattern: str, where: str) -> str:
        try:
            # Compiled by DuckDB's own engine (RE2), which runs it later.
            with duckdb.connect() as con:
                con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
        except duckdb.Error as exc:
            raise self.fail(
                where,
                f"pattern {pattern!r} is not a valid regular expression: {str(exc).splitlines()[0]}",
            ) from None
        return pattern

    def relationship(
        self,
        source: str | list[str] | None,
        to: str | list[str],
        where: str,
        props: list[CustomProperty],
    ) -> None:
        sources = [source] if isinstance(source, str) else list(source or [])
        targets = [to] if isinstance(to, str) else list(to)
        if not sources:
            raise self.fail(where, "a schema-level relationship needs 'from'")
        if len(sources) != len(targets):
            raise self.fail(
                where, f"'from' has {len(sources)} column(s) but 'to' has {len(targets)}"
            )
        columns = [s.rsplit(".", 1)[-1] for s in sources]
        parents: set[str] = set()
        parent_columns: list[str] = []
        layer = self.table.split(".", 1)[0]
        for ref in targets:
            parts = ref.split(".")
            if len(parts) == 2:
                parents.add(f"{layer}.{parts[0]}")  # a table of the same layer
            elif len(parts) == 3:
                parents.add(f"{parts[0]}.{parts[1]}")
            else:
                raise self.fail(where, f"'to: {ref}' must name table.column or layer.table.column")
            parent_columns.append(parts[-1])
        if len(parents) != 1:
            raise self.fail(where, "'to' columns must all be in one table")
        settings = self.settings(props)
        self.plan.row_checks.append(
            References(
                columns,
                parents.pop(),
                parent_columns,
                on_fail=self.on_fail(where, settings),
                severity=self.severity(where, settings.get("severity")),
                rule=f"{self.path}: {where}",
            )
        )

    # -- quality rules ---------------------------------------------------------------------
    def quality(
        self, rule: Quality, prop: Property | None, where: str, inherited: list[CustomProperty]
    ) -> None:
        kind = rule.type or (
            "library"
            if rule.metric or rule.rule
            else "sql"
            if rule.query
            else "custom"
            if rule.engine
            else "text"
        )
        if kind == "text":
            return  # a description for people
        settings = self.settings(inherited, rule.customProperties)
        column = prop.column if prop else None
        common: dict[str, Any] = {
            "severity": self.severity(where, rule.severity),
            "rule": f"{self.path}: {where}",
        }
        if rule.name or rule.id:
            common["name"] = rule.name or rule.id
        if kind == "library":
            self.library(rule, column, where, settings, common)
        elif kind == "sql":
            if not rule.query:
                raise self.fail(where, "a sql rule needs a query")
            threshold = self.threshold(where, rule)
            if threshold is None:
                raise self.fail(where, "a sql rule needs an operator such as mustBe: 0")
            self.check_sql(rule.query, where)
            self.plan.table_checks.append(ScalarSql(rule.query, threshold, column, **common))
        elif kind == "custom":
            if (rule.engine or "").lower() != "headwater":
                return  # another tool's rule
            self.headwater(rule, column, where, settings, common)

    def library(
        self,
        rule: Quality,
        column: str | None,
        where: str,
        settings: dict[str, Any],
        common: dict[str, Any],
    ) -> None:
        name = rule.metric or rule.rule or ""
        metric = METRIC_ALIASES.get(name.lower())
        if metric is None:
            raise self.fail(
                where,
                f"unknown metric {name!r} (nullValues, missingValues, invalidValues, duplicateValues, rowCount)",
            )
        threshold = self.threshold(where, rule)
        args = rule.arguments or {}
        if metric == "rowCount":
            if threshold is None:
                raise self.fail(where, "rowCount needs an operator such as mustBeGreaterThan: 0")
            if threshold.unit != "rows":
                raise self.fail(where, "rowCount counts rows; unit percent does not apply")
            self.plan.table_checks.append(RowCount(threshold, **common))
            return
        if metric == "duplicateValues":
            columns = (
                [column]
                if column
                else [str(c).rsplit(".", 1)[-1] for c in args.get("properties") or []]
            )
            if not columns:
                raise self.fail(
                    where, "duplicateValues on a schema object needs arguments.properties"
                )
            self.plan.table_checks.append(Unique(columns, threshold, **common))
            return
        if column is None:
            raise self.fail(where, f"{metric} is a property-level metric: declare it on a property")
        on_fail = self.on_fail(where, settings)
        row: dict[str, Any] = {"on_fail": on_fail, "threshold": threshold, **common}
        if metric == "nullValues":
            self.plan.row_checks.append(NotNull(column, **row))
        elif metric == "missingValues":
            self.plan.row_checks.append(
                MissingValues(column, list(args.get("missingValues") or [None]), **row)
            )
        else:  # invalidValues
            valid = args.get("validValues", rule.validValues)
            pattern = args.get("pattern")
            if valid is None and pattern is None:
                raise self.fail(
                    where, "invalidValues needs arguments.validValues or arguments.pattern"
                )
            if valid is not None:
                if not isinstance(valid, list):
                    raise self.fail(where, "validValues must be a list")
                self.plan.row_checks.append(AcceptedValues(column, valid, **row))
            if pattern is not None:
                self.plan.row_checks.append(Regex(column, self.pattern(str(pattern), where), **row))

    def headwater(
        self,
        rule: Quality,
        column: str | None,
        where: str,
        settings: dict[str, Any],
        common: dict[str, Any],
    ) -> None:
        spec: Any = rule.implementation
        if isinstance(spec, str):
            try:
                spec = yaml.safe_load(spec)
            except yaml.YAMLError:
                spec = None
        if not isinstance(spec, dict):
            raise self.fail(
                f"{where}.implementation",
                "a headwater rule's implementation is a mapping with condition, violations or volumeChange",
            )
        known = {"condition", "violations", "volumeChange"}
        chosen = [k for k in spec if k in known]
        if len(chosen) != 1:
            raise self.fail(
                f"{where}.implementation", "give exactly one of condition, violations, volumeChange"
            )
        kind = chosen[0]
        if kind == "condition":
            condition = str(spec["condition"])
            self.check_sql(f"SELECT {condition}", where)
            self.plan.row_checks.append(
                Condition(
                    condition,
                    column,
                    on_fail=self.on_fail(where, settings),
                    threshold=self.threshold(where, spec),
                    **{"name": f"condition({short(condition)})", **common},
                )
            )
        elif kind == "violations":
            query = str(spec["violations"])
            self.check_sql(query, where)
            self.plan.table_checks.append(
                Violations(
                    query,
                    self.threshold(where, spec),
                    column,
                    **{"name": f"violations({short(query)})", **common},
                )
            )
        else:
            options = spec["volumeChange"] or {}
            if not isinstance(options, dict):
                raise self.fail(
                    f"{where}.implementation.volumeChange",
                    "takes window, maxChangePercent, minRuns",
                )
            unknown = set(options) - {"window", "maxChangePercent", "minRuns"}
            if unknown:
                raise self.fail(
                    f"{where}.implementation.volumeChange", f"unknown option {sorted(unknown)[0]}"
                )
            try:
                volume = VolumeChange(
                    window=int(options.get("window", 7)),
                    max_change=float(options.get("maxChangePercent", 20)),
                    min_runs=int(options.get("minRuns", 3)),
                    **{**common, "severity": self.severity(where, rule.severity, "warn")},
                )
            except (TypeError, ValueError):
                raise self.fail(
                    f"{where}.implementation.volumeChange", "options must be numbers"
                ) from None
            if volume.window < 1 or volume.max_change < 0:
                raise self.fail(
                    f"{where}.implementation.volumeChange",
                    "window must be >= 1 and maxChangePercent >= 0",
                )
            self.plan.table_checks.append(volume)

    def check_sql(self, sql: str, where: str) -> None:
        problem = syntax_error(sql)
        if problem:
            raise self.fail(where, f"SQL does not parse: {problem}")

    # -- service levels --------------------------------------------------------------------
    def sla(self) -> None:
        for i, sla in enumerate(self.contract.slaProperties):
            where = f"slaProperties[{sla.id or i}]"
            prop = sla.property.lower()
            if prop in FRESHNESS_PROPERTIES:
                element = sla.element or self.contract.slaDefaultElement
                if not element:
                    raise self.fail(where, f"{sla.property} needs an element: the timestamp column")
                column = element.split(",")[0].strip().rsplit(".", 1)[-1]
                self.plan.table_checks.append(
                    Freshness(
                        column,
                        self.duration(sla.value, sla.unit, where),
                        rule=f"{self.path}: {where}",
                        severity=self.severity(
                            where, self.settings().get("freshnessseverity"), "warn"
                        ),
                    )
                )
            elif prop in ("retention", "re"):
                self.plan.retention = self.duration(sla.value, sla.unit, where)

    def duration(self, value: Any, unit: str | None, where: str) -> timedelta:
        if value is None:
            raise self.fail(where, "needs a value")
        if unit is None:
            if isinstance(value, int | float):
                raise self.fail(where, "needs a unit (s, m, h, d, w, y)")
            return parse_duration(str(value), f"{self.path}: {where}")
        word = unit.strip().lower()
        try:
            amount = float(value)
        except (TypeError, ValueError):
            raise self.fail(where, f"value {value!r} is not a number") from None
        if word in _YEAR_WORDS:
            return timedelta(days=365 * amount)
        short = _UNIT_WORDS.get(word)
        if short is None:
            raise self.fail(where, f"unknown unit {unit!r} (s, m, h, d, w, y)")
        return parse_duration(f"{amount:g}{short}", f"{self.path}: {where}")


def compile_contract(contract: Contract, path: str, table: str) -> Plan:
    return _Compiler(contract, path, table).compile()


def load_plan(path: Path, table: str, shown: str | None = None) -> Plan:
    """The checks of `table` from the contract at `path` (named `shown` in messages)."""
    return compile_contract(load(path, shown), shown or str(path), table)


# -- the gate ----------------------------------------------------------------------------


class ContractGate:
    """The engine's Gate for a table with a contract (see quality.gate)."""

    def __init__(self, plan: Plan, table: str, project: Project | None) -> None:
        self.plan = plan
        self.table = table
        self.project = project

    def _env(self) -> Env:
        return Env(connect(self.project), self.table, self.project, datetime.now(UTC))

    def check_rows(self, increment: pa.Table) -> RowOutcome:
        present = {n.lower() for n in increment.schema.names}
        # A column the increment lacks (written by the strategy, or missing) is
        # checked on the would-be table, or reported by the schema check.
        runnable = [c for c in self.plan.row_checks if all(k.lower() in present for k in c.columns)]
        if not runnable:
            return RowOutcome(increment)
        env = self._env()
        try:
            latest = self._latest_per_key(env, increment)
            if latest is not None:
                increment = increment.filter(latest)
            outcome = check_increment(runnable, increment, env)
        finally:
            env.con.close()
        return RowOutcome(outcome.good, outcome.rejected, list[CheckResult](outcome.results))

    def _latest_per_key(self, env: Env, increment: pa.Table) -> pa.Array | None:
        """For a table that keeps one row per key of an increment, which rows it keeps.

        An increment may hold several versions of a key (a row corrected at the
        source after a blocked run): only the newest is published, so only it is
        checked, and the older ones are dropped here as the strategy would drop
        them. None when every row counts.
        """
        spec = self.project.tables.get(self.table) if self.project is not None else None
        if spec is None or spec.strategy not in COLLAPSING or not spec.options.keys:
            return None
        if spec.strategy == "scd2" and spec.options.valid_from_column:
            return None  # every version of a key is kept
        names = increment.schema.names
        keys = list(spec.options.keys)
        order = spec.options.order_by or spec.options.version_column
        if order is None and COMMIT_VERSION in names:
            order = COMMIT_VERSION
        if order is None or order not in names or any(k not in names for k in keys):
            return None  # the strategy rejects such duplicates itself
        if increment.group_by(keys).aggregate([]).num_rows == increment.num_rows:
            return None  # one row per key: the usual case
        positions = pa.array(range(increment.num_rows), pa.int64())
        env.con.register(
            "__hw_versions", increment.select([*keys, order]).append_column("__hw_at", positions)
        )
        # As the strategy orders them: newest first, a NULL order never wins, then arrival.
        newest = fetch_arrow(
            env.con,
            "SELECT __hw_at FROM __hw_versions QUALIFY row_number() OVER "
            f"(PARTITION BY {cols(keys)} ORDER BY {q(order)} DESC NULLS LAST, __hw_at DESC) = 1",
        ).column(0)
        return pc.is_in(positions, value_set=newest.combine_chunks())

    def check_table(self, would_be: ds.Dataset, increment: pa.Table) -> list[CheckResult]:
        env = self._env()
        try:
            return list[CheckResult](self._table_checks(env, would_be, increment))
        finally:
            env.con.close()

    def check_all(self, dataset: ds.Dataset) -> list[ContractResult]:
        """Every check over a whole existing table (no run): `headwater contract check`."""
        env = self._env()
        try:
            results = check_dataset(self.plan.row_checks, dataset, env)
            return results + self._table_checks(env, dataset, None)
        finally:
            env.con.close()

    def _table_checks(
        self, env: Env, would_be: ds.Dataset, increment: pa.Table | None
    ) -> list[ContractResult]:
        scan(env.con, TABLE_VIEW, would_be)
        if increment is not None:
            env.con.register(INCREMENT_VIEW, increment)
        else:  # a whole-table check: every row is "new"
            env.con.execute(
                f"CREATE OR REPLACE VIEW {INCREMENT_VIEW} AS SELECT * FROM {TABLE_VIEW}"
            )
        results: list[ContractResult] = []
        if increment is not None:
            have = {n.lower() for n in increment.schema.names}
            table_names = {n.lower() for n in would_be.schema.names}
            skipped = [
                c for c in self.plan.row_checks if any(k.lower() not in have for k in c.columns)
            ]
            deferred = [c for c in skipped if all(k.lower() in table_names for k in c.columns)]
            if deferred:
                results += check_dataset(deferred, would_be, env)
            for row_check in skipped:
                missing = [k for k in row_check.columns if k.lower() not in table_names]
                if missing:  # never silently unchecked
                    results.append(
                        row_check.result(
                            False, message=f"the table has no column {', '.join(missing)}"
                        )
                    )
        ctx = TableContext(env, would_be, increment, _stored_rows(increment))
        for check in self.plan.table_checks:
            try:
                results.append(check.run(ctx))
            except duckdb.Error as exc:
                raise HeadwaterError(
                    f"{check.rule}: check {check.name} could not run: {str(exc).splitlines()[0]}",
                    "fix the contract, or the table it names",
                ) from exc
        return results


def _stored_rows(increment: pa.Table | None) -> int:
    if increment is None:
        return 0
    if CHANGE_TYPE not in increment.schema.names:
        return int(increment.num_rows)
    gone = pc.is_in(increment.column(CHANGE_TYPE), pa.array(["update_preimage", "delete"]))
    return int(increment.num_rows) - int(pc.sum(pc.cast(gone, pa.int64())).as_py() or 0)


def contract_gate(path: Path, spec: TableSpec, project: Project) -> ContractGate:
    """The gate of table `spec`, from its contract file (called by quality.gates.gate_for)."""
    return ContractGate(load_plan(path, spec.name, relative(path, project)), spec.name, project)


def relative(path: Path, project: Project | None) -> str:
    if project is not None:
        try:
            return path.resolve().relative_to(project.root).as_posix()
        except ValueError:
            pass
    return str(path)
