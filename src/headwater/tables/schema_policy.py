"""Schema evolution per table: `evolve`, `freeze` or `discard-columns`.

- evolve: new columns are added (nullable); a column whose incoming type is
  wider than the table's (int32 -> int64, float -> double, more decimal digits,
  date -> timestamp) is widened.
- freeze: any new column or widening is rejected with an error naming the column.
- discard-columns: new columns are dropped; widenings are rejected.

In every policy, a column the increment lacks is written as NULL, and values
that fit the table's type (int32 into int64) are cast. Incompatible changes
(text into a number column) are always an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ..errors import SchemaError
from .delta_types import fits_without_widening, to_delta_schema, widening

POLICIES = ("evolve", "freeze", "discard-columns")


@dataclass
class SchemaPlan:
    """What writing an increment does to the table's schema."""

    table_schema: pa.Schema  # the table's schema after the write (data + managed columns)
    add_columns: list[pa.Field] = field(default_factory=list)
    widen: dict[str, pa.DataType] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)  # incoming name -> table name (case)

    @property
    def changes_table(self) -> bool:
        return bool(self.add_columns or self.widen)


def plan_schema(
    table: str,
    policy: str,
    current: pa.Schema | None,
    incoming: pa.Schema,
    managed: list[pa.Field],
    control: set[str],
) -> SchemaPlan:
    """Decide how `incoming` (an increment's schema) fits the table under `policy`."""
    data = to_delta_schema(pa.schema([f for f in incoming if f.name not in control]), table)
    managed_names = {f.name for f in managed}
    for f in data:
        if f.name in managed_names:
            raise SchemaError(
                f"table {table}: column {f.name!r} collides with a column the write strategy maintains",
                "rename it in the transform, or choose other names for the strategy's columns",
            )
    if current is None:
        return SchemaPlan(pa.schema([*data, *managed]))

    by_lower = {f.name.lower(): f for f in current}
    plan = SchemaPlan(current)
    new_types: dict[str, pa.DataType] = {}
    for f in data:
        existing = by_lower.get(f.name.lower())
        if existing is None:
            if policy == "evolve":
                plan.add_columns.append(pa.field(f.name, f.type, True))
            elif policy == "discard-columns":
                plan.dropped.append(f.name)
            else:
                raise SchemaError(
                    f"table {table}: new column {f.name!r} ({f.type}) is not in the frozen schema",
                    "add it to the table deliberately (schema policy 'evolve'), or drop it in the transform",
                )
            continue
        if existing.name != f.name:
            plan.renames[f.name] = existing.name
        if fits_without_widening(existing.type, f.type):
            continue
        wider = widening(existing.type, f.type)
        if wider is None:
            raise SchemaError(
                f"table {table}: column {existing.name!r} is {existing.type} in the table but {f.type} in the increment",
                "cast it in the transform, or rebuild the table with --full-refresh",
            )
        if policy != "evolve":
            raise SchemaError(
                f"table {table}: column {existing.name!r} would need widening from {existing.type} to {wider} "
                f"(schema policy {policy!r})",
                "cast it in the transform, or set schema='evolve' on the table",
            )
        new_types[existing.name] = wider
    plan.widen = new_types
    fields = [
        pa.field(f.name, new_types.get(f.name, f.type), True) for f in current
    ] + plan.add_columns
    # Managed columns a strategy introduces later (e.g. a switch to soft deletes) are added too.
    present = {f.name for f in fields}
    extra = [pa.field(m.name, m.type, True) for m in managed if m.name not in present]
    plan.add_columns += extra
    plan.table_schema = pa.schema(fields + extra)
    return plan
