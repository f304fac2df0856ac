"""`headwater contract diff OLD NEW`: is the new contract a breaking change?

A change is **breaking** when data that satisfied the old contract, or a
reader relying on it, may no longer fit: a dropped or renamed column or table,
a narrower type, an optional column made required, a new required column,
a value range, pattern or key that constrains more, an accepted value taken
away. It is **compatible** when every table that satisfied the old contract
still satisfies the new one: an optional column added, a type widened
(int -> long, integer -> number, date -> timestamp, more decimal digits),
a constraint relaxed, descriptions, owners, checks and service levels changed.

A breaking change needs a new major version (from 0.x, a new minor version,
as semantic versioning allows during initial development); without one the
diff fails, which makes it a CI gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from .odcs import Contract, LogicalTypeOptions, Property, Quality, SchemaObject, semver
from .types import LOGICAL_WIDENINGS, normal_physical, widens

Kind = Literal["breaking", "compatible"]


@dataclass(frozen=True)
class Change:
    kind: Kind
    element: str  # "contract", "orders", "orders.amount"
    description: str


@dataclass
class ContractDiff:
    old_version: str
    new_version: str
    changes: list[Change] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "breaking"]

    @property
    def major_bump(self) -> bool:
        old, new = semver(self.old_version), semver(self.new_version)
        if old[0] == 0:
            return new[0] > 0 or new[1] > old[1]  # 0.x: anything may change in a minor
        return new[0] > old[0]

    @property
    def ok(self) -> bool:
        """No breaking change, or the version says so."""
        return not self.breaking or self.major_bump

    def verdict(self) -> str:
        if not self.changes:
            return "no changes"
        if not self.breaking:
            return "compatible"
        versions = f"{self.old_version} -> {self.new_version}"
        if self.major_bump:
            return f"breaking, with a major version bump ({versions})"
        major, minor, _ = semver(self.old_version)
        wanted = f"{major + 1}.0.0" if major else f"0.{minor + 1}.0 or 1.0.0"
        return f"breaking without a major version bump ({versions}): make it {wanted}"


def diff(old: Contract, new: Contract) -> ContractDiff:
    out = ContractDiff(old.version, new.version)
    add = out.changes.append
    if semver(new.version) < semver(old.version):
        add(
            Change("breaking", "contract", f"version goes back from {old.version} to {new.version}")
        )
    for label, a, b in (
        ("status", old.status, new.status),
        ("owner", old.owner, new.owner),
        ("id", old.id, new.id),
    ):
        if a != b:
            add(Change("compatible", "contract", f"{label} {a} -> {b}"))
    old_objects, new_objects = _match(old.schema_, new.schema_)
    for name in old_objects:
        if name not in new_objects:
            add(Change("breaking", name, "table removed from the contract"))
    for name, obj in new_objects.items():
        before = old_objects.get(name)
        if before is None:
            add(Change("compatible", name, "table added to the contract"))
            continue
        if before.name != obj.name:
            add(Change("breaking", name, f"table renamed {before.name} -> {obj.name}"))
        _object(before, obj, add)
    _sla(old, new, add)
    return out


def _match(
    old: list[SchemaObject], new: list[SchemaObject]
) -> tuple[dict[str, SchemaObject], dict[str, SchemaObject]]:
    """Objects keyed so that the same table has the same key on both sides."""
    if len(old) == 1 and len(new) == 1:
        return {new[0].name: old[0]}, {new[0].name: new[0]}  # one table: compare it, renamed or not
    old_by = {o.name: o for o in old}
    new_by: dict[str, SchemaObject] = {}
    by_id = {o.id: o for o in old if o.id}
    for obj in new:
        twin = by_id.get(obj.id) if obj.id else None
        new_by[twin.name if twin is not None else obj.name] = obj
    return old_by, new_by


def _object(old: SchemaObject, new: SchemaObject, add: Any) -> None:
    table = new.name
    by_id = {p.id: p for p in old.properties if p.id}
    matched: dict[str, Property] = {}
    for prop in new.properties:
        twin = by_id.get(prop.id) if prop.id else None
        if twin is None:
            twin = next(
                (p for p in old.properties if p.column.lower() == prop.column.lower()), None
            )
        if twin is not None:
            matched[twin.column] = prop
    for prop in old.properties:
        if prop.column not in matched:
            add(Change("breaking", f"{table}.{prop.column}", "column dropped"))
    new_of_old = {id(v) for v in matched.values()}
    for prop in new.properties:
        if id(prop) in new_of_old:
            continue
        if prop.required or prop.primaryKey:
            add(
                Change(
                    "breaking",
                    f"{table}.{prop.column}",
                    "required column added (existing rows lack it)",
                )
            )
        else:
            add(Change("compatible", f"{table}.{prop.column}", "optional column added"))
    for prop in old.properties:
        twin = matched.get(prop.column)
        if twin is not None:
            _property(table, prop, twin, add)
    old_key = [
        p.column for p in sorted(old.properties, key=lambda p: p.primaryKeyPosition) if p.primaryKey
    ]
    new_key = [
        p.column for p in sorted(new.properties, key=lambda p: p.primaryKeyPosition) if p.primaryKey
    ]
    # A renamed key column is reported as a rename, not again as a new key.
    old_key = [matched[c].column if c in matched else c for c in old_key]
    if old_key != new_key:
        kind: Kind = "compatible" if not new_key else "breaking"
        add(
            Change(
                kind,
                table,
                f"primary key ({', '.join(old_key) or 'none'}) -> ({', '.join(new_key) or 'none'})",
            )
        )
    _rules(table, old.quality, new.quality, add)


def _property(table: str, old: Property, new: Property, add: Any) -> None:
    where = f"{table}.{new.column}"
    if old.column != new.column:
        add(Change("breaking", where, f"column renamed {old.column} -> {new.column}"))
    _types(where, old, new, add)
    if not (old.required or old.primaryKey) and (new.required or new.primaryKey):
        add(Change("breaking", where, "optional column made required"))
    elif (old.required or old.primaryKey) and not (new.required or new.primaryKey):
        add(Change("compatible", where, "required column made optional"))
    if new.unique and not old.unique:
        add(Change("breaking", where, "made unique"))
    elif old.unique and not new.unique:
        add(Change("compatible", where, "no longer unique"))
    _options(where, old, new, add)
    old_values, new_values = _accepted(old), _accepted(new)
    if new_values is not None and old_values is None:
        add(Change("breaking", where, f"values restricted to {sorted(map(str, new_values))}"))
    elif old_values is not None and new_values is None:
        add(Change("compatible", where, "accepted values no longer restricted"))
    elif old_values is not None and new_values is not None:
        gone, added = old_values - new_values, new_values - old_values
        if gone:
            add(Change("breaking", where, f"accepted value(s) removed: {sorted(map(str, gone))}"))
        if added:
            add(Change("compatible", where, f"accepted value(s) added: {sorted(map(str, added))}"))
    old_refs = {str(r.to) for r in old.relationships}
    new_refs = {str(r.to) for r in new.relationships}
    for ref in sorted(new_refs - old_refs):
        add(Change("breaking", where, f"now references {ref}"))
    for ref in sorted(old_refs - new_refs):
        add(Change("compatible", where, f"no longer references {ref}"))
    if old.classification != new.classification:
        add(
            Change(
                "compatible", where, f"classification {old.classification} -> {new.classification}"
            )
        )
    _rules(where, _other_rules(old.quality), _other_rules(new.quality), add)


def _types(where: str, old: Property, new: Property, add: Any) -> None:
    if old.logicalType != new.logicalType and old.logicalType and new.logicalType:
        if (old.logicalType, new.logicalType) in LOGICAL_WIDENINGS:
            add(Change("compatible", where, f"type widened {old.logicalType} -> {new.logicalType}"))
        else:
            add(Change("breaking", where, f"type changed {old.logicalType} -> {new.logicalType}"))
        return
    a, b = old.physicalType, new.physicalType
    if not a or not b or a.strip().lower() == b.strip().lower():
        return
    old_type, new_type = normal_physical(a), normal_physical(b)
    length_a, length_b = _text_length(a), _text_length(b)
    if old_type == new_type == "string" and (length_a or length_b):
        wider = length_b is None or (length_a is not None and length_b >= length_a)
        add(
            Change(
                "compatible" if wider else "breaking",
                where,
                f"type {'widened' if wider else 'narrowed'} {a} -> {b}",
            )
        )
    elif old_type and new_type and old_type == new_type:
        return  # two spellings of one type
    elif old_type and new_type and widens(old_type, new_type):
        add(Change("compatible", where, f"type widened {a} -> {b}"))
    elif old_type and new_type and widens(new_type, old_type):
        add(Change("breaking", where, f"type narrowed {a} -> {b}"))
    else:
        add(Change("breaking", where, f"type changed {a} -> {b}"))


def _text_length(physical: str) -> int | None:
    inside = physical.strip().lower().partition("(")[2].rstrip(")").strip()
    return int(inside) if inside.isdigit() else None


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _options(where: str, old: Property, new: Property, add: Any) -> None:
    a, b = old.logicalTypeOptions, new.logicalTypeOptions

    def get(opts: LogicalTypeOptions | None, key: str) -> Any:
        return None if opts is None else getattr(opts, key)

    if get(a, "pattern") != get(b, "pattern"):
        if get(b, "pattern") is None:
            add(Change("compatible", where, "pattern removed"))
        else:
            add(
                Change("breaking", where, f"pattern {get(a, 'pattern')!r} -> {get(b, 'pattern')!r}")
            )
    # (option, a larger value constrains more)
    for key, larger_is_tighter in (
        ("minimum", True),
        ("exclusiveMinimum", True),
        ("minLength", True),
        ("maximum", False),
        ("exclusiveMaximum", False),
        ("maxLength", False),
    ):
        before, after = get(a, key), get(b, key)
        if before == after:
            continue
        if after is None:
            add(Change("compatible", where, f"{key} {before} removed"))
            continue
        if before is None:
            add(Change("breaking", where, f"{key} {after} added"))
            continue
        x, y = _comparable(before), _comparable(after)
        try:
            tighter = y > x if larger_is_tighter else y < x
        except TypeError:
            tighter = True  # not comparable: assume the worst
        add(Change("breaking" if tighter else "compatible", where, f"{key} {before} -> {after}"))


def _accepted(prop: Property) -> set[Any] | None:
    """The accepted values of a column (invalidValues rules with validValues), if any."""
    found: set[Any] | None = None
    for rule in prop.quality:
        metric = (rule.metric or rule.rule or "").lower()
        values = (rule.arguments or {}).get("validValues", rule.validValues)
        if metric in ("invalidvalues", "validvalues") and isinstance(values, list):
            found = set(values) if found is None else found & set(values)
    return found


def _other_rules(rules: list[Quality]) -> list[Quality]:
    return [
        r
        for r in rules
        if (r.metric or r.rule or "").lower() not in ("invalidvalues", "validvalues")
    ]


def _rules(where: str, old: list[Quality], new: list[Quality], add: Any) -> None:
    """Checks added, removed or changed: compatible (they judge data, not its shape)."""

    def key(rule: Quality, i: int) -> str:
        return (
            rule.id
            or rule.name
            or f"{rule.type or 'library'}:{rule.metric or rule.rule or rule.query or i}"
        )

    before = {key(r, i): r for i, r in enumerate(old)}
    after = {key(r, i): r for i, r in enumerate(new)}
    for name in sorted(after.keys() - before.keys()):
        add(Change("compatible", where, f"check {name} added"))
    for name in sorted(before.keys() - after.keys()):
        add(Change("compatible", where, f"check {name} removed"))
    for name in sorted(before.keys() & after.keys()):
        if before[name].model_dump(exclude_none=True) != after[name].model_dump(exclude_none=True):
            add(Change("compatible", where, f"check {name} changed"))


def _sla(old: Contract, new: Contract, add: Any) -> None:
    def table(c: Contract) -> dict[str, tuple[Any, Any, Any]]:
        return {s.property.lower(): (s.value, s.unit, s.element) for s in c.slaProperties}

    a, b = table(old), table(new)
    for prop in sorted(a.keys() | b.keys()):
        if a.get(prop) != b.get(prop):
            add(
                Change(
                    "compatible",
                    "contract",
                    f"service level {prop}: {a.get(prop)} -> {b.get(prop)}",
                )
            )
